"""What every training loop shares around its step: output directory, resume, metrics, periodic
checkpoints, evaluation cadence, and the final export + report. Kept out of sft.py/dpo.py so each
loop reads top to bottom as just the method."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alignlib.engines import Engine
from alignlib.train.checkpoint import export_hf, load_checkpoint, resolve_resume, save_checkpoint
from alignlib.train.config import TrainConfig
from alignlib.train.metrics import MetricsLogger, write_plots

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    output_dir: str
    global_step: int
    train_metrics: list[dict[str, float]]  # one record per step run in this process
    eval_metrics: list[dict[str, float]]
    report: dict[str, Any] = field(default_factory=dict)


class Session:
    def __init__(
        self,
        *,
        method: str,
        engine: Engine,
        config: TrainConfig,
        output_dir: str,
        total_steps: int,
        callbacks: Sequence[StepCallback] = (),
    ) -> None:
        self.method, self.engine, self.config = method, engine, config
        self.output_dir, self.total_steps, self.callbacks = output_dir, total_steps, callbacks
        if engine.is_main:
            os.makedirs(output_dir, exist_ok=True)
        engine.barrier()
        self.start_step = 0
        resume = resolve_resume(output_dir, config.resume_from_checkpoint)
        if resume is not None:
            self.start_step = load_checkpoint(engine, resume)["step"]
        self.logger = MetricsLogger(
            output_dir, enabled=engine.is_main, total_steps=total_steps, start_step=self.start_step,
            report_to=config.report_to, progress_bar=config.progress_bar, run_name=config.run_name,
            config=config.to_dict(),
        )
        self.train_metrics: list[dict[str, float]] = []
        self.eval_metrics: list[dict[str, float]] = []
        self.total_tokens = 0
        self.started = time.perf_counter()

    @property
    def steps(self) -> range:
        return range(self.start_step, self.total_steps)

    def end_step(self, step: int, values: dict[str, float], *, tokens: int) -> None:
        """Called after optimizer step `step` (1-based) with globally reduced values."""
        self.total_tokens += tokens
        values = {k: float(v) for k, v in values.items()}
        self.train_metrics.append({"step": step, **values})
        if step % self.config.logging_steps == 0 or step == self.total_steps:
            self.logger.log(step, "train", values, tokens=tokens)
        else:
            self.logger.tokens_since_start += tokens
        for callback in self.callbacks:
            callback(step, values)
        if self.config.save_steps and step % self.config.save_steps == 0 and step < self.total_steps:
            save_checkpoint(self.engine, self.output_dir, step, {"method": self.method}, self.config.save_total_limit)

    def eval_due(self, step: int) -> bool:
        if self.config.eval_steps:
            return step % self.config.eval_steps == 0 or step == self.total_steps
        return step == self.total_steps

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        values = {k: float(v) for k, v in values.items()}
        self.eval_metrics.append({"step": step, **values})
        self.logger.log(step, "eval", values)

    def finish(
        self, *, tokenizer: Any, data_report: dict[str, Any] | None, extra: dict[str, Any] | None = None
    ) -> TrainResult:
        runtime = time.perf_counter() - self.started
        self.logger.close()
        export_hf(self.engine, self.output_dir, tokenizer=tokenizer)
        report: dict[str, Any] = {}
        if self.engine.is_main:
            plots = write_plots(self.logger.path, self.output_dir) if self.config.plots else []
            steps_run = self.total_steps - self.start_step
            report = {
                "method": self.method,
                "throughput": {
                    "train_runtime_s": runtime,
                    "steps": steps_run,
                    "tokens": self.total_tokens,
                    "tokens_per_second": self.total_tokens / max(runtime, 1e-9),
                    "steps_per_second": steps_run / max(runtime, 1e-9),
                },
                "world_size": self.engine.world_size,
                "resumed_from_step": self.start_step,
                "global_step": self.total_steps,
                "config": self.config.to_dict(),
                "engine": {"kind": self.config.engine, **self.engine.resolved_config()},
                "final_train_metrics": self.train_metrics[-1] if self.train_metrics else {},
                "eval_metrics": self.eval_metrics,
                "plots": [os.path.basename(p) for p in plots],
                "torch": torch.__version__,
                **(extra or {}),
            }
            if data_report is not None:
                report["data"] = data_report
            with open(os.path.join(self.output_dir, "report.json"), "w") as f:
                json.dump(report, f, indent=1, default=str)
        self.engine.barrier()
        return TrainResult(self.output_dir, self.total_steps, self.train_metrics, self.eval_metrics, report)
