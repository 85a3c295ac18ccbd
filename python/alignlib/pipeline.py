"""Runs a recipe: its stages in order (each DPO stage starts from the previous stage's model), with
the data of every stage prepared once per fingerprint and cached as Parquet.

Per stage::

    tokenizer  materialized once: the tokenizer files + the recipe's chat template / eos / added
               tokens, saved as a Hugging Face tokenizer directory that both the data engine and
               the exported model use (so data and model agree byte for byte)
    data       sources loaded and mapped (alignlib.sources), mixed, split, then prepare_sft /
               prepare_preferences; cached under $ALIGNLIB_CACHE/data/<fingerprint>/ as
               train.parquet, test.parquet, report.json (fingerprint = sources + local file stats +
               tokenizer + template + preparation settings)
    model      model.id (or the previous stage's output, or a tiny random-init model with --smoke)
    train      alignlib.train.train_sft / train_dpo into <output_dir>/<stage name>/

Multi-process runs: every rank runs this module. The local rank 0 of each node builds what is
missing in the cache under a file lock and renames a finished temporary directory into place;
the other ranks poll for its ``DONE`` marker (no collective runs while data is prepared) and
then read the same files. A failure on rank 0 leaves a ``.failed`` marker so the others stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from alignlib.errors import AlignlibError
from alignlib.recipes import Recipe, RecipeError, StageSpec, chat_template_source, train_config

CACHE_VERSION = 1
WAIT_TIMEOUT_S = float(os.environ.get("ALIGNLIB_WAIT_TIMEOUT", 6 * 3600))
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
PLOTS_SFT = ("loss", "learning_rate", "grad_norm")
PLOTS_DPO = PLOTS_SFT + ("rewards", "margins", "accuracies")


class PipelineError(AlignlibError, RuntimeError):
    """A stage could not run (the message says which and why)."""


# ---------------------------------------------------------------------------------------------
# Processes and the cache
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> Dist:
    env = os.environ
    rank = int(env.get("RANK", "0"))
    return Dist(rank=rank, local_rank=int(env.get("LOCAL_RANK", rank)), world_size=int(env.get("WORLD_SIZE", "1")))


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNLIB_CACHE") or os.path.expanduser("~/.cache/alignlib"))


def fingerprint(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _run_id() -> str:
    return os.environ.get("ALIGNLIB_RUN_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or (
        f"{os.environ.get('MASTER_ADDR', 'local')}:{os.environ.get('MASTER_PORT', '')}:{os.getppid()}")


def build_once(final: Path, build: Callable[[Path], None], *, dist: Dist | None = None, what: str = "") -> bool:
    """Makes sure `final` is a complete directory. Local rank 0 builds it (into a temporary
    directory, under a lock, then an atomic rename); other ranks wait for its DONE marker.
    Returns True when this process built it."""
    dist = dist or dist_info()
    done = final / "DONE"
    if done.exists():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    failed = final.parent / f"{final.name}.failed"
    if dist.local_rank != 0:
        started = time.monotonic()
        while not done.exists():
            if failed.exists():
                info = json.loads(failed.read_text() or "{}")
                if info.get("run_id") == _run_id():
                    raise PipelineError(f"rank 0 failed while preparing {what or final}: {info.get('error')}")
            if time.monotonic() - started > WAIT_TIMEOUT_S:
                raise PipelineError(f"timed out after {WAIT_TIMEOUT_S:.0f} s waiting for rank 0 to prepare {what or final}")
            time.sleep(0.2)
        return False
    lock_path = final.parent / f"{final.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if done.exists():
                return False
            with contextlib.suppress(FileNotFoundError):
                failed.unlink()
            tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            tmp.mkdir()
            try:
                build(tmp)
                (tmp / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
                if final.exists():  # an incomplete leftover (no DONE)
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                failed.write_text(json.dumps({"run_id": _run_id(), "error": f"{type(exc).__name__}: {exc}"}))
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerBundle:
    path: Path  # a saved Hugging Face tokenizer directory
    fingerprint: str

    def alignlib(self):
        from alignlib.tokenizer import Tokenizer

        return Tokenizer.from_pretrained(self.path)

    def hf(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.path))


def _dir_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def tokenizer_tokens_to_add(recipe: Recipe, template: str | None, smoke: bool) -> list[str]:
    tokens = list(recipe.tokenizer.add_special_tokens)
    if smoke:  # the tiny tokenizer has the Zephyr markers; give ChatML recipes theirs as real tokens
        tokens += [m for m in CHATML_MARKERS if template and m in template]
        tokens += [t for t in (recipe.tokenizer.eos_token, recipe.tokenizer.pad_token) if t]
    return list(dict.fromkeys(tokens))


def materialize_tokenizer(recipe: Recipe, *, smoke: bool, dist: Dist | None = None) -> TokenizerBundle:
    from alignlib.assets import TINY_CHAT_TOKENIZER

    template = chat_template_source(recipe)
    spec = recipe.tokenizer
    source_id = str(TINY_CHAT_TOKENIZER) if smoke else (spec.id or recipe.model.id)
    add = tokenizer_tokens_to_add(recipe, template, smoke)
    key = {
        "v": CACHE_VERSION, "source": source_id, "revision": None if smoke else (spec.revision or recipe.model.revision),
        "source_digest": _dir_digest(TINY_CHAT_TOKENIZER) if smoke else None,
        "template": template, "eos": spec.eos_token, "pad": spec.pad_token, "add": add,
    }
    fp = fingerprint(key)
    final = cache_root() / "tokenizers" / fp

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        if not Path(source_id).is_dir():
            _check_hub_model(f"tokenizer {source_id!r}", source_id)
        try:
            tok = AutoTokenizer.from_pretrained(source_id, revision=key["revision"],
                                                trust_remote_code=recipe.model.trust_remote_code)
        except Exception as exc:
            raise PipelineError(f"cannot load tokenizer {source_id!r}: {type(exc).__name__}: {exc}") from exc
        missing = [t for t in add if t not in tok.get_vocab()]
        if missing:
            from tokenizers import AddedToken

            tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        if template is not None:
            tok.chat_template = template
        if spec.eos_token:
            tok.eos_token = spec.eos_token
        if spec.pad_token:
            tok.pad_token = spec.pad_token
        if tok.pad_token is None and tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        tok.save_pretrained(str(tmp))
        (tmp / "alignlib_tokenizer.json").write_text(json.dumps(key, indent=1, default=str))

    build_once(final, build, dist=dist, what=f"tokenizer {source_id}")
    return TokenizerBundle(final, fp)


def _check_hub_model(label: str, repo_id: str) -> None:
    from alignlib.sources import SourceError, check_hub

    try:
        check_hub(label, repo_id, repo_type="model")
    except SourceError as exc:
        raise PipelineError(str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
@dataclass
class StageData:
    train: pl.DataFrame
    test: pl.DataFrame | None
    report: dict[str, Any]
    path: Path  # the cache directory


def _source_stats(recipe: Recipe, stage: StageSpec, smoke: bool) -> list[Any]:
    """What identifies each source's content: local files by path, size and mtime; hub ids by id,
    config, split and revision (a hub dataset that changes under an unpinned revision needs
    `revision:` or a new cache)."""
    from alignlib import sources

    base = Path(recipe.path).parent if recipe.path else None
    out = []
    for src in stage.data.sources:
        local = sources._resolve_local(src.id, base)
        if local is None and smoke:
            local = sources.smoke_file_for(src)
        if local is not None:
            files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
            out.append([str(p.resolve()) + f":{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files])
        else:
            out.append(None)
    return out


def stage_data_key(recipe: Recipe, name: str, tok: TokenizerBundle, smoke: bool) -> dict[str, Any]:
    import alignlib

    stage = recipe.stages[name]
    return {
        "v": CACHE_VERSION, "alignlib": alignlib.__version__, "method": stage.method,
        "data": dataclasses.asdict(stage.data), "files": _source_stats(recipe, stage, smoke),
        "tokenizer": tok.fingerprint, "smoke": smoke,
        "smoke_rows": recipe.smoke.rows_per_source if smoke else None,
        "settings": {k: getattr(stage, k) for k in ("max_length", "max_prompt_length", "packing",
                                                     "assistant_only_loss", "overflow", "on_error")},
    }


def prepare_stage_data(recipe: Recipe, name: str, tok: TokenizerBundle, *, smoke: bool,
                       dist: Dist | None = None) -> StageData:
    from alignlib import sources

    stage = recipe.stages[name]
    key = stage_data_key(recipe, name, tok, smoke)
    fp = fingerprint(key)
    final = cache_root() / "data" / fp

    def build(tmp: Path) -> None:
        from alignlib.data import prepare_preferences, prepare_sft

        base = Path(recipe.path).parent if recipe.path else None
        mixture = sources.mix(stage.data, stage.method, base_dir=base, smoke=smoke,
                              max_rows_per_source=recipe.smoke.rows_per_source if smoke else None)
        tokenizer = tok.alignlib()

        def prep(df: pl.DataFrame):
            if stage.method == "dpo":
                return prepare_preferences(df, tokenizer, max_length=stage.max_length,
                                           max_prompt_length=stage.max_prompt_length, on_error=stage.on_error)
            return prepare_sft(df, tokenizer, max_length=stage.max_length, packing=stage.packing,
                               assistant_only_loss=stage.assistant_only_loss, overflow=stage.overflow,
                               on_error=stage.on_error)

        if mixture.train.height == 0:
            raise PipelineError(f"stage {name!r}: the mixture has no training rows ({mixture.report})")
        train = prep(mixture.train)
        train.table.write_parquet(tmp / "train.parquet")
        report: dict[str, Any] = {"fingerprint": fp, "recipe": recipe.name, "stage": name, "method": stage.method,
                                  "tokenizer": str(tok.path), "mixture": mixture.report, "train": train.report.to_dict()}
        if mixture.test is not None and mixture.test.height:
            test = prep(mixture.test)
            test.table.write_parquet(tmp / "test.parquet")
            report["eval"] = test.report.to_dict()
        report["lossless"] = (mixture.report["rows_dropped"] == 0 and train.report.lossless
                              and report.get("eval", {}).get("lossless", True))
        report["key"] = key
        (tmp / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")

    build_once(final, build, dist=dist, what=f"the data of stage {name!r}")
    report = json.loads((final / "report.json").read_text())
    test = pl.read_parquet(final / "test.parquet") if (final / "test.parquet").exists() else None
    return StageData(pl.read_parquet(final / "train.parquet"), test, report, final)


def format_data_report(report: dict[str, Any]) -> str:
    """A short human summary of a stage's data report."""
    mix = report["mixture"]
    lines = [f"data of stage {report['stage']!r} ({report['method']}), cache {report['fingerprint']}"]
    for s in mix["sources"]:
        dropped = ", ".join(f"{k}: {v}" for k, v in s["dropped"].items()) or "none"
        lines.append(f"  {s['id']} [{s['split']}] ({s['format']} -> {s['mapped_as']}): loaded {s['rows_loaded']}, "
                     f"subsampled out {s['rows_subsampled']}, kept {s['rows_kept']}, dropped {s['rows_dropped']} ({dropped})")
    lines.append(f"  mixture: {mix['train_rows']} train / {mix['test_rows']} test rows (seed {mix['seed']})")
    for split in ("train", "eval"):
        if split in report:
            c = report[split]["counts"]
            extra = " ".join(f"{k}={c[k]}" for k in ("rows_in", "rows_out", "rows_skipped", "tokens_in",
                                                      "tokens_truncated", "pairs_split", "docs_split",
                                                      "fill") if k in c)
            lines.append(f"  {split}: {extra}, lossless={report[split]['lossless']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
def architecture_of(recipe: Recipe) -> str:
    if recipe.model.architecture:
        return recipe.model.architecture
    name = recipe.model.id.lower()
    for key, family in (("stablelm", "stablelm"), ("mistral", "mistral"), ("zephyr", "mistral"),
                        ("openchat", "mistral"), ("smollm", "llama"), ("llama", "llama")):
        if key in name:
            return family
    raise RecipeError([("model.architecture", f"cannot tell the family of {recipe.model.id!r} for --smoke: "
                                              "set llama, mistral or stablelm")])


def tiny_config(family: str, *, vocab_size: int, hidden_size: int, num_layers: int, max_positions: int,
                bos: int | None, eos: int | None, pad: int | None):
    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=max_positions, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                  tie_word_embeddings=False)
    if family == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if family == "mistral":
        from transformers import MistralConfig

        return MistralConfig(**common, sliding_window=None)
    if family == "stablelm":
        from transformers import StableLmConfig

        return StableLmConfig(**common, partial_rotary_factor=0.25, use_qkv_bias=False)
    raise RecipeError([("model.architecture", f"unknown family {family!r}")])


