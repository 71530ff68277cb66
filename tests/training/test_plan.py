"""A run's decisions are made once (r1_sft/model/plan.py): one training run resolves its model folder and
decides its precision exactly once, prints the plan once, and run_info.json's plan is what ran (the dry
run's one plan line: tests/training/test_training.py)."""
from __future__ import annotations

import json
import sys

import torch
from transformers import TrainerCallback

from conftest import REPO, sft_config

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"


def spy_everywhere(monkeypatch, module, name: str) -> list:
    """Count every call of ``module.name``, however it was imported (module attribute or ``from`` import)."""
    original, calls = getattr(module, name), []

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    for loaded in list(sys.modules.values()):
        if getattr(loaded, "__dict__", {}).get(name) is original:
            monkeypatch.setattr(loaded, name, spy)
    return calls


class WhatRan(TrainerCallback):
    """The dtype and device of the frozen weights the Trainer trains over."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        frozen = next(p for n, p in model.named_parameters() if "lora_" not in n and "embed_tokens" in n)
        self.dtype, self.device = frozen.dtype, frozen.device


def test_one_training_run_decides_once_and_records_what_ran(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import r1_sft.training.run  # noqa: F401  (every module of a run imported before the spies go in)
    from r1_sft.model import folders, precision
    from r1_sft.training.run import run_training

    resolved = spy_everywhere(monkeypatch, folders, "resolve_model_folder")
    decided = spy_everywhere(monkeypatch, precision, "decide_precision")
    devices = spy_everywhere(monkeypatch, precision, "pick_device")
    out = tmp_path / "run"
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(VAL), output_dir=str(out),
                     max_steps=2, eval_steps=2, save_steps=2, logging_steps=1, max_length=256,
                     per_device_train_batch_size=2, gradient_accumulation_steps=1, gradient_checkpointing=False,
                     lora_target_modules="q_proj,v_proj", report_to="none", device="cpu", precision="bf16")
    what_ran = WhatRan()
    run_training(cfg, callbacks=[what_ran])

    assert (len(resolved), len(decided), len(devices)) == (1, 1, 1)
    printed = capsys.readouterr().out
    assert printed.count("[plan] ") == 1, printed
    plan = json.loads((out / "training_logs/run_info.json").read_text(encoding="utf-8"))["plan"]
    assert plan["dtype"] == str(what_ran.dtype).removeprefix("torch.") == "bfloat16"
    assert plan["device"] == what_ran.device.type == "cpu"
    assert plan["precision"] == "bf16" and plan["use_4bit"] is True and plan["engine"] == "one process"
    assert plan["model"]["kind"] == "base" and plan["world_size"] == 1
    # the adapters carry the same record
    assert json.loads((out / "best_model/run_info.json").read_text(encoding="utf-8"))["plan"] == plan
    assert what_ran.dtype == torch.bfloat16
