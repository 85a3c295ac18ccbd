"""Dataset sources: load each one in its own schema, map it to the data engine's canonical
columns, and mix them the way the Alignment Handbook's ``dataset_mixture`` does.

Loading: local ``.jsonl``/``.json``/``.parquet`` files (or a directory of them), ``asset:<name>``
files shipped in the package, or hub ids through ``datasets.load_dataset`` (falling back to the
repository's Parquet files through ``huggingface_hub`` when ``datasets`` is not installed). With
``HF_HUB_OFFLINE=1``/``HF_DATASETS_OFFLINE=1`` and no cached copy, or with no network, a hub
source fails at once with a :class:`SourceError` naming it; nothing waits on a network.

Canonical columns (what ``alignlib.prepare_sft`` / ``prepare_preferences`` read):

- SFT: ``messages`` (list of {role, content}); ``prompt_completion`` and ``text`` sources pass
  through as ``prompt``/``completion`` and ``text``.
- DPO: ``prompt``, ``chosen``, ``rejected``, all conversational (lists of {role, content}).

Formats (``SourceSpec.format``; ``fields`` renames a format's source fields):

=====================  ============================================================  ==============================
format                 source schema (default field names)                           examples
=====================  ============================================================  ==============================
messages               ``messages``: [{role, content}]                               UltraChat 200k, no_robots
sharegpt               ``conversations``: [{from, value}]; human→user,               SlimOrca, WizardLM evol V2
                       gpt→assistant, system→system
alternating            ``data``: [str] user, assistant, user, ...                    stingning/ultrachat
prompt_response        ``prompt``, ``response`` strings (+ optional ``system``)      MetaMathQA (query/response)
prompt_completion      ``prompt``, ``completion`` (passed through)                   TRL prompt-completion sets
text                   ``text`` (passed through)                                     plain LM data
preferences            ``prompt``, ``chosen``, ``rejected`` (strings or messages)    TRL conversational pairs
implicit_preferences   ``chosen``, ``rejected`` full conversations; the prompt is    UltraFeedback binarized
                       their longest common message prefix
string_preferences     ``system``, ``question``, ``chosen``, ``rejected`` strings    Intel/orca_dpo_pairs
ultrafeedback          ``instruction``, ``completions``: [{response,                 openbmb/UltraFeedback
                       overall_score}] → chosen = best score, rejected = a
                       seeded random lower-scored completion
=====================  ============================================================  ==============================

Lossless accounting: every row a mapping cannot use (a null field, an empty conversation, an
unknown role, tied scores, ...) is dropped *and counted* by reason in the mixture report, and the
report checks ``rows_selected == rows_kept + rows_dropped`` for every source. Rows left out by a
``weight``/``fraction`` below 1 are reported as ``rows_subsampled``.
"""

from __future__ import annotations

import math
import os
import random
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import polars as pl

from alignlib.errors import AlignlibError

MESSAGE = pl.Struct({"role": pl.Utf8, "content": pl.Utf8})
MESSAGES = pl.List(MESSAGE)

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "model": "assistant",
                  "system": "system"}