def smoke_base_model(recipe: Recipe, tok: TokenizerBundle, *, dist: Dist | None = None) -> Path:
    """A tiny random-init model of the recipe's family with the smoke tokenizer's vocabulary,
    saved once in Hugging Face format (so it loads through the same code path as a real one)."""
    family = architecture_of(recipe)
    hf_tok = tok.hf()
    max_len = max([s.max_length or 0 for s in recipe.stages.values()] + [512])
    key = {"v": CACHE_VERSION, "family": family, "vocab": len(hf_tok), "hidden": recipe.smoke.hidden_size,
           "layers": recipe.smoke.num_layers, "max_len": max_len, "tok": tok.fingerprint}
    final = cache_root() / "smoke-models" / fingerprint(key)

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        ids = lambda t: hf_tok.convert_tokens_to_ids(t) if t else None  # noqa: E731
        config = tiny_config(family, vocab_size=len(hf_tok), hidden_size=recipe.smoke.hidden_size,
                             num_layers=recipe.smoke.num_layers, max_positions=2 * max_len,
                             bos=ids(hf_tok.bos_token), eos=ids(hf_tok.eos_token), pad=ids(hf_tok.pad_token))
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).float()
        model.save_pretrained(str(tmp))

    build_once(final, build, dist=dist, what=f"the tiny {family} model")
    return final


