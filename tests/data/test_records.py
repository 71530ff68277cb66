"""Unit tests (in memory) for r1_sft.data.records and r1_sft.data.splits: every normalisation, every reject
reason, the unified and SFT records, the dedup key and the stratified split."""
from __future__ import annotations

from collections import Counter

import pytest

from r1_sft.data import conversion
from r1_sft.data import records as R
from r1_sft.data.records import dedup_key
from r1_sft.data.splits import choose_test, choose_val, percentiles, split_of
from r1_sft.r1_format import format_output, parse_output

ORIGIN = R.Origin("modelscope_r1_data/x.jsonl", "x", 7)


def ms(**overrides) -> dict:
    obj = {"instruction": "", "question": "头痛怎么办？", "think": "先判断有无报警征象。\n",
           "answer": "多休息，必要时就医。", "metrics": {"quality_f1": 0.95}}
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not ...}


def reason_of(fn, *args, **kwargs) -> str:
    with pytest.raises(R.RecordError) as info:
        fn(*args, **kwargs)
    return info.value.reason


# ---- lines ---------------------------------------------------------------------------------

def test_decode_line_strips_bom_and_crlf_and_counts_them():
    norm = Counter()
    assert R.decode_line("\ufeff{}\r\n".encode(), norm) == "{}"
    assert norm == Counter({R.NORM_BOM: 1, R.NORM_CRLF: 1})


def test_decode_line_plain_line_counts_nothing_and_blank_is_none():
    norm = Counter()
    assert R.decode_line(b'{"a": 1}\n', norm) == '{"a": 1}'
    assert R.decode_line(b"  \t\r\n", norm) is None
    assert R.decode_line("\ufeff\n".encode(), norm) is None
    assert norm == Counter()


def test_decode_line_rejects_bytes_that_are_not_utf8():
    assert reason_of(R.decode_line, b'{"question": "\xff\xfe"}\n', Counter()) == R.UNDECODABLE


@pytest.mark.parametrize("text,reason", [
    ('{"question": "x", ', R.INVALID_JSON),
    ('{"metrics": {"quality_f1": NaN}}', R.INVALID_JSON),
    ('{"x": Infinity}', R.INVALID_JSON),
    ("[1, 2]", R.NOT_OBJECT),
    ('"just a string"', R.NOT_OBJECT),
])
def test_parse_object_rejects(text, reason):
    assert reason_of(R.parse_object, text) == reason


# ---- text normalisation --------------------------------------------------------------------

def test_clean_text_normalisations_are_applied_and_counted():
    norm = Counter()
    assert R.clean_text("  第一行\\n第二行\r\n第三行\n", "answer", norm, literal_newlines=True) == \
        "第一行\n第二行\n第三行"
    assert norm == Counter({R.NORM_CRLF: 1, R.NORM_LITERAL_NEWLINE: 1, R.NORM_WHITESPACE: 1})


def test_clean_text_keeps_literal_backslash_n_where_not_asked():
    assert R.clean_text("a\\nb", "question", Counter()) == "a\\nb"


@pytest.mark.parametrize("value,reason", [
    (None, R.MISSING_FIELD), ("", R.EMPTY_FIELD), (" \n\t ", R.WHITESPACE_ONLY),
    (12, R.WRONG_TYPE), (["a"], R.WRONG_TYPE),
])
def test_clean_text_rejects(value, reason):
    assert reason_of(R.clean_text, value, "question", Counter()) == reason


def test_clean_text_optional_field_may_be_missing_or_empty():
    assert R.clean_text(None, "instruction", Counter(), required=False) == ""
    assert R.clean_text("  ", "instruction", Counter(), required=False) == ""


# ---- ModelScope schema ---------------------------------------------------------------------

def test_modelscope_record_is_the_unified_record():
    norm = Counter()
    rec = R.modelscope_record(ms(answer="第一条\\n第二条"), ORIGIN, norm, max_chars=1000)
    assert rec == {"id": "x-7", "source": "modelscope", "instruction": "", "question": "头痛怎么办？",
                   "reasoning": "先判断有无报警征象。", "answer": "第一条\n第二条", "quality_f1": 0.95,
                   "origin": {"file": "modelscope_r1_data/x.jsonl", "line": 7}}
    assert norm == Counter({R.NORM_WHITESPACE: 1, R.NORM_LITERAL_NEWLINE: 1})


def test_modelscope_missing_metrics_gives_null_quality():
    assert R.modelscope_record(ms(metrics=...), ORIGIN, Counter(), 1000)["quality_f1"] is None


@pytest.mark.parametrize("overrides,reason", [
    ({"question": ...}, R.MISSING_FIELD),
    ({"think": None}, R.MISSING_FIELD),
    ({"answer": ""}, R.EMPTY_FIELD),
    ({"think": "  \n  "}, R.WHITESPACE_ONLY),
    ({"question": 3}, R.WRONG_TYPE),
    ({"instruction": ["x"]}, R.WRONG_TYPE),
    ({"metrics": 0.9}, R.WRONG_TYPE),
    ({"metrics": {"quality_f1": "high"}}, R.WRONG_TYPE),
    ({"metrics": {"quality_f1": True}}, R.WRONG_TYPE),
    ({"think": "<think>先想一想"}, R.THINK_TAG),
    ({"answer": "结论</think>答案"}, R.THINK_TAG),
    ({"answer": "结论 </THINK> 答案"}, R.THINK_TAG),
    ({"think": "长" * 990}, R.TOO_LONG),
])
def test_modelscope_rejects(overrides, reason):
    assert reason_of(R.modelscope_record, ms(**overrides), ORIGIN, Counter(), max_chars=1000) == reason


