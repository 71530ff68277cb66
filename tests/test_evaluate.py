"""Evaluation stage on the tiny model: files written and parseable, batch invariance, --score, mcq, compare."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import REPO, run_script

SFT_VAL = REPO / "tests" / "fixtures" / "eval_sft_val.jsonl"
MCQ = REPO / "tests" / "fixtures" / "mcq_sample.jsonl"  # CMB/CMExam-shaped, 24 original questions
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # a 0.5M-parameter model runs faster on one thread of a busy CPU
SCORES = {"rouge1", "rouge2", "rougeL", "bleu4"}
BLOCK_KEYS = {"answer", "full", "format", "repetition", "tokens_per_s", "n"}


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _evaluate(*args, **kwargs):
    return run_script("scripts/evaluate_model.py", *args, env=ONE_THREAD, **kwargs)


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter with random (non-zero) weights on the tiny model, so "tuned" differs from "base"."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter") / "best_model"
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def eval_run(tiny_model_dir, adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = _evaluate("--base_model", tiny_model_dir, "--adapter", adapter_dir, "--data", SFT_VAL,
                     "--num_samples", "4", "--batch_size", "4", "--max_new_tokens", "24",
                     "--output_dir", out, "--run_name", "run", cwd="/")  # any current directory works
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "run", proc


def _assert_block(block: dict, n: int):
    assert set(block) == BLOCK_KEYS
    assert set(block["answer"]) == set(block["full"]) == SCORES
    assert set(block["format"]) == {"think_closed", "answer_nonempty", "eos"}
    values = [*block["answer"].values(), *block["full"].values(), *block["format"].values(), block["repetition"]]
    assert all(0.0 <= v <= 1.0 for v in values), block
    assert block["n"] == n


def test_every_output_file_is_written_and_parseable(eval_run):
    run_dir, _ = eval_run
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [p["model"] for p in preds] == ["base"] * 4 + ["tuned"] * 4
    first_questions = [json.loads(line)["input"] for line in SFT_VAL.read_text(encoding="utf-8").splitlines()[:4]]
    assert [p["question"] for p in preds[:4]] == first_questions  # the caller's order, not the length order
    for p in preds:
        assert {"model", "id", "question", "reference", "prediction", "reasoning", "answer", "metrics"} <= set(p)
        assert "</think>" not in p["reference"] and p["reference"]  # the reference answer, parsed
        assert not p["prediction"].startswith("<think>")  # generation starts inside the think block
        assert set(p["metrics"]["answer"]) == SCORES
    assert preds[0]["prediction"] != preds[4]["prediction"]  # the adapter was applied to "tuned"

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base", "tuned"]
    for block in summary["models"].values():
        _assert_block(block, 4)
        assert block["tokens_per_s"] > 0
    assert set(summary["lengths"]["tuned"]) == {"reasoning_chars", "answer_chars", "new_tokens"}

    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| metric | base | tuned | tuned - base |" in report and "## Examples" in report
    rows = list(csv.reader((run_dir / "report.csv").open(encoding="utf-8")))
    assert rows[0] == ["metric", "base", "tuned"]
    by_label = {r[0]: r[1:] for r in rows[1:]}
    assert float(by_label["answer rouge1"][0]) == pytest.approx(summary["models"]["base"]["answer"]["rouge1"])
    assert (run_dir / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8"))
    assert info["config"]["max_new_tokens"] == 24


def test_prints_the_side_by_side_table(eval_run):
    _, proc = eval_run
    assert "| metric | base | tuned | tuned - base |" in proc.stdout
    assert "| format think_closed |" in proc.stdout and "[write]" in proc.stdout


def test_batch_size_does_not_change_greedy_outputs(tiny_model_dir, one_thread):
    from r1_sft.generation import generate_responses, generate_with_stats
    from r1_sft.modeling import load_model

    model, tokenizer = load_model(tiny_model_dir, device="cpu")  # float32 on CPU
    questions = [json.loads(line)["input"] for line in SFT_VAL.read_text(encoding="utf-8").splitlines()][:8]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    assert len({len(tokenizer(q)["input_ids"]) for q in questions}) > 3  # batches really are padded
    one, _ = generate_with_stats(model, tokenizer, conversations, max_new_tokens=16, batch_size=1)
    eight, stats = generate_with_stats(model, tokenizer, conversations, max_new_tokens=16, batch_size=8)
    assert [g.text for g in one] == [g.text for g in eight]
    assert [g.new_tokens for g in one] == [g.new_tokens for g in eight]
    assert stats.new_tokens == sum(g.new_tokens for g in eight) and stats.tokens_per_s > 0
    alone = generate_responses(model, tokenizer, conversations[3:4], max_new_tokens=16)
    assert alone[0].text == eight[3].text  # results come back in the caller's order


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
    assert set(block) == BLOCK_KEYS
    assert block["answer"]["rouge1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert block["format"]["think_closed"] == 0.5
    assert block["format"]["eos"] is None and block["tokens_per_s"] is None and block["n"] == 2
    assert '"rouge1"' in proc.stdout


def test_mcq_task_reports_accuracy(tiny_model_dir, tmp_path, one_thread):
    from r1_sft.evaluation import EvalConfig, run_evaluation

    from r1_sft.evaluation import load_items

    assert len(load_items(MCQ, "mcq")) == 24  # the whole fixture is accepted
    run_evaluation(EvalConfig(task="mcq", data=str(MCQ), num_samples=3, base_model=str(tiny_model_dir), adapter="",
                              max_new_tokens=16, output_dir=str(tmp_path), run_name="mcq"))
    summary = json.loads((tmp_path / "mcq" / "summary.json").read_text(encoding="utf-8"))
    assert list(summary["models"]) == ["base"]  # no adapter: base alone
    block = summary["models"]["base"]
    assert 0.0 <= block["accuracy"] <= 1.0 and block["n"] == 3 and "answer" not in block
    preds = [json.loads(line) for line in (tmp_path / "mcq" / "predictions.jsonl").open(encoding="utf-8")]
    assert [p["reference"] for p in preds] == ["D", "C", "E"]
    assert all("choice" in p and isinstance(p["correct"], bool) for p in preds)
    assert "A. " in preds[0]["question"] and "E. " in preds[0]["question"]  # options shown to the model


def test_user_errors_are_one_line(tiny_model_dir, tmp_path):
    missing = _evaluate("--data", tmp_path / "nope.jsonl", "--base_model", tiny_model_dir, "--adapter", "")
    assert missing.returncode == 2 and "nope.jsonl" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_bad_records_missing_adapter_and_missing_vllm_are_user_errors(tiny_model_dir, tmp_path):
    from r1_sft.cli import UserError
    from r1_sft.evaluation import EvalConfig, generate_all, load_items, run_evaluation
    from r1_sft.generation import vllm_available

    bad = tmp_path / "bad.jsonl"
    good = {"input": "头痛怎么办？", "output": "<think>\n想\n</think>\n\n休息"}
    bad.write_text(json.dumps(good, ensure_ascii=False) + '\n{"question": "只有问题"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="record 2"):
        load_items(bad, "sft")
    with pytest.raises(UserError, match="record 1"):
        load_items(bad, "mcq")
    with pytest.raises(UserError, match="no_adapter"):  # refused before the base model spends time generating
        run_evaluation(EvalConfig(data=str(SFT_VAL), base_model=str(tiny_model_dir),
                                  adapter=str(tmp_path / "no_adapter"), output_dir=str(tmp_path)))
    for flag, value in (("batch_size", 0), ("max_new_tokens", 0), ("num_samples", -1)):
        with pytest.raises(UserError, match=f"--{flag} {value}: must be at least"):
            run_evaluation(EvalConfig(data=str(SFT_VAL), base_model=str(tiny_model_dir), adapter="",
                                      output_dir=str(tmp_path), **{flag: value}))
    if not vllm_available():
        with pytest.raises(UserError, match="vllm is not installed"):
            generate_all({"base": str(tiny_model_dir)}, ["头痛怎么办？"], max_new_tokens=4, backend="vllm")


def test_compare_answers_one_question_with_both_models(tiny_model_dir, adapter_dir):
    proc = run_script("scripts/compare.py", "高血压患者平时饮食要注意什么？", "--base_model", tiny_model_dir,
                      "--adapter", adapter_dir, "--max_new_tokens", "8", env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "问题: 高血压患者平时饮食要注意什么？" in proc.stdout
    assert "==== base ====" in proc.stdout and "==== tuned ====" in proc.stdout
    assert "| model | think closed | EOS | new tokens | answer chars |" in proc.stdout


def test_compare_str_r1_is_the_same_evaluation(tmp_path):
    # The seed's batch comparison is a thin call of r1_sft.evaluation: same flags, same files (--score needs no model).
    preds = tmp_path / "seed.jsonl"
    preds.write_text(json.dumps({"prediction": "想\n</think>\n\n多喝水。", "reference": "多喝水。"}, ensure_ascii=False)
                     + "\n", encoding="utf-8")
    proc = run_script("scripts/compare/compare_str_r1.py", "--score", preds, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    block = json.loads((tmp_path / "seed.summary.json").read_text(encoding="utf-8"))
    assert set(block) == BLOCK_KEYS and block["answer"]["bleu4"] == pytest.approx(1.0)


def test_tuned_tiny_model_follows_the_format_its_base_never_saw(tiny_model_dir, tmp_path):
    """A short demo-like QLoRA run, then the evaluation: think closed and EOS clearly more often than the base.

    lm_head is among the LoRA targets: the tiny model never met ``</think>`` in pre-training, so its
    output row is untrained and adapters on the hidden layers alone rarely make it win (the real R1
    knows the token). Without lm_head the tuned model wrote a random token where ``</think>`` belongs.
    """
    train = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir,
                       "--train_file", REPO / "tests/fixtures/sft_tiny_train.jsonl",
                       "--val_file", REPO / "tests/fixtures/sft_tiny_val.jsonl", "--output_dir", tmp_path / "lora",
                       "--max_steps", "60", "--learning_rate", "1e-2", "--per_device_train_batch_size", "8",
                       "--gradient_accumulation_steps", "1", "--eval_steps", "30", "--save_steps", "30",
                       "--logging_steps", "30", "--max_length", "512", "--no_gradient_checkpointing",
                       "--early_stopping_patience", "0",
                       "--lora_target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
                       env=ONE_THREAD)
    assert train.returncode == 0, train.stderr[-3000:]
    proc = _evaluate("--base_model", tiny_model_dir, "--adapter", tmp_path / "lora" / "final_model",
                     "--data", REPO / "tests/fixtures/sft_tiny_val.jsonl", "--num_samples", "6",
                     "--batch_size", "6", "--max_new_tokens", "80", "--output_dir", tmp_path, "--run_name", "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = json.loads((tmp_path / "demo" / "summary.json").read_text(encoding="utf-8"))["models"]
    base, tuned = models["base"]["format"], models["tuned"]["format"]
    assert tuned["think_closed"] >= base["think_closed"] + 0.5, models
    assert tuned["eos"] >= base["eos"] + 0.5, models
    assert models["tuned"]["answer"]["rouge1"] > models["base"]["answer"]["rouge1"], models
