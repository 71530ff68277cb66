"""One precision decision (r1_sft.model.precision.decide_precision, through the run's plan), checked on simulated GPUs: T4, V100, A100 and the CPU.

torch.cuda is mocked: the capability and memory of each card, and ``is_bf16_supported`` answering True
as it does by default on T4 and V100 (emulation counts), which must not decide anything.
"""
from __future__ import annotations

import types

import pytest
import torch

from r1_sft.cli import UserError
from r1_sft.model.loading import from_pretrained_kwargs
from r1_sft.model.plan import make_plan
from r1_sft.model.precision import decide_precision, pick_device, pick_dtype

from conftest import run_script, sft_config

GB = 2**30
CARDS = {  # name: (compute capability, memory)
    "T4": ((7, 5), 16 * GB),
    "V100": ((7, 0), 32 * GB),
    "A100": ((8, 0), 80 * GB),
}


@pytest.fixture
def gpu(monkeypatch):
    def simulate(name: str) -> None:
        capability, memory = CARDS[name]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: types.SimpleNamespace(total_memory=memory, name=name))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return simulate


@pytest.mark.parametrize("card, weights, trainer, inference", [
    ("T4", torch.float16, {"bf16": False, "fp16": True}, torch.float32),
    ("V100", torch.float16, {"bf16": False, "fp16": True}, torch.float32),
    ("A100", torch.bfloat16, {"bf16": True, "fp16": False}, torch.bfloat16),
])
def test_every_place_agrees_on_each_gpu(gpu, tiny_model_dir, card, weights, trainer, inference):
    gpu(card)
    assert pick_device() == "cuda"
    plan = decide_precision("cuda")
    assert (plan.train_weights, plan.inference) == (weights, inference)
    # The Trainer's mixed precision matches the weights it trains over.
    assert make_plan(tiny_model_dir, for_training=True).precision.trainer_flags == trainer
    assert pick_dtype("cuda", for_training=True) == weights and pick_dtype("cuda") == inference
    for for_training, expected in ((True, weights), (False, inference)):
        run = make_plan(tiny_model_dir, device="cuda", use_4bit=True, for_training=for_training)
        kwargs = from_pretrained_kwargs(run)
        assert kwargs["dtype"] == expected
        assert kwargs["quantization_config"].bnb_4bit_compute_dtype == expected
    # Never fp16 inference of an R1 distill that fits in fp32 (LoRA-tuned ones can emit only "!").
    assert plan.inference != torch.float16


def test_a_model_too_large_for_fp32_on_a_t4_falls_back_to_fp16_and_says_so(gpu):
    gpu("T4")
    seven_b = 15 * GB  # bf16 weights of the 7B on disk: 30 GB in fp32
    plan = decide_precision("cuda", weight_bytes=seven_b)
    assert plan.inference == torch.float16 and "--use_4bit" in plan.reason
    assert decide_precision("cuda", weight_bytes=3 * GB).inference == torch.float32  # the 1.5B fits


@pytest.mark.parametrize("requested, weights, trainer", [
    ("bf16", torch.bfloat16, {"bf16": True, "fp16": False}),
    ("fp16", torch.float16, {"bf16": False, "fp16": True}),
    ("fp32", torch.float32, {"bf16": False, "fp16": False}),
])
def test_precision_flag_chooses_the_same_mode_on_a_cpu_and_on_an_a100(gpu, tiny_model_dir, requested, weights, trainer):
    """--precision X means the same weights and autocast everywhere: how the suite runs a GPU's numerics."""
    on_cpu = decide_precision("cpu", requested=requested)
    assert (on_cpu.train_weights, on_cpu.inference, on_cpu.name) == (weights, weights, requested)
    assert make_plan(tiny_model_dir, device="cpu", precision=requested, for_training=True).precision.trainer_flags \
        == trainer
    gpu("A100")
    on_gpu = decide_precision("cuda", requested=requested)
    assert (on_gpu.train_weights, on_gpu.trainer_bf16, on_gpu.trainer_fp16) == \
        (on_cpu.train_weights, on_cpu.trainer_bf16, on_cpu.trainer_fp16)


def test_bf16_on_a_gpu_without_it_and_unknown_names_are_one_line_errors(gpu):
    gpu("T4")
    with pytest.raises(UserError, match=r"--precision bf16: .*7\.5.*fp16"):
        decide_precision("cuda", requested="bf16")
    with pytest.raises(UserError, match="--precision 'bf17': use one of auto, bf16, fp16, fp32"):
        decide_precision("cpu", requested="bf17")


def test_training_refuses_a_bad_precision_before_loading(tiny_model_dir, tmp_path):
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir, "--output_dir",
                      tmp_path / "o", "--precision", "half")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --precision 'half': use one of auto, bf16, fp16, fp32"]


def test_cpu_is_float32_everywhere(tiny_model_dir):
    plan = decide_precision("cpu")
    assert (plan.train_weights, plan.inference, plan.trainer_bf16, plan.trainer_fp16) == \
        (torch.float32, torch.float32, False, False)
    if not torch.cuda.is_available():
        assert make_plan(tiny_model_dir, for_training=True).precision.trainer_flags == {"bf16": False, "fp16": False}
    kwargs = from_pretrained_kwargs(make_plan(tiny_model_dir, device="cpu", for_training=True))
    assert kwargs["dtype"] == torch.float32 and "quantization_config" not in kwargs


def test_4bit_training_keeps_embeddings_and_lm_head_in_the_compute_dtype(tiny_model_dir, monkeypatch):
    """No fp32 copies of the untied embed_tokens and lm_head (1.87 GB for the real 1.5B): bf16 stays bf16."""
    from r1_sft.model.lora import setup_lora_model

    # the dtype a bf16 GPU would get, on this CPU
    plan = make_plan(tiny_model_dir, use_4bit=True, for_training=True, dtype=torch.bfloat16)
    model, _ = setup_lora_model(sft_config(model_path=str(tiny_model_dir), use_4bit=True,
                                            lora_target_modules="q_proj,v_proj"), plan)
    base = model.get_base_model()
    assert base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert base.lm_head.weight.dtype == torch.bfloat16
    assert not base.model.embed_tokens.weight.requires_grad and not base.lm_head.weight.requires_grad
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)  # fp16 loss scaling needs fp32
    ids = torch.tensor([[151646, 109432, 107828, 151643]])
    model(input_ids=ids, labels=ids).loss.backward()  # checkpointed blocks still get gradients
    assert all(p.grad is not None for p in lora)
