"""LoRA on lm_head alone trains in all four combinations: gradient checkpointing on/off x fused/stock loss.

Without checkpointing and with no adapter below the head, the hidden states need no gradient: the old
fused loss then skipped its own path and crashed ("element 0 of tensors does not require grad").
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, sft_config

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"


@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointing", "no_checkpointing"])
@pytest.mark.parametrize("chunk", [256, 0], ids=["fused", "stock"])
def test_lm_head_only_lora_trains(tiny_model_dir, tmp_path, checkpointing, chunk):
    from r1_sft.training.run import run_training

    val = tmp_path / "val2.jsonl"
    val.write_text("".join((REPO / "tests/fixtures/sft_tiny_val.jsonl").read_text(encoding="utf-8")
                           .splitlines(keepends=True)[:2]), encoding="utf-8")
    out = tmp_path / "run"
    cfg = sft_config(model_path=str(tiny_model_dir), train_file=str(TRAIN), val_file=str(val), output_dir=str(out),
                     max_length=64, max_steps=1, eval_steps=1, save_steps=1, per_device_train_batch_size=2,
                     gradient_accumulation_steps=1, use_4bit=False, precision="fp32", learning_rate=1e-2,
                     lora_target_modules="lm_head", gradient_checkpointing=checkpointing, loss_chunk_tokens=chunk,
                     warmup_ratio=0.0, lr_scheduler_type="constant",
                     early_stopping_patience=0)
    run_training(cfg)
    adapter = load_file(out / "final_model/adapter_model.safetensors")
    assert adapter and all("lm_head" in name for name in adapter)
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(torch.isfinite(t).all() for t in adapter.values())
    assert any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it moved, so the head got its gradient


@pytest.mark.parametrize("use_4bit", [False, True], ids=["16-bit", "4-bit"])
def test_checkpointing_hooks_the_embeddings_once(tiny_model_dir, use_4bit):
    from r1_sft.model.lora import setup_lora_model
    from r1_sft.model.plan import make_plan

    cfg = sft_config(model_path=str(tiny_model_dir), use_4bit=use_4bit, precision="fp32", gradient_checkpointing=True,
                     lora_target_modules="q_proj,lm_head")
    model, _ = setup_lora_model(cfg, make_plan(tiny_model_dir, device="cpu", precision="fp32", use_4bit=use_4bit))
    embed = model.get_input_embeddings()
    assert len(embed._forward_hooks) == 1  # the old setup added a second, identical hook (16-bit base)
    ids = torch.tensor([[1, 2, 3]])
    assert embed(ids).requires_grad  # the one hook still gives checkpointed blocks a grad path
