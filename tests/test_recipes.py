"""Recipes: every shipped YAML loads, each seed recipe carries its model card's numbers, and
invalid recipes / overrides fail with the offending dotted key and a suggestion."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from alignlib import recipes
from alignlib.recipes import RecipeError, apply_overrides, from_dict, load_recipe, load_smoke_recipe, train_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
ALL = SHIPPED + ["demo"]


def test_the_five_seed_recipes_are_shipped():
    assert set(SHIPPED) >= {"stablelm_zephyr", "zephyr_7b_alpha", "mistral_7b_sft_beta", "smol_7b", "smollm_360m_instruct"}


@pytest.mark.parametrize("name", ALL)
def test_every_shipped_recipe_loads_and_its_smoke_variant_too(name):
    recipe = load_recipe(name)
    assert recipe.stages and recipe.description
    for stage in recipe.stages:
        train_config(recipe, stage, world_size=_card_world(name, stage))
    smoke = load_smoke_recipe(name)
    assert list(smoke.stages) == list(recipe.stages)
    for stage in smoke.stages.values():
        assert stage.train["max_steps"] > 0 and stage.max_length <= 1024
    assert smoke.engine.kind == "torch" and smoke.model.dtype == "float32"
    # Smoke keeps the data sources, their mappings and the chat template.
    for a, b in zip(recipe.stages.values(), smoke.stages.values()):
        assert [s.id for s in a.data.sources] == [s.id for s in b.data.sources]
        assert [s.format for s in a.data.sources] == [s.format for s in b.data.sources]
    assert smoke.tokenizer.chat_template == recipe.tokenizer.chat_template


def _card_world(name: str, stage: str) -> int:
    """The number of devices each card trained on (what the global batches divide by)."""
    return {("zephyr_7b_alpha", "dpo"): 16, ("mistral_7b_sft_beta", "sft"): 16, ("smol_7b", "sft"): 1,
            ("demo", "sft"): 1, ("demo", "dpo"): 1}.get((name, stage), 8)


def test_every_yaml_file_in_the_repository_recipes_parses():
    files = list((REPO / "recipes").rglob("*.yaml")) + list((REPO / "python/alignlib/assets/smoke").glob("*.yaml"))
    assert files
    for path in files:
        from_dict(recipes.read_raw(path), path=str(path))


def _adam(cfg):
    return (cfg.adam_beta1, cfg.adam_beta2, cfg.adam_epsilon)


def test_zephyr_7b_alpha_has_the_card_numbers():
    r = load_recipe("zephyr_7b_alpha")
    assert r.model.id == "mistralai/Mistral-7B-v0.1"
    assert r.tokenizer.chat_template == "zephyr"
    assert [s.id for s in r.stages["sft"].data.sources] == ["stingning/ultrachat"]
    dpo_stage = r.stages["dpo"]
    assert [(s.id, s.format) for s in dpo_stage.data.sources] == [("openbmb/UltraFeedback", "ultrafeedback")]
    assert dpo_stage.method == "dpo" and dpo_stage.init == "previous"
    assert dpo_stage.global_batch_size == 32  # total_train_batch_size
    dpo = train_config(r, "dpo", world_size=16)  # 16 devices x 2 per device
    assert dpo.micro_batch_size == 2 and dpo.gradient_accumulation_steps == 1
    assert dpo.learning_rate == 5e-7
    assert dpo.lr_scheduler_type == "linear" and dpo.warmup_ratio == 0.1 and dpo.num_train_epochs == 1
    assert _adam(dpo) == (0.9, 0.999, 1e-8) and dpo.seed == 42
    assert dpo.micro_batch_size * dpo.gradient_accumulation_steps * 16 == 32
    # On 4 ranks the same global batch needs 4 accumulation steps.
    assert train_config(r, "dpo", world_size=4).gradient_accumulation_steps == 4


def test_mistral_7b_sft_beta_has_the_card_numbers():
    r = load_recipe("mistral_7b_sft_beta")
    assert r.model.id == "mistralai/Mistral-7B-v0.1" and list(r.stages) == ["sft"]
    assert {s.id for s in r.stages["sft"].data.sources} == {"HuggingFaceH4/ultrachat_200k"}
    cfg = train_config(r, "sft", world_size=16)
    assert cfg.learning_rate == 2e-5 and cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == 0.1
    assert cfg.num_train_epochs == 1 and cfg.micro_batch_size == 8
    assert cfg.gradient_accumulation_steps == 4  # the card's accumulation on its 16 devices
    assert cfg.micro_batch_size * cfg.gradient_accumulation_steps * 16 == 512
    assert _adam(cfg) == (0.9, 0.999, 1e-8) and cfg.seed == 42


def test_smol_7b_has_the_card_numbers():
    r = load_recipe("smol_7b")
    assert r.model.id == "openchat/openchat_3.5" and r.model.architecture == "mistral"
    assert [(s.id, s.split, s.test) for s in r.stages["sft"].data.sources] == [
        ("HuggingFaceH4/no_robots", "train", False), ("HuggingFaceH4/no_robots", "test", True)]
    cfg = train_config(r, "sft", world_size=1)
    assert cfg.learning_rate == 2e-5 and cfg.lr_scheduler_type == "cosine" and cfg.num_train_epochs == 1
    assert cfg.micro_batch_size == 4 and cfg.gradient_accumulation_steps == 128
    assert r.stages["sft"].global_batch_size == 512
    assert _adam(cfg) == (0.9, 0.999, 1e-8)


def test_smollm_360m_instruct_has_the_card_numbers():
    r = load_recipe("smollm_360m_instruct")
    assert r.model.id == "HuggingFaceTB/SmolLM-360M"
    assert r.tokenizer.chat_template == "chatml" and r.tokenizer.eos_token == "<|im_end|>"
    stage = r.stages["sft"]
    assert stage.global_batch_tokens == 262144  # "global batch size 262k tokens"
    cfg = train_config(r, "sft", world_size=8)
    assert cfg.learning_rate == 1e-3 and cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == 0.1
    assert cfg.num_train_epochs == 1
    assert cfg.micro_batch_tokens * cfg.gradient_accumulation_steps * 8 == 262144
    ids = {s.id for s in stage.data.sources}
    assert "HuggingFaceTB/everyday-conversations-llama3.1-2k" in ids and "HuggingFaceTB/OpenHermes-2.5-H4" in ids
    hermes = [s for s in stage.data.sources if s.id == "HuggingFaceTB/OpenHermes-2.5-H4"]
    assert all(s.keep_fraction == 0.001 for s in hermes)  # "a small subset of OpenHermes-2.5"
    assert stage.data.test_split_size == 0.05


def test_stablelm_zephyr_has_the_card_datasets_and_chat_format():
    r = load_recipe("stablelm_zephyr")
    assert r.model.id == "stabilityai/stablelm-3b-4e1t"
    assert [s.id for s in r.stages["sft"].data.sources] == [
        "HuggingFaceH4/ultrachat_200k", "meta-math/MetaMathQA", "WizardLM/WizardLM_evol_instruct_V2_196k", "Open-Orca/SlimOrca"]
    assert [s.id for s in r.stages["dpo"].data.sources] == ["HuggingFaceH4/ultrafeedback_binarized", "Intel/orca_dpo_pairs"]
    assert list(r.stages) == ["sft", "dpo"] and r.stages["dpo"].init == "previous"
    # The card's format, rendered by the recipe's template with an <|endoftext|> eos.
    from alignlib import Tokenizer
    from alignlib.assets import TINY_CHAT_TOKENIZER

    tok = Tokenizer.from_pretrained(TINY_CHAT_TOKENIZER, chat_template=recipes.chat_template_source(r))
    assert tok.eos_token == r.tokenizer.eos_token == "<|endoftext|>"
    text = tok.apply_chat_template([{"role": "user", "content": 'List 10 synonyms for the word "tiny"'},
                                    {"role": "assistant", "content": "1. Dwarf"}])
    assert text == '<|user|>\nList 10 synonyms for the word "tiny"<|endoftext|>\n<|assistant|>\n1. Dwarf<|endoftext|>\n'
    # No numbers on the card: the Zephyr recipe's.
    sft, dpo = train_config(r, "sft", world_size=8), train_config(r, "dpo", world_size=8)
    assert (sft.learning_rate, sft.lr_scheduler_type, sft.warmup_ratio) == (2e-5, "cosine", 0.1)
    assert (dpo.learning_rate, dpo.beta, dpo.warmup_ratio) == (5e-7, 0.01, 0.1)
    assert r.stages["dpo"].max_length == 1024 and r.stages["dpo"].max_prompt_length == 512


def test_recipes_note_where_the_card_gives_no_number():
    text = (REPO / "recipes" / "stablelm_zephyr.yaml").read_text()
    assert "Zephyr recipe" in text
    text = (REPO / "recipes" / "zephyr_7b_alpha.yaml").read_text()
    beta_line = next(line for line in text.splitlines() if line.strip().startswith("beta:"))
    assert "Zephyr recipe" in beta_line


@pytest.mark.parametrize("name,stage,offload", [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)])
def test_deepspeed_configs_use_auto_values_that_alignlib_fills(name, stage, offload):
    from alignlib.engines.deepspeed_engine import resolve_deepspeed_config
    from alignlib.train import SFTConfig

    raw = json.loads((REPO / "recipes" / "deepspeed" / f"{name}.json").read_text())
    assert raw["zero_optimization"]["stage"] == stage
    assert raw["train_micro_batch_size_per_gpu"] == "auto" and raw["gradient_clipping"] == "auto"
    assert ("offload_optimizer" in raw["zero_optimization"]) == offload
    cfg = SFTConfig(micro_batch_size=4, gradient_accumulation_steps=2, precision="bf16", engine="deepspeed")
    ds = resolve_deepspeed_config(raw, cfg, hidden_size=64, world_size=2, total_steps=10)
    assert ds["train_batch_size"] == 16 and ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert "auto" not in json.dumps(ds)


def test_engine_deepspeed_names_resolve_to_the_shipped_files():
    r = load_recipe("zephyr_7b_alpha", ["engine.deepspeed=zero3_offload"])
    assert train_config(r, "dpo", world_size=16).deepspeed.endswith("recipes/deepspeed/zero3_offload.json")
    with pytest.raises(RecipeError) as exc:
        load_recipe("zephyr_7b_alpha", ["engine.deepspeed=zero4"])
    assert exc.value.paths == ["engine.deepspeed"] and "zero" in str(exc.value)


# --- validation --------------------------------------------------------------------------------
def _minimal() -> dict:
    return recipes.yaml_load(textwrap.dedent("""\
        name: t
        model: {id: some/model}
        stages:
          sft:
            method: sft
            data: {sources: [{id: a/b}]}
            train: {learning_rate: 1e-5}
        """))


def test_smoke_overrides_shape_the_smoke_variant_and_explicit_keys_win():
    r = load_smoke_recipe("smol_7b", ["smoke.max_steps=5", "smoke.max_length=128"])
    assert r.stages["sft"].train["max_steps"] == 5 and r.stages["sft"].max_length == 128
    r = load_smoke_recipe("smol_7b", ["smoke.max_steps=5", "stages.sft.train.max_steps=2", "engine.kind=deepspeed"])
    assert r.stages["sft"].train["max_steps"] == 2 and r.engine.kind == "deepspeed"


def test_minimal_recipe_and_yaml_exponent_floats():
    r = from_dict(_minimal())
    assert r.stages["sft"].train["learning_rate"] == 1e-5  # PyYAML alone reads `1e-5` as a string
    assert r.output_dir is None and r.engine.kind == "torch"


@pytest.mark.parametrize("path,value,expected_path,hint", [
    (["model", "dtyp"], "bfloat16", "model.dtyp", "did you mean 'dtype'"),
    (["stages", "sft", "train", "learnig_rate"], 1e-5, "stages.sft.train.learnig_rate", "did you mean 'learning_rate'"),
    (["stages", "sft", "data", "sources", 0, "wieght"], 0.5, "stages.sft.data.sources.0.wieght", "did you mean 'weight'"),
    (["stages", "sft", "packng"], "bfd", "stages.sft.packng", "did you mean 'packing'"),
    (["tokenizr"], {}, "tokenizr", "did you mean 'tokenizer'"),
])
def test_unknown_keys_name_the_dotted_path_and_suggest(path, value, expected_path, hint):
    raw = _minimal()
    node = raw
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    with pytest.raises(RecipeError) as exc:
        from_dict(raw)
    assert exc.value.paths == [expected_path]
    assert hint in str(exc.value)


@pytest.mark.parametrize("override,expected_path,words", [
    ("stages.sft.train.micro_batch_size=two", "stages.sft.train.micro_batch_size", "expected an integer"),
    ("stages.sft.train.learning_rate=fast", "stages.sft.train.learning_rate", "expected a number"),
    ("stages.sft.train.gradient_checkpointing=1", "stages.sft.train.gradient_checkpointing", "true or false"),
    ("stages.sft.method=ppo", "stages.sft.method", "'sft', 'dpo'"),
    ("engine.kind=deepspeeed", "engine.kind", "did you mean 'deepspeed'"),
    ("stages.sft.data.sources=a/b", "stages.sft.data.sources", "expected a list"),
    ("stages.sft.data.sources.0.format=sharegtp", "stages.sft.data.sources.0.format", "did you mean 'sharegpt'"),
    ("stages.sft.train.lr_scheduler_type=cosin", "stages.sft.train.lr_scheduler_type", "did you mean 'cosine'"),
])
def test_wrong_types_and_values_name_the_key(override, expected_path, words):
    with pytest.raises(RecipeError) as exc:
        from_dict(apply_overrides(_minimal(), [override]))
    assert expected_path in exc.value.paths
    assert words in str(exc.value)


def test_all_problems_are_reported_at_once():
    raw = apply_overrides(_minimal(), ["model.dtyp=x", "stages.sft.train.learnig_rate=1", "engine.kind=gpu"])
    with pytest.raises(RecipeError) as exc:
        from_dict(raw)
    assert set(exc.value.paths) == {"model.dtyp", "stages.sft.train.learnig_rate", "engine.kind"}


def test_missing_required_keys_and_recipe_wide_keys_in_a_stage():
    raw = _minimal()
    del raw["model"]["id"]
    raw["stages"]["sft"]["train"]["engine"] = "deepspeed"
    with pytest.raises(RecipeError) as exc:
        from_dict(raw)
    assert set(exc.value.paths) == {"model.id", "stages.sft.train.engine"}
    assert "engine.kind" in str(exc.value)


def test_semantic_checks():
    cases = {
        "stages.sft.data.sources.0.weight=1.5": "stages.sft.data.sources.0.weight",
        "stages.sft.global_batch_size=64": None,  # fine alone
        "stages.sft.data.sources.0.format=string_preferences": "stages.sft.data.sources.0.format",
        "stages.sft.data.sources.0.fields={promt: query}": "stages.sft.data.sources.0.fields",
        "tokenizer.chat_template=chatmll": "tokenizer.chat_template",
        "stages.sft.train.warmup_ratio=2.0": "stages.sft.train",
    }
    for override, path in cases.items():
        raw = apply_overrides(_minimal(), [override])
        if path is None:
            from_dict(raw)
            continue
        with pytest.raises(RecipeError) as exc:
            from_dict(raw)
        assert path in exc.value.paths, (override, exc.value)
    # A derived accumulation and an explicit one conflict.
    raw = apply_overrides(_minimal(), ["stages.sft.global_batch_size=64", "stages.sft.train.gradient_accumulation_steps=2"])
    with pytest.raises(RecipeError, match="derived"):
        from_dict(raw)


def test_global_batch_must_divide_over_the_ranks():
    r = from_dict(apply_overrides(_minimal(), ["stages.sft.global_batch_size=48", "stages.sft.train.micro_batch_size=4"]))
    assert train_config(r, "sft", world_size=3).gradient_accumulation_steps == 4
    with pytest.raises(RecipeError) as exc:
        train_config(r, "sft", world_size=5)
    assert exc.value.paths == ["stages.sft.global_batch_size"]


def test_overrides_parse_yaml_values_index_lists_and_create_keys():
    raw = apply_overrides(_minimal(), [
        "stages.sft.train.learning_rate=3e-4", "stages.sft.data.sources.0.weight=0.25",
        "logging.report_to=[tensorboard]", "stages.sft.train.gradient_checkpointing=true", "model.lora.r=8",
        "stages.sft.packing=null",
    ])
    r = from_dict(raw)
    assert r.stages["sft"].train["learning_rate"] == 3e-4
    assert r.stages["sft"].data.sources[0].keep_fraction == 0.25
    assert r.logging.report_to == ["tensorboard"] and r.model.lora.r == 8 and r.stages["sft"].packing is None
    assert r.stages["sft"].train["gradient_checkpointing"] is True
    assert _minimal()["stages"]["sft"]["train"] == {"learning_rate": 1e-5}  # the input is not mutated


@pytest.mark.parametrize("bad,path", [("noequals", "noequals"), ("=3", "=3"), ("a..b=1", "a..b"),
                                      ("stages.sft.data.sources.5.id=x", "stages.sft.data.sources.5"),
                                      ("name.x=1", "name")])
def test_bad_overrides_are_errors(bad, path):
    with pytest.raises(RecipeError) as exc:
        apply_overrides(_minimal(), [bad])
    assert exc.value.paths == [path]


def test_unknown_recipe_name_suggests_a_shipped_one():
    with pytest.raises(RecipeError, match="did you mean 'smol_7b'"):
        load_recipe("smol_7")


def test_listing_has_a_description_per_recipe():
    rows = recipes.list_recipes()
    assert {n for n, _, _ in rows} == set(ALL)
    assert all(desc and "\n" not in desc for _, _, desc in rows)


# --- Alignment Handbook importer ---------------------------------------------------------------
HB_SFT = """\
model_name_or_path: mistralai/Mistral-7B-v0.1
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
chat_template: "{% for message in messages %}\\n{% if message['role'] == 'user' %}\\n{{ '<|user|>\\n' + message['content'] + eos_token }}\\n{% elif message['role'] == 'system' %}\\n{{ '<|system|>\\n' + message['content'] + eos_token }}\\n{% elif message['role'] == 'assistant' %}\\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\\n{% endif %}\\n{% if loop.last and add_generation_prompt %}\\n{{ '<|assistant|>' }}\\n{% endif %}\\n{% endfor %}"
dataset_mixture:
  datasets:
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: train_sft
      columns:
        - messages
      weight: 1.0
    - id: HuggingFaceH4/ultrachat_200k
      config: default
      split: test_sft
      columns:
        - messages
      weight: 1.0
  test_split_size: 1000
  seed: 0
