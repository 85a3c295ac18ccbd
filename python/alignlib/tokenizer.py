"""A tokenizer and chat template loaded from the same files transformers loads.

``Tokenizer.from_pretrained(path)`` reads ``tokenizer.json``, ``tokenizer_config.json`` and
``chat_template.jinja`` (or a hub id's copies of them) and hands them to the Rust core, which
renders and tokenizes exactly as ``transformers.AutoTokenizer`` does with the same files.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignlib import _native
from alignlib.errors import ConfigError, DataError

# The named special tokens transformers passes to every chat template render.
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_TOKENIZER_FILES = [
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "tokenizer.model",
]


def _token_text(value: Any) -> str | None:
    """Special tokens are saved as strings or as AddedToken dicts."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _resolve_dir(name_or_path: str | os.PathLike[str], revision: str | None) -> Path:
    path = Path(name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    # Offline, only a cached copy will do: fail fast rather than wait on a network that is off.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=_TOKENIZER_FILES,
                                      local_files_only=offline, etag_timeout=10))
    except Exception as exc:
        why = "HF_HUB_OFFLINE is set and there is no cached copy" if offline else "the hub download failed"
        raise ConfigError(f"cannot load tokenizer {str(name_or_path)!r}: not a local directory, and {why} "
                          f"({type(exc).__name__}: {exc})") from exc


def _chat_template(directory: Path, config: Mapping[str, Any]) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(directory / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None


class Tokenizer:
    """Renders chat templates and tokenizes, byte-for-byte like transformers on the same files."""

    def __init__(
        self,
        tokenizer_json: str,
        *,
        chat_template: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
        piece_split: bool | None = None,
        name: str = "<in-memory>",
    ):
        self.name = name
        self.chat_template = chat_template
        self.special_tokens: dict[str, str] = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self._tokenizer_json = tokenizer_json
        self._native = _native.NativeTokenizer(
            tokenizer_json,
            chat_template=chat_template,
            special_tokens=list(self.special_tokens.items()),
            eos_token=self.special_tokens.get("eos_token"),
            piece_split=piece_split,
        )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        chat_template: str | None = None,
        revision: str | None = None,
        piece_split: bool | None = None,
    ) -> Tokenizer:
        """Loads a local HF tokenizer directory or a hub id. ``chat_template`` overrides the saved
        template. ``piece_split=None`` enables the exact per-piece cache when the vocabulary
        proves it exact (checked at load), ``False`` disables it.

        The files are read through ``transformers.AutoTokenizer``, because transformers may
        rebuild a tokenizer's pipeline from its config when loading (e.g. Llama/Mistral
        ``legacy`` tokenizers get a Metaspace pre-tokenizer instead of the file's normalizer):
        the pipeline that transformers actually runs is the one alignlib compiles."""
        directory = _resolve_dir(name_or_path, revision)
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:  # e.g. a tokenizer class this transformers does not know
            if not (directory / "tokenizer.json").is_file():
                raise ConfigError(f"cannot load a tokenizer from {directory}: {exc}") from exc
            warnings.warn(
                f"transformers could not load {directory} ({type(exc).__name__}: {exc}); "
                "reading tokenizer.json and tokenizer_config.json directly",
                stacklevel=2,
            )
            return cls._from_files(directory, chat_template, piece_split, str(name_or_path))
        return cls.from_transformers(hf, chat_template=chat_template, piece_split=piece_split, name=str(name_or_path))

    @classmethod
    def from_transformers(
        cls,
        hf_tokenizer: Any,
        *,
        chat_template: str | None = None,
        piece_split: bool | None = None,
        name: str | None = None,
    ) -> Tokenizer:
        """Wraps a loaded transformers fast tokenizer: same pipeline, template and special tokens."""
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ConfigError(f"{type(hf_tokenizer).__name__} has no fast (tokenizers) backend to compile")
        special = {k: v for k, v in hf_tokenizer.special_tokens_map.items() if isinstance(v, str)}
        template = chat_template
        if template is None and getattr(hf_tokenizer, "chat_template", None):
            template = hf_tokenizer.get_chat_template()
        return cls(
            backend.to_str(),
            chat_template=template,
            special_tokens=special,
            piece_split=piece_split,
            name=name or getattr(hf_tokenizer, "name_or_path", "<transformers>"),
        )

    @classmethod
    def _from_files(cls, directory: Path, chat_template: str | None, piece_split: bool | None, name: str) -> Tokenizer:
        config = _read_json(directory / "tokenizer_config.json")
        extra = _read_json(directory / "special_tokens_map.json")
        special = {}
        for key in SPECIAL_TOKEN_NAMES:
            value = _token_text(config.get(key))
            if value is None:
                value = _token_text(extra.get(key))
            if value is not None:
                special[key] = value
        template = chat_template if chat_template is not None else _chat_template(directory, config)
        tokenizer_json = (directory / "tokenizer.json").read_text(encoding="utf-8")
        return cls(tokenizer_json, chat_template=template, special_tokens=special, piece_split=piece_split, name=name)

    # --- special tokens -------------------------------------------------------------------
    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def pad_token(self) -> str | None:
        return self.special_tokens.get("pad_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._native.eos_token_id

    @property
    def pad_token_id(self) -> int | None:
        pad = self.pad_token
        return self.token_to_id(pad) if pad is not None else None

    @property
    def piece_split(self) -> bool:
        """Whether the exact per-piece BPE cache is active for this vocabulary."""
        return self._native.piece_split

    @property
    def fast_path(self) -> bool:
        """Whether the direct cached encoder (no per-call normalization bookkeeping) is active."""
        return self._native.fast_path

    @property
    def vocab_size(self) -> int:
        return self._native.vocab_size()

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self._native.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._native.id_to_token(token_id)

    # --- text -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Like ``tokenizer(text, add_special_tokens=...)["input_ids"]``."""
        return self._native.encode(text, add_special_tokens)[0]

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the byte span of ``text`` each token came from."""
        return self._native.encode(text, add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        """Many texts in parallel (GIL released, ``ALIGNLIB_NUM_THREADS`` threads)."""
        import numpy as np

        values, offsets = self._native.encode_batch(list(texts), add_special_tokens)
        ids = np.frombuffer(values, dtype=np.uint32)
        bounds = np.frombuffer(offsets, dtype=np.int64)
        return [ids[bounds[i] : bounds[i + 1]].tolist() for i in range(len(bounds) - 1)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._native.decode(list(ids), skip_special_tokens)

    # --- chat -------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tokenize: bool = False,
    ) -> str | list[int]:
        """Same result as transformers' ``apply_chat_template`` for role/content messages."""
        roles, contents = [], []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str):
                raise DataError(f"messages[{i}].role: expected a string, got {role!r}", 0, f"messages[{i}].role", "missing_value")
            if not isinstance(content, str):
                raise DataError(
                    f"messages[{i}].content: expected a string, got {type(content).__name__}", 0, f"messages[{i}].content", "missing_value"
                )
            roles.append(role)
            contents.append(content)
        text = self._native.render(roles, contents, add_generation_prompt)
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, piece_split={self.piece_split}, "
                f"fast_path={self.fast_path})")
