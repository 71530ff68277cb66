"""Training mistakes caught before anything loads, a log file a person can read, and how a run ended.

The value and path errors must come before the model loads: each bad value is tried with a model
folder that does not exist, so a check that ran too late would say "model folder not found"
instead. One short training run writes its output to a file (as ``nohup ... > train.log`` does)
with ``--report_to tensorboard``; the rest runs in memory.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from transformers import EarlyStoppingCallback

import r1_sft.training.checks as train_checks
from r1_sft.cli import UserError
from r1_sft.training.callbacks import end_reason, end_summary, loss_figure
from r1_sft.training.checks import check_lora_targets, check_teacher_folder, meta_model
from r1_sft.training.run import run_training

from conftest import REPO, run_script, sft_config

SCRIPT = "scripts/train_stf_r1_train_val.py"
TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}  # torch gives MKL the OMP thread count
QWEN2_LINEAR = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"


# ----------------------------------------------------------------------------- values, before anything loads

BAD_VALUES = [
    ({"num_train_epochs": -1.0}, r"^--num_train_epochs -1\.0: must be > 0 \(or set --max_steps > 0\)$"),
    ({"num_train_epochs": 0.0}, r"--num_train_epochs 0\.0: must be > 0"),
    ({"max_steps": 0}, r"--max_steps 0: must be -1 .* or at least 1"),
    ({"learning_rate": -1.0}, r"^--learning_rate -1\.0: must be > 0 and < 1"),
    ({"learning_rate": float("nan")}, r"--learning_rate nan: must be > 0"),
    ({"learning_rate": 2e4}, r"--learning_rate 20000\.0: must be > 0 and < 1"),
    ({"lr_scheduler_type": "cosin"}, r"^--lr_scheduler_type 'cosin': use one of linear, cosine, cosine_with_restarts,"),
    ({"lr_scheduler_type": "cosine_with_min_lr"}, r"--lr_scheduler_type 'cosine_with_min_lr': use one of"),
    ({"warmup_ratio": 1.0}, r"--warmup_ratio 1\.0: must be >= 0 and < 1"),
    ({"warmup_ratio": -0.1}, r"--warmup_ratio -0\.1: must be >= 0 and < 1"),
    ({"weight_decay": -0.01}, r"--weight_decay -0\.01: must be >= 0"),
    ({"max_grad_norm": 0.0}, r"--max_grad_norm 0\.0: must be > 0"),
    ({"lora_r": 0}, r"--lora_r 0: must be at least 1"),
    ({"lora_alpha": 0}, r"--lora_alpha 0: must be > 0"),
    ({"lora_dropout": 1.0}, r"--lora_dropout 1\.0: must be >= 0 and < 1"),
    ({"lora_target_modules": " , "}, r"--lora_target_modules ' , ': name at least one module"),
    ({"per_device_train_batch_size": 0}, r"--per_device_train_batch_size 0: must be at least 1"),
    ({"per_device_eval_batch_size": -4}, r"--per_device_eval_batch_size -4: must be at least 1"),
    ({"gradient_accumulation_steps": 0}, r"--gradient_accumulation_steps 0: must be at least 1"),
    ({"save_total_limit": 0}, r"--save_total_limit 0: must be at least 1"),
    ({"early_stopping_patience": -1}, r"--early_stopping_patience -1: must be >= 0"),
    ({"seed": -5}, r"--seed -5: must be between 0 and 2\*\*32 - 1"),
    ({"eval_steps": 20, "save_steps": 30}, r"--save_steps 30 must be a multiple of --eval_steps 20"),
    ({"resume": True, "overwrite_output_dir": True}, r"--resume and --overwrite_output_dir contradict"),
    ({"report_to": "tensorbord"}, r"--report_to 'tensorbord': 'tensorbord' is not one of none, tensorboard, swanlab, wandb"),
]


@pytest.mark.parametrize("values, message", BAD_VALUES, ids=[next(iter(v)) for v, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_naming_flag_value_and_range_before_any_path_is_read(tmp_path, values, message):
    cfg = sft_config(model_path=str(tmp_path / "no_model"), train_file=str(tmp_path / "none.jsonl"),
                      val_file=str(tmp_path / "none.jsonl"), **values)
    with pytest.raises(UserError, match=message) as caught:
        run_training(cfg)
    assert "\n" not in str(caught.value)


def test_scheduler_error_lists_only_schedules_that_build():
    with pytest.raises(UserError) as caught:
        run_training(sft_config(lr_scheduler_type="cosin"))
    listed = str(caught.value).split("use one of ")[1].split(", ")
    assert {"linear", "cosine", "constant_with_warmup"} <= set(listed)
    assert "cosine_with_min_lr" not in listed and "warmup_stable_decay" not in listed  # need lr_scheduler_kwargs


def test_missing_data_file_is_named_before_the_model_is_read(tiny_model_dir, tmp_path):
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(tmp_path / "nope.jsonl"), val_file=str(VAL))
    with pytest.raises(UserError, match="^--train_file " + re.escape(f"{tmp_path}/nope.jsonl: data file not found")):
        run_training(cfg)


def test_a_missing_tracker_package_is_named_with_its_pip_line(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(train_checks, "_installed", lambda package: package != "swanlab")
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(VAL),
                      report_to="tensorboard,swanlab")
    with pytest.raises(UserError, match=r"^--report_to swanlab: the swanlab package is not installed "
                                        r"\(pip install swanlab\), or use --report_to none$"):
        run_training(cfg)


def test_the_teacher_hint_says_download_the_7b(tmp_path):
    with pytest.raises(UserError) as caught:
        check_teacher_folder(str(tmp_path / "DeepSeek-R1-Distill-Qwen-7B"))
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/DeepSeek-R1-Distill-Qwen-7B: teacher model folder not found")
    assert "python download_model/download_model.py --model_id deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" in message
    assert "--tiny" not in message and "(real model)" not in message


# ----------------------------------------------------------------------------- data format

def test_outputs_without_the_think_format_are_refused_unless_allowed(tiny_model_dir, tmp_path, capsys):
    lines = TRAIN.read_text(encoding="utf-8").splitlines()
    lines[3] = json.dumps({"input": "只有问题", "output": "没有思考格式的回答"}, ensure_ascii=False)
    lines[7] = json.dumps({"input": "问题", "output": "<think>\n推理\n</think>\n\n"}, ensure_ascii=False)  # no answer
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(train), val_file=str(VAL),
                      output_dir=str(tmp_path / "out"), max_length=256)
    with pytest.raises(UserError, match=r"train.jsonl: 2 of 24 records have an output not in the think format "
                                        r".*\(first: record 4\).*--allow_no_think"):
        run_training(cfg)

    cfg.allow_no_think, cfg.dry_run = True, True  # trains on them; the dry run stops before the model loads
    assert run_training(cfg) is None
    out = capsys.readouterr().out
    assert "kept 24" in out and "--allow_no_think): 2 train and 0 val records" in out


# ----------------------------------------------------------------------------- LoRA target names

def test_lora_target_names_are_matched_against_the_models_modules(tiny_model_dir):
    model = meta_model(tiny_model_dir)  # architecture only: no weights read
    assert all(p.device.type == "meta" for p in model.parameters())
    check_lora_targets(model, "q_proj,v_proj,lm_head")
    check_lora_targets(model, "all-linear")
    check_lora_targets(model, "self_attn.q_proj")  # peft's rule: a dotted suffix of a module name
    with pytest.raises(UserError, match=rf"^--lora_target_modules 'q_proj,vproj': 'vproj' matches no module of the "
                                        rf"model; valid names: {QWEN2_LINEAR} \(or all-linear\)$"):
        check_lora_targets(model, "q_proj,vproj")


def test_a_misspelt_lora_target_stops_the_script_before_the_model_loads(tiny_model_dir, tmp_path):
    proc = run_script(SCRIPT, "--model_path", tiny_model_dir, "--train_file", TRAIN, "--val_file", VAL,
                      "--output_dir", tmp_path / "out", "--lora_target_modules", "q_proj,vproj", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --lora_target_modules 'q_proj,vproj': 'vproj' matches no module of the model; "
        f"valid names: {QWEN2_LINEAR} (or all-linear)"]
    assert "[model] loaded" not in proc.stdout and "[data]" not in proc.stdout
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- how a run ended

def _state(global_step, max_steps, evals, best_ckpt=None, epochs=3.0):
    history = [{"step": step, "eval_loss": loss} for step, loss in evals]
    history.append({"step": global_step, "train_runtime": 125.0, "train_tokens_per_s": 980.0})
    best = min(evals, key=lambda e: e[1]) if evals else None
    return SimpleNamespace(global_step=global_step, max_steps=max_steps, num_train_epochs=epochs, log_history=history,
                           best_metric=best[1] if best else None, best_model_checkpoint=best_ckpt)


def test_early_stopping_is_announced_with_its_step_and_best_loss(tmp_path):
    stopper = EarlyStoppingCallback(early_stopping_patience=3)
    state = _state(210, 300, [(150, 1.2345), (180, 1.25), (195, 1.26), (210, 1.3)], "out/checkpoint-150")
    train_args = SimpleNamespace(metric_for_best_model="eval_loss", greater_is_better=False)
    for loss in (1.25, 1.26, 1.3):  # the callback's own bookkeeping: three evaluations without a lower loss
        stopper.check_metric_value(train_args, state, None, loss)
    assert stopper.early_stopping_patience_counter == 3
    lines = end_summary(SimpleNamespace(max_steps=-1), state, stopper, tmp_path / "best_model",
                        tmp_path / "final_model", eval_steps=15)
    assert lines == [
        "[train] stopped early at step 210 of 300: 3 evaluations in a row without a lower eval_loss "
        "(--early_stopping_patience 3); best eval_loss 1.2345 at step 150",
        "[train] 210 steps in 0:02:05, 980 tokens/s",
        "[train] best eval_loss 1.2345 at step 150: best_model/ = checkpoint-150, final_model/ = checkpoint-210 "
        "(the last step)"]


def test_the_end_names_max_steps_or_epochs_or_no_evaluation(tmp_path):
    stopper = EarlyStoppingCallback(early_stopping_patience=3)
    stopper.early_stopping_patience_counter = 3  # exhausted exactly at the last step: that is still max_steps
    assert end_reason(SimpleNamespace(max_steps=300), _state(300, 300, [(300, 1.0)]), stopper) == \
        "reached --max_steps 300"
    assert end_reason(SimpleNamespace(max_steps=-1), _state(18, 18, [(18, 1.0)], epochs=3.0), None) == \
        "finished 3 epochs (18 steps)"
    lines = end_summary(SimpleNamespace(max_steps=4), _state(4, 4, []), None, tmp_path / "best_model",
                        tmp_path / "final_model", eval_steps=50)
    assert lines[-1] == ("[train] no evaluation ran (4 steps < --eval_steps 50): best_model/ and final_model/ "
                         "both hold the last adapter (checkpoint-4)")


# ----------------------------------------------------------------------------- the loss curve

def test_short_loss_series_get_markers_so_one_point_shows():
    fig = loss_figure([{"step": 1, "loss": 6.1}])
    (line,) = fig.axes[0].get_lines()
    assert line.get_marker() == "o" and line.get_markersize() > 0 and len(line.get_xdata()) == 1
    long_run = [{"step": s, "loss": 5.0 - s / 100} for s in range(1, 101)] + [{"step": 50, "eval_loss": 4.0}]
    train_line, eval_line = loss_figure(long_run).axes[0].get_lines()
    assert train_line.get_marker() in (None, "None", "") and eval_line.get_marker() == "o"


# ----------------------------------------------------------------------------- a run with output to a file

def test_training_log_in_a_file_is_compact_lines_and_a_summary(tiny_model_dir, tmp_path):
    out, log = tmp_path / "lora", tmp_path / "train.log"
    cmd = [sys.executable, str(REPO / SCRIPT), "--model_path", str(tiny_model_dir), "--train_file", str(TRAIN),
           "--val_file", str(VAL), "--output_dir", str(out), "--max_length", "128", "--max_steps", "2",
           "--eval_steps", "1", "--save_steps", "1", "--logging_steps", "1", "--per_device_train_batch_size", "4",
           "--gradient_accumulation_steps", "1", "--report_to", "tensorboard"]
    with open(log, "w", encoding="utf-8") as fh:  # stdout and stderr both a file, as with `> train.log 2>&1`
        proc = subprocess.run(cmd, cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, timeout=600,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **ENV})
    text = log.read_text(encoding="utf-8")
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text  # no tqdm bars (Trainer's nor datasets')
    for chatter in ("gemm_4bit", "UserWarning", "FutureWarning", "save_embedding_layers", "pad_token", "{'loss'",
                    "Traceback"):
        assert chatter not in text, chatter
    lines = text.splitlines()
    progress = [line for line in lines if line.startswith("[train] step ")]
    assert [line.split()[2] for line in progress] == ["1/2", "2/2"]
    assert all(" loss " in line and " lr " in line and " tok/s " in line and " ETA " in line for line in progress)
    assert sum(line.startswith("[eval] step ") and "eval_loss" in line for line in lines) == 2
    assert lines[-4] == "[train] reached --max_steps 2"
    assert lines[-2].startswith("[train] best eval_loss ") and "best_model/ = checkpoint-" in lines[-2]
    assert lines[-1].startswith("[write] ") and "tensorboard/" in lines[-1]
    events = list((out / "training_logs/tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert {"train/loss", "eval/loss", "train/learning_rate"} <= set(scalars)
    info = json.loads((out / "training_logs/run_info.json").read_text())
    assert info["config"]["report_to"] == "tensorboard"


def test_liger_with_lora_on_lm_head_is_refused_before_loading(tiny_model_dir, tmp_path):
    """Liger's fused loss reads lm_head.weight directly: an adapter there would silently never train."""
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir, "--train_file", TRAIN,
                      "--val_file", VAL, "--output_dir", tmp_path / "out", "--use_liger_kernel",
                      "--lora_target_modules", "q_proj,lm_head")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "lm_head" in lines[0] and "--use_liger_kernel" in lines[0]
    assert "[model] loaded" not in proc.stdout
