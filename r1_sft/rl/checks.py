"""Everything a GRPO run can check before it loads a model: values, the run's plan, paths, trackers,
vLLM and LoRA names. Each mistake is one line naming the flag, the value and the fix."""
from __future__ import annotations

import math
import os

from r1_sft.cli import UserError
from r1_sft.model.plan import RunPlan
from r1_sft.paths import repo_path, tried_path
from r1_sft.rl.config import LOSS_TYPES, GrpoConfig


def _refuse(name: str, value, allowed: str) -> None:
    raise UserError(f"--{name} {value!r}: {allowed}")


def check_grpo_settings(cfg: GrpoConfig) -> RunPlan:
    """Values, the run's plan, paths, trackers, vLLM and LoRA names: everything that needs no loaded model.
    Returns the plan (folder, device, precision, 4-bit, engine: decided here, once)."""
    from r1_sft.model.plan import make_plan
    from r1_sft.model.precision import check_run_settings
    from r1_sft.training.checks import (
        check_lora_targets,
        check_schedule,
        check_trackers,
        meta_model,
    )

    check_run_settings(cfg.device, cfg.precision)
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length", "eval_steps",
                 "save_steps", "logging_steps", "save_total_limit", "lora_r"):
        if not getattr(cfg, name) >= 1:
            _refuse(name, getattr(cfg, name), "must be at least 1")
    if not cfg.save_total_limit >= 2:  # at 1 the Trainer deletes the last checkpoint, final_model/'s source
        _refuse("save_total_limit", cfg.save_total_limit, "must be at least 2 (final_model/ is the last checkpoint)")
    if not cfg.num_generations >= 2:
        _refuse("num_generations", cfg.num_generations, "must be at least 2 (GRPO compares completions in a group)")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if batch % cfg.num_generations:
        raise UserError(f"--num_generations {cfg.num_generations} must divide the completions per step "
                        f"(--per_device_train_batch_size {cfg.per_device_train_batch_size} x "
                        f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps} x {world} process(es) "
                        f"= {batch})")
    check_schedule(cfg, best_by="validation accuracy", typical_lr="typical for LoRA GRPO: 1e-6 to 5e-5")
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        _refuse("beta", cfg.beta, "must be >= 0 (0 = no KL term and no reference pass; R1 used 0.001)")
    if cfg.loss_type not in LOSS_TYPES:
        _refuse("loss_type", cfg.loss_type, f"use one of {', '.join(LOSS_TYPES)}")
    for name in ("accuracy_weight", "format_weight", "overlong_weight"):
        if not (getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name))):
            _refuse(name, getattr(cfg, name), "must be >= 0")
    if not cfg.lora_alpha > 0:
        _refuse("lora_alpha", cfg.lora_alpha, "must be > 0")
    if not 0 <= cfg.seed < 2**32:
        _refuse("seed", cfg.seed, "must be between 0 and 2**32 - 1")
    if cfg.resume and cfg.overwrite_output_dir:
        raise UserError("--resume and --overwrite_output_dir contradict each other: continue the run or start over")
    if cfg.use_vllm:
        check_vllm(cfg)
    check_trackers(cfg.report_to)
    if not repo_path(cfg.model_path).exists():
        raise UserError(f"--model_path {tried_path(repo_path(cfg.model_path))}: not found (GRPO continues the SFT "
                        f"adapter: run scripts/train_stf_r1_train_val.py first, or pass a base model folder)")
    plan = make_plan(cfg.model_path, device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit,
                     for_training=True, engine="DDP" if world > 1 else "one process", world_size=world,
                     require_weights=not cfg.dry_run)  # a dry run reads config.json and the tokenizer only
    folder = plan.folder
    for flag in ("train_file", "val_file"):
        if not repo_path(getattr(cfg, flag)).is_file():
            raise UserError(f"--{flag} {tried_path(repo_path(getattr(cfg, flag)))}: question file not found (run "
                            f"data/split_mcq_data.py, or pass a CMB-Exam / CMExam / MedQA-MCMLE file)")
    if folder.adapter_path is None:
        check_lora_targets(meta_model(folder.base_path), cfg.lora_target_modules)
    return plan


def check_vllm(cfg: GrpoConfig) -> None:
    """vLLM colocated generation: installed (its own environment), on CUDA, over 16-bit weights."""
    import importlib.util

    import torch

    if cfg.use_4bit:
        raise UserError("--use_vllm with --use_4bit: TRL hands vLLM the merged 16-bit weights each step; train LoRA "
                        "on 16-bit weights (--no_use_4bit)")
    if not 0 < cfg.vllm_gpu_memory_utilization < 1:
        _refuse("vllm_gpu_memory_utilization", cfg.vllm_gpu_memory_utilization, "must be between 0 and 1")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--use_vllm: vllm is not installed here (it needs its own environment: see docs/grpo.md), "
                        "or drop --use_vllm to generate with transformers")
    if not torch.cuda.is_available():
        raise UserError("--use_vllm: vLLM needs a CUDA GPU (drop --use_vllm to generate with transformers)")
