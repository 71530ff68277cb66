"""Multiple-choice benchmark files: CMB-Exam, CMExam, MedQA-MCMLE and the project's own shape.

The shape is detected from the fields of each record (a CSV is CMExam), so ``--data`` can point at
a benchmark's file as published:

* CMB-Exam (github.com/FreedomIntelligence/CMB), JSON array or JSONL:
  ``{"exam_type", "exam_class", "exam_subject", "question", "answer", "question_type", "option": {"A": ...}}``,
  question_type 单项选择题 / 多项选择题, answer "C" or "ABD". Its test questions ship without
  answers (they are in a separate file), so use CMB-val or merge the answers in by id.
* CMExam (github.com/williamliujl/CMExam), CSV with columns ``Question``, ``Options`` (one option
  per line, ``A xxx``), ``Answer``, ``Explanation``; rows without an answer are skipped.
* MedQA-MCMLE (github.com/jind11/MedQA, the Mainland Chinese questions), JSONL:
  ``{"question", "options": {"A": ...}, "answer": <option text>, "answer_idx": "E", "meta_info"}``.
* The project's own JSONL: ``{"id", "question", "options": {"A": ...}, "answer": "B"}``
  (optional ``question_type``, ``exam_type``, ``exam_class`` or ``subject``: the task line is then CMB's).

Each record becomes an ``McqRecord``; ``group`` (CMB exam_class, MedQA meta_info, a CMExam
annotation column where the file has one) gives the per-group accuracy in the report.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from r1_sft.answer_reader import normalize_gold
from r1_sft.cli import UserError
from r1_sft.data.records import RecordError
from r1_sft.jsonl_io import read_jsonl
from r1_sft.paths import display_path
from r1_sft.r1_format import build_user_text

SHAPES = ("cmb", "cmexam", "medqa", "project")
# Reject reasons of a multiple-choice record (the data stage's rejects file; RecordError codes).
NOT_MCQ = "not_mcq"                              # no shape recognised
NO_ANSWER = "no_answer"                          # answer missing or empty
BAD_QUESTION = "bad_question"                    # no question text, or fewer than two options
ANSWER_NOT_IN_OPTIONS = "answer_not_in_options"  # gold letters not all among the options
SINGLE, MULTI = "单项选择题", "多项选择题"
# CMExam's question-wise annotations, if the CSV carries them (first one present is the group).
CMEXAM_GROUP_COLUMNS = ("Medical Discipline", "Clinical Department", "Disease Group", "Competency")


@dataclass(frozen=True)
class McqRecord:
    id: str
    question: str
    options: dict[str, str]  # {"A": text, ...}, empty options dropped
    answer: str              # gold letters, sorted: "C", "ABD"
    multi: bool              # several correct letters (declared question_type wins over the answer's length)
    group: str               # exam class / subject / meta_info; "" when the file has none
    shape: str               # one of SHAPES
    instruction: str         # the task line put before the question in the user turn


GENERIC_INSTRUCTION = "以下是一道医学选择题（可能有一个或多个正确选项）。请先思考，最后给出正确选项的字母，例如：答案：B。"


def _instruction(question_type: str, exam_type: str = "", exam_class: str = "") -> str:
    """CMB's own task line when the record says its type (no hint taken from the gold answer)."""
    if question_type not in (SINGLE, MULTI):
        return GENERIC_INSTRUCTION
    where = f"中国{exam_type}中{exam_class}考试的" if exam_type and exam_class else ""
    count = "只有一个正确选项" if question_type == SINGLE else "有两个或两个以上正确选项"
    return f"以下是{where}一道{question_type}（{count}）。请先思考，最后给出正确选项的字母，例如：答案：B。"


def read_raw(path: Path) -> Iterator[dict]:
    """The records of a CSV, a JSON array or a JSONL file, as dicts."""
    if not path.is_file():
        raise UserError(f"{display_path(path)}: file not found (pass the benchmark file, e.g. CMB-val-merge.json)")
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            yield from csv.DictReader(fh)
        return
    with open(path, encoding="utf-8-sig") as fh:
        head = fh.read(256).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{display_path(path)}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        for index, rec in enumerate(data, 1):
            if not isinstance(rec, dict):
                raise UserError(f"{display_path(path)}: item {index} of the JSON array is not an object")
            yield rec
        return
    yield from read_jsonl(path)


def detect_shape(rec: dict) -> str | None:
    if isinstance(rec.get("option"), dict):
        return "cmb"
    if "Question" in rec and "Options" in rec:
        return "cmexam"
    if isinstance(rec.get("options"), dict) and "answer_idx" in rec:
        return "medqa"
    if isinstance(rec.get("options"), dict):
        return "project"
    return None


def _clean_options(options: dict) -> dict[str, str]:
    return {str(k).strip().upper(): str(v).strip() for k, v in options.items()
            if v is not None and str(v).strip() and re.fullmatch(r"[A-Za-z]", str(k).strip())}


