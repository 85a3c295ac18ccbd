"""Bad input gets a typed exception naming the row and the field — or, with on_error="skip",
the row is skipped and counted in the report. Nothing aborts the interpreter."""

from __future__ import annotations

import polars as pl
import pytest

import alignlib
from alignlib import DataError, TemplateError
from alignlib.assets import TINY_CHAT_TOKENIZER

GOOD = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
MSG = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


@pytest.fixture(scope="module")
def tok() -> alignlib.Tokenizer:
    return alignlib.Tokenizer.from_pretrained(TINY_CHAT_TOKENIZER)


def frame(*rows) -> pl.DataFrame:
    return pl.DataFrame({"messages": list(rows)}, schema={"messages": MSG})


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ([{"role": "user", "content": "Hi"}, {"role": "gpt", "content": "x"}], "messages[1].role", "unknown_role"),
        ([{"role": None, "content": "Hi"}, GOOD[1]], "messages[0].role", "missing_value"),
        ([{"role": "user", "content": None}, GOOD[1]], "messages[0].content", "missing_value"),
        ([], "messages", "empty_conversation"),
        ([{"role": "user", "content": "only a question"}], "messages", "no_assistant_turn"),
        (None, "messages", "missing_value"),
    ],
)
def test_each_bad_row_is_named(tok, bad, field, reason):
    df = frame(GOOD, GOOD, bad, GOOD)
    with pytest.raises(DataError) as err:
        alignlib.prepare_sft(df, tok)
    assert (err.value.row, err.value.field, err.value.reason) == (2, field, reason)
    assert "row 2" in str(err.value) and field in str(err.value)


def test_skip_policy_keeps_the_good_rows_and_counts_the_bad(tok):
    df = frame(
        GOOD,
        [{"role": "human", "content": "x"}],
        [],
        GOOD,
        [{"role": "user", "content": "no answer"}],
    )
    out = alignlib.prepare_sft(df, tok, packing=None, max_length=None, on_error="skip")
    assert out.table.height == 2
    assert out.report.skipped == {"unknown_role": 1, "empty_conversation": 1, "no_assistant_turn": 1}
    assert out.report["rows_skipped"] == 3
    assert [e["row"] for e in out.report.skipped_examples] == [1, 2, 4]
    assert not out.report.lossless


def test_user_only_rows_are_fine_when_training_on_everything(tok):
    df = frame([{"role": "user", "content": "just text"}])
    out = alignlib.prepare_sft(df, tok, packing=None, max_length=None, assistant_only_loss=False)
    assert out.table.height == 1


def test_non_string_content_is_rejected_not_stringified(tok):
    df = pl.DataFrame({"messages": [[{"role": "user", "content": 1}, {"role": "assistant", "content": 2}]]})
    with pytest.raises(DataError) as err:
        alignlib.prepare_sft(df, tok)
    assert err.value.field == "messages[].content"


def test_unsupported_message_fields_are_not_silently_dropped(tok):
    df = pl.DataFrame(
        {"messages": [GOOD, [{"role": "user", "content": "q", "tool_calls": "call()"}, GOOD[1]]]},
        schema={"messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String, "tool_calls": pl.String}))},
    )
    with pytest.raises(DataError) as err:
        alignlib.prepare_sft(df, tok)
    assert (err.value.row, err.value.field) == (1, "messages[].tool_calls")


def test_wrong_column_types_and_missing_columns(tok):
    with pytest.raises(DataError, match="expected a list of"):
        alignlib.prepare_sft(pl.DataFrame({"messages": [1, 2]}), tok)
    with pytest.raises(DataError, match="no SFT columns"):
        alignlib.prepare_sft(pl.DataFrame({"conversation": ["x"]}), tok)
    with pytest.raises(DataError, match="rejected"):
        alignlib.prepare_preferences(pl.DataFrame({"chosen": ["x"]}), tok)


def test_bad_arguments_are_config_errors(tok):
    df = frame(GOOD)
    with pytest.raises(alignlib.ConfigError, match="packing"):
        alignlib.prepare_sft(df, tok, packing="greedy")
    with pytest.raises(alignlib.ConfigError, match="needs a max_length"):
        alignlib.prepare_sft(df, tok, max_length=None, packing="bfd")
    with pytest.raises(alignlib.ConfigError, match="max_length"):
        alignlib.prepare_sft(df, tok, max_length=0)


def test_a_raising_template_names_the_row(tok):
    source = "{% for m in messages %}{% if m.content == 'boom' %}{{ raise_exception('no boom allowed') }}{% endif %}{{ m.content }}{% endfor %}"
    raising = alignlib.Tokenizer(tok._tokenizer_json, chat_template=source, special_tokens=tok.special_tokens)
    df = frame(GOOD, [{"role": "user", "content": "boom"}, GOOD[1]])
    with pytest.raises(TemplateError, match="no boom allowed") as err:
        alignlib.prepare_sft(df, raising)
    assert err.value.row == 1


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
    ],
    ids=["loop", "recursion", "exponential-string"],
)
def test_hostile_templates_are_bounded(tok, source):
    hostile = alignlib.Tokenizer(tok._tokenizer_json, chat_template=source, special_tokens=tok.special_tokens)
    with pytest.raises((TemplateError, MemoryError)):
        alignlib.prepare_sft(frame(GOOD), hostile)


def test_a_template_that_does_not_compile_is_a_clear_error(tok):
    with pytest.raises(ValueError, match="chat template"):
        alignlib.Tokenizer(tok._tokenizer_json, chat_template="{% for %}")


def test_no_chat_template_is_a_clear_error(tok):
    plain = alignlib.Tokenizer(tok._tokenizer_json, special_tokens=tok.special_tokens)
    with pytest.raises(TemplateError, match="no chat template"):
        alignlib.prepare_sft(frame(GOOD), plain)


def test_broken_tokenizer_json_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot load tokenizer"):
        alignlib.Tokenizer('{"model": {"type": "nope"}}')


def test_preference_rows_are_named_too(tok):
    df = pl.DataFrame(
        {"prompt": [GOOD[:1], GOOD[:1]], "chosen": [GOOD[1:], []], "rejected": [GOOD[1:], GOOD[1:]]},
        schema={"prompt": MSG, "chosen": MSG, "rejected": MSG},
    )
    with pytest.raises(DataError) as err:
        alignlib.prepare_preferences(df, tok)
    assert (err.value.row, err.value.field, err.value.reason) == (1, "chosen", "empty_conversation")
    out = alignlib.prepare_preferences(df, tok, on_error="skip")
    assert out.table.height == 1 and out.report.skipped == {"empty_conversation": 1}


def test_mixed_conversation_and_string_columns_are_rejected(tok):
    df = pl.DataFrame(
        {"prompt": ["a question"], "chosen": [GOOD[1:]], "rejected": [GOOD[1:]]},
        schema={"prompt": pl.String, "chosen": MSG, "rejected": MSG},
    )
    with pytest.raises(DataError, match="all be conversations or all be strings"):
        alignlib.prepare_preferences(df, tok)


def test_errors_survive_pickling():
    import pickle

    err = pickle.loads(pickle.dumps(DataError("row 3, field `x`: bad", 3, "x", "invalid_value")))
    assert (err.row, err.field, err.reason) == (3, "x", "invalid_value")


def test_an_unreachable_hub_tokenizer_fails_fast_and_names_it(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(alignlib.ConfigError, match="some-org/no-such-model.*HF_HUB_OFFLINE"):
        alignlib.Tokenizer.from_pretrained("some-org/no-such-model")
    assert time.perf_counter() - start < 10