# ---- teacher schema ------------------------------------------------------------------------

def test_teacher_record_joins_steps_and_drops_blank_ones():
    norm = Counter()
    obj = {"question": "咳嗽两周怎么办？", "reasoning": ["第一步", "  ", "第二步\\n细节"], "answer": "就医。"}
    rec = R.teacher_record(obj, R.Origin("r1_generated/001.jsonl", "001", 3), norm, max_chars=1000)
    assert rec["id"] == "001-3" and rec["source"] == "r1_generated" and rec["quality_f1"] is None
    assert rec["reasoning"] == "第一步\n第二步\n细节"
    assert norm[R.NORM_BLANK_STEP] == 1 and norm[R.NORM_LITERAL_NEWLINE] == 1


@pytest.mark.parametrize("reasoning,reason", [
    (..., R.MISSING_FIELD),
    ([], R.WRONG_TYPE),
    ("一段文字", R.WRONG_TYPE),
    (["第一步", 2], R.WRONG_TYPE),
    (["", "  "], R.WHITESPACE_ONLY),
    (["<think>", "第一步"], R.THINK_TAG),
])
def test_teacher_rejects(reasoning, reason):
    obj = {"question": "问", "reasoning": reasoning, "answer": "答"}
    if reasoning is ...:
        del obj["reasoning"]
    assert reason_of(R.teacher_record, obj, ORIGIN, Counter(), max_chars=1000) == reason


# ---- unified -> SFT ------------------------------------------------------------------------

def test_unified_to_sft_uses_the_r1_format_and_puts_instruction_first():
    unified = R.modelscope_record(ms(instruction="请以医生身份回答。"), ORIGIN, Counter(), 1000)
    sft = R.unified_to_sft(unified, ORIGIN, Counter(), 1000)
    assert list(sft) == ["input", "output"]
    assert sft["input"] == "请以医生身份回答。\n\n头痛怎么办？"
    assert sft["output"] == "<think>\n先判断有无报警征象。\n</think>\n\n多休息，必要时就医。"
    assert sft["output"] == format_output("先判断有无报警征象。", "多休息，必要时就医。")
    parsed = parse_output(sft["output"])
    assert (parsed.reasoning, parsed.answer, parsed.think_closed) == \
        ("先判断有无报警征象。", "多休息，必要时就医。", True)
    assert R.validate_sft(sft) == sft


@pytest.mark.parametrize("obj,reason", [
    ({"output": "<think>\na\n</think>\n\nb"}, R.MISSING_FIELD),
    ({"input": "", "output": "<think>\na\n</think>\n\nb"}, R.EMPTY_FIELD),
    ({"input": 1, "output": "<think>\na\n</think>\n\nb"}, R.WRONG_TYPE),
    ({"input": "q", "output": "没有思考块的回答"}, R.BAD_SFT_OUTPUT),
    ({"input": "q", "output": "<think>\n想了一半"}, R.BAD_SFT_OUTPUT),
    ({"input": "q", "output": "<think>\na\n</think>\n\n"}, R.BAD_SFT_OUTPUT),
    ({"input": "q", "output": "<think>\na\n</think>\n\nb</think>"}, R.BAD_SFT_OUTPUT),
])
def test_validate_sft_rejects(obj, reason):
    assert reason_of(R.validate_sft, obj) == reason


def test_rejects_path_sits_beside_the_output(tmp_path):
    assert conversion.rejects_path(tmp_path / "converted_data.jsonl") == tmp_path / "converted_data.rejects.jsonl"


# ---- splits --------------------------------------------------------------------------------

def test_dedup_key_folds_width_case_whitespace_and_punctuation():
    variants = ["高血压患者日常饮食需要注意什么？", "高血压患者 日常饮食需要注意什么?",
                "高血压患者，日常饮食需要注意什么", "高血压患者日常饮食需要注意什么？？\n"]
    assert len({dedup_key(v) for v in variants}) == 1
    assert dedup_key("ＣＯＶＩＤ－１９ 怎么预防？") == dedup_key("covid19怎么预防")
    assert dedup_key("高血压吃什么？") != dedup_key("低血压吃什么？")


def test_choose_val_is_deterministic_and_stratified_by_length():
    n = 200
    lengths = [(i * 37) % 1000 for i in range(n)]
    keys = list(range(10_000, 10_000 + n))
    val = choose_val(lengths, keys, 0.1, seed=42)
    assert val == choose_val(lengths, keys, 0.1, seed=42)
    assert val != choose_val(lengths, keys, 0.1, seed=7)
    assert len(val) == 20
    # Exactly one val record in each of the 20 length-quantile bins (lengths here are distinct).
    order = sorted(range(n), key=lambda i: lengths[i])
    per_bin = [len(set(order[b * 10:(b + 1) * 10]) & val) for b in range(20)]
    assert per_bin == [1] * 20


