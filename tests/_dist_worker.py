"""Multi-process worker for the engine tests: trains the tiny model on the shared test table in
every rank (launched by torchrun or the deepspeed launcher; gloo on CPU).

usage: _dist_worker.py OUT_DIR ENGINE [ZERO_STAGES] [--methods sft,dpo]
ZERO_STAGES and --methods are comma lists: one run per (method, stage) in the same processes, so
the start-up cost is paid once. Run r writes OUT_DIR/<method>-<zeroN|torch>.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from helpers_train import dpo_table, sft_table, tiny_llama  # noqa: E402

torch.set_num_threads(1)


def config_for(engine: str, stage: int | None, method: str):
    from alignlib.train import DPOConfig, SFTConfig

    common = dict(max_steps=4, micro_batch_size=2, gradient_accumulation_steps=1, lr_scheduler_type="cosine",
                  warmup_ratio=0.25, progress_bar=False, plots=False, engine=engine, weight_decay=0.01)
    if engine == "deepspeed":
        common["deepspeed"] = {"zero_optimization": {"stage": stage, "reduce_bucket_size": "auto"},
                               "gradient_clipping": "auto", "train_micro_batch_size_per_gpu": "auto"}
    if method == "dpo":
        return DPOConfig(learning_rate=2e-3, beta=0.5, **common)
    return SFTConfig(learning_rate=3e-3, **common)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("engine", choices=["torch", "deepspeed"])
    parser.add_argument("stages", nargs="?", default="")
    parser.add_argument("--methods", default="sft")
    args = parser.parse_args()
    from alignlib.train import train_dpo, train_sft

    for method in args.methods.split(","):
        for stage in [int(s) for s in args.stages.split(",") if s] or [None]:
            out = os.path.join(args.out, f"{method}-" + (f"zero{stage}" if stage is not None else args.engine))
            config = config_for(args.engine, stage, method)
            if method == "dpo":
                config.ref_cache_dir = os.path.join(args.out, "ref_cache")
                train_dpo(dpo_table(16), tiny_llama(), config, output_dir=out)
            else:
                train_sft(sft_table(16), tiny_llama(), config, output_dir=out)


if __name__ == "__main__":
    main()
