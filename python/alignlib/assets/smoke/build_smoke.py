"""Regenerates the smoke datasets: one small JSONL file per hub source used by the shipped
recipes, in that source's OWN schema (so `alignlib train RECIPE --smoke` runs the real mappings).

Rows are `alignlib.synthetic` word salad reshaped into each schema, with message contents cut to
a few hundred characters so the files stay small. The last rows of some files carry the defects
real dumps have (a null field, an unknown ShareGPT role, tied scores); the mappings must drop
and count them, and tests/test_sources.py checks the counts.

Run from the repository root:  PYTHONPATH=python python python/alignlib/assets/smoke/build_smoke.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from alignlib import synthetic

OUT = Path(__file__).resolve().parent
ROWS = 32
MAX_CHARS = 360


def cut(text: str) -> str:
    return text[:MAX_CHARS]


def chats(n: int, seed: int) -> list[list[dict]]:
    rows = synthetic.conversations(n, seed=seed, long_tail=False)["messages"].to_list()
    return [[{"role": m["role"], "content": cut(m["content"])} for m in conv] for conv in rows]


def pairs(n: int, seed: int) -> list[tuple[list[dict], str, str]]:
    df = synthetic.preference_pairs(n, seed=seed)
    out = []
    for p, c, r in zip(df["prompt"].to_list(), df["chosen"].to_list(), df["rejected"].to_list()):
        prompt = [{"role": m["role"], "content": cut(m["content"])} for m in p]
        chosen, rejected = cut(c[0]["content"]), cut(r[0]["content"])
        if rejected == chosen:  # a shared prefix longer than the cut: keep the answers apart
            rejected = r[0]["content"][-MAX_CHARS:]
        out.append((prompt, chosen, rejected))
    return out


def first_user(conv: list[dict]) -> str:
    return next(m["content"] for m in conv if m["role"] == "user")


def user_assistant(conv: list[dict]) -> tuple[str | None, str, str]:
    """(system, first user turn, the assistant turn after it)."""
    system = conv[0]["content"] if conv[0]["role"] == "system" else None
    turns = [m for m in conv if m["role"] != "system"]
    return system, turns[0]["content"], turns[1]["content"] if len(turns) > 1 else "OK."


def write(name: str, rows: list[dict]) -> None:
    path = OUT / f"{name.replace('/', '__')}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def sharegpt(conv: list[dict], extra: dict | None = None) -> list[dict]:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return [{"from": names[m["role"]], "value": m["content"], **(extra or {})} for m in conv]


def main() -> None:
    rng = random.Random(0)

    # HuggingFaceH4/ultrachat_200k: prompt, prompt_id, messages (splits train_sft/test_sft/...).
    rows = [{"prompt": first_user(c), "prompt_id": f"{i:064x}", "messages": c} for i, c in enumerate(chats(ROWS, 11))]
    rows[-1]["messages"] = None  # a null conversation: dropped and counted
    write("HuggingFaceH4/ultrachat_200k", rows)

    # HuggingFaceH4/no_robots: prompt, prompt_id, messages, category.
    cats = ["Generation", "Open QA", "Brainstorm", "Chat", "Rewrite", "Summarize", "Coding", "Classify"]
    write("HuggingFaceH4/no_robots", [{"prompt": first_user(c), "prompt_id": f"{i:064x}", "messages": c,
                                       "category": cats[i % len(cats)]} for i, c in enumerate(chats(ROWS, 12))])

    # stingning/ultrachat: id, data = [user, assistant, user, ...] strings.
    rows = [{"id": str(i), "data": [m["content"] for m in c if m["role"] != "system"]} for i, c in enumerate(chats(ROWS, 13))]
    rows[-1]["data"] = []  # an empty conversation
    write("stingning/ultrachat", rows)

    # meta-math/MetaMathQA: type, query, original_question, response.
    types = ["MATH_AnsAug", "GSM_Rephrased", "GSM_SV", "MATH_FOBAR", "GSM_AnsAug", "MATH_Rephrased"]
    rows = []
    for i, c in enumerate(chats(ROWS, 14)):
        _, q, a = user_assistant(c)
        rows.append({"type": types[i % len(types)], "query": q, "original_question": q[: len(q) // 2],
                     "response": a + f"\nThe answer is: {rng.randrange(1000)}"})
    rows[-1]["response"] = None  # a null response
    write("meta-math/MetaMathQA", rows)

    # WizardLM/WizardLM_evol_instruct_V2_196k: idx, conversations [{from, value}].
    rows = [{"idx": f"wiz_{i}", "conversations": sharegpt([m for m in c if m["role"] != "system"])}
            for i, c in enumerate(chats(ROWS, 15))]
    rows[-1]["conversations"][0]["from"] = "narrator"  # an unknown role
    write("WizardLM/WizardLM_evol_instruct_V2_196k", rows)

    # Open-Orca/SlimOrca: conversations [{from, value, weight}] (system, human, gpt).
    rows = []
    for c in chats(ROWS, 16):
        system, q, a = user_assistant(c)
        conv = [{"from": "system", "value": system or "You are an AI assistant.", "weight": None},
                {"from": "human", "value": q, "weight": 0.0}, {"from": "gpt", "value": a, "weight": 1.0}]
        rows.append({"conversations": conv})
    write("Open-Orca/SlimOrca", rows)

    # HuggingFaceH4/ultrafeedback_binarized: prompt, prompt_id, chosen/rejected (full conversations),
    # messages, score_chosen, score_rejected (splits train_prefs/test_prefs).
    rows = []
    for i, (p, c, r) in enumerate(pairs(ROWS, 17)):
        chosen = p + [{"role": "assistant", "content": c}]
        rows.append({"prompt": p[-1]["content"], "prompt_id": f"{i:064x}", "chosen": chosen,
                     "rejected": p + [{"role": "assistant", "content": r}], "messages": chosen,
                     "score_chosen": float(rng.randrange(6, 11)), "score_rejected": float(rng.randrange(1, 6))})
    rows[-1]["rejected"] = None
    write("HuggingFaceH4/ultrafeedback_binarized", rows)

    # Intel/orca_dpo_pairs: system, question, chosen, rejected (strings).
    rows = []
    for i, (p, c, r) in enumerate(pairs(ROWS, 18)):
        rows.append({"system": "" if i % 3 == 0 else "You are an AI assistant. Think step by step.",
                     "question": p[-1]["content"], "chosen": c, "rejected": r})
    write("Intel/orca_dpo_pairs", rows)

    # openbmb/UltraFeedback: source, instruction, models, completions [{model, response,
    # overall_score, fine-grained_score, critique, custom_system_prompt}], correct_answers, incorrect_answers.
    rows = []
    models = ["gpt-4", "llama-2-13b-chat", "wizardlm-7b", "falcon-40b-instruct"]
    for i, (p, c, r) in enumerate(pairs(ROWS, 19)):
        answers = [c, r, cut(r[::-1]), cut(c[len(c) // 3:])]
        scores = [rng.choice([7.0, 8.0, 8.5, 9.0]), rng.choice([3.0, 4.0, 5.5]), rng.choice([2.0, 6.0]), rng.choice([1.0, 6.5])]
        if i == ROWS - 1:
            scores = [5.0, 5.0, 5.0, 5.0]  # tied: no preference, dropped and counted
        comps = [{"model": m, "response": a, "overall_score": s, "fine-grained_score": s / 2,
                  "critique": "word salad", "custom_system_prompt": ""} for m, a, s in zip(models, answers, scores)]
        rows.append({"source": "evol_instruct", "instruction": p[-1]["content"], "models": models,
                     "completions": comps, "correct_answers": ["None"], "incorrect_answers": ["None"]})
    write("openbmb/UltraFeedback", rows)

    # SmolLM-360M-Instruct v0.2 mix (the Handbook's smollm recipe): H4-formatted `messages`.
    for k, name in enumerate(["HuggingFaceTB/Magpie-Pro-300K-Filtered-H4", "HuggingFaceTB/self-oss-instruct-sc2-H4",
                              "HuggingFaceTB/OpenHermes-2.5-H4", "HuggingFaceTB/everyday-conversations-llama3.1-2k",
                              "HuggingFaceTB/instruct-data-basics-smollm-H4"]):
        write(name, [{"prompt": first_user(c), "messages": c} for c in chats(ROWS, 20 + k)])


if __name__ == "__main__":
    main()
