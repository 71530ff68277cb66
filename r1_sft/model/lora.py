"""The trainable model: a frozen (4-bit NF4 or 16-bit) base with LoRA adapters, or a continued adapter."""
from __future__ import annotations

from r1_sft.paths import display_path


def target_modules(spec: str) -> str | list[str]:
    spec = spec.strip()
    return spec if spec == "all-linear" else [name.strip() for name in spec.split(",") if name.strip()]


def setup_lora_model(cfg, plan, tokenizer=None):
    """Load the base (4-bit NF4 when ``use_4bit``), freeze it, add LoRA adapters; returns ``(peft_model, tokenizer)``.

    The frozen base keeps its dtype: peft's ``prepare_model_for_kbit_training`` would upcast every
    non-quantized weight to fp32, for R1 the untied embed_tokens and lm_head (2 x 233M parameters =
    1.87 GB against a 0.7 GB 4-bit body), and its fp32 embedding output would make the whole residual
    stream fp32 under bf16 autocast. The LoRA weights are fp32 (peft's default), which fp16 loss
    scaling needs. ``model_path`` may be an adapter folder: training continues that adapter on its
    real base, and the new adapter_config names that base (never an adapter).
    Under torchrun ``load_model`` puts each process on its own GPU.

    ``cfg``: any settings object with ``gradient_checkpointing`` and the ``lora_*`` fields
    (``TrainConfig``, GRPO's config); ``plan``: the run's :class:`~r1_sft.model.plan.RunPlan`
    (folder, device, precision, 4-bit), made once for training; ``tokenizer``: the run's, if loaded already.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    from r1_sft.model.loading import load_model

    folder = plan.folder
    model, tokenizer = load_model(plan, base_only=True, shard_4bit=bool(getattr(cfg, "fsdp_config", "")),
                                  tokenizer=tokenizer)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        # transformers also hooks the frozen embeddings to output tensors that require grad (checkpointed
        # blocks need a grad path); peft adds the same hook again to a 16-bit base: one is kept below.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    input_grad_hooks = list(getattr(model, "_require_grads_hooks", []))
    if folder.adapter_path is not None:
        print(f"[lora] continuing adapter {display_path(folder.adapter_path)} on its base "
              f"{display_path(folder.base_path)} (its rank and target modules; the --lora_* settings are ignored)",
              flush=True)
        model = PeftModel.from_pretrained(model, str(folder.adapter_path), is_trainable=True)
    else:
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=target_modules(cfg.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    base = model.get_base_model()
    if getattr(base, "_require_grads_hooks", input_grad_hooks) != input_grad_hooks:  # peft hooked the embeddings too
        for hook in input_grad_hooks:
            hook.remove()
    # adapter_config.json names its base (a full-weights folder), absolute while training: peft looks the
    # name up from the current folder when it saves. best_model/ and final_model/ get the repo-relative
    # form (r1_sft.training.outputs.portable_adapter_config), which keeps them portable.
    model.peft_config["default"].base_model_name_or_path = str(folder.base_path)
    return model, tokenizer

