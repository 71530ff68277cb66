"""The questions of an evaluation: an SFT file (open questions) or a multiple-choice file of any benchmark
shape (r1_sft.data.benchmarks), as prompts with their references."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.jsonl_io import read_jsonl
from r1_sft.paths import display_path, repo_path
from r1_sft.r1_format import build_user_text

DEFAULT_DATA = "dataset/sft_r1_test.jsonl"  # the held-out test split of data/split_stf_r1_data.py
GROUP_FIELDS = ("department", "subject", "category")  # an open-question record's group, when it has one


@dataclass
class EvalItem:
    id: str
    question: str    # shown in reports
    user_text: str   # the user turn sent to the model
    reference: str   # sft: the full SFT output; mcq: the gold letters
    options: dict = field(default_factory=dict)  # mcq: {"A": text, ...}
    multi: bool | None = None  # mcq: a multiple-answer question
    group: str = ""  # exam class / subject / department, "" when the file has none


def load_items(path: str | Path, task: str, num_samples: int = 0) -> list[EvalItem]:
    """The first ``num_samples`` questions of an evaluation file (0 = all) as prompts and references."""
    path = repo_path(path)
    if task == "mcq":
        from r1_sft.data.benchmarks import load_mcq, mcq_user_text, question_with_options

        records, counts = load_mcq(path, num_samples)
        shapes = ", ".join(f"{shape} {n}" for shape, n in counts["shapes"].items())
        skipped = f", {counts['skipped']} without an answer skipped" if counts["skipped"] else ""
        print(f"[read] {display_path(path)}: {len(records)} questions ({shapes}{skipped})", flush=True)
        items = []
        for r in records:
            items.append(EvalItem(r.id, question_with_options(r), mcq_user_text(r), r.answer, r.options, r.multi,
                                  r.group))
        return items
    items = []
    for index, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec.get("input"), str) or not isinstance(rec.get("output"), str):
            raise UserError(f"{display_path(path)}: record {index}: needs string fields \"input\" and \"output\" "
                            f"(an SFT file such as {DEFAULT_DATA}; multiple choice needs --task mcq)")
        group = next((str(rec[k]) for k in GROUP_FIELDS if rec.get(k)), "")
        items.append(EvalItem(str(rec.get("id", index)), rec["input"],
                              build_user_text(rec["input"], rec.get("instruction", "")), rec["output"], group=group))
        if num_samples and len(items) >= num_samples:
            break
    if not items:
        raise UserError(f"{display_path(path)}: no records to evaluate")
    print(f"[read] {display_path(path)}: {len(items)} questions", flush=True)
    return items


def select_items(items: list[EvalItem], num_samples: int, seed: int, first: bool = False) -> tuple[list[EvalItem], str]:
    """The questions to score: ``num_samples`` of them drawn with ``seed`` (stratified by group when the
    file has groups; ``first``: the first N), and how they were drawn (r1_sft.evaluation.statistics)."""
    from r1_sft.evaluation.statistics import draw_questions

    chosen, drawn = draw_questions([item.group for item in items], num_samples, seed, first)
    return [items[i] for i in chosen], drawn


def data_record(data: str | Path, n: int, of: int, seed: int, drawn: str) -> dict:
    """summary.json's "data": the file scored, the split its name declares ("" for another file), the
    questions scored, of how many in the file, the seed of the draw and how they were drawn."""
    from r1_sft.data.splits import split_of

    return {"file": display_path(repo_path(data)), "split": split_of(data), "questions": n, "of": of, "seed": seed,
            "drawn": drawn}
