"""Child process for the kill-and-resume test: SFT on the shared tiny model and table.

usage: _resume_worker.py OUT_DIR HANG_AT_STEP [--resume] [--deepspeed]
--deepspeed trains on the DeepSpeed engine (ZeRO-2, fp32) as one rank; the caller sets the rank
environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT, DS_ACCELERATOR=cpu), so no launcher sits between
the test and the process it kills.
After optimizer step HANG_AT_STEP it prints "HANGING" and sleeps, so the test can SIGKILL it at a
known point (0: never hang). Attention dropout is on, so resuming must restore the RNG too.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from helpers_train import sft_table, tiny_llama  # noqa: E402

from alignlib.train import SFTConfig, train_sft  # noqa: E402

torch.set_num_threads(1)


def config(resume: bool, deepspeed: bool) -> SFTConfig:
    engine = dict(engine="deepspeed", deepspeed={"zero_optimization": {"stage": 2}}) if deepspeed else {}
    return SFTConfig(learning_rate=3e-3, max_steps=10, micro_batch_size=4, save_steps=4, save_total_limit=3,
                     progress_bar=False, plots=False, resume_from_checkpoint=resume, warmup_ratio=0.2, **engine)


def main() -> None:
    out, hang_at = sys.argv[1], int(sys.argv[2])

    def hang(step: int, _: dict) -> None:
        if step == hang_at:
            print("HANGING", flush=True)
            time.sleep(600)

    train_sft(sft_table(24, seed=9), tiny_llama(attention_dropout=0.2),
              config("--resume" in sys.argv, "--deepspeed" in sys.argv), output_dir=out, callbacks=[hang])


if __name__ == "__main__":
    main()