# format -> (method, {canonical field: default source field})
FORMATS: dict[str, tuple[str, dict[str, str | None]]] = {
    "messages": ("sft", {"messages": "messages"}),
    "sharegpt": ("sft", {"conversations": "conversations", "role": "from", "content": "value"}),
    "alternating": ("sft", {"turns": "data"}),
    "prompt_response": ("sft", {"prompt": "prompt", "response": "response", "system": None}),
    "prompt_completion": ("sft", {"prompt": "prompt", "completion": "completion"}),
    "text": ("sft", {"text": "text"}),
    "preferences": ("dpo", {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),
    "implicit_preferences": ("dpo", {"chosen": "chosen", "rejected": "rejected"}),
    "string_preferences": ("dpo", {"system": "system", "prompt": "question", "chosen": "chosen", "rejected": "rejected"}),
    "ultrafeedback": ("dpo", {"prompt": "instruction", "completions": "completions", "response": "response",
                              "score": "overall_score"}),
}

DROP_EXAMPLES = 5


class SourceError(AlignlibError, RuntimeError):
    """A source cannot be loaded or mapped (the message names it)."""


def check_fields(fmt: str, fields: dict[str, str], method: str) -> list[tuple[str, str]]:
    """(key, problem) pairs for a source's format/fields in a stage of `method` (empty when fine)."""
    problems = []
    if fmt == "auto":  # any field some format of this method knows
        fmt_method, defaults = method, {k: None for m, d in FORMATS.values() if m == method for k in d}
    else:
        fmt_method, defaults = FORMATS[fmt]
    if fmt_method != method:
        problems.append(("format", f"format {fmt!r} gives {fmt_method.upper()} data, but the stage method is {method!r}"))
    for key in fields:
        if key not in defaults:
            import difflib

            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {fmt!r} fields: {', '.join(defaults)}"
            problems.append(("fields", f"unknown field {key!r} for format {fmt!r}{hint}"))
    return problems


def source_label(src: Any) -> str:
    extra = f", config {src.config!r}" if getattr(src, "config", None) else ""
    return f"source {src.id!r} (split {src.split!r}{extra})"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
SMOKE_DIR = "smoke"


def smoke_file_for(src: Any) -> Path:
    """The shipped smoke file of a hub source: alignlib/assets/smoke/<org>__<name>.jsonl."""
    from alignlib.assets import asset_path

    if src.smoke_file:
        return _resolve_local(src.smoke_file, None) or Path(src.smoke_file)
    name = src.id.replace("/", "__") + ".jsonl"
    try:
        return asset_path(f"{SMOKE_DIR}/{name}")
    except FileNotFoundError as exc:
        raise SourceError(f"{source_label(src)} has no smoke file: expected alignlib/assets/{SMOKE_DIR}/{name} "
                          f"(or set smoke_file)") from exc


def _resolve_local(id_: str, base_dir: str | os.PathLike[str] | None) -> Path | None:
    if id_.startswith("asset:"):
        from alignlib.assets import asset_path

        try:
            return asset_path(id_[len("asset:"):])
        except FileNotFoundError as exc:
            raise SourceError(str(exc)) from exc
    path = Path(os.path.expanduser(id_))
    candidates = [path] if path.is_absolute() else ([Path(base_dir) / path] if base_dir else []) + [path]
    for c in candidates:
        if c.exists():
            return c
    return None


def looks_local(id_: str) -> bool:
    return id_.startswith(("asset:", "/", "./", "../", "~")) or id_.endswith((".jsonl", ".json", ".parquet", ".ndjson"))


def read_file(path: Path) -> pl.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return pl.read_ndjson(path, infer_schema_length=None)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8").lstrip()
        if text.startswith("["):
            return pl.read_json(path, infer_schema_length=None)
        return pl.read_ndjson(path, infer_schema_length=None)
    if suffix == ".parquet":
        return pl.read_parquet(path)
    raise SourceError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json or .parquet)")


def _read_dir(path: Path, split: str) -> pl.DataFrame:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".jsonl", ".json", ".parquet", ".ndjson"))
    named = [p for p in files if p.stem == split or split in p.relative_to(path).as_posix().split("/")
             or p.name.startswith(f"{split}-") or p.name.startswith(f"{split}.")]
    chosen = named or ([] if len({p.stem.split("-")[0] for p in files}) > 1 else files)
    if not chosen:
        raise SourceError(f"{path}: no data file for split {split!r} among {[p.name for p in files][:10]}")
    return pl.concat([read_file(p) for p in chosen], how="diagonal_relaxed")


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cached(repo_id: str) -> bool:
    """Whether any local cache (hub snapshot or datasets' prepared arrow) holds this dataset."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets"))
    return (hub / f"datasets--{repo_id.replace('/', '--')}").exists() or (datasets_cache / repo_id.replace("/", "___")).exists()


def _probe_hub(timeout: float = 3.0) -> str | None:
    """None when the hub endpoint accepts a TCP connection within `timeout`, else why not."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {endpoint} within {timeout:g} s ({type(exc).__name__}: {exc})"


def check_hub(label: str, repo_id: str, *, repo_type: str = "dataset") -> None:
    """Fails at once, naming `label`, when `repo_id` cannot come from the hub: offline with no cached
    copy, or the hub endpoint unreachable. Never waits on a network longer than the probe."""
    if _offline():
        cached = _hub_cached(repo_id) if repo_type == "dataset" else _model_cached(repo_id)
        if not cached:
            raise SourceError(f"{label}: offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set) and no cached copy of "
                              f"{repo_id!r}; download it once with network, or point `id` at a local copy")
        return
    why = _probe_hub()
    if why is not None:
        raise SourceError(f"{label}: {why}; set HF_HUB_OFFLINE=1 to use a cached copy, or point `id` at a local copy")


