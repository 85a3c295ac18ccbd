"""Recipes: one YAML file describes a whole run (model, tokenizer, data mixture, stages, engine).

A recipe maps 1:1 onto the dataclasses below. Loading is strict: an unknown key or a value of
the wrong type is a :class:`RecipeError` that names the key by its dotted path
(``stages.sft.train.learnig_rate``) and suggests the closest valid key. ``key=value`` overrides
(values parsed as YAML) are applied to the raw mapping before validation, so they are checked
exactly like the file.

Layout of a recipe::

    name: zephyr-7b-alpha
    description: one line shown by `alignlib recipes`
    model: {id: mistralai/Mistral-7B-v0.1, dtype: bfloat16, attention: sdpa, lora: null}
    tokenizer: {id: null, chat_template: zephyr}          # id defaults to model.id
    engine: {kind: deepspeed, deepspeed: zero3}           # zero2 | zero3 | zero3_offload | path | dict
    output_dir: runs/zephyr-7b-alpha
    stages:                                               # run in order
      sft:
        method: sft
        data:                                             # the Alignment Handbook's dataset_mixture
          sources:
            - {id: HuggingFaceH4/ultrachat_200k, split: train_sft, format: messages}
          test_split_size: 1000
          seed: 0
        max_length: 2048
        packing: bfd
        global_batch_size: 128                            # gradient_accumulation_steps is derived
        train: {learning_rate: 2.0e-5, micro_batch_size: 16, ...}   # alignlib.train.SFTConfig fields
      dpo:
        method: dpo
        init: previous                                    # start from the sft stage's model
        ...

Batch sizes: ``train.micro_batch_size`` is per rank. ``global_batch_size`` (rows or pairs per
optimizer step) or ``global_batch_tokens`` (with ``train.micro_batch_tokens``) fixes the batch of
the model card whatever the number of ranks: ``gradient_accumulation_steps`` is derived at run
time as ``global / (micro × world_size)`` and must divide exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from alignlib.errors import ConfigError

RECIPES_DIR_ENV = "ALIGNLIB_RECIPES"

# Named chat templates (exact strings of the seed models' tokenizer configs).
CHAT_TEMPLATES = {
    # The Alignment Handbook's DEFAULT_CHAT_TEMPLATE (zephyr-7b-alpha/beta, mistral-7b-sft-beta,
    # smol-7b; with eos <|endoftext|> it is stablelm-zephyr-3b's format).
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
        "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
    ),
    # SmolLM-360M-Instruct (the Handbook's smollm recipe).
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
}

# Source formats (see alignlib.sources for what each maps from).
SourceFormat = Literal[
    "auto", "messages", "sharegpt", "alternating", "prompt_response", "prompt_completion", "text",
    "preferences", "implicit_preferences", "string_preferences", "ultrafeedback",
]

# TrainConfig fields a stage may not set: they are recipe-wide (engine / logging sections).
RECIPE_WIDE_TRAIN_KEYS = {
    "engine": "engine.kind", "deepspeed": "engine.deepspeed", "report_to": "logging.report_to",
    "progress_bar": "logging.progress_bar", "plots": "logging.plots", "run_name": "logging.run_name",
}


# ---------------------------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------------------------
@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Union[str, list[str]] = "all-linear"
    modules_to_save: list[str] = field(default_factory=list)


@dataclass
class ModelSpec:
    id: str  # hub id or local directory of the base model
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    attention: str | None = "sdpa"  # attn_implementation: sdpa | flash_attention_2 | eager
    trust_remote_code: bool = False
    lora: LoraSpec | None = None
    # Family of the tiny random-init model used by --smoke: llama | mistral | stablelm.
    # None: inferred from the id.
    architecture: Literal["llama", "mistral", "stablelm"] | None = None


@dataclass
class TokenizerSpec:
    id: str | None = None  # default: model.id
    revision: str | None = None
    # Jinja source, a name in CHAT_TEMPLATES (zephyr, chatml), or a path to a .jinja file.
    # None: the tokenizer's own template.
    chat_template: str | None = None
    eos_token: str | None = None  # override (e.g. <|im_end|> for ChatML models)
    pad_token: str | None = None
    add_special_tokens: list[str] = field(default_factory=list)  # added when missing (model embeddings resized)


@dataclass
class SourceSpec:
    id: str  # hub dataset id, a local .jsonl/.json/.parquet file or directory, or asset:<name>
    config: str | None = None  # hub config name
    split: str = "train"
    revision: str | None = None
    columns: list[str] | None = None  # keep only these input columns (the Handbook's `columns`)
    weight: float | None = None  # fraction of the source's rows kept, in [0, 1] (Handbook name)
    fraction: float | None = None  # same as weight (set one of them)
    format: SourceFormat = "auto"
    # Names of this source's fields for the canonical ones of its format, e.g. MetaMathQA
    # {prompt: query, response: response}; orca_dpo_pairs {system: system, prompt: question}.
    fields: dict[str, str] = field(default_factory=dict)
    smoke_file: str | None = None  # default: alignlib/assets/smoke/<org>__<name>.jsonl
    # Held out as a whole: the rows go to the evaluation set (never trained on), like the test
    # splits of the Handbook's older `dataset_mixer` + `dataset_splits` recipes.
    test: bool = False

    @property
    def keep_fraction(self) -> float:
        if self.fraction is not None:
            return self.fraction
        return 1.0 if self.weight is None else self.weight


@dataclass
class DataSpec:
    sources: list[SourceSpec]
    # Held-out rows split from the shuffled mixture: an int is a row count, a float in (0, 1) a fraction.
    test_split_size: Union[int, float] = 0
    seed: int = 0


@dataclass
class StageSpec:
    method: Literal["sft", "dpo"]
    data: DataSpec
    # "previous": the previous stage's output model (model.id for the first stage);
    # "model": model.id; anything else: a hub id or a local model directory.
    init: str = "previous"
    max_length: int | None = 2048
    max_prompt_length: int | None = 512  # dpo
    packing: Literal["bfd", "wrapped"] | None = "bfd"  # sft
    assistant_only_loss: bool = True  # sft
    overflow: Literal["split", "truncate"] = "split"  # sft
    on_error: Literal["raise", "skip"] = "raise"
    global_batch_size: int | None = None
    global_batch_tokens: int | None = None
    # alignlib.train.SFTConfig / DPOConfig fields (checked against the method's dataclass).
    train: dict[str, Any] = field(default_factory=dict)


@dataclass
class EngineSpec:
    kind: Literal["torch", "deepspeed"] = "torch"
    # A name of recipes/deepspeed/<name>.json (zero2, zero3, zero3_offload), a path, or a dict.
    deepspeed: Union[str, dict[str, Any], None] = None


@dataclass
class LoggingSpec:
    report_to: Union[Literal["auto"], list[str]] = "auto"
    progress_bar: bool = True
    plots: bool = True
    run_name: str | None = None


@dataclass
class SmokeSpec:
    """What --smoke changes: a tiny random-init model of the same family, the shipped tiny
    byte-level tokenizer with the recipe's own chat template, the small per-source files in
    alignlib/assets/smoke/, fp32 on the torch engine, and a few steps of short sequences."""

    max_steps: int = 3
    max_length: int = 256
    max_prompt_length: int = 128
    micro_batch_size: int = 2
    micro_batch_tokens: int = 512
    rows_per_source: int = 48
    test_split_size: Union[int, float] = 4
    hidden_size: int = 64
    num_layers: int = 2


@dataclass
class Recipe:
    name: str
    model: ModelSpec
    stages: dict[str, StageSpec]
    description: str = ""
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    engine: EngineSpec = field(default_factory=EngineSpec)
    output_dir: str | None = None  # default: runs/<name>
    logging: LoggingSpec = field(default_factory=LoggingSpec)
    smoke: SmokeSpec = field(default_factory=SmokeSpec)
    # Where the recipe was read from (relative paths in it resolve against its directory).
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("path", None)
        return d

    def stage_names(self) -> list[str]:
        return list(self.stages)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
class RecipeError(ConfigError):
    """An invalid recipe or override. ``problems`` holds (dotted path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{path}: {msg}" if path else msg for path, msg in problems]
        super().__init__(f"invalid recipe{where}:\n  " + "\n  ".join(lines) if len(lines) > 1
                         else f"invalid recipe{where}: {lines[0]}")

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.problems]


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; valid keys: {', '.join(sorted(valid))}"