@pytest.mark.parametrize("n,ratio,expected", [(2, 0.1, 1), (3, 0.9, 2), (10, 0.1, 1), (25, 0.1, 2)])
def test_choose_val_size(n, ratio, expected):
    assert len(choose_val(list(range(n)), list(range(n)), ratio, seed=0)) == expected


def test_choose_test_is_disjoint_from_val_stratified_and_leaves_val_alone():
    n = 200
    lengths = [(i * 37) % 1000 for i in range(n)]
    keys = list(range(10_000, 10_000 + n))
    val = choose_val(lengths, keys, 0.1, seed=42)
    test = choose_test(lengths, keys, val, 0.15, seed=42)
    assert len(test) == 30 and not test & val
    assert test == choose_test(lengths, keys, val, 0.15, seed=42) != choose_test(lengths, keys, val, 0.15, seed=7)
    # One test record in each of 30 length bins of the records val left.
    rest = [i for i in sorted(range(n), key=lambda i: lengths[i]) if i not in val]
    assert [len(set(rest[b * 180 // 30:(b + 1) * 180 // 30]) & test) for b in range(30)] == [1] * 30
    assert choose_test(lengths, keys, val, 0.0, seed=42) == set()
    assert len(choose_test([1, 2, 3], [1, 2, 3], {0}, 0.9, seed=0)) == 1  # one record stays for training
    with pytest.raises(ValueError):
        choose_test([1, 2], [1, 2], {0}, 0.1, seed=0)


@pytest.mark.parametrize("name, split", [("dataset/sft_r1_test.jsonl", "test"), ("test.jsonl", "test"),
                                         ("dataset/sft_r1_val.jsonl", "val"), ("tests/fixtures/eval_sft_val.jsonl", "val"),
                                         ("dataset/train.jsonl", "train"), ("my-test.jsonl", "test"),
                                         ("CMB-val-merge.json", ""), ("contest.jsonl", ""), ("questions.jsonl", "")])
def test_split_of_reads_the_split_a_file_name_declares(name, split):
    assert split_of(name) == split


def test_choose_val_needs_two_records():
    with pytest.raises(ValueError):
        choose_val([5], [1], 0.1, seed=0)


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101))) == {"p50": 50, "p90": 90, "p99": 99, "max": 100}
    assert percentiles([]) == {"p50": 0, "p90": 0, "p99": 0, "max": 0}


# ---- the committed sample inputs -----------------------------------------------------------

def test_committed_sample_inputs_convert_without_a_single_reject(repo, tmp_path):
    """The samples that `make demo` uses are clean: nothing rejected, quirks normalised."""
    import functools

    ms_tally = conversion.convert_jsonl([repo / "modelscope_r1_data" / "r1_data_example.jsonl"],
                               functools.partial(R.modelscope_record, max_chars=16000), tmp_path / "c.jsonl")
    assert ms_tally.kept >= 120 and ms_tally.n_rejected == 0
    assert ms_tally.normalised[R.NORM_LITERAL_NEWLINE] > 0  # the real data's quirk is represented
    teacher_files = sorted((repo / "r1_generated").glob("0*.jsonl"))
    assert [p.name for p in teacher_files] == ["001.jsonl", "002.jsonl", "003.jsonl"]
    for path in teacher_files:
        tally = conversion.convert_jsonl([path], functools.partial(R.teacher_record, max_chars=16000),
                                tmp_path / f"t{path.stem}.jsonl")
        assert tally.kept >= 20 and tally.n_rejected == 0, path



def test_conversion_keeps_a_question_once_whatever_its_instruction(tmp_path):
    """The same question with and without an instruction would otherwise reach both splits."""
    import functools
    import json

    from r1_sft.data.conversion import convert_jsonl
    from r1_sft.data.records import modelscope_record

    rows = [{"instruction": "", "question": "孩子发烧39度怎么办？", "think": "考虑感染。\n", "answer": "及时就医。",
             "metrics": {"quality_f1": 0.95}},
            {"instruction": "请以儿科医生身份回答。", "question": "孩子发烧 39 度怎么办", "think": "考虑感染。",
             "answer": "多喝水，及时就医。", "metrics": {"quality_f1": 0.93}}]
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "converted.jsonl"
    tally = convert_jsonl([src], functools.partial(modelscope_record, max_chars=16000), out)
    assert tally.kept == 1 and dict(tally.rejected) == {"duplicate_question": 1}
    rejected = [json.loads(line) for line in (tmp_path / "converted.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [(2, "duplicate_question")]
    assert "raw.jsonl:1" in rejected[0]["detail"]


def test_reading_a_non_utf8_file_is_a_one_line_user_error(tmp_path):
    from r1_sft.cli import UserError
    from r1_sft.jsonl_io import read_jsonl

    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"input": "a", "output": "b"}\n{"input": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=r"train.jsonl:2: not UTF-8"):
        list(read_jsonl(path))
