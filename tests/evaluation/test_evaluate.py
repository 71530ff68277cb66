"""Evaluation stage on the tiny model: files written and parseable, decoding protocol, base-only, batch
invariance (fp32), --score, mcq on every benchmark shape, vLLM arguments (stand-in module), compare."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import REPO, run_script

SFT_VAL = REPO / "tests" / "fixtures" / "eval_sft_val.jsonl"
MCQ = REPO / "tests" / "fixtures" / "mcq_sample.jsonl"  # the project's own shape, 24 original questions
BENCH = REPO / "tests" / "fixtures" / "benchmarks"  # original questions in CMB-Exam, CMExam and MedQA-MCMLE shapes
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a 0.5M-parameter model runs faster on one thread of a busy CPU
SCORES = {"rouge1", "rouge2", "rougeL", "bleu4"}
BLOCK_KEYS = {"answer", "full", "format", "repetition", "tokens_per_s", "n"}  # kept: people script against them
NEW_KEYS = {"outcome", "over_answered", "n_samples", "spread"}
OUTCOMES = {"answered", "cut_off", "stopped_without_answer"}


def _evaluate(*args, **kwargs):
    return run_script("scripts/evaluate_model.py", *args, env=ONE_THREAD, **kwargs)


@pytest.fixture(scope="module")
def adapter_dir(random_adapter) -> Path:
    return random_adapter


@pytest.fixture(scope="module")
def eval_run(tiny_model_dir, adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = _evaluate("--base_model", tiny_model_dir, "--adapter", adapter_dir, "--data", SFT_VAL,
                     "--num_samples", "4", "--n_samples", "2", "--batch_size", "4", "--max_new_tokens", "24",
                     "--output_dir", out, "--run_name", "run", cwd="/")  # any current directory works
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run", proc


def _assert_block(block: dict, n: int, n_samples: int = 1):
    assert BLOCK_KEYS | NEW_KEYS <= set(block)
    assert set(block["answer"]) == set(block["full"]) == SCORES
    assert set(block["format"]) == {"think_closed", "answer_nonempty", "eos"}
    assert set(block["outcome"]) == OUTCOMES and sum(block["outcome"].values()) == pytest.approx(1.0)
    values = [*block["answer"].values(), *block["full"].values(), *block["format"].values(), block["repetition"]]
    assert all(0.0 <= v <= 1.0 for v in values), block
    assert block["n"] == n and block["n_samples"] == n_samples
    assert 0 <= block["over_answered"]["n"] <= n * n_samples
    if n_samples > 1:
        assert set(block["spread"]["answer"]) == SCORES and block["spread"]["answer"]["rouge1"] >= 0
    else:
        assert block["spread"] is None


def test_every_output_file_is_written_and_parseable(eval_run):
    run_dir, _ = eval_run
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(p["model"], p["sample"]) for p in preds] == \
        [("base", 0)] * 4 + [("base", 1)] * 4 + [("tuned", 0)] * 4 + [("tuned", 1)] * 4
    # 4 of the file's 10 questions, a seeded random draw, in the file's order (not the length order)
    file_questions = [json.loads(line)["input"] for line in SFT_VAL.read_text(encoding="utf-8").splitlines()]
    asked = [p["question"] for p in preds[:4]]
    assert len(set(asked)) == 4 and asked == sorted(asked, key=file_questions.index)
    for p in preds:
        assert {"model", "id", "question", "reference", "prediction", "reasoning", "answer", "metrics",
                "outcome", "new_tokens", "stopped_by_eos"} <= set(p)
        assert "</think>" not in p["reference"] and p["reference"]  # the reference answer, parsed
        assert not p["prediction"].startswith("<think>")  # generation starts inside the think block
        assert set(p["metrics"]["answer"]) == SCORES and p["outcome"] in OUTCOMES
        assert p["outcome"] != "cut_off" or (p["new_tokens"] == 24 and not p["stopped_by_eos"])
    assert [p["prediction"] for p in preds[:8]] != [p["prediction"] for p in preds[8:]]  # the adapter was applied

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base", "tuned"]
    for block in summary["models"].values():
        _assert_block(block, 4, n_samples=2)
        assert block["tokens_per_s"] > 0
    assert set(summary["lengths"]["tuned"]) == {"reasoning_chars", "answer_chars", "new_tokens"}
    # the decoding protocol is recorded as generate got it: R1 sampling by default, top-k off (0), with its seed
    assert summary["decoding"] == {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 0, "seed": 42,
                                   "n_samples": 2, "max_new_tokens": 24, "backend": "hf", "batch_size": 4}

    # The file scored and what its split means: this fixture is named as a validation split.
    assert summary["data"] == {"file": "tests/fixtures/eval_sft_val.jsonl", "split": "val", "questions": 4, "of": 10,
                               "seed": 42, "drawn": "random"}
    # every headline metric with its uncertainty over the 4 questions, and tuned minus base paired by question
    for block in summary["models"].values():
        assert {"rougeL", "bleu4", "think_closed", "answered", "eos"} <= set(block["stats"])
        for st in block["stats"].values():
            assert set(st) == {"value", "se", "ci95", "n"} and st["n"] == 4
            assert st["ci95"][0] <= st["value"] <= st["ci95"][1]
    assert list(summary["paired"]) == ["tuned-base"]
    for metric, d in summary["paired"]["tuned-base"].items():
        assert set(d) == {"diff", "ci95", "p_value", "method", "distinguishable"} and 0 < d["p_value"] <= 1
        assert d["diff"] == pytest.approx(summary["models"]["tuned"]["stats"][metric]["value"]
                                          - summary["models"]["base"]["stats"][metric]["value"])

    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "(validation split: it chose the best checkpoint" in report and "optimistic" in report
    assert "| metric | base | tuned | tuned - base |" in report and "## Examples" in report
    assert "sampling T=0.6 top_p=0.95 seed=42, 2 samples/question" in report and " ± " in report
    assert "4 of 10 questions, seed 42, random" in report and "## Uncertainty (the question is the unit)" in report
    assert "tuned − base [95% CI], p" in report and "distinguishable from 0" in report
    assert "`cut_off` = no answer, generation hit max_new_tokens" in report
    rows = list(csv.reader((run_dir / "report.csv").open(encoding="utf-8")))
    assert rows[0] == ["metric", "base", "tuned", "base sd", "tuned sd"]
    by_label = {r[0]: r[1:] for r in rows[1:]}
    assert float(by_label["answer rouge1"][0]) == pytest.approx(summary["models"]["base"]["answer"]["rouge1"])
    assert {"outcome answered", "outcome cut_off", "outcome stopped_without_answer",
            "over answered: answer rouge1"} <= set(by_label)
    assert (run_dir / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    assert info["config"]["max_new_tokens"] == 24


def test_prints_the_table_progress_with_eta_and_merges_the_adapter(eval_run):
    _, proc = eval_run
    assert "| metric | base | tuned | tuned - base |" in proc.stdout
    assert "| format think_closed |" in proc.stdout and "[write]" in proc.stdout
    assert "[tuned] adapter merged into the base weights in memory" in proc.stdout  # fp32, not 4-bit
    assert "[base] batch 1/2: 4/8 outputs" in proc.stdout and "ETA" in proc.stdout


def test_chart_rows_split_by_direction():
    from r1_sft.evaluation.report import LOWER_IS_BETTER, table_rows

    block = {"answer": {k: 0.5 for k in SCORES}, "full": {k: 0.5 for k in SCORES},
             "format": {"think_closed": 1.0, "answer_nonempty": 1.0, "eos": 1.0}, "repetition": 0.1,
             "outcome": {"answered": 1.0, "cut_off": 0.0, "stopped_without_answer": 0.0},
             "over_answered": {"answer": {k: 0.5 for k in SCORES}, "n": 1}, "tokens_per_s": 1.0, "n": 1}
    labels = [label for label, _, _ in table_rows({"models": {"base": block}})]
    assert set(LOWER_IS_BETTER) <= set(labels)  # repetition and the two no-answer rates go to the right panel


def test_batch_size_does_not_change_greedy_outputs(tiny_model_dir, one_thread):
    import torch
    from transformers import set_seed

    from r1_sft.inference.generation import generate_responses, generate_with_stats
    from r1_sft.model.loading import load_model

    model, tokenizer = load_model(tiny_model_dir, device="cpu")  # float32 on CPU: the one case where it holds
    assert next(model.parameters()).dtype == torch.float32
    questions = [json.loads(line)["input"] for line in SFT_VAL.read_text(encoding="utf-8").splitlines()][:8]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    assert len({len(tokenizer(q)["input_ids"]) for q in questions}) > 3  # batches really are padded
    one, _ = generate_with_stats(model, tokenizer, conversations, max_new_tokens=16, batch_size=1, do_sample=False)
    eight, stats = generate_with_stats(model, tokenizer, conversations, max_new_tokens=16, batch_size=8,
                                       do_sample=False)
    assert [g.text for g in one] == [g.text for g in eight]
    assert [g.new_tokens for g in one] == [g.new_tokens for g in eight]
    assert stats.new_tokens == sum(g.new_tokens for g in eight) and stats.tokens_per_s > 0
    alone = generate_responses(model, tokenizer, conversations[3:4], max_new_tokens=16, do_sample=False)
    assert alone[0].text == eight[3].text  # results come back in the caller's order
    # sampling (the default) with a fixed seed is reproducible
    sampled = []
    for _ in range(2):
        set_seed(42)
        sampled.append([g.text for g in generate_responses(model, tokenizer, conversations[:4], max_new_tokens=12)])
    assert sampled[0] == sampled[1]



def test_score_mode_scores_a_file_without_a_model(tmp_path):
    preds = tmp_path / "outputs.jsonl"
    reference = "<think>\n考虑病毒感染。\n</think>\n\n多喝水，注意休息，高热不退请就医。"
    preds.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prediction": "考虑病毒感染。\n</think>\n\n多喝水，注意休息，高热不退请就医。", "reference": reference},
        {"prediction": "考虑病毒感染，多喝水", "reference": reference},  # think never closed: no answer
    ]) + "\n", encoding="utf-8")
    proc = _evaluate("--score", preds, "--base_model", tmp_path / "no_such_model")
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = json.loads((tmp_path / "outputs.summary.json").read_text(encoding="utf-8"))
    assert BLOCK_KEYS <= set(block)
    assert block["answer"]["rouge1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert block["over_answered"]["answer"]["rouge1"] == pytest.approx(1.0) and block["over_answered"]["n"] == 1
    assert block["format"]["think_closed"] == 0.5
    assert block["format"]["eos"] is None and block["tokens_per_s"] is None and block["n"] == 2
    assert '"rouge1"' in proc.stdout


def test_mcq_task_reports_accuracy(tiny_model_dir, tmp_path, one_thread):
    from r1_sft.evaluation.questions import load_items
    from r1_sft.evaluation.run import EvalConfig, run_evaluation

    assert len(load_items(MCQ, "mcq")) == 24  # the whole fixture is accepted
    run_evaluation(EvalConfig(task="mcq", data=str(MCQ), num_samples=3, first_questions=True, adapter="",
                              base_model=str(tiny_model_dir), max_new_tokens=16, output_dir=str(tmp_path), run_name="mcq"))
    summary = json.loads((tmp_path / "mcq" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base"]  # no adapter: base alone
    block = summary["models"]["base"]
    assert 0.0 <= block["accuracy"] <= 1.0 and block["n"] == 3 and "answer" not in block
    assert block["n_single"] + block["n_multi"] == 3 and "accuracy_single" in block and "accuracy_multi" in block
    preds = [json.loads(line) for line in (tmp_path / "mcq" / "predictions.jsonl").open(encoding="utf-8")]
    assert [p["reference"] for p in preds] == ["D", "C", "E"]  # --first_questions: the file's first 3
    assert summary["data"]["drawn"] == "first N" and summary["data"]["of"] == 24
    assert all("choice" in p and isinstance(p["correct"], bool) for p in preds)
    assert "A. " in preds[0]["question"] and "E. " in preds[0]["question"]  # options shown to the model


def test_benchmark_files_are_read_in_every_shape(tmp_path):
    from r1_sft.cli import UserError
    from r1_sft.data.benchmarks import load_mcq, to_record
    from r1_sft.evaluation.questions import load_items

    cmb, counts = load_mcq(BENCH / "cmb_exam.json")
    assert counts == {"shapes": {"cmb": 6}, "skipped": 0}
    assert [r.answer for r in cmb] == ["C", "AB", "C", "ABD", "C", "B"]
    assert [r.multi for r in cmb] == [False, True, False, True, False, False]
    assert cmb[0].group == "执业医师" and "以下是中国医师考试中执业医师考试的一道单项选择题" in cmb[0].instruction
    # the same records as JSONL are the same shape
    jsonl = tmp_path / "cmb.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in
                             json.loads((BENCH / "cmb_exam.json").read_text(encoding="utf-8"))), encoding="utf-8")
    assert [r.answer for r in load_mcq(jsonl)[0]] == [r.answer for r in cmb]

    cmexam, counts = load_mcq(BENCH / "cmexam.csv")
    assert counts == {"shapes": {"cmexam": 4}, "skipped": 1}  # the row without an answer is skipped, counted
    assert cmexam[0].options == {"A": "粉红色泡沫痰", "B": "铁锈色痰", "C": "砖红色胶冻样痰", "D": "果酱样痰",
                                 "E": "大量脓臭痰"} and cmexam[0].answer == "B"

    medqa, counts = load_mcq(BENCH / "medqa_mcmle.jsonl")
    assert counts["shapes"] == {"medqa": 5} and [r.answer for r in medqa] == ["B", "A", "C", "A", "C"]
    assert {r.group for r in medqa} == {"内科学", "儿科学", "药理学", "外科学"}
    # MedQA's "answer" is the option text; without answer_idx the letter is found from it
    rec = {"question": "问", "options": {"A": "甲", "B": "乙"}, "answer": "乙", "answer_idx": None}
    assert to_record(rec, "medqa", 1).answer == "B"

    items = load_items(BENCH / "cmb_exam.json", "mcq", 2)
    assert items[1].reference == "AB" and items[1].multi and "B. 糖尿病肾病" in items[1].question
    assert "多项选择题" in items[1].user_text  # the declared type goes into the prompt, not the gold count

    questions_only = tmp_path / "cmb_test.json"  # CMB-test ships its questions without answers
    questions_only.write_text(json.dumps([{k: v for k, v in r.items() if k != "answer"} for r in
                                          json.loads((BENCH / "cmb_exam.json").read_text(encoding="utf-8"))],
                                         ensure_ascii=False), encoding="utf-8")
    with pytest.raises(UserError, match="no records with an answer .* use CMB-val"):
        load_mcq(questions_only)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "问", "options": {"A": "甲", "B": "乙"}, "answer": "C"},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="record 1 .*answer 'C' is not made of the option letters AB"):
        load_mcq(bad)


@pytest.mark.parametrize("name", ["cmb_exam.json", "cmexam.csv", "medqa_mcmle.jsonl"])
def test_each_benchmark_shape_evaluates_end_to_end(tiny_model_dir, tmp_path, one_thread, name):
    from r1_sft.evaluation.run import EvalConfig, run_evaluation

    run_evaluation(EvalConfig(task="mcq", data=str(BENCH / name), num_samples=0, base_model=str(tiny_model_dir),
                              adapter="", max_new_tokens=8, batch_size=8, output_dir=str(tmp_path), run_name="b"))
    summary = json.loads((tmp_path / "b" / "summary.json").read_text(encoding="utf-8"))
    block = summary["models"]["base"]
    assert block["n"] == {"cmb_exam.json": 6, "cmexam.csv": 4, "medqa_mcmle.jsonl": 5}[name]
    assert 0.0 <= block["accuracy"] <= 1.0 and set(block["outcome"]) == OUTCOMES
    report = (tmp_path / "b" / "report.md").read_text(encoding="utf-8")
    if name == "cmexam.csv":
        assert "groups" not in block and "## Accuracy by exam class" not in report  # this CSV has no annotations
    else:
        assert "## Accuracy by exam class / subject" in report
        assert sum(g["n"] for g in block["groups"].values()) == block["n"]
    if name == "cmb_exam.json":
        assert (block["n_single"], block["n_multi"]) == (4, 2) and "| 护士执业资格 | 2 |" in report


def test_mcq_score_mode_writes_accuracy_and_n(tmp_path):
    preds = tmp_path / "mcq_outputs.jsonl"
    preds.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prediction": "想\n</think>\n\n答案：C。建议患者选择B超复查。", "answer": "C"},
        {"prediction": "想\n</think>\n\n答案：A、B、D", "answer": "ABD"},
        {"prediction": "想\n</think>\n\n建议先做B超检查。", "answer": "B"},  # no stated answer: wrong
        {"prediction": "答案：B", "answer": "B"},  # never left the think block: no answer
    ]) + "\n", encoding="utf-8")
    proc = _evaluate("--task", "mcq", "--score", preds)
    assert proc.returncode == 0, proc.stderr[-2000:]
    block = json.loads((tmp_path / "mcq_outputs.summary.json").read_text(encoding="utf-8"))
    assert block["accuracy"] == 0.5 and block["n"] == 4
    assert block["accuracy_multi"] == 1.0 and block["accuracy_single"] == pytest.approx(1 / 3)


def test_default_data_is_the_held_out_test_split_and_the_report_says_so(tiny_model_dir, tmp_path):
    """With no --data the evaluation reads what the split stage writes as test, and names that split."""
    proc = _evaluate("--help")
    assert "(default: dataset/sft_r1_test.jsonl)" in " ".join(proc.stdout.split())
    # The default resolves from the repository root; here the same split stage writes into a temporary folder.
    run_script("data/split_stf_r1_data.py", "--input", REPO / "tests/fixtures/sft_tiny_train.jsonl", "--output_dir",
               tmp_path / "dataset", check=True)
    test_split = tmp_path / "dataset" / "sft_r1_test.jsonl"
    proc = _evaluate("--base_model", tiny_model_dir, "--adapter", "", "--data", test_split, "--num_samples", "2",
                     "--n_samples", "1", "--max_new_tokens", "8", "--output_dir", tmp_path, "--run_name", "t")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "t" / "summary.json").read_text(encoding="utf-8"))["data"]
    assert data["split"] == "test" and data["questions"] == 2 and data["file"].endswith("dataset/sft_r1_test.jsonl")
    said = "(held-out test split: never trained on, never used to choose a checkpoint)"
    assert said in (tmp_path / "t" / "report.md").read_text(encoding="utf-8")
    assert [line for line in proc.stdout.splitlines() if line.startswith("[data]")] == \
        [f"[data] `{data['file']}` {said}"]


def test_user_errors_are_one_line(tiny_model_dir, tmp_path):
    missing = _evaluate("--data", tmp_path / "nope.jsonl", "--base_model", tiny_model_dir, "--adapter", "")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_base_only_when_the_default_adapter_is_absent(tiny_model_dir, tmp_path):
    """The issue's command: no adapter given and none trained yet -> the base alone, said in one line."""
    from r1_sft.evaluation.run import DEFAULT_ADAPTER
    from r1_sft.paths import repo_path

    if repo_path(DEFAULT_ADAPTER).exists():
        pytest.skip("this checkout has a trained adapter at the default path")
    proc = _evaluate("--base_model", tiny_model_dir, "--data", SFT_VAL, "--num_samples", "2", "--max_new_tokens", "8",
                     "--output_dir", tmp_path, "--run_name", "base")
    assert proc.returncode == 0, proc.stderr[-3000:]
    notes = [line for line in proc.stdout.splitlines() if line.startswith("[note]")]
    assert len(notes) == 1 and "evaluating the base model alone" in notes[0] and "train first" in notes[0]
    summary = json.loads((tmp_path / "base" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base"]
    assert "(base model alone)" in (tmp_path / "base" / "report.md").read_text(encoding="utf-8")


def test_bad_records_missing_adapter_and_missing_vllm_are_user_errors(tiny_model_dir, tmp_path):
    from r1_sft.cli import UserError
    from r1_sft.evaluation.questions import load_items
    from r1_sft.evaluation.run import EvalConfig, generate_all, run_evaluation
    from r1_sft.inference.generation import vllm_available

    bad = tmp_path / "bad.jsonl"
    good = {"input": "头痛怎么办？", "output": "<think>\n想\n</think>\n\n休息"}
    bad.write_text(json.dumps(good, ensure_ascii=False) + '\n{"question": "只有问题"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="record 2"):
        load_items(bad, "sft")
    with pytest.raises(UserError, match="record 1"):
        load_items(bad, "mcq")
    # a named adapter that does not exist: refused before the base model spends time generating
    with pytest.raises(UserError, match=r"no_adapter: adapter folder not found \(train first "
                                        r"\(scripts/train_stf_r1_train_val.py\)"):
        run_evaluation(EvalConfig(data=str(SFT_VAL), base_model=str(tiny_model_dir),
                                  adapter=str(tmp_path / "no_adapter"), output_dir=str(tmp_path)))
    cases = [("batch_size", 0, "must be at least 1"), ("max_new_tokens", 0, "must be at least 1"),
             ("num_samples", -1, "must be at least 0"), ("n_samples", 0, "must be at least 1"),
             ("temperature", -1.0, r"must be in \(0, 2.0\]"), ("temperature", 0.0, r"must be in \(0, 2.0\]"),
             ("top_p", 0.0, r"must be in \(0, 1\]"), ("top_p", 1.5, r"must be in \(0, 1\]")]
    for flag, value, allowed in cases:
        with pytest.raises(UserError, match=f"--{flag} {value}: {allowed}"):
            run_evaluation(EvalConfig(data=str(SFT_VAL), base_model=str(tiny_model_dir), adapter="",
                                      output_dir=str(tmp_path), **{flag: value}))
    with pytest.raises(UserError, match="--n_samples 4: greedy decoding"):
        run_evaluation(EvalConfig(data=str(SFT_VAL), base_model=str(tiny_model_dir), adapter="",
                                  do_sample=False, n_samples=4))
    if not vllm_available():
        with pytest.raises(UserError, match="vllm is not installed"):
            generate_all({"base": str(tiny_model_dir)}, ["头痛怎么办？"], max_new_tokens=4, backend="vllm")


def test_sampling_values_are_checked_before_any_model_loads(tmp_path):
    """test_model.py and compare.py: a bad value is a one-line error naming the flag, before the (absent) model."""
    absent = tmp_path / "absent_model"
    for script, args, message in [
        ("scripts/test_model.py", ["--model_path", absent, "--temperature", "-1"], "--temperature -1.0: must be in"),
        ("scripts/test_model.py", ["--model_path", absent, "--max_new_tokens", "0"], "--max_new_tokens 0: must be"),
        ("scripts/compare.py", ["问题", "--base_model", absent, "--top_p", "0"], "--top_p 0.0: must be in (0, 1]"),
    ]:
        proc = run_script(script, *args, env=ONE_THREAD)
        assert proc.returncode == 2 and message in proc.stderr, (script, proc.stderr[-2000:])
        assert len(proc.stderr.strip().splitlines()) == 1 and "absent_model" not in proc.stderr


def test_compare_checks_the_adapter_before_generating(tiny_model_dir, tmp_path):
    proc = run_script("scripts/compare.py", "问题", "--base_model", tiny_model_dir, "--adapter", tmp_path / "no_lora",
                      env=ONE_THREAD)
    assert proc.returncode == 2 and "train first (scripts/train_stf_r1_train_val.py)" in proc.stderr
    assert "loading" not in proc.stdout and "Traceback" not in proc.stderr  # no model was loaded


def test_vllm_engine_and_sampling_arguments(tiny_model_dir, adapter_dir, monkeypatch):
    """vLLM cannot run here: a stand-in ``vllm`` module records what the backend asks of it."""
    import sys
    import types

    import torch

    from r1_sft.evaluation.run import generate_all
    from r1_sft.model import precision
    from r1_sft.model.folders import load_tokenizer
    from r1_sft.r1_format import encode_prompt

    calls: dict = {"generate": []}

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def generate(self, prompts, params, lora_request=None):
            calls["generate"].append((len(prompts), lora_request))
            finish = [types.SimpleNamespace(text=f"想{j}\n</think>\n\n答{j}", token_ids=[1, 2, 3],
                                            finish_reason="stop" if j == 0 else "length") for j in range(params.n)]
            return [types.SimpleNamespace(outputs=finish) for _ in prompts]

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["sampling"] = kwargs
            self.n = kwargs["n"]

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.args = (name, lora_id, path)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora")
    request_mod = types.ModuleType("vllm.lora.request")
    request_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora_mod)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request_mod)
    monkeypatch.setattr(precision, "pick_dtype", lambda device, **_: torch.bfloat16)  # the one precision decision

    texts = ["头痛怎么办？", "高血压患者平时饮食要注意什么？请详细说明。"]
    results = generate_all({"base": str(tiny_model_dir), "tuned": str(adapter_dir)}, texts, max_new_tokens=64,
                           seed=7, n_samples=2, backend="vllm")
    tokenizer = load_tokenizer(tiny_model_dir)
    longest = max(len(encode_prompt(tokenizer, [{"role": "user", "content": t}])) for t in texts)
    engine = calls["engine"]
    assert engine["model"] == str(Path(tiny_model_dir).resolve()) and engine["dtype"] == "bfloat16"
    assert engine["max_model_len"] == longest + 64 and engine["seed"] == 7
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 8  # r=4 rounded up to a vLLM rank
    # top-k is not passed: vLLM's default is off, as in the Hugging Face path (top_k=0 there)
    assert calls["sampling"] == {"n": 2, "max_tokens": 64, "seed": 7, "temperature": 0.6, "top_p": 0.95,
                                 "stop_token_ids": [tokenizer.eos_token_id], "skip_special_tokens": True}
    (n_base, lora_base), (n_tuned, lora_tuned) = calls["generate"]
    assert n_base == n_tuned == 2 and lora_base is None  # one engine: base = no LoRA request
    assert lora_tuned.args == ("tuned", 1, str(Path(adapter_dir).resolve()))
    runs, stats = results["tuned"]
    assert len(runs) == 2 and [g.stopped_by_eos for g in runs[0]] == [True, True]
    assert [g.stopped_by_eos for g in runs[1]] == [False, False] and stats.new_tokens == 12
    # greedy: temperature 0, one sample
    generate_all({"base": str(tiny_model_dir)}, texts, max_new_tokens=8, do_sample=False, backend="vllm")
    assert (calls["sampling"]["temperature"], calls["sampling"]["top_p"], calls["sampling"]["n"]) == (0.0, 1.0, 1)


def test_compare_answers_one_question_with_both_models(tiny_model_dir, adapter_dir):
    proc = run_script("scripts/compare.py", "高血压患者平时饮食要注意什么？", "--base_model", tiny_model_dir,
                      "--adapter", adapter_dir, "--max_new_tokens", "8", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "问题: 高血压患者平时饮食要注意什么？" in proc.stdout
    assert "==== base ====" in proc.stdout and "==== tuned ====" in proc.stdout
    assert "| model | think closed | EOS | new tokens | answer chars | outcome |" in proc.stdout
    assert "[decoding] sampling T=0.6 top_p=0.95 seed=42, max_new_tokens=8" in proc.stdout  # the shared protocol


def test_compare_str_r1_is_the_same_evaluation(tmp_path):
    # The seed's batch comparison is a thin call of r1_sft.evaluation.run: same flags, same files (--score needs no model).
    preds = tmp_path / "seed.jsonl"
    preds.write_text(json.dumps({"prediction": "想\n</think>\n\n多喝水。", "reference": "多喝水。"}, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    proc = run_script("scripts/compare/compare_str_r1.py", "--score", preds, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = json.loads((tmp_path / "seed.summary.json").read_text(encoding="utf-8"))
    assert BLOCK_KEYS <= set(block) and block["answer"]["bleu4"] == pytest.approx(1.0)


def test_tuned_tiny_model_follows_the_format_its_base_never_saw(tiny_model_dir, tmp_path):
    """A short demo-like QLoRA run, then the evaluation: think closed and EOS clearly more often than the base.

    lm_head is among the LoRA targets: the tiny model never met ``</think>`` in pre-training, so its
    output row is untrained and adapters on the hidden layers alone rarely make it win (the real R1
    knows the token). Without lm_head the tuned model wrote a random token where ``</think>`` belongs.
    20 steps: on the stand-in pre-trained 2,000 steps this gave think_closed 0.83, eos 1.00 and ROUGE-1
    0.18 vs 0.00, 0.00 and 0.00 for the base, as 30 steps did (the 500-step stand-in needed 60 steps).
    """
    train = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir,
                       "--train_file", REPO / "tests/fixtures/sft_tiny_train.jsonl",
                       "--val_file", REPO / "tests/fixtures/sft_tiny_val.jsonl", "--output_dir", tmp_path / "lora",
                       "--max_steps", "20", "--learning_rate", "1e-2", "--per_device_train_batch_size", "8",
                       "--gradient_accumulation_steps", "1", "--eval_steps", "10", "--save_steps", "10",
                       "--logging_steps", "10", "--max_length", "512", "--no_gradient_checkpointing",
                       "--early_stopping_patience", "0",
                       "--lora_target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
                       env=ONE_THREAD)
    assert train.returncode == 0, train.stderr[-3000:]
    proc = _evaluate("--base_model", tiny_model_dir, "--adapter", tmp_path / "lora" / "final_model",
                     "--data", REPO / "tests/fixtures/sft_tiny_val.jsonl", "--num_samples", "6", "--no_do_sample",
                     "--batch_size", "6", "--max_new_tokens", "80", "--output_dir", tmp_path, "--run_name", "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads((tmp_path / "demo" / "summary.json").read_text(encoding="utf-8"))["models"]
    base, tuned = models["base"]["format"], models["tuned"]["format"]
    assert tuned["think_closed"] >= base["think_closed"] + 0.5, models
    assert tuned["eos"] >= base["eos"] + 0.5, models
    assert models["tuned"]["answer"]["rouge1"] > models["base"]["answer"]["rouge1"], models
