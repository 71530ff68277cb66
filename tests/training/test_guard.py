"""The non-finite guard: one count per optimizer step, final_model/ never written from NaN weights, GRPO too.

transformers 5.23 calls ``_maybe_log_save_evaluate`` a second time at an epoch's end for the same
step: the old guard counted a bad last step twice (two NaN steps stopped a run that allows three) and,
in fp16, reset the streak on that call. A NaN in the last step or two then reached final_model/.
"""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, TrainingArguments

from r1_sft.training.callbacks import NonFiniteGuardCallback
from r1_sft.training.trainer import NONFINITE_STEPS, NonFiniteLossError, SFTTrainer

from conftest import REPO, sft_config

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"  # 24 examples: 4 steps of 6 make one epoch
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"


class SpoilsFromStep3(SFTTrainer):
    """Steps 3 and 4, the last two of the epoch, have a NaN loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return result * float("nan") if model.training and self.state.global_step >= 2 else result


def test_nan_in_the_last_two_steps_counts_twice_not_three_times_and_writes_no_final_model(
        tiny_model_dir, tmp_path, capsys):
    from r1_sft.training.run import run_training

    out = tmp_path / "run"
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(VAL), output_dir=str(out),
                     max_length=96, num_train_epochs=1, eval_steps=1, save_steps=1, per_device_train_batch_size=6,
                     gradient_accumulation_steps=1, use_4bit=False, precision="bf16", early_stopping_patience=0,
                     lora_target_modules="q_proj,v_proj")
    run_training(cfg, trainer_cls=SpoilsFromStep3)  # 2 bad steps < NONFINITE_STEPS: the run ends normally
    log = capsys.readouterr().out
    guard_lines = [line for line in log.splitlines() if line.startswith("[guard]")]
    assert len(guard_lines) == 1, log[-3000:]
    assert "final_model/ not written: the adapter after step 4 has NaN/inf weights" in guard_lines[0]
    assert "the last finite adapter is" in guard_lines[0] and "checkpoint-2" in guard_lines[0]
    assert not (out / "final_model").exists()
    best = load_file(out / "best_model/adapter_model.safetensors")  # a checkpoint of a finite step
    assert all(torch.isfinite(t).all() for t in best.values())
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    kept = load_file(out / "checkpoint-2/adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())


def test_the_epoch_end_call_judges_the_same_step_once(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import Trainer

    from r1_sft.model.loading import load_model

    model, _ = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="sdpa")
    trainer = SFTTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    monkeypatch.setattr(Trainer, "_maybe_log_save_evaluate", lambda *a, **k: None)
    for step in range(1, NONFINITE_STEPS):
        trainer.state.global_step = step
        for _call in ("after the step", "at the epoch's end"):
            trainer.control.should_save = True
            trainer._nonfinite_now = _call == "after the step"  # the loss of this step was NaN
            trainer._maybe_log_save_evaluate(torch.tensor(0.0), float("nan"))
            assert trainer.control.should_save is False  # the same verdict on both calls
        assert trainer._nonfinite_steps == step  # counted once per step
    trainer.state.global_step = NONFINITE_STEPS
    trainer._nonfinite_now = True
    with pytest.raises(NonFiniteLossError):
        trainer._maybe_log_save_evaluate(torch.tensor(0.0), float("nan"))


def test_grpo_guard_callback_never_saves_nan_weights_and_stops_after_three_steps(tmp_path):
    model = torch.nn.Linear(3, 3)
    guard, args = NonFiniteGuardCallback(tmp_path), TrainingArguments(output_dir=str(tmp_path), report_to="none")
    state, control = TrainerState(), TrainerControl()
    control.should_save = control.should_evaluate = True
    guard.on_step_end(args, state, control, model=model)
    assert control.should_save and guard.last_finite  # finite weights: the Trainer saves as planned
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    for step in range(1, NONFINITE_STEPS):
        control.should_save = control.should_evaluate = True
        state.global_step = step
        guard.on_step_end(args, state, control, model=model)
        assert not control.should_save and not control.should_evaluate and not guard.last_finite
    with pytest.raises(NonFiniteLossError, match=f"NaN/inf after {NONFINITE_STEPS} steps in a row"):
        guard.on_step_end(args, state, control, model=model)
    model.weight.requires_grad_(False)  # frozen weights are not judged (a NaN in a frozen base is another matter)
    fresh = NonFiniteGuardCallback(tmp_path)
    fresh.on_step_end(args, state, control, model=model)
    assert fresh.last_finite


def test_grpo_attaches_the_guard():
    """GRPO's trainer is TRL's: the guard is the callback, and final_model/ follows its verdict."""
    source = (REPO / "r1_sft/rl/grpo.py").read_text(encoding="utf-8")
    assert "NonFiniteGuardCallback(output_dir)" in source and "guard])" in source and "if guard.last_finite:" in source