def _model_cached(repo_id: str) -> bool:
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"))
    return (hub / f"models--{repo_id.replace('/', '--')}").exists()


def load_hub(src: Any) -> pl.DataFrame:
    label = source_label(src)
    check_hub(label, src.id)
    try:
        import datasets  # noqa: F401
    except ImportError:
        return _load_hub_parquet(src)
    import datasets

    try:
        ds = datasets.load_dataset(src.id, src.config, split=src.split, revision=src.revision)
    except Exception as exc:  # every failure names the source
        raise SourceError(f"{label}: datasets.load_dataset failed: {type(exc).__name__}: {exc}") from exc
    table = ds.with_format("arrow")[:]
    return pl.from_arrow(table)  # type: ignore[return-value]


def _load_hub_parquet(src: Any) -> pl.DataFrame:
    """Without `datasets`: the repository's Parquet files for the split (or the hub's Parquet
    conversion under refs/convert/parquet)."""
    from huggingface_hub import HfApi, hf_hub_download

    label = source_label(src)
    api = HfApi()
    try:
        for revision in (src.revision, "refs/convert/parquet"):
            files = [f for f in api.list_repo_files(src.id, repo_type="dataset", revision=revision) if f.endswith(".parquet")]
            if src.config and revision == "refs/convert/parquet":
                files = [f for f in files if f.split("/")[0] == src.config]
            parts = [f for f in files if src.split in Path(f).parts or Path(f).name.startswith(f"{src.split}-")]
            if parts:
                paths = [hf_hub_download(src.id, f, repo_type="dataset", revision=revision) for f in sorted(parts)]
                return pl.concat([pl.read_parquet(p) for p in paths], how="diagonal_relaxed")
    except Exception as exc:
        raise SourceError(f"{label}: hub download failed: {type(exc).__name__}: {exc}") from exc
    raise SourceError(f"{label}: no Parquet files for split {src.split!r} in the repository (install `datasets`)")


def load_source(src: Any, *, base_dir: str | os.PathLike[str] | None = None, smoke: bool = False,
                max_rows: int | None = None) -> pl.DataFrame:
    """A source's rows in its own schema (``columns`` applied, at most ``max_rows``)."""
    local = _resolve_local(src.id, base_dir)
    if local is None and looks_local(src.id):
        raise SourceError(f"{source_label(src)}: local file not found (looked relative to "
                          f"{base_dir or '.'} and the working directory)")
    if local is not None:
        df = _read_dir(local, src.split) if local.is_dir() else read_file(local)
    elif smoke:
        df = read_file(smoke_file_for(src))
    else:
        df = load_hub(src)
    if src.columns:
        missing = [c for c in src.columns if c not in df.columns]
        if missing:
            raise SourceError(f"{source_label(src)}: columns {missing} not in {df.columns}")
        df = df.select(src.columns)
    if max_rows is not None:
        df = df.head(max_rows)
    return df


# ---------------------------------------------------------------------------------------------
# Mapping to canonical columns
# ---------------------------------------------------------------------------------------------
@dataclass
class Mapped:
    frame: pl.DataFrame  # canonical columns
    kind: str  # "messages" | "prompt_completion" | "text" | "preferences"
    format: str = ""  # the source format that was applied (resolved from "auto")
    dropped: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


