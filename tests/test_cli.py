"""The `alignlib` command line and the recipe pipeline behind it: --help everywhere, exit codes,
`--smoke` runs of every shipped recipe (every SFT and DPO stage, on CPU), the data cache, a
2-process DeepSpeed launch through --nproc, and `alignlib demo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from alignlib import pipeline, recipes
from alignlib.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
FAMILY = {"stablelm_zephyr": "StableLmForCausalLM", "zephyr_7b_alpha": "MistralForCausalLM",
          "mistral_7b_sft_beta": "MistralForCausalLM", "smol_7b": "MistralForCausalLM",
          "smollm_360m_instruct": "LlamaForCausalLM", "demo": "LlamaForCausalLM"}
SFT_PLOTS = {"loss.png", "learning_rate.png", "grad_norm.png"}
DPO_PLOTS = SFT_PLOTS | {"rewards.png", "margins.png", "accuracies.png"}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One alignlib cache for this module (tokenizers and tiny models are built once)."""
    path = tmp_path_factory.mktemp("alignlib-cache")
    old = os.environ.get("ALIGNLIB_CACHE")
    os.environ["ALIGNLIB_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ALIGNLIB_CACHE", None)
    else:
        os.environ["ALIGNLIB_CACHE"] = old


# --- help, usage, exit codes --------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["train"], ["prepare"], ["validate"], ["recipes"], ["demo"], ["import-handbook"]])
def test_help_for_every_command(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: alignlib") and "exit codes" in out
    if command == ["train"]:
        assert all(flag in out for flag in ("--smoke", "--nproc", "--hostfile", "--output-dir", "KEY=VALUE"))


def test_no_command_unknown_command_and_bad_flags_exit_2(capsys):
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err
    assert main(["train"]) == 2  # RECIPE missing
    assert main(["train", "demo", "--nproc"]) == 2
    assert main(["train", "demo", "--bogus"]) == 2


def test_recipes_lists_every_shipped_recipe(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in SHIPPED + ["demo"]:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name


def test_validate_ok_and_errors(capsys):
    assert main(["validate", "zephyr_7b_alpha"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["validate", "zephyr_7b_alpha", "stages.dpo.train.learnig_rate=1e-6", "model.dtype=int4"]) == 2
    err = capsys.readouterr().err
    assert "stages.dpo.train.learnig_rate: unknown key 'learnig_rate'; did you mean 'learning_rate'?" in err
    assert "model.dtype" in err
    assert main(["validate", "zephyr_7b_alpha", "stages.sft.train.micro_batch_size=lots"]) == 2
    assert "stages.sft.train.micro_batch_size: expected an integer" in capsys.readouterr().err
    assert main(["validate", "zephyr_7b_alpha", "learning_rate"]) == 2  # not key=value
    assert "key=value" in capsys.readouterr().err
    assert main(["validate", "no_such_recipe"]) == 2
    assert main(["validate", "smol_7b", "--smoke", "--print"]) == 0
    printed = recipes.yaml_load(capsys.readouterr().out)
    assert printed["stages"]["sft"]["train"]["max_steps"] == recipes.SmokeSpec().max_steps


def test_runtime_failure_exits_1(tmp_path, cache_dir, capsys):
    code = main(["prepare", "demo", "--smoke", "stages.sft.data.sources.0.id=./no/such/file.jsonl",
                 "--output-dir", str(tmp_path)])
    assert code == 1
    assert "no/such/file.jsonl" in capsys.readouterr().err


# --- smoke runs of every recipe ------------------------------------------------------------------
def _check_stage(stage_dir: Path, method: str, family: str, max_steps: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "metrics.jsonl", "report.json"):
        assert (stage_dir / name).is_file(), stage_dir / name
    plots = DPO_PLOTS if method == "dpo" else SFT_PLOTS
    assert plots <= {p.name for p in stage_dir.glob("*.png")}
    records = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, max_steps + 1))
    if method == "dpo":
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(train[-1])
    report = json.loads((stage_dir / "report.json").read_text())
    assert report["method"] == method and set(report["plots"]) >= plots
    data = report["data"]
    assert data["mixture"]["train_rows"] > 0 and data["train"]["counts"]["rows_in"] == data["mixture"]["train_rows"]
    for s in data["mixture"]["sources"]:
        assert s["rows_selected"] == s["rows_kept"] + s["rows_dropped"]
    assert {"tokens_truncated", "rows_skipped"} <= set(data["train"]["counts"])
    assert report["throughput"]["tokens"] > 0 and report["config"]["max_steps"] == max_steps
    assert report["recipe"]["resolved"]["stages"]
    model = AutoModelForCausalLM.from_pretrained(str(stage_dir))
    tok = AutoTokenizer.from_pretrained(str(stage_dir))
    assert type(model).__name__ == family
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    return report


@pytest.mark.parametrize("name", SHIPPED)
def test_smoke_run_of_every_recipe(name, tmp_path, cache_dir, capsys):
    out = tmp_path / "out"
    started = time.monotonic()
    assert main(["train", name, "--smoke", "--output-dir", str(out)]) == 0
    elapsed = time.monotonic() - started
    printed = capsys.readouterr().out
    recipe = recipes.load_smoke_recipe(name)
    assert {p.name for p in out.iterdir() if p.is_dir()} == set(recipe.stages)
    previous = None
    for stage_name, stage in recipe.stages.items():
        report = _check_stage(out / stage_name, stage.method, FAMILY[name], recipe.smoke.max_steps)
        # The first stage starts from the tiny model, a DPO stage from the previous stage's output.
        expected = str(out / previous) if previous else None
        if expected:
            assert report["recipe"]["init_from"] == expected
        else:
            assert "smoke-models" in report["recipe"]["init_from"]
        assert f"data of stage {stage_name!r}" in printed
        previous = stage_name
    # The saved tokenizer renders with the recipe's own chat template.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / previous))
    assert tok.chat_template == recipes.chat_template_source(recipe)
    if recipe.tokenizer.eos_token:
        assert tok.eos_token == recipe.tokenizer.eos_token
        assert len(tok(recipe.tokenizer.eos_token, add_special_tokens=False)["input_ids"]) == 1
    assert elapsed < 90, f"{name} smoke run took {elapsed:.0f} s"


def test_stablelm_smoke_runs_every_mapping_and_counts_the_dropped_rows(tmp_path, cache_dir, capsys):
    assert main(["prepare", "stablelm_zephyr", "--smoke", "--output-dir", str(tmp_path)]) == 0
    sft = json.loads((tmp_path / "sft" / "data" / "report.json").read_text())
    dpo = json.loads((tmp_path / "dpo" / "data" / "report.json").read_text())
    formats = {s["id"]: (s["format"], s["dropped"]) for s in sft["mixture"]["sources"] + dpo["mixture"]["sources"]}
    assert formats == {
        "HuggingFaceH4/ultrachat_200k": ("messages", {"missing:messages": 1}),
        "meta-math/MetaMathQA": ("prompt_response", {"missing:response": 1}),
        "WizardLM/WizardLM_evol_instruct_V2_196k": ("sharegpt", {"unknown_role": 1}),
        "Open-Orca/SlimOrca": ("sharegpt", {}),
        "HuggingFaceH4/ultrafeedback_binarized": ("implicit_preferences", {"missing:rejected": 1}),
        "Intel/orca_dpo_pairs": ("string_preferences", {}),
    }
    assert sft["mixture"]["rows_dropped"] == 3 and sft["lossless"] is False
    for stage in ("sft", "dpo"):
        assert (tmp_path / stage / "data" / "train.parquet").is_file()
        assert (tmp_path / stage / "data" / "test.parquet").is_file()


# --- the data cache ------------------------------------------------------------------------------
def test_prepare_caches_by_fingerprint(tmp_path, cache_dir, capsys):
    import polars as pl

    assert main(["prepare", "smol_7b", "--smoke", "--output-dir", str(tmp_path / "a")]) == 0
    first = json.loads((tmp_path / "a" / "sft" / "data" / "report.json").read_text())
    cached = cache_dir / "data" / first["fingerprint"]
    done = (cached / "DONE").stat().st_mtime_ns
    assert main(["prepare", "smol_7b", "--smoke", "--output-dir", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "sft" / "data" / "report.json").read_text())
    assert second["fingerprint"] == first["fingerprint"] and (cached / "DONE").stat().st_mtime_ns == done
    assert pl.read_parquet(tmp_path / "a" / "sft" / "data" / "train.parquet").equals(
        pl.read_parquet(tmp_path / "b" / "sft" / "data" / "train.parquet"))
    # Any preparation setting, the template or the sources change the fingerprint.
    for override in ("stages.sft.packing=wrapped", "tokenizer.chat_template=chatml", "stages.sft.data.seed=1"):
        assert main(["prepare", "smol_7b", "--smoke", override, "--output-dir", str(tmp_path / "c")]) == 0
        other = json.loads((tmp_path / "c" / "sft" / "data" / "report.json").read_text())
        assert other["fingerprint"] != first["fingerprint"], override


def test_other_ranks_wait_for_rank_0_and_never_build(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLIB_RUN_ID", "run-1")
    final = tmp_path / "thing"
    built = []

    def build(tmp: Path) -> None:
        built.append(tmp)
        time.sleep(0.5)
        (tmp / "x").write_text("ok")

    waiter_done = []
    waiter = threading.Thread(target=lambda: waiter_done.append(
        pipeline.build_once(final, lambda _: pytest.fail("rank 1 must not build"), dist=pipeline.Dist(1, 1, 2))))
    waiter.start()
    time.sleep(0.1)
    assert pipeline.build_once(final, build, dist=pipeline.Dist(0, 0, 2)) is True
    waiter.join(10)
    assert waiter_done == [False] and (final / "x").read_text() == "ok" and len(built) == 1
    assert pipeline.build_once(final, build, dist=pipeline.Dist(0, 0, 2)) is False  # cached


def test_a_failure_on_rank_0_stops_the_waiting_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLIB_RUN_ID", "run-2")
    final = tmp_path / "thing"

    def build(tmp: Path) -> None:
        raise RuntimeError("tokenizer exploded")

    with pytest.raises(RuntimeError):
        pipeline.build_once(final, build, dist=pipeline.Dist(0, 0, 2))
    with pytest.raises(pipeline.PipelineError, match="tokenizer exploded"):
        pipeline.build_once(final, build, dist=pipeline.Dist(1, 1, 2))
    assert not final.exists() and not list(tmp_path.glob(".tmp-*"))


# --- multi-process and demo ----------------------------------------------------------------------
def test_two_process_deepspeed_zero2_run_through_nproc(tmp_path):
    env = {**os.environ, "ALIGNLIB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "alignlib", "train", "zephyr_7b_alpha", "--smoke", "--nproc", "2",
         "engine.kind=deepspeed", "engine.deepspeed=zero2", "--output-dir", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "deepspeed" in proc.stdout and "--num_gpus 2" in proc.stdout
    for stage, method in (("sft", "sft"), ("dpo", "dpo")):
        report = _check_stage(out / stage, method, "MistralForCausalLM", 3)
        assert report["world_size"] == 2 and report["engine"]["kind"] == "deepspeed"
        assert report["engine"]["zero_stage"] == 2
    # Rank 0 prepared each stage's data once; rank 1 read the same cache entry.
    data = list((tmp_path / "cache" / "data").iterdir())
    assert len([d for d in data if d.is_dir()]) == 2 and not list((tmp_path / "cache" / "data").glob("*.failed"))


def test_two_process_torch_run_through_nproc(tmp_path):
    env = {**os.environ, "ALIGNLIB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "alignlib", "train", "smol_7b", "--smoke", "--nproc", "2", "--output-dir", str(out)],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "torch.distributed.run --nproc_per_node 2" in proc.stdout
    report = _check_stage(out / "sft", "sft", "MistralForCausalLM", 3)
    assert report["world_size"] == 2 and report["engine"]["kind"] == "torch"


def test_nproc_validation_errors_exit_2(capsys):
    assert main(["train", "smol_7b", "--smoke", "--nproc", "0"]) == 2
    assert main(["train", "smol_7b", "--smoke", "--hostfile", "hosts"]) == 2  # torch engine: no hostfile
    assert "engine.kind=deepspeed" in capsys.readouterr().err


def test_demo(tmp_path, cache_dir, capsys):
    assert main(["demo", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "data of stage 'sft'" in out and "data of stage 'dpo'" in out and "demo done" in out
    assert str(tmp_path / "demo") in out
    recipe = recipes.load_smoke_recipe("demo")
    _check_stage(tmp_path / "demo" / "sft", "sft", "LlamaForCausalLM", recipe.smoke.max_steps)
    report = _check_stage(tmp_path / "demo" / "dpo", "dpo", "LlamaForCausalLM", recipe.smoke.max_steps)
    assert report["recipe"]["init_from"] == str(tmp_path / "demo" / "sft")


def test_import_handbook_command(tmp_path, capsys):
    from test_recipes import HB_SFT

    src = tmp_path / "config_full.yaml"
    src.write_text(HB_SFT)
    assert main(["import-handbook", str(src), "-o", str(tmp_path / "r.yaml")]) == 0
    assert main(["validate", str(tmp_path / "r.yaml")]) == 0