dataset_num_proc: 12
bf16: true
do_eval: true
eval_strategy: epoch
gradient_accumulation_steps: 1
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: False
hub_model_id: zephyr-7b-sft-full
hub_strategy: every_save
learning_rate: 2.0e-05
log_level: info
logging_steps: 5
logging_strategy: steps
lr_scheduler_type: cosine
max_seq_length: 2048
max_steps: -1
num_train_epochs: 1
output_dir: data/zephyr-7b-sft-full
overwrite_output_dir: true
per_device_eval_batch_size: 8
per_device_train_batch_size: 16
push_to_hub: true
remove_unused_columns: true
report_to:
- wandb
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""

HB_DPO = """\
model_name_or_path: alignment-handbook/zephyr-7b-sft-full
torch_dtype: null
dataset_mixer:
  HuggingFaceH4/ultrafeedback_binarized: 1.0
dataset_splits:
- train_prefs
- test_prefs
preprocessing_num_workers: 12
bf16: true
beta: 0.01
do_eval: true
eval_strategy: steps
eval_steps: 100
gradient_accumulation_steps: 2
gradient_checkpointing: true
hub_model_id: zephyr-7b-dpo-full
learning_rate: 5.0e-7
log_level: info
logging_steps: 10
lr_scheduler_type: cosine
max_length: 1024
max_prompt_length: 512
num_train_epochs: 1
optim: adamw_torch
output_dir: data/zephyr-7b-dpo-full
per_device_train_batch_size: 8
per_device_eval_batch_size: 8
push_to_hub: true
save_strategy: "steps"
save_steps: 100
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""


def test_import_handbook_zephyr_7b_beta(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "dpo").mkdir()
    (tmp_path / "sft" / "config_full.yaml").write_text(HB_SFT)
    (tmp_path / "dpo" / "config_full.yaml").write_text(HB_DPO)
    raw, notes = recipes.import_handbook([str(tmp_path / "sft" / "config_full.yaml"), str(tmp_path / "dpo" / "config_full.yaml")])
    r = from_dict(raw)
    assert r.name == "zephyr-7b-sft-full" and r.model.id == "mistralai/Mistral-7B-v0.1"
    assert r.model.dtype == "bfloat16" and r.model.attention == "flash_attention_2"
    assert recipes.chat_template_source(r) == recipes.CHAT_TEMPLATES["zephyr"]
    sft, dpo = r.stages["sft"], r.stages["dpo"]
    assert [(s.id, s.split, s.columns) for s in sft.data.sources] == [
        ("HuggingFaceH4/ultrachat_200k", "train_sft", ["messages"]), ("HuggingFaceH4/ultrachat_200k", "test_sft", ["messages"])]
    assert sft.data.test_split_size == 1000 and sft.max_length == 2048
    cfg = train_config(r, "sft")
    assert (cfg.learning_rate, cfg.micro_batch_size, cfg.precision, cfg.seed, cfg.warmup_ratio) == (2e-5, 16, "bf16", 42, 0.1)
    assert cfg.gradient_checkpointing is True and r.logging.report_to == ["wandb"]
    assert dpo.method == "dpo" and dpo.init == "previous"
    # The older dataset_mixer + dataset_splits: the test split is the evaluation set, whole.
    assert [(s.split, s.test) for s in dpo.data.sources] == [("train_prefs", False), ("test_prefs", True)]
    assert all(s.format == "implicit_preferences" for s in dpo.data.sources)
    d = train_config(r, "dpo")
    assert (d.beta, d.learning_rate, d.gradient_accumulation_steps, d.micro_batch_size) == (0.01, 5e-7, 2, 8)
    assert dpo.max_length == 1024 and dpo.max_prompt_length == 512
    assert any("replaced by the previous stage" in n for n in notes)


def test_import_handbook_reports_keys_it_cannot_carry(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(HB_SFT + "neftune_noise_alpha: 5\n")
    raw, notes = recipes.import_handbook([str(path)])
    from_dict(raw)
    assert any("neftune_noise_alpha" in n for n in notes)
