"""The MCQ data stage (data/split_mcq_data.py, r1_sft/data/mcq_split.py) and the sample questions it ships with."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1_sft.cli import UserError
from r1_sft.data.benchmarks import load_mcq
from r1_sft.data.mcq_split import split_mcq
from r1_sft.data.records import dedup_key

from conftest import REPO, run_script

SAMPLE = REPO / "mcq_data" / "medical_mcq.jsonl"
BENCH = REPO / "tests" / "fixtures" / "benchmarks"
FILES = {"train": "mcq_train.jsonl", "val": "mcq_val.jsonl", "test": "mcq_test.jsonl"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_sample_questions_are_many_departments_single_and_multi():
    records, counts = load_mcq(SAMPLE)
    assert len(records) >= 60 and counts["skipped"] == 0
    assert len({r.group for r in records}) >= 15  # many departments
    multi = [r for r in records if r.multi]
    assert 10 <= len(multi) < len(records) - 30  # both kinds, mostly single-answer like the exams
    assert all(len(r.answer) > 1 for r in multi) and all(len(r.answer) == 1 for r in records if not r.multi)
    fixture = {dedup_key(r.question) for r in load_mcq(REPO / "tests" / "fixtures" / "mcq_sample.jsonl")[0]}
    assert not fixture & {dedup_key(r.question) for r in records}  # new questions, not the eval fixture's


def test_script_splits_the_sample_without_leakage(tmp_path):
    proc = run_script("data/split_mcq_data.py", "--output_dir", tmp_path, check=True)
    assert "[rejected] 0" in proc.stdout
    splits = {name: _lines(tmp_path / f) for name, f in FILES.items()}
    keys = {name: {dedup_key(r["question"]) for r in recs} for name, recs in splits.items()}
    assert sum(len(v) for v in splits.values()) == len(_lines(SAMPLE))
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert len(splits["test"]) == round(0.2 * 69) and len(splits["val"]) == round(0.1 * 69)
    for name in FILES.values():  # each split is itself a file the evaluation and GRPO read
        assert load_mcq(tmp_path / name)[0]
    stats = json.loads((tmp_path / "mcq_stats.json").read_text(encoding="utf-8"))
    assert stats["splits"]["train"]["records"] == len(splits["train"]) and "run" in stats
    # the declared question type survives (it goes into the prompt)
    assert {r.get("question_type") for r in splits["train"]} == {"单项选择题", "多项选择题"}


def test_same_seed_same_files_other_seed_other_split(tmp_path):
    split_mcq(SAMPLE, tmp_path / "a", FILES, "s.json", 0.1, 0.2, seed=1)
    split_mcq(SAMPLE, tmp_path / "b", FILES, "s.json", 0.1, 0.2, seed=1)
    split_mcq(SAMPLE, tmp_path / "c", FILES, "s.json", 0.1, 0.2, seed=2)
    read = lambda d, f: (tmp_path / d / f).read_bytes()  # noqa: E731
    assert all(read("a", f) == read("b", f) for f in FILES.values())
    assert read("a", FILES["test"]) != read("c", FILES["test"])


@pytest.mark.parametrize("name,kept,rejected", [("cmb_exam.json", 6, 0), ("cmexam.csv", 4, 1),
                                                ("medqa_mcmle.jsonl", 5, 0)])
def test_every_benchmark_shape_splits(tmp_path, name, kept, rejected):
    stats = split_mcq(BENCH / name, tmp_path, FILES, "s.json", 0.2, 0.2, seed=0)
    assert (stats["kept"], stats["rejected"]) == (kept, rejected)
    back = [r for f in FILES.values() for r in load_mcq(tmp_path / f)[0]]
    assert len(back) == kept and all(r.shape == "project" for r in back)
    # the split file gives each question the same prompt and group as the benchmark file itself
    original = {r.question: r for r in load_mcq(BENCH / name)[0]}
    assert all((r.instruction, r.group, r.answer, r.multi) == (original[r.question].instruction,
               original[r.question].group, original[r.question].answer, original[r.question].multi) for r in back)


def test_bad_records_become_rejects_with_reasons(tmp_path):
    good = [{"question": f"第{i}题：下列哪项正确", "options": {"A": "甲", "B": "乙", "C": "丙"}, "answer": "B"}
            for i in range(4)]
    bad = [
        {"question": "没有答案的题", "options": {"A": "甲", "B": "乙"}},
        {"question": "答案不在选项中", "options": {"A": "甲", "B": "乙"}, "answer": "E"},
        {"question": "只有一个选项", "options": {"A": "甲"}, "answer": "A"},
        # the same item again: stem differs only in punctuation, options shuffled (duplicate)
        {"question": "第0题：下列哪项正确！", "options": {"A": "丙", "B": "甲", "C": "乙"}, "answer": "C"},
        {"input": "不是选择题", "output": "x"},
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in good + bad) + "\n{not json\n",
                    encoding="utf-8")
    stats = split_mcq(path, tmp_path, FILES, "s.json", 0.25, 0.25, seed=0)
    assert stats["kept"] == 4
    assert stats["rejected_by_reason"] == {"answer_not_in_options": 1, "bad_question": 1, "duplicate_question": 1,
                                           "invalid_json": 1, "no_answer": 1, "not_mcq": 1}
    rejects = _lines(tmp_path / "mixed.mcq.rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects][:2] == [(5, "no_answer"), (6, "answer_not_in_options")]
    assert "没有答案的题" in rejects[0]["raw"]  # nothing is lost


def test_a_generic_stem_with_other_options_is_another_item(tmp_path):
    """Exams reuse stems such as "下列哪项正确？": items are told apart by their options, not dropped."""
    stem = "下列哪项正确？"
    items = [{"question": stem, "options": {"A": f"选项{i}甲", "B": f"选项{i}乙"}, "answer": "A"} for i in range(5)]
    items.append({"question": "下列哪项正确?", "options": {"A": "选项0乙", "B": "选项0甲"}, "answer": "B"})  # item 0
    path = _write(tmp_path / "generic.jsonl", items)
    stats = split_mcq(path, tmp_path, FILES, "s.json", 0.2, 0.2, seed=0)
    assert stats["kept"] == 5 and stats["rejected_by_reason"] == {"duplicate_question": 1}
    reject = _lines(tmp_path / "generic.mcq.rejects.jsonl")[0]
    assert reject["line"] == 6 and "same question and options" in reject["detail"] and "record 1" in reject["detail"]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_empty_or_all_bad_file_is_a_one_line_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    proc = run_script("data/split_mcq_data.py", "--input", empty, "--output_dir", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "0 usable question(s)" in proc.stderr
    questions_only = tmp_path / "cmb_test.json"
    questions_only.write_text(json.dumps([{"question": "问", "option": {"A": "甲", "B": "乙"}}] * 3,
                                         ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match="no_answer=3"):
        split_mcq(questions_only, tmp_path, FILES, "s.json", 0.1, 0.2, seed=0)