def load_stage_model(recipe: Recipe, path: str, tok_len: int):
    from alignlib.models import LoraSettings, load_model

    lora = None
    if recipe.model.lora is not None:
        spec = recipe.model.lora
        lora = LoraSettings(r=spec.r, alpha=spec.alpha, dropout=spec.dropout, target_modules=spec.target_modules,
                            modules_to_save=list(spec.modules_to_save))
    if not Path(path).is_dir():
        _check_hub_model(f"model {path!r}", path)
    try:
        model = load_model(path, dtype=recipe.model.dtype, attn_implementation=recipe.model.attention,
                           trust_remote_code=recipe.model.trust_remote_code, lora=None,
                           **({"revision": recipe.model.revision} if recipe.model.revision and path == recipe.model.id else {}))
    except OSError as exc:
        raise PipelineError(f"cannot load model {path!r}: {exc}") from exc
    if model.get_input_embeddings().weight.shape[0] < tok_len:
        model.resize_token_embeddings(tok_len)
    if lora is not None:
        from alignlib.models import prepare_model

        model = prepare_model(model, lora=lora)
    return model


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
@dataclass
class StageResult:
    name: str
    method: str
    output_dir: str
    data_cache: str
    plots: list[str]
    missing_plots: list[str]
    global_step: int
    seconds: float
    final_metrics: dict[str, float] = field(default_factory=dict)