# ---------------------------------------------------------------------------------------------
# YAML: PyYAML (YAML 1.1) reads `5e-7` as a string; recipes copied from cards write it that way.
# ---------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = copy.deepcopy(yaml.SafeLoader.yaml_implicit_resolvers)
for _ch in list("-+0123456789."):
    _Loader.yaml_implicit_resolvers[_ch] = [
        (tag, rx) for tag, rx in _Loader.yaml_implicit_resolvers.get(_ch, []) if tag != "tag:yaml.org,2002:float"
    ]
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


# ---------------------------------------------------------------------------------------------
# Typed conversion with dotted-path errors
# ---------------------------------------------------------------------------------------------
_MISSING = object()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {_type_name(args[0])}" if args else "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class _Converter:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, path: str, message: str) -> Any:
        self.problems.append((path, message))
        return _MISSING

    def convert(self, tp: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(tp)
        if tp is Any:
            return value
        if origin in (Union, types.UnionType):
            args = typing.get_args(tp)
            if value is None and type(None) in args:
                return None
            # Try each member silently; report once if none fits.
            for arg in args:
                if arg is type(None):
                    continue
                trial = _Converter()
                out = trial.convert(arg, value, path)
                if not trial.problems:
                    return out
            non_null = [a for a in args if a is not type(None)]
            if len(non_null) == 1 and (dataclasses.is_dataclass(non_null[0]) or typing.get_origin(non_null[0]) in (list, dict)):
                return self.convert(non_null[0], value, path)  # report the inner problem precisely
            return self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        if origin is Literal:
            allowed = typing.get_args(tp)
            if value in allowed and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed)):
                return value
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            return self.fail(path, f"expected one of {', '.join(repr(a) for a in allowed)}, got {_describe(value)}{hint}")
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, path)
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                return self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            args = typing.get_args(tp)
            inner = args[0] if args else Any
            items = [self.convert(inner, v, f"{path}.{i}") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict or tp is dict:
            if not isinstance(value, dict):
                return self.fail(path, f"expected a mapping, got {_describe(value)}")
            args = typing.get_args(tp)
            inner = args[1] if args else Any
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(f"{path}.{k}", f"keys must be strings, got {_describe(k)}")
                    continue
                out[k] = self.convert(inner, v, f"{path}.{k}")
            return out
        if tp is bool:
            if isinstance(value, bool):
                return value
            return self.fail(path, f"expected true or false, got {_describe(value)}")
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return self.fail(path, f"expected an integer, got {_describe(value)}")
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            return self.fail(path, f"expected a number, got {_describe(value)}")
        if tp is str:
            if isinstance(value, str):
                return value
            return self.fail(path, f"expected a string, got {_describe(value)}")
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        return self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")

    def dataclass(self, cls: type, value: Any, path: str, *, exclude: dict[str, str] | None = None) -> Any:
        if not isinstance(value, dict):
            return self.fail(path, f"expected a mapping, got {_describe(value)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "path"}
        kwargs: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        before = len(self.problems)
        for key, raw in value.items():
            key_path = f"{prefix}{key}"
            if exclude and key in exclude:
                self.fail(key_path, f"{key!r} is set for the whole recipe: use {exclude[key]!r}")
                continue
            if key not in fields:
                self.fail(key_path, f"unknown key {key!r}{_suggest(str(key), list(fields))}")
                continue
            out = self.convert(hints[key], raw, key_path)
            if out is not _MISSING:
                kwargs[key] = out
        for name, f in fields.items():
            if name not in value and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(f"{prefix}{name}", "missing required key")
        if len(self.problems) > before:
            return _MISSING
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.0.c=value`` -> (["a", "b", "0", "c"], yaml value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError([(key or text, f"override {text!r} must look like dotted.key=value")])
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError([(key, f"cannot parse the value {raw!r} as YAML: {exc}")]) from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of the raw recipe mapping with each ``dotted.key=value`` set."""
    out = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError([(where, f"no item {part!r} in a list of {len(node)}")])
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise RecipeError([(".".join(parts[:i]), f"cannot set {'.'.join(parts)}: {'.'.join(parts[:i])} is {_describe(node)}")])
    return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def recipes_dir() -> Path:
    """The shipped recipes: $ALIGNLIB_RECIPES, else the package's copy (in a checkout,
    alignlib/assets/recipes is a link to the repository's recipes/; wheels carry the files)."""
    env = os.environ.get(RECIPES_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "assets" / "recipes"


def demo_recipe_path() -> Path:
    from alignlib.assets import asset_path

    return asset_path("smoke/demo.yaml")


def resolve_recipe_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A path, or the name of a shipped recipe (``zephyr_7b_alpha``; ``demo`` is the packaged one)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if str(name_or_path) == "demo":
        return demo_recipe_path()
    for candidate in (recipes_dir() / f"{name_or_path}.yaml", recipes_dir() / f"{name_or_path}.yml",
                      recipes_dir() / str(name_or_path)):
        if candidate.is_file():
            return candidate
    known = [p.stem for p in sorted(recipes_dir().glob("*.yaml"))] + ["demo"]
    close = difflib.get_close_matches(str(name_or_path), known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; shipped recipes: {', '.join(known)}"
    raise RecipeError([("", f"no recipe file or shipped recipe named {str(name_or_path)!r}{hint}")])


def read_raw(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError([("", f"not valid YAML: {exc}")], str(path)) from exc
    if not isinstance(raw, dict):
        raise RecipeError([("", f"a recipe is a mapping at the top level, got {type(raw).__name__}")], str(path))
    return raw


def from_dict(raw: dict[str, Any], *, path: str | None = None) -> Recipe:
    """Validates a raw mapping into a Recipe (every problem reported at once)."""
    conv = _Converter()
    recipe = conv.dataclass(Recipe, raw, "")
    _check_train_sections(raw, conv)
    if recipe is not _MISSING and recipe is not None and not conv.problems:
        recipe.path = path
        _check_semantics(recipe, conv)
    if conv.problems:
        raise RecipeError(conv.problems, path)
    return recipe


def load_recipe(name_or_path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    raw = apply_overrides(read_raw(path), list(overrides))
    return from_dict(raw, path=str(path))


def _check_train_sections(raw: dict[str, Any], conv: _Converter) -> None:
    """Each stage's `train` mapping against its method's config dataclass (run on the raw mapping,
    so these problems are reported together with every other one)."""
    from alignlib.train.config import DPOConfig, SFTConfig

    stages = raw.get("stages")
    if not isinstance(stages, dict):
        return
    for name, stage in stages.items():
        if not isinstance(stage, dict) or not isinstance(stage.get("train", {}), dict):
            continue
        cls = DPOConfig if stage.get("method") == "dpo" else SFTConfig
        trial = _Converter()
        cfg = trial.dataclass(cls, stage.get("train") or {}, f"stages.{name}.train", exclude=RECIPE_WIDE_TRAIN_KEYS)
        conv.problems += trial.problems
        if cfg is not _MISSING and not trial.problems:
            try:
                cfg.validate()
            except ValueError as exc:
                conv.fail(f"stages.{name}.train", str(exc))


def _check_semantics(recipe: Recipe, conv: _Converter) -> None:
    if not recipe.stages:
        conv.fail("stages", "a recipe needs at least one stage")
    for name, stage in recipe.stages.items():
        base = f"stages.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            conv.fail(base, "stage names may only use letters, digits, '_', '-' and '.' (they name output directories)")
        if stage.global_batch_size is not None and stage.global_batch_tokens is not None:
            conv.fail(f"{base}.global_batch_size", "set global_batch_size or global_batch_tokens, not both")
        for key in ("global_batch_size", "global_batch_tokens"):
            if getattr(stage, key) is not None:
                if getattr(stage, key) < 1:
                    conv.fail(f"{base}.{key}", "must be >= 1")
                if "gradient_accumulation_steps" in stage.train:
                    conv.fail(f"{base}.train.gradient_accumulation_steps",
                              f"is derived from {key}; set one of them")
        if stage.global_batch_tokens is not None and stage.train.get("micro_batch_tokens") is None:
            conv.fail(f"{base}.global_batch_tokens", "needs train.micro_batch_tokens")
        if stage.global_batch_size is not None and stage.train.get("micro_batch_tokens") is not None:
            conv.fail(f"{base}.global_batch_size", "with train.micro_batch_tokens use global_batch_tokens")
        if stage.method == "sft" and stage.packing is not None and stage.max_length is None:
            conv.fail(f"{base}.packing", "packing needs a max_length")
        for key in ("max_length", "max_prompt_length"):
            value = getattr(stage, key)
            if value is not None and value < 1:
                conv.fail(f"{base}.{key}", "must be a positive integer or null")
        data = stage.data
        if not data.sources:
            conv.fail(f"{base}.data.sources", "needs at least one source")
        tss = data.test_split_size
        if isinstance(tss, float) and not (0.0 <= tss < 1.0):
            conv.fail(f"{base}.data.test_split_size", "a fraction must be in [0, 1)")
        if isinstance(tss, int) and tss < 0:
            conv.fail(f"{base}.data.test_split_size", "must be >= 0")
        for j, src in enumerate(data.sources):
            sp = f"{base}.data.sources.{j}"
            if src.weight is not None and src.fraction is not None:
                conv.fail(f"{sp}.fraction", "set weight or fraction, not both")
            for key in ("weight", "fraction"):
                value = getattr(src, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    conv.fail(f"{sp}.{key}", f"must be in [0, 1], got {value}")
            from alignlib.sources import check_fields

            for key, msg in check_fields(src.format, src.fields, stage.method):
                conv.fail(f"{sp}.{key}", msg)
    tpl = recipe.tokenizer.chat_template
    if tpl is not None and "{" not in tpl and tpl not in CHAT_TEMPLATES and not tpl.endswith(".jinja"):
        close = difflib.get_close_matches(tpl, list(CHAT_TEMPLATES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        conv.fail("tokenizer.chat_template",
                  f"{tpl!r} is neither Jinja source, a .jinja path, nor a named template ({', '.join(CHAT_TEMPLATES)}){hint}")
    ds = recipe.engine.deepspeed
    if recipe.engine.kind == "deepspeed" and isinstance(ds, str):
        try:
            resolve_deepspeed(ds, recipe)
        except RecipeError as exc:
            conv.problems += exc.problems


def resolve_deepspeed(value: str | dict[str, Any] | None, recipe: Recipe) -> str | dict[str, Any] | None:
    """A DeepSpeed config: dict as is; a name of recipes/deepspeed/<name>.json; or a path
    (relative to the recipe's directory, then the working directory)."""
    if value is None or isinstance(value, dict):
        return value
    candidates = [Path(value)]
    if recipe.path:
        candidates.insert(0, Path(recipe.path).parent / value)
    candidates += [recipes_dir() / "deepspeed" / f"{value}.json", recipes_dir() / "deepspeed" / value]
    for c in candidates:
        if c.is_file():
            return str(c.resolve())
    known = [p.stem for p in sorted((recipes_dir() / "deepspeed").glob("*.json"))]
    close = difflib.get_close_matches(value, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; shipped: {', '.join(known)}"
    raise RecipeError([("engine.deepspeed", f"no DeepSpeed config {value!r}{hint}")])


def chat_template_source(recipe: Recipe) -> str | None:
    tpl = recipe.tokenizer.chat_template
    if tpl is None or "{" in tpl:
        return tpl
    if tpl in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[tpl]
    path = Path(tpl)
    if not path.is_absolute() and recipe.path:
        path = Path(recipe.path).parent / path
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Stage -> training config
# ---------------------------------------------------------------------------------------------
def train_config(recipe: Recipe, stage_name: str, *, world_size: int = 1):
    """The alignlib.train config of one stage for a run on `world_size` ranks (derives
    gradient_accumulation_steps from a global batch; copies the engine and logging sections)."""
    from alignlib.train.config import DPOConfig, SFTConfig

    stage = recipe.stages[stage_name]
    cls = DPOConfig if stage.method == "dpo" else SFTConfig
    kwargs = dict(stage.train)
    if "report_to" not in kwargs:
        rt = recipe.logging.report_to
        kwargs["report_to"] = rt if rt == "auto" else tuple(rt)
    kwargs.update(progress_bar=recipe.logging.progress_bar, plots=recipe.logging.plots,
                  run_name=recipe.logging.run_name or f"{recipe.name}-{stage_name}",
                  engine=recipe.engine.kind)
    if recipe.engine.kind == "deepspeed":
        kwargs["deepspeed"] = resolve_deepspeed(recipe.engine.deepspeed, recipe)
    micro = kwargs.get("micro_batch_size", cls.micro_batch_size)
    if stage.global_batch_size is not None:
        kwargs["gradient_accumulation_steps"] = _divide(stage.global_batch_size, micro * world_size,
                                                        f"stages.{stage_name}.global_batch_size",
                                                        f"micro_batch_size {micro} x world_size {world_size}")
    if stage.global_batch_tokens is not None:
        tokens = kwargs["micro_batch_tokens"]
        kwargs["gradient_accumulation_steps"] = _divide(stage.global_batch_tokens, tokens * world_size,
                                                        f"stages.{stage_name}.global_batch_tokens",
                                                        f"micro_batch_tokens {tokens} x world_size {world_size}")
    config = cls(**kwargs)
    config.validate()
    return config


def _divide(total: int, per: int, where: str, what: str) -> int:
    if total % per or total < per:
        raise RecipeError([(where, f"{total} is not a multiple of {what} = {per}; "
                                   f"change the micro batch or the number of ranks")])
    return total // per


# ---------------------------------------------------------------------------------------------
# Smoke
# ---------------------------------------------------------------------------------------------
def smoke_raw(raw: dict[str, Any]) -> dict[str, Any]:
    """The smoke variant of a raw recipe mapping (applied before user overrides, so those win).
    Keeps the stages, sources, mappings, template and methods; shrinks lengths, steps, batches."""
    out = copy.deepcopy(raw)
    smoke = SmokeSpec(**{k: v for k, v in (out.get("smoke") or {}).items() if k in {f.name for f in dataclasses.fields(SmokeSpec)}})
    model = out.setdefault("model", {})
    if isinstance(model, dict):
        model["dtype"] = "float32"
        model["attention"] = "sdpa"
        if isinstance(model.get("lora"), dict):
            model["lora"] = {**model["lora"], "r": min(int(model["lora"].get("r", 8)), 8)}
    engine = out.setdefault("engine", {})
    if isinstance(engine, dict):
        engine["kind"] = "torch"
    logging = out.setdefault("logging", {})
    if isinstance(logging, dict):
        logging["report_to"] = []
        logging["progress_bar"] = False
    for stage in (out.get("stages") or {}).values():
        if not isinstance(stage, dict):
            continue
        stage["max_length"] = smoke.max_length
        if stage.get("method") == "dpo":
            stage["max_prompt_length"] = smoke.max_prompt_length
        stage["on_error"] = "raise"
        data = stage.get("data")
        if isinstance(data, dict):
            data["test_split_size"] = smoke.test_split_size
        train = dict(stage.get("train") or {})
        tokens_mode = stage.get("global_batch_tokens") is not None or train.get("micro_batch_tokens") is not None
        stage.pop("global_batch_size", None)
        stage.pop("global_batch_tokens", None)
        train.update(max_steps=smoke.max_steps, gradient_accumulation_steps=1, precision="fp32",
                     gradient_checkpointing=False, logging_steps=1, save_steps=None, eval_steps=None,
                     micro_batch_size=smoke.micro_batch_size)
        if tokens_mode:
            train["micro_batch_tokens"] = smoke.micro_batch_tokens
        stage["train"] = train
    return out


def load_smoke_recipe(name_or_path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(name_or_path)
    # Overrides first (so `smoke.*` overrides shape the smoke variant), then again on top of it
    # (so an explicit `stages.sft.train.max_steps=...` wins over the smoke defaults).
    raw = apply_overrides(smoke_raw(apply_overrides(read_raw(path), list(overrides))), list(overrides))
    return from_dict(raw, path=str(path))


def list_recipes() -> list[tuple[str, str, str]]:
    """(name, path, description) of every shipped recipe, the packaged demo last."""
    out = []
    for path in sorted(recipes_dir().glob("*.yaml")):
        try:
            raw = read_raw(path)
            desc = str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""
        except RecipeError as exc:
            desc = f"(invalid: {exc})"
        out.append((path.stem, str(path), desc))
    demo = demo_recipe_path()
    out.append(("demo", str(demo), str(read_raw(demo).get("description", "")).strip()))
    return out


# ---------------------------------------------------------------------------------------------
# Alignment Handbook importer
# ---------------------------------------------------------------------------------------------
# Handbook / TrainingArguments key -> stage.train key (None: handled elsewhere or meaningless here).
_HB_TRAIN = {
    "learning_rate": "learning_rate", "lr_scheduler_type": "lr_scheduler_type", "warmup_ratio": "warmup_ratio",
    "num_train_epochs": "num_train_epochs", "max_steps": "max_steps", "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "seed": "seed", "logging_steps": "logging_steps",
    "eval_steps": "eval_steps", "save_steps": "save_steps", "save_total_limit": "save_total_limit",
    "gradient_checkpointing": "gradient_checkpointing", "weight_decay": "weight_decay", "adam_beta1": "adam_beta1",
    "adam_beta2": "adam_beta2", "adam_epsilon": "adam_epsilon", "max_grad_norm": "max_grad_norm",
    "beta": "beta", "loss_type": "loss_type", "label_smoothing": "label_smoothing",
    "precompute_ref_log_probs": "precompute_ref_log_probs",
}
_HB_IGNORED = {
    "hub_model_id", "hub_strategy", "push_to_hub", "output_dir", "overwrite_output_dir", "log_level", "logging_strategy",
    "save_strategy", "eval_strategy", "evaluation_strategy", "do_eval", "per_device_eval_batch_size", "remove_unused_columns",
    "dataset_num_proc", "preprocessing_num_workers", "gradient_checkpointing_kwargs", "model_revision", "torch_dtype",
    "attn_implementation", "use_flash_attention_2", "model_name_or_path", "chat_template", "dataset_mixture", "dataset_mixer",
    "dataset_splits", "dataset_configs", "max_seq_length", "max_length", "max_prompt_length", "bf16", "fp16", "tf32",
    "optim", "report_to", "use_peft", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save",
    "dataset_kwargs", "packing", "trust_remote_code", "dataset_name", "dataset_config", "dataset_train_split",
    "dataset_test_split", "run_name", "auto_insert_empty_system_msg", "truncation_side", "dataset_text_field",
    "ddp_timeout", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "hub_private_repo",
}


def _hb_sources(cfg: dict[str, Any], method: str, notes: list[str]) -> tuple[list[dict[str, Any]], Any, int]:
    fmt = "implicit_preferences" if method == "dpo" else "messages"
    mixture = cfg.get("dataset_mixture")
    if isinstance(mixture, dict):
        sources = []
        for d in mixture.get("datasets", []):
            src = {"id": d["id"], "split": d.get("split", "train"), "format": fmt}
            if d.get("config") not in (None, "default"):
                src["config"] = d["config"]
            if d.get("columns"):
                src["columns"] = list(d["columns"])
            if d.get("weight") is not None:
                src["weight"] = float(d["weight"])
            sources.append(src)
        return sources, mixture.get("test_split_size") or 0, int(mixture.get("seed", 0))
    mixer = cfg.get("dataset_mixer") or ({cfg["dataset_name"]: 1.0} if cfg.get("dataset_name") else {})
    splits = cfg.get("dataset_splits") or ["train", "test"]
    sources = []
    for ds_id, frac in mixer.items():
        for split in splits:
            src = {"id": ds_id, "split": split, "format": fmt}
            if "test" in split:
                src["test"] = True  # the old mixer: test splits are the evaluation set, never subsampled
            elif float(frac) != 1.0:
                src["weight"] = float(frac)
            sources.append(src)
    return sources, 0, 42


def import_handbook(paths: list[str] | tuple[str, ...], *, name: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """An alignlib recipe mapping (and notes on what was not carried over) from Alignment Handbook
    config YAMLs (`recipes/<model>/{sft,dpo}/config_*.yaml`, given in stage order). A config with
    `beta` (or under a `dpo/` directory) is a DPO stage; the second stage starts from the first."""
    notes: list[str] = []
    recipe: dict[str, Any] = {"stages": {}}
    for i, path in enumerate(paths):
        cfg = read_raw(path)
        method = "dpo" if ("beta" in cfg or "/dpo/" in str(path).replace(os.sep, "/")) else "sft"
        stage_name = method if method not in recipe["stages"] else f"{method}{i}"
        if i == 0:
            recipe["name"] = name or str(cfg.get("hub_model_id") or Path(str(cfg.get("output_dir", "imported"))).name)
            recipe["description"] = f"imported from the Alignment Handbook: {', '.join(map(str, paths))}"
            model: dict[str, Any] = {"id": cfg.get("model_name_or_path")}
            if cfg.get("model_revision") not in (None, "main"):
                model["revision"] = cfg["model_revision"]
            if cfg.get("torch_dtype") in ("bfloat16", "float16", "float32", "auto"):
                model["dtype"] = cfg["torch_dtype"]
            if cfg.get("attn_implementation"):
                model["attention"] = cfg["attn_implementation"]
            if cfg.get("use_peft"):
                lora: dict[str, Any] = {}
                for hb, ours in (("lora_r", "r"), ("lora_alpha", "alpha"), ("lora_dropout", "dropout"),
                                 ("lora_target_modules", "target_modules"), ("lora_modules_to_save", "modules_to_save")):
                    if cfg.get(hb) is not None:
                        lora[ours] = cfg[hb]
                model["lora"] = lora
            recipe["model"] = model
            recipe["engine"] = {"kind": "deepspeed", "deepspeed": "zero3"}
            notes.append("engine: the Handbook launches through accelerate configs; set to DeepSpeed ZeRO-3 "
                         "(recipes/deepspeed/zero3.json), override with engine.deepspeed=zero2 or engine.kind=torch")
            if cfg.get("report_to"):
                rt = cfg["report_to"]
                recipe["logging"] = {"report_to": [rt] if isinstance(rt, str) else list(rt)}
        elif cfg.get("model_name_or_path"):
            notes.append(f"{path}: model_name_or_path {cfg['model_name_or_path']!r} replaced by the previous stage's output")
        if cfg.get("chat_template"):
            recipe.setdefault("tokenizer", {})["chat_template"] = cfg["chat_template"]
        sources, test_split, seed = _hb_sources(cfg, method, notes)
        train: dict[str, Any] = {}
        for key, value in cfg.items():
            if key in _HB_TRAIN:
                if value is not None:
                    train[_HB_TRAIN[key]] = value
            elif key not in _HB_IGNORED:
                notes.append(f"{path}: {key}={value!r} has no alignlib equivalent and was not carried over")
        if cfg.get("bf16"):
            train["precision"] = "bf16"
        elif cfg.get("fp16"):
            train["precision"] = "fp16"
        optim = str(cfg.get("optim", "adamw_torch"))
        if optim.startswith("adamw") or optim == "adam":
            train["optimizer"] = "adamw"
        elif optim == "rmsprop":
            train["optimizer"] = "rmsprop"
        else:
            notes.append(f"{path}: optim={optim!r} is not supported; using adamw")
            train["optimizer"] = "adamw"
        if train.get("lr_scheduler_type") not in (None, "cosine", "linear", "constant"):
            notes.append(f"{path}: lr_scheduler_type={train['lr_scheduler_type']!r} not supported; using cosine")
            train["lr_scheduler_type"] = "cosine"
        stage: dict[str, Any] = {"method": method, "data": {"sources": sources, "test_split_size": test_split, "seed": seed}}
        if i > 0:
            stage["init"] = "previous"
        length = cfg.get("max_seq_length", cfg.get("max_length"))
        if length is not None:
            stage["max_length"] = int(length)
        if method == "dpo" and cfg.get("max_prompt_length") is not None:
            stage["max_prompt_length"] = int(cfg["max_prompt_length"])
        if method == "sft" and cfg.get("packing") is False:
            stage["packing"] = None
        stage["train"] = train
        recipe["stages"][stage_name] = stage
    recipe["output_dir"] = f"runs/{recipe.get('name', 'imported')}"
    return recipe, notes


__all__ = [
    "CHAT_TEMPLATES", "DataSpec", "EngineSpec", "LoggingSpec", "LoraSpec", "ModelSpec", "Recipe", "RecipeError",
    "SmokeSpec", "SourceSpec", "StageSpec", "TokenizerSpec", "apply_overrides", "from_dict", "import_handbook",
    "list_recipes",
    "load_recipe", "load_smoke_recipe", "parse_override", "recipes_dir", "resolve_recipe_path", "train_config",
    "yaml_load",
]
