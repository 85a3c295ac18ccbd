"""Sources: each hub dataset's own schema (its shipped smoke file) maps to the canonical columns,
every dropped row is counted by reason, mixing follows the Handbook's dataset_mixture, local
files load, and an unreachable hub fails at once naming the source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from alignlib.recipes import DataSpec, SourceSpec, load_recipe
from alignlib.sources import SourceError, load_source, map_source, mix

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "python" / "alignlib" / "assets" / "smoke"


def raw_rows(hub_id: str) -> list[dict]:
    path = SMOKE / f"{hub_id.replace('/', '__')}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mapped(hub_id: str, fmt: str, method: str, **kw):
    src = SourceSpec(id=hub_id, format=fmt, **kw)
    df = load_source(src, smoke=True)
    return df, map_source(df, src, method)


def test_every_source_of_every_shipped_recipe_has_a_smoke_file_that_maps():
    seen = set()
    for name in [p.stem for p in (REPO / "recipes").glob("*.yaml")]:
        recipe = load_recipe(name)
        for stage in recipe.stages.values():
            for src in stage.data.sources:
                df = load_source(src, smoke=True)
                assert 12 <= df.height <= 64, src.id
                out = map_source(df, src, stage.method)
                assert out.frame.height + sum(out.dropped.values()) == df.height
                assert out.frame.height >= df.height - 2
                seen.add(src.id)
    assert len(seen) >= 12


def test_ultrachat_200k_messages():
    rows = raw_rows("HuggingFaceH4/ultrachat_200k")
    df, out = mapped("HuggingFaceH4/ultrachat_200k", "messages", "sft")
    assert out.dropped == {"missing:messages": 1}  # the null conversation shipped in the smoke file
    assert out.frame.columns == ["messages"]
    assert out.frame["messages"].to_list() == [r["messages"] for r in rows if r["messages"] is not None]


def test_metamathqa_query_response_to_messages():
    rows = raw_rows("meta-math/MetaMathQA")
    _, out = mapped("meta-math/MetaMathQA", "prompt_response", "sft", fields={"prompt": "query", "response": "response"})
    assert out.dropped == {"missing:response": 1}
    expected = [[{"role": "user", "content": r["query"]}, {"role": "assistant", "content": r["response"]}]
                for r in rows if r["response"] is not None]
    assert out.frame["messages"].to_list() == expected
    # `auto` finds the same mapping from the column names.
    _, auto = mapped("meta-math/MetaMathQA", "auto", "sft")
    assert auto.format == "prompt_response" and auto.frame.equals(out.frame)


def test_wizardlm_sharegpt_roles_and_unknown_roles_are_counted():
    rows = raw_rows("WizardLM/WizardLM_evol_instruct_V2_196k")
    _, out = mapped("WizardLM/WizardLM_evol_instruct_V2_196k", "sharegpt", "sft")
    assert out.dropped == {"unknown_role": 1}
    assert out.examples[0]["row"] == len(rows) - 1 and "narrator" in out.examples[0]["detail"]
    first = out.frame["messages"][0].to_list()
    assert [m["role"] for m in first] == [{"human": "user", "gpt": "assistant"}[t["from"]] for t in rows[0]["conversations"]]
    assert [m["content"] for m in first] == [t["value"] for t in rows[0]["conversations"]]


def test_slimorca_sharegpt_with_system_and_extra_fields():
    rows = raw_rows("Open-Orca/SlimOrca")
    _, out = mapped("Open-Orca/SlimOrca", "sharegpt", "sft")
    assert out.dropped == {}
    for conv, row in zip(out.frame["messages"].to_list(), rows):
        assert [m["role"] for m in conv] == ["system", "user", "assistant"]
        assert [m["content"] for m in conv] == [t["value"] for t in row["conversations"]]


def test_stingning_ultrachat_alternating_turns():
    rows = raw_rows("stingning/ultrachat")
    _, out = mapped("stingning/ultrachat", "alternating", "sft")
    assert out.dropped == {"empty:data": 1}
    conv = out.frame["messages"][0].to_list()
    assert [m["content"] for m in conv] == rows[0]["data"]
    assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2) + ["user"] * (len(conv) % 2)


def test_ultrafeedback_binarized_implicit_prompt():
    rows = raw_rows("HuggingFaceH4/ultrafeedback_binarized")
    _, out = mapped("HuggingFaceH4/ultrafeedback_binarized", "implicit_preferences", "dpo", columns=["chosen", "rejected"])
    assert out.dropped == {"missing:rejected": 1}
    assert out.frame.columns == ["prompt", "chosen", "rejected"]
    for pair, row in zip(out.frame.to_dicts(), rows):
        assert pair["prompt"] == row["chosen"][:-1] == row["rejected"][:-1]
        assert pair["chosen"] == row["chosen"][-1:] and pair["rejected"] == row["rejected"][-1:]


def test_orca_dpo_pairs_strings_become_a_conversational_pair():
    rows = raw_rows("Intel/orca_dpo_pairs")
    _, out = mapped("Intel/orca_dpo_pairs", "string_preferences", "dpo")
    assert out.dropped == {}
    for pair, row in zip(out.frame.to_dicts(), rows):
        system = [{"role": "system", "content": row["system"]}] if row["system"] else []
        assert pair["prompt"] == system + [{"role": "user", "content": row["question"]}]
        assert pair["chosen"] == [{"role": "assistant", "content": row["chosen"]}]
        assert pair["rejected"] == [{"role": "assistant", "content": row["rejected"]}]
    assert any(not r["system"] for r in rows) and any(r["system"] for r in rows)  # both cases covered


def test_openbmb_ultrafeedback_pairs_by_score():
    rows = raw_rows("openbmb/UltraFeedback")
    df, out = mapped("openbmb/UltraFeedback", "ultrafeedback", "dpo")
    assert out.dropped == {"tied_scores": 1}
    for pair, row in zip(out.frame.to_dicts(), rows):
        scores = {c["response"]: c["overall_score"] for c in row["completions"]}
        best = max(scores.values())
        assert pair["prompt"] == [{"role": "user", "content": row["instruction"]}]
        assert scores[pair["chosen"][0]["content"]] == best
        assert scores[pair["rejected"][0]["content"]] < best
    # Seeded: the same seed picks the same rejected answers, another seed may not.
    src = SourceSpec(id="openbmb/UltraFeedback", format="ultrafeedback")
    assert map_source(df, src, "dpo", seed=0).frame.equals(out.frame)
    others = [map_source(df, src, "dpo", seed=s).frame for s in (1, 2, 3)]
    assert any(not o.equals(out.frame) for o in others)


@pytest.mark.parametrize("hub_id", ["HuggingFaceH4/no_robots", "HuggingFaceTB/everyday-conversations-llama3.1-2k"])
def test_h4_messages_sets(hub_id):
    rows = raw_rows(hub_id)
    _, out = mapped(hub_id, "auto", "sft")
    assert out.format == "messages" and out.dropped == {}
    assert out.frame["messages"].to_list() == [r["messages"] for r in rows]


def test_format_for_the_wrong_method_and_missing_columns_name_the_source():
    with pytest.raises(SourceError, match="Intel/orca_dpo_pairs"):
        mapped("Intel/orca_dpo_pairs", "string_preferences", "sft")
    with pytest.raises(SourceError, match=r"needs column\(s\) \['prompt'\]"):
        mapped("Intel/orca_dpo_pairs", "preferences", "dpo")
    with pytest.raises(SourceError, match=r"columns \['nope'\]"):
        load_source(SourceSpec(id="Intel/orca_dpo_pairs", columns=["nope"]), smoke=True)


# --- mixing ------------------------------------------------------------------------------------
def _write_jsonl(path: Path, n: int, tag: str, nulls: int = 0) -> Path:
    with path.open("w") as f:
        for i in range(n):
            content = None if i < nulls else f"{tag} {i}"
            f.write(json.dumps({"messages": [{"role": "user", "content": f"q {tag} {i}"},
                                             {"role": "assistant", "content": content}]}) + "\n")
    return path


def test_mixture_fractions_shuffle_and_test_split(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", 100, "a", nulls=3)
    b = _write_jsonl(tmp_path / "b.jsonl", 40, "b")
    data = DataSpec(sources=[SourceSpec(id=str(a), weight=0.5), SourceSpec(id=str(b), fraction=1.0)],
                    test_split_size=10, seed=3)
    m = mix(data, "sft")
    s_a, s_b = m.report["sources"]
    assert (s_a["rows_loaded"], s_a["rows_selected"], s_a["rows_subsampled"]) == (100, 50, 50)
    assert s_a["rows_kept"] + s_a["rows_dropped"] == 50 and s_b["rows_kept"] == 40
    assert s_a["dropped"] in ({}, {"missing:messages.content": s_a["rows_dropped"]})
    assert m.test.height == 10 and m.train.height + m.test.height == s_a["rows_kept"] + 40
    assert m.report["train_rows"] == m.train.height and m.report["test_rows"] == 10
    # Deterministic for a seed; another seed reorders.
    again = mix(data, "sft")
    assert again.train.equals(m.train) and again.test.equals(m.test)
    other = mix(DataSpec(sources=data.sources, test_split_size=10, seed=4), "sft")
    assert not other.train.equals(m.train)
    # A float test split is a fraction (rounded up, like datasets' train_test_split).
    frac = mix(DataSpec(sources=[SourceSpec(id=str(b))], test_split_size=0.1, seed=0), "sft")
    assert (frac.train.height, frac.test.height) == (36, 4)
    none = mix(DataSpec(sources=[SourceSpec(id=str(b))], test_split_size=0), "sft")
    assert none.test is None and none.train.height == 40


def test_test_sources_are_held_out_whole(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", 30, "a")
    b = _write_jsonl(tmp_path / "b.jsonl", 7, "b")
    m = mix(DataSpec(sources=[SourceSpec(id=str(a)), SourceSpec(id=str(b), test=True)], test_split_size=3), "sft")
    assert (m.train.height, m.test.height) == (27, 10)
    train_text = {msgs[1]["content"] for msgs in m.train["messages"].to_list()}
    test_text = {msgs[1]["content"] for msgs in m.test["messages"].to_list()}
    assert {f"b {i}" for i in range(7)} <= test_text and not any(t.startswith("b ") for t in train_text)
    assert [s["role"] for s in m.report["sources"]] == ["train", "test"]


def test_every_null_row_is_counted_not_silently_dropped(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", 20, "a", nulls=5)
    m = mix(DataSpec(sources=[SourceSpec(id=str(a))]), "sft")
    (s,) = m.report["sources"]
    assert s["dropped"] == {"missing:messages.content": 5} and s["rows_kept"] == 15
    assert m.report["rows_dropped"] == 5 and m.train.height == 15
    assert [e["row"] for e in s["dropped_examples"]] == [0, 1, 2, 3, 4]


def test_sft_layouts_that_cannot_mix(tmp_path):
    a = _write_jsonl(tmp_path / "a.jsonl", 5, "a")
    t = tmp_path / "t.jsonl"
    t.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(5)))
    with pytest.raises(SourceError, match="different canonical layouts"):
        mix(DataSpec(sources=[SourceSpec(id=str(a)), SourceSpec(id=str(t))]), "sft")


def test_local_files_json_parquet_directories_and_assets(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(6)]
    (tmp_path / "x.json").write_text(json.dumps(rows))
    pl.DataFrame(rows).write_parquet(tmp_path / "x.parquet")
    d = tmp_path / "ds"
    d.mkdir()
    pl.DataFrame(rows[:4]).write_parquet(d / "train-00000-of-00001.parquet")
    pl.DataFrame(rows[4:]).write_parquet(d / "test-00000-of-00001.parquet")
    for src in (SourceSpec(id=str(tmp_path / "x.json")), SourceSpec(id="x.parquet")):
        df = load_source(src, base_dir=tmp_path)
        assert df.to_dicts() == rows
    assert load_source(SourceSpec(id=str(d), split="train")).height == 4
    assert load_source(SourceSpec(id=str(d), split="test")).height == 2
    out = map_source(load_source(SourceSpec(id=str(tmp_path / "x.json"))), SourceSpec(id="x"), "sft")
    assert out.kind == "prompt_completion" and out.frame.columns == ["prompt", "completion"]
    sample = load_source(SourceSpec(id="asset:samples/preferences.jsonl"))
    assert sample.height == 200 and set(sample.columns) == {"prompt", "chosen", "rejected"}
    with pytest.raises(SourceError, match="local file not found"):
        load_source(SourceSpec(id="./missing.jsonl"))


# --- the hub, offline ----------------------------------------------------------------------------
def test_offline_hub_id_fails_at_once_naming_the_source(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(SourceError) as exc:
        load_source(SourceSpec(id="no-such-org/no-such-dataset", split="train_sft"))
    assert time.monotonic() - start < 2
    assert "no-such-org/no-such-dataset" in str(exc.value) and "train_sft" in str(exc.value)
    assert "offline" in str(exc.value)


def test_unreachable_hub_fails_fast_naming_the_source(monkeypatch, tmp_path):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(SourceError, match="no-such-org/no-such-dataset.*cannot reach"):
        load_source(SourceSpec(id="no-such-org/no-such-dataset"))
    assert time.monotonic() - start < 5


def test_offline_prepare_from_the_command_line_exits_1_naming_the_source(tmp_path):
    from alignlib.assets import TINY_CHAT_TOKENIZER

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "ALIGNLIB_CACHE": str(tmp_path / "cache")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "alignlib", "prepare", "demo", f"tokenizer.id={TINY_CHAT_TOKENIZER}",
         "stages.sft.data.sources.0.id=no-such-org/no-such-dataset", "--output-dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "no-such-org/no-such-dataset" in proc.stderr and "offline" in proc.stderr
    assert elapsed < 60
