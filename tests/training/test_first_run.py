"""A first run as the README tells it: the 130-row sample with no flags validates several times and at
the end, best_model/ is chosen among those validations, --use_4bit auto fits the card, and --dry_run
plans a run (training and GRPO) from a folder holding only config.json and the tokenizer files.

The sample splits are built by the real data scripts from modelscope_r1_data/r1_data_example.jsonl.
The one real training run keeps every default that decides the schedule (epochs, batch, accumulation,
cadence) and only makes the steps cheaper (--max_length 64 --truncate_long: every record kept; fp32 LoRA).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1_sft.cli import UserError
from r1_sft.training.checks import training_plan
from r1_sft.training.schedule import auto_eval_steps, plan_schedule

from conftest import run_script, sft_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (the fields the plan and the estimate read)
REAL_1_5B = {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
             "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": False,
             "max_window_layers": 21, "layer_types": ["full_attention"] * 28}


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The README's step 1 on the repository's 130 sample rows, into a temporary folder."""
    out = tmp_path_factory.mktemp("sample")
    run_script("data/generated_converted_data.py", "--output", out / "converted.jsonl", check=True)
    run_script("data/generated_stf_r1_data.py", "--input", out / "converted.jsonl", "--output", out / "sft.jsonl",
               check=True)
    run_script("data/split_stf_r1_data.py", "--input", out / "sft.jsonl", "--output_dir", out, check=True)
    run_script("data/split_mcq_data.py", "--output_dir", out, check=True)
    return out


def config_only(tiny_model_dir: Path, folder: Path, **config) -> Path:
    """A model folder before its weights are downloaded: config.json and the tokenizer files only."""
    folder.mkdir(parents=True)
    base = json.loads((tiny_model_dir / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**base, **config}), encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def schedule_lines(stdout: str) -> tuple[int, list[int]]:
    """(total steps, evaluation steps) from the start-up [schedule] lines."""
    total = int(re.search(r"\[schedule\] .* (\d+) steps \(", stdout).group(1))
    steps = re.search(r"evaluations \(steps ([\d, ]+)\)", stdout).group(1)
    return total, [int(s) for s in steps.split(",")]


def test_auto_cadence_validates_several_times_and_at_the_end():
    for total in (1, 2, 5, 7, 21, 60, 360, 3000):
        cfg = sft_config(max_steps=total)
        evaluations = plan_schedule(cfg, examples=100).evaluations
        assert evaluations[-1] == total
        assert len(evaluations) >= min(total, 3)
        assert max(b - a for a, b in zip([0] + evaluations, evaluations)) <= 50
    # an explicit --save_steps: evaluations fall on a divisor of it, so every checkpoint was validated
    cfg = sft_config(max_steps=21, save_steps=10)
    schedule = plan_schedule(cfg, examples=100)
    assert schedule.save_steps % schedule.eval_steps == 0 and schedule.eval_steps <= auto_eval_steps(21)
    assert set(schedule.checkpoints) <= set(schedule.evaluations)


def test_dry_run_plans_the_sample_run_from_config_and_tokenizer_alone(tiny_model_dir, sample, tmp_path):
    folder = config_only(tiny_model_dir, tmp_path / "no_weights")
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", folder,
                      "--train_file", sample / "sft_r1_train.jsonl", "--val_file", sample / "sft_r1_val.jsonl",
                      "--output_dir", tmp_path / "out", "--dry_run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "[memory] estimated peak GPU memory" in proc.stdout
    total, evaluations = schedule_lines(proc.stdout)
    # 104 rows, 16 per step, 3 epochs: 21 steps; validated at least twice before the end, and at the end
    assert total == 21 and evaluations[-1] == 21 and len(evaluations) >= 3
    # a real run still needs the weights: one line naming the folder and the download
    with pytest.raises(UserError, match=r"no \*\.safetensors weights.*download_model\.py"):
        training_plan(sft_config(model_path=str(folder), train_file=str(sample / "sft_r1_train.jsonl"),
                                 val_file=str(sample / "sft_r1_val.jsonl")))


def test_grpo_dry_run_needs_no_weights_either(tiny_model_dir, sample, tmp_path):
    folder = config_only(tiny_model_dir, tmp_path / "no_weights")
    proc = run_script("scripts/train_grpo.py", "--model_path", folder, "--train_file", sample / "mcq_train.jsonl",
                      "--val_file", sample / "mcq_val.jsonl", "--output_dir", tmp_path / "grpo", "--dry_run", env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "[memory] estimated peak GPU memory" in proc.stdout and "no model loaded" in proc.stdout


def test_use_4bit_auto_takes_16_bit_where_it_fits_and_4_bit_where_it_does_not(tiny_model_dir, sample, tmp_path):
    folder = config_only(tiny_model_dir, tmp_path / "real_shape", **REAL_1_5B)
    common = dict(model_path=str(folder), train_file=str(sample / "sft_r1_train.jsonl"),
                  val_file=str(sample / "sft_r1_val.jsonl"), dry_run=True)
    assert sft_config().use_4bit == "auto"
    # planning on a CPU for a card: a dry run with --gpu_memory_gb decides as that card would
    for card, four_bit in ((24, False), (16, False), (6, True)):
        cfg = sft_config(**common, gpu_memory_gb=card)
        plan = training_plan(cfg)
        assert plan.use_4bit is four_bit and cfg.use_4bit is four_bit, (card, plan.quantization)
        assert ("4-bit QLoRA" if four_bit else "16-bit LoRA") in plan.describe()
        assert f"{card} GB GPU" in plan.quantization
    # the explicit switches still win
    assert training_plan(sft_config(**common, gpu_memory_gb=24, use_4bit=True)).use_4bit is True
    assert training_plan(sft_config(**common, gpu_memory_gb=6, use_4bit=False)).use_4bit is False


def test_sample_run_with_default_schedule_picks_best_model_among_its_validations(tiny_model_dir, sample, tmp_path):
    out = tmp_path / "run"
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir,
                      "--train_file", sample / "sft_r1_train.jsonl", "--val_file", sample / "sft_r1_val.jsonl",
                      "--output_dir", out, "--max_length", "64", "--truncate_long", "--no_gradient_checkpointing",
                      "--no_use_4bit", env=ENV, timeout=900)  # none of these changes the schedule
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    total, planned = schedule_lines(proc.stdout)
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    ran = sorted(evals)
    # early stopping may end the run at a validation; up to there the plan held
    assert ran == [s for s in planned if s <= ran[-1]] and len(ran) >= 3
    final_step = max(h["step"] for h in history)
    assert ran[-1] == final_step  # the end of the run was validated
    best_step = min(evals, key=evals.get)
    state = json.loads((out / f"checkpoint-{final_step}" / "trainer_state.json").read_text())
    assert state["best_global_step"] == best_step
    best = load_file(str(out / "best_model/adapter_model.safetensors"))
    chosen = load_file(str(out / f"checkpoint-{best_step}/adapter_model.safetensors"))
    assert best.keys() == chosen.keys() and all(torch.equal(best[k], chosen[k]) for k in best)
    assert total == 21