class _Drops:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: list[dict[str, Any]] = []

    def add(self, row: int, reason: str, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(self.examples) < DROP_EXAMPLES:
            self.examples.append({"row": row, "reason": reason, **({"detail": detail} if detail else {})})


def detect_format(df: pl.DataFrame, method: str) -> str:
    cols = set(df.columns)
    if method == "dpo":
        if "completions" in cols and "instruction" in cols:
            return "ultrafeedback"
        if {"prompt", "chosen", "rejected"} <= cols:
            return "preferences"
        if {"question", "chosen", "rejected"} <= cols:
            return "string_preferences"
        if {"chosen", "rejected"} <= cols:
            return "implicit_preferences"
    else:
        if "messages" in cols:
            return "messages"
        if "conversations" in cols:
            return "sharegpt"
        if {"prompt", "completion"} <= cols:
            return "prompt_completion"
        if {"query", "response"} <= cols or {"prompt", "response"} <= cols or {"instruction", "response"} <= cols:
            return "prompt_response"
        if "text" in cols:
            return "text"
        if "data" in cols:
            return "alternating"
    raise SourceError(f"cannot tell the format of a {method.upper()} source with columns {df.columns}: set `format`")


def _fields(fmt: str, overrides: dict[str, str], df: pl.DataFrame) -> dict[str, str | None]:
    fields = {**FORMATS[fmt][1], **overrides}
    if fmt == "prompt_response" and "prompt" not in overrides and "prompt" not in df.columns:
        fields["prompt"] = next((c for c in ("query", "instruction", "question") if c in df.columns), "prompt")
    return fields


def _need(df: pl.DataFrame, label: str, fmt: str, names: list[str | None]) -> None:
    missing = [n for n in names if n is not None and n not in df.columns]
    if missing:
        raise SourceError(f"{label}: format {fmt!r} needs column(s) {missing}, the source has {df.columns} "
                          f"(rename with `fields`)")


def _msg(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


def _as_messages(value: Any, role: str) -> list[dict[str, Any]] | None:
    """A conversation from a list of messages, or one message from a string."""
    if value is None:
        return None
    if isinstance(value, str):
        return [_msg(role, value)]
    if isinstance(value, list):
        return [_msg(m.get("role"), m.get("content")) if isinstance(m, dict) else None for m in value]
    return None


def _bad_messages(messages: list[Any] | None, name: str) -> str | None:
    if messages is None:
        return f"missing:{name}"
    if len(messages) == 0:
        return f"empty:{name}"
    for m in messages:
        if m is None or m.get("role") is None:
            return f"missing:{name}.role"
        if m.get("content") is None:
            return f"missing:{name}.content"
    return None


def map_source(df: pl.DataFrame, src: Any, method: str, *, seed: int = 0) -> Mapped:
    """Maps a source's own schema to canonical columns; unusable rows are dropped and counted."""
    label = source_label(src)
    fmt = src.format if src.format != "auto" else detect_format(df, method)
    fmt_method = FORMATS[fmt][0]
    if fmt_method != method:
        raise SourceError(f"{label}: format {fmt!r} gives {fmt_method.upper()} data but the stage is {method!r}")
    f = _fields(fmt, dict(src.fields), df)
    drops = _Drops()
    rows: list[dict[str, Any]] = []
    kind = "preferences" if method == "dpo" else "messages"

    if fmt in ("prompt_completion", "text"):
        names = ["prompt", "completion"] if fmt == "prompt_completion" else ["text"]
        _need(df, label, fmt, [f[n] for n in names])
        out = df.select([pl.col(f[n]).alias(n) for n in names])
        valid = pl.all_horizontal([pl.col(n).is_not_null() for n in names])
        flags = out.select(valid.alias("ok")).get_column("ok").to_list()
        for i, ok in enumerate(flags):
            if not ok:
                first_null = next(n for n in names if out[i, n] is None)
                drops.add(i, f"missing:{f[first_null]}")
        return Mapped(out.filter(valid), fmt, fmt, drops.counts, drops.examples)

    if fmt == "messages":
        _need(df, label, fmt, [f["messages"]])
        for i, conv in enumerate(df.get_column(f["messages"]).to_list()):
            conv = _as_messages(conv, "user") if not isinstance(conv, str) else None
            bad = _bad_messages(conv, f["messages"])
            if bad:
                drops.add(i, bad)
            else:
                rows.append({"messages": conv})
    elif fmt == "sharegpt":
        _need(df, label, fmt, [f["conversations"]])
        for i, conv in enumerate(df.get_column(f["conversations"]).to_list()):
            if conv is None or len(conv) == 0:
                drops.add(i, f"{'missing' if conv is None else 'empty'}:{f['conversations']}")
                continue
            messages, bad = [], None
            for turn in conv:
                who = (turn or {}).get(f["role"])
                role = SHAREGPT_ROLES.get(str(who).strip().lower()) if who is not None else None
                content = (turn or {}).get(f["content"])
                if role is None:
                    bad = ("unknown_role", f"{f['role']}={who!r}")
                    break
                if content is None:
                    bad = (f"missing:{f['conversations']}.{f['content']}", "")
                    break
                messages.append(_msg(role, content))
            if bad:
                drops.add(i, *bad)
            else:
                rows.append({"messages": messages})
    elif fmt == "alternating":
        _need(df, label, fmt, [f["turns"]])
        for i, turns in enumerate(df.get_column(f["turns"]).to_list()):
            if turns is None or len(turns) == 0:
                drops.add(i, f"{'missing' if turns is None else 'empty'}:{f['turns']}")
            elif any(t is None for t in turns):
                drops.add(i, f"missing:{f['turns']}[i]")
            else:
                rows.append({"messages": [_msg("user" if k % 2 == 0 else "assistant", t) for k, t in enumerate(turns)]})
    elif fmt == "prompt_response":
        _need(df, label, fmt, [f["prompt"], f["response"], f.get("system")])
        system = df.get_column(f["system"]).to_list() if f.get("system") else [None] * df.height
        for i, (p, r, s) in enumerate(zip(df.get_column(f["prompt"]).to_list(), df.get_column(f["response"]).to_list(), system)):
            if p is None or r is None:
                drops.add(i, f"missing:{f['prompt'] if p is None else f['response']}")
                continue
            rows.append({"messages": ([_msg("system", s)] if s else []) + [_msg("user", p), _msg("assistant", r)]})
    elif fmt == "preferences":
        _need(df, label, fmt, [f["prompt"], f["chosen"], f["rejected"]])
        for i, (p, c, r) in enumerate(zip(*(df.get_column(f[k]).to_list() for k in ("prompt", "chosen", "rejected")))):
            pair = {"prompt": _as_messages(p, "user"), "chosen": _as_messages(c, "assistant"),
                    "rejected": _as_messages(r, "assistant")}
            bad = next((b for k, v in pair.items() if (b := _bad_messages(v, f[k]))), None)
            if bad:
                drops.add(i, bad)
            else:
                rows.append(pair)
    elif fmt == "implicit_preferences":
        _need(df, label, fmt, [f["chosen"], f["rejected"]])
        for i, (c, r) in enumerate(zip(df.get_column(f["chosen"]).to_list(), df.get_column(f["rejected"]).to_list())):
            c, r = _as_messages(c, "assistant"), _as_messages(r, "assistant")
            bad = _bad_messages(c, f["chosen"]) or _bad_messages(r, f["rejected"])
            if bad:
                drops.add(i, bad)
                continue
            n = 0
            while n < min(len(c), len(r)) and c[n] == r[n]:
                n += 1
            if n == 0:
                drops.add(i, "no_common_prompt")
            elif n == len(c) or n == len(r):
                drops.add(i, "no_completion")
            else:
                rows.append({"prompt": c[:n], "chosen": c[n:], "rejected": r[n:]})
    elif fmt == "string_preferences":
        _need(df, label, fmt, [f["prompt"], f["chosen"], f["rejected"], f.get("system")])
        system = df.get_column(f["system"]).to_list() if f.get("system") else [None] * df.height
        cols = [df.get_column(f[k]).to_list() for k in ("prompt", "chosen", "rejected")]
        for i, (s, q, c, r) in enumerate(zip(system, *cols)):
            if q is None or c is None or r is None:
                drops.add(i, f"missing:{f['prompt'] if q is None else f['chosen'] if c is None else f['rejected']}")
                continue
            prompt = ([_msg("system", s)] if s else []) + [_msg("user", q)]
            rows.append({"prompt": prompt, "chosen": [_msg("assistant", c)], "rejected": [_msg("assistant", r)]})
    elif fmt == "ultrafeedback":
        _need(df, label, fmt, [f["prompt"], f["completions"]])
        rng = random.Random(seed)
        for i, (q, comps) in enumerate(zip(df.get_column(f["prompt"]).to_list(), df.get_column(f["completions"]).to_list())):
            if q is None:
                drops.add(i, f"missing:{f['prompt']}")
                continue
            rated = [(float(s), c[f["response"]]) for c in (comps or []) if isinstance(c, dict)
                     and (s := _score(c.get(f["score"]))) is not None and c.get(f["response"]) is not None]
            if len(rated) < 2:
                drops.add(i, "fewer_than_two_rated_completions")
                continue
            best = max(s for s, _ in rated)
            chosen = next(resp for s, resp in rated if s == best)
            lower = [resp for s, resp in rated if s < best]
            if not lower:
                drops.add(i, "tied_scores")
                continue
            rejected = lower[rng.randrange(len(lower))]
            rows.append({"prompt": [_msg("user", q)], "chosen": [_msg("assistant", chosen)],
                         "rejected": [_msg("assistant", rejected)]})
    else:  # pragma: no cover - FORMATS and this function agree
        raise SourceError(f"{label}: unknown format {fmt!r}")

    columns = ["prompt", "chosen", "rejected"] if kind == "preferences" else ["messages"]
    frame = pl.DataFrame(rows, schema={c: MESSAGES for c in columns}) if rows else pl.DataFrame(
        schema={c: MESSAGES for c in columns})
    return Mapped(frame, kind, fmt, drops.counts, drops.examples)


def _score(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


# ---------------------------------------------------------------------------------------------
# Mixing
# ---------------------------------------------------------------------------------------------
@dataclass
class Mixture:
    train: pl.DataFrame
    test: pl.DataFrame | None
    kind: str
    report: dict[str, Any]


def mix(data: Any, method: str, *, base_dir: str | os.PathLike[str] | None = None, smoke: bool = False,
        max_rows_per_source: int | None = None) -> Mixture:
    """The Alignment Handbook's ``dataset_mixture``: each source loaded, its columns kept, a
    seeded shuffle keeps ``weight`` (fraction) of its rows, the parts are concatenated and shuffled
    with ``seed``, and ``test_split_size`` rows (int) or fraction (float) are held out. Sources
    marked ``test: true`` go to the evaluation set whole (the older ``dataset_splits`` semantics)."""
    parts: list[pl.DataFrame] = []
    held_out: list[pl.DataFrame] = []
    kinds: set[str] = set()
    sources_report = []
    for k, src in enumerate(data.sources):
        raw = load_source(src, base_dir=base_dir, smoke=smoke, max_rows=max_rows_per_source)
        loaded = raw.height
        frac = src.keep_fraction
        if frac < 1.0:
            raw = raw.sample(n=int(frac * loaded), shuffle=True, seed=data.seed + k)
        mapped = map_source(raw, src, method, seed=data.seed + k)
        dropped = sum(mapped.dropped.values())
        entry = {
            "id": src.id, "config": src.config, "split": src.split, "format": mapped.format,
            "role": "test" if src.test else "train",
            "mapped_as": mapped.kind, "rows_loaded": loaded, "rows_subsampled": loaded - raw.height,
            "rows_selected": raw.height, "rows_kept": mapped.frame.height, "rows_dropped": dropped,
            "dropped": mapped.dropped, "dropped_examples": mapped.examples,
        }
        if entry["rows_selected"] != entry["rows_kept"] + entry["rows_dropped"]:  # pragma: no cover - invariant
            raise SourceError(f"{source_label(src)}: row accounting broken: {entry}")
        sources_report.append(entry)
        kinds.add(mapped.kind)
        (held_out if src.test else parts).append(mapped.frame)
    if len(kinds) > 1:
        raise SourceError(f"sources map to different canonical layouts {sorted(kinds)}; an SFT mixture needs one "
                          f"(messages, prompt_completion or text)")
    combined = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
    combined = combined.sample(fraction=1.0, shuffle=True, seed=data.seed) if combined.height else combined
    tss = data.test_split_size
    n_test = int(tss) if isinstance(tss, int) else math.ceil(tss * combined.height)
    if n_test >= combined.height and n_test > 0:
        raise SourceError(f"test_split_size {tss} leaves no training rows out of {combined.height}")
    test = combined.head(n_test) if n_test else None
    train = combined.slice(n_test)
    if held_out:  # whole test sources, after the split rows
        extra = pl.concat(held_out, how="vertical_relaxed")
        extra = extra.sample(fraction=1.0, shuffle=True, seed=data.seed) if extra.height else extra
        test = extra if test is None else pl.concat([test, extra], how="vertical_relaxed")
        if test.height == 0:
            test = None
    report = {
        "method": method, "seed": data.seed, "test_split_size": tss, "smoke": smoke,
        "rows_kept": combined.height, "train_rows": train.height, "test_rows": 0 if test is None else test.height,
        "rows_dropped": sum(s["rows_dropped"] for s in sources_report),
        "rows_subsampled": sum(s["rows_subsampled"] for s in sources_report),
        "sources": sources_report,
    }
    return Mixture(train=train, test=test, kind=kinds.pop() if kinds else "messages", report=report)


__all__ = ["FORMATS", "Mapped", "Mixture", "SourceError", "check_fields", "check_hub", "detect_format", "load_hub",
           "load_source", "map_source", "mix", "read_file", "smoke_file_for"]