def resolve_output_dir(recipe: Recipe, output_dir: str | None) -> Path:
    return Path(output_dir or recipe.output_dir or os.path.join("runs", recipe.name))


def _say(dist: Dist, text: str, echo: Callable[[str], None] | None) -> None:
    if dist.is_main and echo is not None:
        echo(text)


def prepare(recipe: Recipe, *, smoke: bool = False, output_dir: str | None = None,
            echo: Callable[[str], None] | None = print) -> dict[str, Path]:
    """Data only: each stage's train/test Parquet and report.json in <output_dir>/<stage>/data/."""
    dist = dist_info()
    out = resolve_output_dir(recipe, output_dir)
    tok = materialize_tokenizer(recipe, smoke=smoke, dist=dist)
    paths = {}
    for name in recipe.stages:
        data = prepare_stage_data(recipe, name, tok, smoke=smoke, dist=dist)
        dest = out / name / "data"
        if dist.is_main:
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("train.parquet", "test.parquet", "report.json"):
                if (data.path / f).exists():
                    shutil.copyfile(data.path / f, dest / f)
        _say(dist, format_data_report(data.report) + f"\n  -> {dest}", echo)
        paths[name] = dest
    return paths


def run(recipe: Recipe, *, smoke: bool = False, output_dir: str | None = None, stages: list[str] | None = None,
        echo: Callable[[str], None] | None = print) -> list[StageResult]:
    """Runs the recipe's stages in order; returns one StageResult per stage run."""
    from alignlib.train import train_dpo, train_sft

    dist = dist_info()
    out = resolve_output_dir(recipe, output_dir)
    names = list(recipe.stages)
    if stages:
        unknown = [s for s in stages if s not in recipe.stages]
        if unknown:
            raise RecipeError([("stages", f"no stage {unknown[0]!r}; the recipe has {names}")])
    tok = materialize_tokenizer(recipe, smoke=smoke, dist=dist)
    hf_tok = tok.hf()
    base_model = str(smoke_base_model(recipe, tok, dist=dist)) if smoke else recipe.model.id
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    results: list[StageResult] = []
    previous: str | None = None
    for name in names:
        stage = recipe.stages[name]
        stage_out = out / name
        if stages and name not in stages:
            previous = str(stage_out)  # a later stage may start from this one's earlier output
            continue
        started = time.perf_counter()
        data = prepare_stage_data(recipe, name, tok, smoke=smoke, dist=dist)
        _say(dist, format_data_report(data.report), echo)
        init = stage.init
        if init == "previous":
            init_path = previous or base_model
        elif init == "model":
            init_path = base_model
        else:
            init_path = init
        if init == "previous" and previous and not (Path(previous) / "config.json").exists():
            raise PipelineError(f"stage {name!r} starts from {previous}, which holds no model: run that stage first")
        config = train_config(recipe, name, world_size=dist.world_size)
        model = load_stage_model(recipe, init_path, len(hf_tok))
        _say(dist, f"stage {name!r} ({stage.method}): {init_path} -> {stage_out} "
                   f"[{config.engine}, world {dist.world_size}, micro {config.micro_batch_size}"
                   f"{'' if config.micro_batch_tokens is None else f'/{config.micro_batch_tokens} tokens'}, "
                   f"accumulation {config.gradient_accumulation_steps}]", echo)
        data_report = {**data.report, "cache_dir": str(data.path)}
        data_report.pop("key", None)
        if stage.method == "dpo":
            result = train_dpo(data.train, model, config, output_dir=str(stage_out), tokenizer=hf_tok,
                               eval_table=data.test, data_report=data_report)
            wanted = PLOTS_DPO
        else:
            result = train_sft(data.train, model, config, output_dir=str(stage_out), tokenizer=hf_tok,
                               eval_table=data.test, data_report=data_report)
            wanted = PLOTS_SFT
        del model
        missing = [p for p in wanted if not (stage_out / f"{p}.png").exists()] if config.plots else []
        if dist.is_main:
            _add_to_report(stage_out / "report.json", recipe, name, smoke, init_path)
        results.append(StageResult(
            name=name, method=stage.method, output_dir=str(stage_out), data_cache=str(data.path),
            plots=sorted(str(p) for p in stage_out.glob("*.png")), missing_plots=missing,
            global_step=result.global_step, seconds=time.perf_counter() - started,
            final_metrics=result.train_metrics[-1] if result.train_metrics else {},
        ))
        if missing:
            _say(dist, f"warning: stage {name!r} wrote no {', '.join(missing)} plot(s) (is matplotlib installed?)", echo)
        _say(dist, f"stage {name!r} done in {results[-1].seconds:.1f} s: model, tokenizer, metrics.jsonl, "
                   f"report.json and plots in {stage_out}", echo)
        previous = str(stage_out)
    return results


def _add_to_report(path: Path, recipe: Recipe, stage: str, smoke: bool, init: str) -> None:
    """The trainer writes report.json; the pipeline adds the resolved recipe it ran."""
    if not path.exists():
        return
    report = json.loads(path.read_text())
    report["recipe"] = {"name": recipe.name, "path": recipe.path, "stage": stage, "smoke": smoke,
                        "init_from": init, "resolved": recipe.to_dict()}
    path.write_text(json.dumps(report, indent=1, default=str))


__all__ = ["Dist", "PipelineError", "StageData", "StageResult", "TokenizerBundle", "build_once", "cache_root",
           "dist_info", "format_data_report", "materialize_tokenizer", "prepare", "prepare_stage_data", "run",
           "smoke_base_model"]
