"""The one loader: a run's plan (``r1_sft.model.plan``) -> ``(model, tokenizer)``; merging an adapter.

Weights load from safetensors only and trust_remote_code stays off; device, dtype, 4-bit NF4 and
attention come from the plan, decided once per run.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from r1_sft.cli import UserError
from r1_sft.model.folders import ADAPTER_CONFIG, MERGE_INFO, load_tokenizer, resolve_model_folder, save_tokenizer
from r1_sft.model.plan import RunPlan, as_dtype, make_plan
from r1_sft.paths import display_path, repo_path


def from_pretrained_kwargs(plan: RunPlan, *, shard_4bit: bool = False) -> dict:
    """``from_pretrained`` arguments: dtype (and 4-bit compute dtype), attention and device from the plan.

    ``shard_4bit``: store the NF4 weights in the compute dtype instead of uint8, so that FSDP can
    shard them (FSDP-QLoRA; the 4-bit values are the same).
    """
    kwargs = dict(dtype=plan.dtype, attn_implementation=plan.attention, use_safetensors=True,
                  trust_remote_code=False, device_map={"": plan.device})
    if plan.use_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=plan.dtype, **({"bnb_4bit_quant_storage": plan.dtype} if shard_4bit else {}))
    return kwargs


def load_model(plan: RunPlan | str | Path, *, shard_4bit: bool = False, base_only: bool = False, tokenizer=None,
               **plan_options):
    """Load what ``plan`` says; returns ``(model, tokenizer)``.

    ``plan``: a :class:`RunPlan`, or a folder for which one is made here (``plan_options`` go to
    :func:`make_plan`: ``device``, ``precision``, ``use_4bit``, ``for_training``, ``dtype``, ``attention``).
    An adapter folder loads its base, then the adapter on top (a PeftModel, trainable only when
    training) unless ``base_only``. ``use_4bit``: NF4 with double quantization through bitsandbytes
    (``shard_4bit``: stored in the compute dtype, for FSDP). The tokenizer is padded left for
    generation, right for training (``tokenizer``: the folder's, when the caller has loaded it already:
    R1's 151,665-token tokenizer takes about half a second to load); the model is in eval mode unless training.
    """
    from transformers import AutoModelForCausalLM

    if not isinstance(plan, RunPlan):
        plan = make_plan(plan, **plan_options)
    elif plan_options:
        raise TypeError(f"load_model: a RunPlan was given; these belong in it: {sorted(plan_options)}")
    folder = plan.folder
    model = AutoModelForCausalLM.from_pretrained(str(folder.base_path), **from_pretrained_kwargs(plan, shard_4bit=shard_4bit))
    if plan.use_4bit and plan.for_training:
        keep_training_4bit_kernel(model)
    if folder.adapter_path is not None and not base_only:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder.adapter_path), is_trainable=plan.for_training)
    if plan.for_training:
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
        model.train()
    else:
        model.eval()
    padding_side = "right" if plan.for_training else "left"
    if tokenizer is None:
        tokenizer = load_tokenizer(folder, padding_side=padding_side)
    tokenizer.padding_side = padding_side
    quant = ", 4-bit NF4" if plan.use_4bit else ""
    what = (f"LoRA adapter {display_path(folder.adapter_path)} on base {display_path(folder.base_path)}"
            if folder.adapter_path and not base_only else
            f"{'base' if base_only else folder.kind} model {display_path(folder.base_path)}")
    print(f"[model] loaded {what} ({plan.device}, {plan.dtype_name}{quant}, attn={plan.attention})", flush=True)
    return model, tokenizer


def keep_training_4bit_kernel(model) -> int:
    """Keep a 4-bit model that trains on one bitsandbytes kernel, whatever the CPU.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a ``Linear4bit``'s weights for a faster
    inference kernel the first time the layer runs in eval mode without grad (the Trainer's
    evaluation), and the repacking is permanent: training after the first evaluation then runs
    another kernel with other numerics (a resumed run no longer equals the uninterrupted one) and
    under DDP fails in ``matmul_4bit``. The switch is the module attribute
    ``support_avx512bf16_for_cpu``; turning it off keeps training and evaluation on the training
    kernel. Returns the number of layers switched. (GPUs never take this path.)
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def merge_adapter(adapter_path: str | Path, out_dir: str | Path, *, dtype=torch.bfloat16) -> Path:
    """Fold a LoRA adapter into its base weights and save a standalone folder (safetensors, bf16 default).

    Merges in full precision on CPU (never into 4-bit weights) and marks the folder with merge_info.json.
    """
    from r1_sft.jsonl_io import atomic_write_text

    folder = resolve_model_folder(adapter_path)
    if folder.kind != "adapter":
        raise UserError(f"{display_path(folder.model_path)}: not an adapter folder (no {ADAPTER_CONFIG})")
    model, tokenizer = load_model(make_plan(folder, device="cpu", dtype=torch.float32))
    merged = model.merge_and_unload()
    merged.to(as_dtype(dtype))
    out = repo_path(out_dir)
    merged.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tokenizer, out)
    atomic_write_text(out / MERGE_INFO, json.dumps({"base": str(folder.base_path), "adapter": str(folder.adapter_path),
                                                    "dtype": str(as_dtype(dtype))}, indent=2) + "\n")
    return out
