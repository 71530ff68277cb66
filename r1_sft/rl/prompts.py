"""GRPO's questions: an MCQ file checked for training, and its prompts built by the project's one definition.

A prompt is the evaluation's user turn for the question (``benchmarks.mcq_user_text``: the task line
asking for the answer letter, the question, one ``A. text`` line per option; no system prompt) put
through the model's chat template with the generation prompt (``r1_format.build_prompt``: it ends in
``<think>\\n``, so completions start inside the think block).
"""
from __future__ import annotations

import json
from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.paths import display_path, repo_path


def load_questions(path: str | Path, flag: str):
    """An MCQ file as McqRecords; a record without an answer, or none at all, is a one-line error."""
    from r1_sft.data.benchmarks import load_mcq

    path = repo_path(path)
    if not path.read_text(encoding="utf-8-sig").strip():
        raise UserError(f"--{flag} {display_path(path)}: the file is empty (run data/split_mcq_data.py)")
    records, counts = load_mcq(path)  # a bad record (answer not among the options...) is a UserError here
    if counts["skipped"]:
        raise UserError(f"--{flag} {display_path(path)}: {counts['skipped']} question(s) without an answer cannot be "
                        f"rewarded (run data/split_mcq_data.py, which rejects them with their line numbers)")
    return records


def prompt_dataset(records, tokenizer):
    """Columns ``prompt`` (template text ending in ``<think>\\n``), ``answer``, ``options`` (JSON), ``id``."""
    from datasets import Dataset

    from r1_sft.data.benchmarks import mcq_user_text
    from r1_sft.r1_format import build_prompt

    return Dataset.from_list([
        {"prompt": build_prompt(tokenizer, [{"role": "user", "content": mcq_user_text(r)}]), "answer": r.answer,
         "options": json.dumps(r.options, ensure_ascii=False), "id": r.id} for r in records])


def prompt_lengths(dataset, tokenizer) -> list[int]:
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in dataset["prompt"]]