def parse_cmexam_options(text: str) -> dict[str, str]:
    """``"A 粉红色泡沫痰\\nB 铁锈色痰"`` -> {"A": "粉红色泡沫痰", "B": "铁锈色痰"}."""
    options = {}
    for line in (text or "").splitlines():
        m = re.match(r"\s*([A-Za-z])\s*[.．、:：)）]?\s*(.*\S)", line)
        if m:
            options[m.group(1).upper()] = m.group(2)
    return options


def to_record(rec: dict, shape: str, index: int) -> McqRecord | None:
    """One McqRecord, or None when the record has no answer (skipped and counted)."""
    rec_id = str(rec.get("id", index))
    if shape == "cmb":
        question, options, answer = rec.get("question"), _clean_options(rec["option"]), rec.get("answer")
        qtype = str(rec.get("question_type") or "")
        group = str(rec.get("exam_class") or rec.get("exam_subject") or "")
        instruction = _instruction(qtype, str(rec.get("exam_type") or ""), str(rec.get("exam_class") or ""))
    elif shape == "cmexam":
        question, options, answer = rec.get("Question"), parse_cmexam_options(rec.get("Options") or ""), rec.get("Answer")
        qtype = ""
        group = next((str(rec[c]).strip() for c in CMEXAM_GROUP_COLUMNS if str(rec.get(c) or "").strip()), "")
        instruction = GENERIC_INSTRUCTION
    elif shape == "medqa":
        question, options = rec.get("question"), _clean_options(rec["options"])
        answer = rec.get("answer_idx")
        if not answer and isinstance(rec.get("answer"), str):  # only the option text: find its letter
            answer = next((k for k, v in options.items() if v == rec["answer"].strip()), None)
        qtype, group, instruction = "", str(rec.get("meta_info") or ""), GENERIC_INSTRUCTION
    else:
        question, options, answer = rec.get("question"), _clean_options(rec["options"]), rec.get("answer")
        qtype = str(rec.get("question_type") or "")
        group = str(rec.get("exam_class") or rec.get("subject") or "")
        instruction = _instruction(qtype, str(rec.get("exam_type") or ""), str(rec.get("exam_class") or ""))
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return None
    if not isinstance(question, str) or not question.strip() or len(options) < 2:
        raise RecordError(BAD_QUESTION, "needs a question and at least two options")
    gold = normalize_gold(str(answer))
    if not gold or not set(gold) <= set(options):
        raise RecordError(ANSWER_NOT_IN_OPTIONS,
                          f"answer {answer!r} is not made of the option letters {''.join(sorted(options))}")
    multi = qtype == MULTI if qtype in (SINGLE, MULTI) else len(gold) > 1
    return McqRecord(rec_id, question.strip(), dict(sorted(options.items())), gold, multi, group, shape, instruction)


def question_with_options(record: McqRecord) -> str:
    """The question followed by one ``A. text`` line per option (as reports show it)."""
    return record.question + "\n" + "\n".join(f"{k}. {v}" for k, v in record.options.items())


def mcq_user_text(record: McqRecord) -> str:
    """The user turn for a multiple-choice question: its instruction (state the answer letter), then the
    question with its options. One definition for evaluation and GRPO training."""
    return build_user_text(question_with_options(record), record.instruction)


def load_mcq(path: Path, num_samples: int = 0) -> tuple[list[McqRecord], dict]:
    """The first ``num_samples`` answerable records (0 = all) and ``{"shapes": {shape: n}, "skipped": n}``."""
    records: list[McqRecord] = []
    shapes: dict[str, int] = {}
    skipped = 0
    for index, rec in enumerate(read_raw(path), 1):
        where = f"{display_path(path)}: record {index}"
        shape = detect_shape(rec)
        if shape is None:
            raise UserError(f"{where}: not a multiple-choice record (expected CMB-Exam \"option\", MedQA "
                            f"\"options\"+\"answer_idx\", CMExam CSV \"Question\"/\"Options\", or "
                            f"{{\"question\", \"options\", \"answer\"}}; fields here: {', '.join(list(rec)[:8])})")
        try:
            item = to_record(rec, shape, index)
        except RecordError as exc:
            raise UserError(f"{where} ({shape}): {exc.detail}") from None
        if item is None:
            skipped += 1
            continue
        shapes[shape] = shapes.get(shape, 0) + 1
        records.append(item)
        if num_samples and len(records) >= num_samples:
            break
    if not records:
        hint = (" (CMB's test questions ship without answers: use CMB-val, or merge CMB-test-choice-answer.json "
                "in by id)" if skipped else "")
        raise UserError(f"{display_path(path)}: no records with an answer to evaluate ({skipped} without one){hint}")
    return records, {"shapes": shapes, "skipped": skipped}
