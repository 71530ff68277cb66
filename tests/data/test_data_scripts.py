"""Integration tests: the six data scripts run through subprocess on fixtures and hostile files.

Every script is run from a folder outside the repository, as a user might, with outputs in a
temporary folder; assertions are on the files written.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1_sft.data.records import dedup_key
from r1_sft.r1_format import parse_output

from conftest import run_script

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "data"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def ms_line(question: str, think="先分析病因。\n", answer="建议就医。", **extra) -> bytes:
    obj = {"instruction": "", "question": question, "think": think, "answer": answer,
           "metrics": {"quality_f1": 0.93}, **extra}
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


# (raw bytes of one physical line without its "\n", expected reason; None = kept, "blank" = skipped)
HOSTILE_MODELSCOPE = [
    ("\ufeff".encode() + ms_line("胸痛要做什么检查？") + b"\r", None),          # BOM + CRLF
    (b"", "blank"),
    (ms_line("便秘怎么办？", answer="多喝水\\n多吃蔬菜  "), None),              # literal backslash-n
    (b'{"question": "x", ', "invalid_json"),
    (b"[1, 2, 3]", "not_object"),
    (json.dumps({"question": "发烧怎么办？", "think": "想", "metrics": {}}, ensure_ascii=False).encode(),
     "missing_field"),
    (ms_line("咳嗽怎么办？", answer=""), "empty_field"),
    (ms_line("咽痛怎么办？", think="   \n  "), "whitespace_only"),
    (ms_line(123), "wrong_type"),
    (b'{"question": "\xff\xfe", "think": "a", "answer": "b"}', "undecodable"),
    (ms_line("贫血怎么办？", think="长" * 17000), "too_long"),
    (ms_line("腹泻怎么办？", think="<think>先补液"), "think_tag"),
    (ms_line("头晕怎么办？", answer="答案</think>"), "think_tag"),
    (b'{"question": "q", "think": "t", "answer": "a", "metrics": {"quality_f1": NaN}}', "invalid_json"),
    (ms_line("耳鸣怎么办？", metrics={"quality_f1": "high"}), "wrong_type"),
    (b"  \t ", "blank"),
    (ms_line("失眠怎么办？", think="第一步\r\n第二步"), None),                   # CRLF inside a value
    (ms_line("口腔溃疡怎么办？"), None),                                          # last line, no newline
]


def write_lines(path: Path, lines: list[bytes], final_newline: bool = True) -> Path:
    path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
    return path


def assert_one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_hostile_modelscope_file_loses_nothing(tmp_path):
    src = write_lines(tmp_path / "hostile.jsonl", [raw for raw, _ in HOSTILE_MODELSCOPE], final_newline=False)
    out = tmp_path / "out" / "converted.jsonl"
    proc = run_script("data/generated_converted_data.py", "--input", src, "--output", out,
                      cwd=tmp_path, check=True)

    expected_rejects = {i: r for i, (_, r) in enumerate(HOSTILE_MODELSCOPE, 1) if r not in (None, "blank")}
    expected_kept = [i for i, (_, r) in enumerate(HOSTILE_MODELSCOPE, 1) if r is None]
    rejects = read_jsonl(tmp_path / "out" / "converted.rejects.jsonl")
    assert {r["line"]: r["reason"] for r in rejects} == expected_rejects
    assert all(r["file"] == str(src) and r["raw"] and r["detail"] for r in rejects)
    assert any("\\xff" in r["raw"] for r in rejects if r["reason"] == "undecodable")

    kept = read_jsonl(out)
    assert [r["origin"]["line"] for r in kept] == expected_kept
    assert [r["id"] for r in kept] == [f"hostile-{i}" for i in expected_kept]
    non_blank = sum(1 for _, r in HOSTILE_MODELSCOPE if r != "blank")
    assert len(kept) + len(rejects) == non_blank
    by_q = {r["question"]: r for r in kept}
    assert by_q["便秘怎么办？"]["answer"] == "多喝水\n多吃蔬菜"
    assert by_q["失眠怎么办？"]["reasoning"] == "第一步\n第二步"
    assert by_q["胸痛要做什么检查？"]["reasoning"] == "先分析病因。"
    assert all(r["source"] == "modelscope" and r["quality_f1"] == 0.93 for r in kept)

    assert f"[read] {non_blank} non-blank lines (2 blank skipped)" in proc.stdout
    assert f"[kept] {len(kept)} ->" in proc.stdout and f"[rejected] {len(rejects)} ->" in proc.stdout
    for kind in ("bom=1", "crlf=2", "literal_newline=1", "surrounding_whitespace="):
        assert kind in proc.stdout, proc.stdout
    info = json.loads((tmp_path / "out" / "converted.run.json").read_text())
    assert info["counts"]["kept"] == len(kept) and info["config"]["input"] == str(src)


def test_hostile_teacher_files_lose_nothing(tmp_path):
    good = {"question": "哮喘怎么用吸入剂？", "reasoning": ["摇匀", " ", "深吸气后屏气"], "answer": "漱口。"}
    dump = lambda obj: json.dumps(obj, ensure_ascii=False).encode()  # noqa: E731
    write_lines(tmp_path / "001.jsonl", [
        dump(good),
        dump({**good, "reasoning": []}),                       # 2 wrong_type (empty list)
        dump({**good, "reasoning": "一段文字"}),               # 3 wrong_type (not a list)
        dump({**good, "reasoning": ["a", 1]}),                 # 4 wrong_type (not strings)
        dump({**good, "reasoning": ["</think>"]}),             # 5 think_tag
    ])
    write_lines(tmp_path / "002.jsonl", [b"", b"not json", dump({**good, "question": "胃痛怎么办？"})])
    (tmp_path / "notes.txt").write_text("不是教师数据")
    out = tmp_path / "teacher_filtered.jsonl"
    run_script("data/generated_teacher_filtered.py", "--input_dir", tmp_path, "--output", out,
               cwd=tmp_path, check=True)
    # The merge must not read its own previous outputs back in on a re-run.
    proc = run_script("data/generated_teacher_filtered.py", "--input_dir", tmp_path, "--pattern", "*.jsonl",
                      "--output", out, cwd=tmp_path, check=True)
    kept = read_jsonl(out)
    assert [(r["id"], r["reasoning"]) for r in kept] == [("001-1", "摇匀\n深吸气后屏气"),
                                                        ("002-3", "摇匀\n深吸气后屏气")]
    rejects = read_jsonl(tmp_path / "teacher_filtered.rejects.jsonl")
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in rejects] == [
        ("001.jsonl", 2, "wrong_type"), ("001.jsonl", 3, "wrong_type"), ("001.jsonl", 4, "wrong_type"),
        ("001.jsonl", 5, "think_tag"), ("002.jsonl", 2, "invalid_json")]
    assert "[read] 7 non-blank lines (1 blank skipped)" in proc.stdout
    assert "blank_step_dropped=2" in proc.stdout


def sft_line(question: str, reasoning="分析。", answer="回答。") -> bytes:
    return json.dumps({"input": question, "output": f"<think>\n{reasoning}\n</think>\n\n{answer}"},
                      ensure_ascii=False).encode()


def keys_of(path: Path) -> set:
    return {dedup_key(r["input"]) for r in read_jsonl(path)}


def test_split_dedupes_rejects_bad_lines_and_is_deterministic(tmp_path):
    lines = [sft_line(f"问题{i}：第{i}种症状怎么处理？", reasoning="想" * (i * 7 % 50 + 1)) for i in range(60)]
    lines += [
        sft_line("问题3: 第3种症状怎么处理?"),          # 61 duplicate of line 4 (width / punctuation)
        sft_line("问题５：第５种 症状怎么处理？"),       # 62 duplicate of line 6 (full-width digit, space)
        b'{"input": "q", "output": "no think block"}',  # 63 bad_sft_output
        b"{oops",                                       # 64 invalid_json
        "\ufeff".encode() + sft_line("带BOM和CRLF的问题") + b"\r",  # 65 kept, written without BOM / CR
        json.dumps({"input": "多余字段的问题", "output": "<think>\n想\n</think>\n\n答", "source": "x"},
                   ensure_ascii=False).encode(),       # 66 kept as exactly {"input", "output"}
    ]
    src = write_lines(tmp_path / "sft.jsonl", lines)
    files = ("train.jsonl", "val.jsonl", "test.jsonl")
    runs = {}
    for name, seed in (("a", 42), ("b", 42)):  # seed sensitivity: tests/data/test_records.py
        out_dir = tmp_path / name
        proc = run_script("data/split_sft_train.py", "--input", src, "--output_dir", out_dir, "--seed", seed,
                          "--val_ratio", 0.1, cwd=tmp_path, check=True)
        runs[name] = {f: (out_dir / f).read_bytes() for f in files}
    assert runs["a"] == runs["b"]

    out_dir = tmp_path / "a"
    train, val, test = (read_jsonl(out_dir / f) for f in files)
    assert (len(train), len(val), len(test)) == (50, 6, 6)  # --test_ratio defaults to 0.1
    written = b"".join(runs["a"].values())
    assert b"\r" not in written and "\ufeff".encode() not in written and b'"source"' not in written
    assert {"带BOM和CRLF的问题", "多余字段的问题"} <= {r["input"] for r in train + val + test}
    train_keys, val_keys, test_keys = (keys_of(out_dir / f) for f in files)
    assert len(train_keys | val_keys | test_keys) == 62  # no question in two splits
    assert all(parse_output(r["output"]).think_closed and list(r) == ["input", "output"] for r in train + val + test)
    rejects = read_jsonl(out_dir / "sft.split.rejects.jsonl")
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (61, "duplicate_question"), (62, "duplicate_question"), (63, "bad_sft_output"), (64, "invalid_json")]
    assert "line 4" in rejects[0]["detail"] and "line 6" in rejects[1]["detail"]

    stats = json.loads((out_dir / "sft_stats.json").read_text())
    assert (stats["read"], stats["kept"], stats["rejected"]) == (66, 62, 4)
    assert {name: s["records"] for name, s in stats["splits"].items()} == {"train": 50, "val": 6, "test": 6}
    assert stats["splits"]["test"]["file"].endswith("a/test.jsonl")
    assert set(stats["splits"]["test"]["output_chars"]) == {"p50", "p90", "p99", "max"}
    assert (stats["seed"], stats["val_ratio"], stats["test_ratio"]) == (42, 0.1, 0.1)
    assert stats["run"]["config"]["test_file"] == "test.jsonl"
    assert "[train] 50 ->" in proc.stdout and "[val] 6 ->" in proc.stdout and "[test] 6 ->" in proc.stdout


def test_test_ratio_leaves_val_as_it_was_and_zero_writes_an_empty_test_split(tmp_path):
    """Adding the test split took its records from train only: the same seed gives the same val as before."""
    src = write_lines(tmp_path / "sft.jsonl", [sft_line(f"第{i}个问题", reasoning="想" * (i % 9 + 1))
                                               for i in range(40)])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sft_r1_test.jsonl").write_text("stale\n")  # from an earlier, different split
    for name, ratio in (("old", 0), ("new", 0.25)):
        run_script("data/split_stf_r1_data.py", "--input", src, "--output_dir", tmp_path / name,
                   "--test_ratio", ratio, check=True)
    old, new = tmp_path / "old", tmp_path / "new"
    assert (old / "sft_r1_val.jsonl").read_bytes() == (new / "sft_r1_val.jsonl").read_bytes()
    assert (old / "sft_r1_test.jsonl").read_bytes() == b""
    assert len(read_jsonl(new / "sft_r1_test.jsonl")) == 10 and len(read_jsonl(new / "sft_r1_val.jsonl")) == 4
    assert keys_of(new / "sft_r1_train.jsonl") | keys_of(new / "sft_r1_test.jsonl") == keys_of(old / "sft_r1_train.jsonl")


@pytest.mark.parametrize("args, fragments", [
    (("--test_ratio", "1"), ("--test_ratio 1.0", "below 1")),
    (("--test_ratio", "-0.1"), ("--test_ratio -0.1", "at least 0")),
    (("--val_ratio", "0.5", "--test_ratio", "0.5"), ("--val_ratio 0.5 + --test_ratio 0.5", "leave records for training")),
])
def test_ratios_that_leave_no_training_data_are_one_line_errors(tmp_path, args, fragments):
    src = write_lines(tmp_path / "sft.jsonl", [sft_line(f"第{i}个问题") for i in range(10)])
    proc = run_script("data/split_sft_train.py", "--input", src, "--output_dir", tmp_path / "o", *args)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "o" / "train.jsonl").exists()


def test_three_records_give_one_per_split_and_fewer_need_test_ratio_zero(tmp_path):
    three = write_lines(tmp_path / "three.jsonl", [sft_line("问题一"), sft_line("问题二"), sft_line("问题三")])
    run_script("data/split_stf_r1_data.py", "--input", three, "--output_dir", tmp_path / "s", check=True)
    assert [len(read_jsonl(tmp_path / "s" / f"sft_r1_{n}.jsonl")) for n in ("train", "val", "test")] == [1, 1, 1]

    two = write_lines(tmp_path / "two.jsonl", [sft_line("问题一"), sft_line("问题二")])
    proc = run_script("data/split_stf_r1_data.py", "--input", two, "--output_dir", tmp_path / "t")
    assert_one_line_error(proc, "two.jsonl", "2 usable record", "at least 3", "--test_ratio 0")
    run_script("data/split_stf_r1_data.py", "--input", two, "--output_dir", tmp_path / "t", "--test_ratio", 0,
               check=True)
    assert [len(read_jsonl(tmp_path / "t" / f"sft_r1_{n}.jsonl")) for n in ("train", "val", "test")] == [1, 1, 0]

    one = write_lines(tmp_path / "one.jsonl", [sft_line("问题一"), sft_line("问题一？")])
    proc = run_script("data/split_stf_r1_data.py", "--input", one, "--output_dir", tmp_path / "o", "--test_ratio", 0)
    assert_one_line_error(proc, "one.jsonl", "1 usable record", "at least 2")
    assert not (tmp_path / "o" / "sft_r1_train.jsonl").exists()


def _script_config(path: str):
    """The constants dataclass of a stage script, imported from its file (its main does not run)."""
    import importlib.util
    import sys

    name = "stage_script_" + path.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name].Config


def test_the_two_split_scripts_share_their_defaults_and_differ_only_in_file_names():
    from r1_sft.data.splits import SplitConfig

    shared = ("output_dir", "val_ratio", "test_ratio", "seed")
    for script in ("data/split_stf_r1_data.py", "data/split_sft_train.py"):
        config = _script_config(script)
        assert issubclass(config, SplitConfig)
        # Not restated in the script: an edit of SplitConfig changes both stages.
        assert not set(shared) & set(config.__dict__.get("__annotations__", {})), script
        assert all(getattr(config(), f) == getattr(SplitConfig(), f) for f in shared)
    r1, teacher = _script_config("data/split_stf_r1_data.py")(), _script_config("data/split_sft_train.py")()
    assert (r1.test_file, teacher.test_file) == ("sft_r1_test.jsonl", "test.jsonl")


def test_training_reads_train_and_val_and_evaluation_defaults_to_test():
    """The files the split writes are the ones each stage reads by default; nothing trains on test."""
    r1 = _script_config("data/split_stf_r1_data.py")()
    teacher = _script_config("data/split_sft_train.py")()
    sft = _script_config("scripts/train_stf_r1_train_val.py")()
    distill = _script_config("scripts/train_distill.py")()
    evaluation = _script_config("scripts/evaluate_model.py")()

    def split_path(cfg, name):
        return f"{cfg.output_dir}/{getattr(cfg, name)}"

    assert (sft.train_file, sft.val_file) == (split_path(r1, "train_file"), split_path(r1, "val_file"))
    assert (distill.train_file, distill.val_file) == (split_path(teacher, "train_file"), split_path(teacher, "val_file"))
    test_files = {split_path(r1, "test_file"), split_path(teacher, "test_file")}
    for cfg in (sft, distill):
        assert not test_files & {v for v in vars(cfg).values() if isinstance(v, str)}
    assert evaluation.data == split_path(r1, "test_file") == "dataset/sft_r1_test.jsonl"


def test_missing_input_and_nothing_kept_are_one_line_errors(tmp_path):
    proc = run_script("data/generated_converted_data.py", "--input", tmp_path / "nope.jsonl",
                      "--output", tmp_path / "c.jsonl")
    assert_one_line_error(proc, "nope.jsonl", "not found")

    bad = write_lines(tmp_path / "bad.jsonl", [b"{", b"[]"])
    out = tmp_path / "c.jsonl"
    proc = run_script("data/generated_converted_data.py", "--input", bad, "--output", out)
    assert_one_line_error(proc, "bad.jsonl", "no usable record", "c.rejects.jsonl")
    assert not out.exists()  # nothing half-made for the next stage to read
    assert [r["reason"] for r in read_jsonl(tmp_path / "c.rejects.jsonl")] == ["invalid_json", "not_object"]


def test_full_chain_on_fixtures_from_another_folder(tmp_path):
    """Both branches end to end, run from another folder with paths typed relative to it."""
    conv, sft, tf, sft_t = (tmp_path / n for n in ("conv.jsonl", "sft_r1.jsonl", "tf.jsonl", "sft_train.jsonl"))
    steps = [
        ("data/generated_converted_data.py", "--input", FIXTURES / "modelscope_small.jsonl", "--output", "conv.jsonl"),
        ("data/generated_stf_r1_data.py", "--input", "conv.jsonl", "--output", "sft_r1.jsonl"),
        ("data/split_stf_r1_data.py", "--input", "sft_r1.jsonl", "--output_dir", "ds"),
        ("data/generated_teacher_filtered.py", "--input_dir", FIXTURES / "teacher", "--output", "tf.jsonl"),
        ("data/build_sft_dataset.py", "--input", "tf.jsonl", "--output", "sft_train.jsonl"),
        ("data/split_sft_train.py", "--input", "sft_train.jsonl", "--output_dir", "ds"),
    ]
    for script, *args in steps:
        run_script(script, *args, cwd=tmp_path, check=True)

    unified = read_jsonl(conv)
    assert len(unified) == 7 and unified[0]["origin"] == {"file": "tests/fixtures/data/modelscope_small.jsonl",
                                                          "line": 1}
    assert list(unified[0]) == ["id", "source", "instruction", "question", "reasoning", "answer",
                                "quality_f1", "origin"]
    # Line 8 repeats line 1's question (full-width "?" vs "?"): rejected at conversion, with its line.
    assert [(r["line"], r["reason"]) for r in read_jsonl(tmp_path / "conv.rejects.jsonl")] == [
        (8, "duplicate_question")]
    sft_records = read_jsonl(sft)
    assert len(sft_records) == 7
    assert sft_records[2]["input"] == "请以全科医生的身份回答。\n\n孩子发烧38.5℃需要马上去医院吗？"
    for u, s in zip(unified, sft_records):
        assert s["output"] == f"<think>\n{u['reasoning']}\n</think>\n\n{u['answer']}"
    assert "\\n" not in sft_records[1]["output"]  # the literal backslash-n became a newline

    ds = tmp_path / "ds"
    assert [len(read_jsonl(ds / f"sft_r1_{n}.jsonl")) for n in ("train", "val", "test")] == [5, 1, 1]
    teacher = read_jsonl(tf)
    assert len(teacher) == 5 and {r["source"] for r in teacher} == {"r1_generated"}
    assert [len(read_jsonl(ds / f"{n}.jsonl")) for n in ("train", "val", "test")] == [3, 1, 1]
    assert json.loads((ds / "sft_r1_stats.json").read_text())["rejected_by_reason"] == {}
    assert (ds / "sft_stats.json").is_file() and (ds / "sft_train.split.rejects.jsonl").is_file()


# ---------------------------------------------------------------- paths, hints and logs (issue 14)

def test_typed_paths_resolve_from_the_current_folder_and_defaults_from_the_repo(tmp_path, repo):
    work = tmp_path / "work"
    work.mkdir()
    write_lines(work / "mydata.jsonl", [ms_line("胸痛要做什么检查？"), ms_line("便秘怎么办？")])
    proc = run_script("data/generated_converted_data.py", "--input", "mydata.jsonl", "--output", "out.jsonl",
                      cwd=work, check=True)
    assert [r["question"] for r in read_jsonl(work / "out.jsonl")] == ["胸痛要做什么检查？", "便秘怎么办？"]
    assert json.loads((work / "out.run.json").read_text())["config"]["input"] == str(work / "mydata.jsonl")
    assert not (repo / "out.jsonl").exists()

    # Not typed: the default input is the repository's sample, wherever the command runs.
    proc = run_script("data/generated_converted_data.py", "--output", "sample.jsonl", cwd=work, check=True)
    assert "from modelscope_r1_data/r1_data_example.jsonl" in proc.stdout
    assert read_jsonl(work / "sample.jsonl")

    # The split's file names stay inside the (typed, relative) output folder.
    sft = write_lines(work / "sft.jsonl", [sft_line("问题一"), sft_line("问题二"), sft_line("问题三")])
    run_script("data/split_sft_train.py", "--input", sft.name, "--output_dir", "ds", "--train_file", "tr.jsonl",
               cwd=work, check=True)
    assert (work / "ds" / "tr.jsonl").is_file() and (work / "ds" / "val.jsonl").is_file()
    assert not (work / "tr.jsonl").exists()


@pytest.mark.parametrize("script, flag", [("data/generated_converted_data.py", "--input"),
                                          ("data/split_stf_r1_data.py", "--input"),
                                          ("data/generated_teacher_filtered.py", "--input_dir")])
def test_a_missing_input_error_shows_the_absolute_path_tried(tmp_path, script, flag):
    proc = run_script(script, flag, "nope", "--output" if "split" not in script else "--output_dir", "o",
                      cwd=tmp_path)
    assert_one_line_error(proc, f"{tmp_path / 'nope'}: ", "not found")


def test_gbk_and_json_array_files_get_the_fix_in_the_summary_and_the_error(tmp_path):
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes(ms_line("胸痛要做什么检查？").decode().encode("gbk") + b"\n")
    proc = run_script("data/generated_converted_data.py", "--input", gbk, "--output", tmp_path / "g.jsonl")
    assert_one_line_error(proc, "undecodable=1", "iconv -f GBK -t UTF-8 in.jsonl > out.jsonl")

    array = [json.loads(ms_line("胸痛要做什么检查？")), json.loads(ms_line("便秘怎么办？"))]
    pretty = tmp_path / "array.json"
    pretty.write_text(json.dumps(array, ensure_ascii=False, indent=2), encoding="utf-8")
    proc = run_script("data/generated_converted_data.py", "--input", pretty, "--output", tmp_path / "a.jsonl")
    assert_one_line_error(proc, "not_object=", "one JSON object per line", "jq -c '.[]'")

    mixed = write_lines(tmp_path / "mixed.jsonl", [ms_line("咳嗽怎么办？"), gbk.read_bytes().rstrip(),
                                                   json.dumps(array, ensure_ascii=False).encode()])
    proc = run_script("data/generated_converted_data.py", "--input", mixed, "--output", tmp_path / "m.jsonl",
                      check=True)
    hints = [line for line in proc.stdout.splitlines() if line.startswith("[hint]")]
    assert len(hints) == 2 and "iconv -f GBK -t UTF-8" in hints[0] and "one JSON object per line" in hints[1]


CHATTER = ("gemm_4bit", "pip install kernels", "Warning", "warnings.warn", "| WARNING |", "Traceback")


@pytest.mark.parametrize("script, args", [
    ("data/generated_converted_data.py", ("--input", FIXTURES / "modelscope_small.jsonl", "--output", "c.jsonl")),
    ("scripts/chat_with_model.py", ("--help",)),
])
def test_output_to_a_file_has_no_progress_bars_and_no_library_chatter(tmp_path, script, args, repo):
    """As `python script ... > log 2>&1`: the log is plain lines a person reads."""
    import subprocess
    import sys

    log = tmp_path / "log.txt"
    with open(log, "wb") as fh:
        proc = subprocess.run([sys.executable, str(repo / script), *map(str, args)], cwd=tmp_path, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    assert not [word for word in CHATTER if word in text], text
    assert max(len(line) for line in text.splitlines()) <= 200, text  # no 1,500-character config line
    if "--help" in args:
        assert "--think, --no_think" in text and "[THINK]" not in text
    else:
        assert "[kept] 7 ->" in text and "[config]\n  input " in text
