"""Where training metrics go: metrics.jsonl (always), a rich progress bar with tokens/s and ETA,
TensorBoard and Weights & Biases when installed (never required), and PNG plots at the end.

Only rank 0 writes. Every record is one JSON object per line with "step" and "split"
("train" or "eval"), so the file can be replayed, plotted or merged by step after a resume.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from typing import Any


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class MetricsLogger:
    def __init__(
        self,
        output_dir: str,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        report_to: Sequence[str] | str,
        progress_bar: bool,
        run_name: str | None,
        config: dict[str, Any],
    ) -> None:
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.total_steps = total_steps
        self.start_step = start_step
        self.started = time.perf_counter()
        self.tokens_since_start = 0
        self._tb = self._wandb = self._progress = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._truncate_after(start_step)
        wanted = set(report_to) if report_to != "auto" else {"tensorboard", "wandb"}
        if "tensorboard" in wanted and _installed("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        # "auto" only turns W&B on when it is configured, so an unconfigured install never prompts.
        wandb_configured = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
        if "wandb" in wanted and _installed("wandb") and (report_to != "auto" or wandb_configured):
            import wandb

            self._wandb = wandb.init(name=run_name, config=config, resume="allow", dir=output_dir)
        if progress_bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, loss="-", tps="-")
            self._progress.start()

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records a killed run wrote after its last checkpoint."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            records = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(records)

    def tokens_per_second(self) -> float:
        return self.tokens_since_start / max(time.perf_counter() - self.started, 1e-9)

    def log(self, step: int, split: str, values: dict[str, float], *, tokens: int = 0) -> None:
        self.tokens_since_start += tokens
        if not self.enabled:
            return
        record = {"step": step, "split": split, **values}
        if split == "train":
            record["tokens_per_second"] = self.tokens_per_second()
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        prefixed = {f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")}
        if self._tb is not None:
            for key, value in prefixed.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(prefixed, step=step)
        if self._progress is not None and split == "train":
            self._progress.update(
                self._task, completed=step, loss=f"{values.get('loss', float('nan')):.4f}",
                tps=f"{record['tokens_per_second']:,.0f}",
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


PLOTS: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "learning_rate": ("learning_rate",),
    "grad_norm": ("grad_norm",),
    "rewards": ("rewards/chosen", "rewards/rejected"),
    "margins": ("rewards/margins",),
    "accuracies": ("rewards/accuracies",),
}


def write_plots(metrics_path: str, out_dir: str) -> list[str]:
    """One PNG per panel present in the metrics (train and eval series together). Returns the
    paths written; none when matplotlib is not installed."""
    if not _installed("matplotlib"):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    written = []
    for name, keys in PLOTS.items():
        series = [
            (split, key, [(r["step"], r[key]) for r in records if r["split"] == split and key in r])
            for key in keys
            for split in ("train", "eval")
        ]
        series = [s for s in series if s[2]]
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for split, key, points in series:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if split == "eval" else None, markersize=3, label=f"{split} {key}")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
