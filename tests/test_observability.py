"""Training runs report to TensorBoard when asked (and installed): the scalars in metrics.jsonl
are the ones in the event files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlib.train import SFTConfig, train_sft
from helpers_train import sft_table, tiny_llama


def test_tensorboard_events_hold_the_logged_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    config = SFTConfig(learning_rate=3e-3, max_steps=4, micro_batch_size=4, progress_bar=False, plots=False,
                       lr_scheduler_type="constant", report_to=("tensorboard",))
    train_sft(sft_table(8, seed=1), tiny_llama(), config, output_dir=str(out))

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in logged if r["split"] == "train"]
    events = EventAccumulator(str(next(Path(out, "tensorboard").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    loss_tag = next(t for t in events.Tags()["scalars"] if t.endswith("loss"))
    scalars = events.Scalars(loss_tag)
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars] == pytest.approx(train_losses, rel=1e-6)
