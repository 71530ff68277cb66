"""Everything a GRPO run can check before it loads a model: values, the run's plan, paths, trackers,
vLLM, LoRA names, and the schedule the question file allows. Each mistake is one line naming the flag,
the value and the fix."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from r1_sft.cli import UserError
from r1_sft.model.plan import RunPlan
from r1_sft.paths import repo_path, tried_path
from r1_sft.rl.config import (
    EVALUATIONS_PER_RUN,
    IMPORTANCE_SAMPLING_LEVELS,
    LOSS_TYPES,
    LR_SCHEDULERS,
    SCALE_REWARDS,
    VLLM_MODES,
    GrpoConfig,
)


def _refuse(name: str, value, allowed: str) -> None:
    raise UserError(f"--{name} {value!r}: {allowed}")


def _one_of(cfg: GrpoConfig, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in allowed:
        _refuse(name, getattr(cfg, name), f"use one of {', '.join(allowed)}")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_objective(cfg: GrpoConfig) -> None:
    """Sampling, clipping and loss settings: each loss type gets what it needs (TRL 1.16 only warns)."""
    from r1_sft.inference.decoding import MAX_TEMPERATURE

    _one_of(cfg, "loss_type", LOSS_TYPES)
    _one_of(cfg, "scale_rewards", SCALE_REWARDS)
    _one_of(cfg, "importance_sampling_level", IMPORTANCE_SAMPLING_LEVELS)
    _one_of(cfg, "lr_scheduler_type", LR_SCHEDULERS)
    if not 0 < cfg.temperature <= MAX_TEMPERATURE:
        _refuse("temperature", cfg.temperature, f"must be > 0 and <= {MAX_TEMPERATURE} (R1: 0.6)")
    if not 0 < cfg.top_p <= 1:
        _refuse("top_p", cfg.top_p, "must be > 0 and <= 1 (1.0 keeps the sampler's log-probs equal to the trainer's)")
    if not 0 < cfg.epsilon < 1:
        _refuse("epsilon", cfg.epsilon, "must be between 0 and 1 (GRPO and DAPO: 0.2)")
    if not (cfg.epsilon_high >= 0 and math.isfinite(cfg.epsilon_high)):
        _refuse("epsilon_high", cfg.epsilon_high, "must be >= 0 (0 = DAPO's 0.28)")
    if cfg.loss_type == "cispo" and not cfg.epsilon_high:
        raise UserError("--loss_type cispo clips the ratio itself at --epsilon_high (not at 1 + it), and TRL's "
                        "fallback 0.2 would cap every ratio: set it, e.g. --epsilon_high 5.0 (ScaleRL)")
    if cfg.loss_type == "luspo" and cfg.importance_sampling_level != "sequence":
        raise UserError("--loss_type luspo is a sequence-level loss: add --importance_sampling_level sequence")
    if cfg.importance_sampling_level == "sequence" and cfg.loss_type not in ("grpo", "luspo"):
        raise UserError(f"--importance_sampling_level sequence with --loss_type {cfg.loss_type} weights each "
                        f"sequence by its length: use --loss_type grpo (GSPO) or luspo")
    if not cfg.num_iterations >= 1:
        _refuse("num_iterations", cfg.num_iterations, "must be at least 1 (1 = one pass per generated batch)")
    if not 0 <= cfg.warmup_ratio < 1:
        _refuse("warmup_ratio", cfg.warmup_ratio, "must be >= 0 and < 1 (a fraction of the steps)")
    if not cfg.num_generations_eval >= 2:
        _refuse("num_generations_eval", cfg.num_generations_eval, "must be at least 2 (TRL normalises each group)")
    if not cfg.eval_questions >= 0:
        _refuse("eval_questions", cfg.eval_questions, "must be >= 0 (0 = every validation question)")


def check_grpo_settings(cfg: GrpoConfig) -> RunPlan:
    """Values, the run's plan, paths, trackers, vLLM and LoRA names: everything that needs no loaded model.
    Returns the plan (folder, device, precision, 4-bit, engine: decided here, once)."""
    from r1_sft.model.plan import make_plan
    from r1_sft.model.precision import check_run_settings
    from r1_sft.training.checks import check_lora_targets, check_schedule, check_trackers, meta_model

    check_run_settings(cfg.device, cfg.precision)
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length",
                 "logging_steps", "save_total_limit", "lora_r"):
        if not getattr(cfg, name) >= 1:
            _refuse(name, getattr(cfg, name), "must be at least 1")
    for name in ("eval_steps", "save_steps"):
        if not getattr(cfg, name) >= 0:
            _refuse(name, getattr(cfg, name), f"must be >= 0 (0 = about {EVALUATIONS_PER_RUN} times per run)")
    if not cfg.save_total_limit >= 2:  # at 1 the Trainer deletes the last checkpoint, final_model/'s source
        _refuse("save_total_limit", cfg.save_total_limit, "must be at least 2 (final_model/ is the last checkpoint)")
    if not cfg.num_generations >= 2:
        _refuse("num_generations", cfg.num_generations, "must be at least 2 (GRPO compares completions in a group)")
    world = world_size()
    batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if batch % cfg.num_generations:
        raise UserError(f"--num_generations {cfg.num_generations} must divide the completions per step "
                        f"(--per_device_train_batch_size {cfg.per_device_train_batch_size} x "
                        f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps} x {world} process(es) "
                        f"= {batch})")
    eval_steps = cfg.eval_steps or 1  # 0 (automatic) is resolved once the questions are counted
    check_schedule(dataclasses.replace(cfg, eval_steps=eval_steps, save_steps=cfg.save_steps or eval_steps),
                   best_by="validation accuracy", typical_lr="typical for LoRA GRPO: 1e-6 to 5e-5")
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        _refuse("beta", cfg.beta, "must be >= 0 (0 = no KL term and no reference pass; R1 used 0.001)")
    check_objective(cfg)
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
    """vLLM generation: 16-bit weights, a known mode, installed (its own environment), on CUDA."""
    import importlib.util

    import torch

    if cfg.use_4bit:
        raise UserError("--use_vllm with --use_4bit: TRL merges the LoRA into dequantised 16-bit weights and loads "
                        "them into a 4-bit vLLM engine, which fails (TRL issue 4973); train 16-bit LoRA instead "
                        "(--no_use_4bit: the 1.5B's weights are 3.6 GB)")
    _one_of(cfg, "vllm_mode", VLLM_MODES)
    if not 0 < cfg.vllm_gpu_memory_utilization < 1:
        _refuse("vllm_gpu_memory_utilization", cfg.vllm_gpu_memory_utilization, "must be between 0 and 1")
    if not cfg.vllm_max_model_length >= 0:
        _refuse("vllm_max_model_length", cfg.vllm_max_model_length, "must be >= 0 (0 = longest prompt + completion)")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("--use_vllm: vllm is not installed in this Python (it needs its own environment: see "
                        "docs/grpo.md), or drop --use_vllm to generate with transformers")
    if not torch.cuda.is_available():
        raise UserError("--use_vllm: vLLM needs a CUDA GPU (drop --use_vllm to generate with transformers)")


@dataclass(frozen=True)
class StepPlan:
    """How many questions a step takes, how many steps the run has, when it validates: from the files' counts."""

    questions_per_step: int
    steps_per_epoch: int
    total_steps: int
    epochs: float
    eval_steps: int
    save_steps: int
    eval_questions: int  # validation questions per evaluation (the fixed subset)
    eval_completions: int  # completions generated per evaluation

    def describe(self, cfg: GrpoConfig, n_train: int, n_val: int) -> str:
        from r1_sft.inference.decoding import MAX_NEW_TOKENS

        # the Trainer validates every eval_steps and once more at the last step
        evaluations = self.total_steps // self.eval_steps + bool(self.total_steps % self.eval_steps)
        cut = (f"; completions cut at {cfg.max_completion_length} tokens, below the {MAX_NEW_TOKENS} "
               f"scripts/evaluate_model.py allows" if cfg.max_completion_length < MAX_NEW_TOKENS else "")
        return (f"[grpo] {self.questions_per_step} question(s) x {cfg.num_generations} completions per step "
                f"(--per_device_train_batch_size {cfg.per_device_train_batch_size} x --gradient_accumulation_steps "
                f"{cfg.gradient_accumulation_steps} x {world_size()} process(es) / --num_generations "
                f"{cfg.num_generations}); {n_train} questions = {self.steps_per_epoch} step(s) per epoch; "
                f"{self.total_steps} steps = {self.epochs:.2g} epoch(s); validation every {self.eval_steps} steps "
                f"and at the end ({evaluations}x) on {self.eval_questions} of {n_val} questions x {cfg.num_generations_eval} = "
                f"{self.eval_completions} completions; checkpoint every {self.save_steps}; loss {cfg.loss_type}, "
                f"beta {cfg.beta}{cut}")


def _fitting_accumulation(cfg: GrpoConfig, world: int, n_train: int) -> int:
    """The largest --gradient_accumulation_steps below the current one whose step fits ``n_train`` questions."""
    for accumulation in range(cfg.gradient_accumulation_steps - 1, 0, -1):
        completions = cfg.per_device_train_batch_size * accumulation * world
        if completions % cfg.num_generations == 0 and completions // cfg.num_generations <= n_train:
            return accumulation
    return 0


def plan_steps(cfg: GrpoConfig, n_train: int, n_val: int) -> StepPlan:
    """Questions per step against the file (refused when the file cannot fill one step), the run's length
    in steps and epochs, and the validation cadence (--eval_steps 0: about EVALUATIONS_PER_RUN times)."""
    world = world_size()
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world // cfg.num_generations
    if n_train < per_step:
        fit = _fitting_accumulation(cfg, world, n_train)
        fix = (f"lower --gradient_accumulation_steps to {fit}" if fit else
               "lower --per_device_train_batch_size or raise --num_generations")
        raise UserError(f"--train_file {tried_path(repo_path(cfg.train_file))}: {n_train} question(s), fewer than "
                        f"the {per_step} one step takes (--per_device_train_batch_size {cfg.per_device_train_batch_size}"
                        f" x --gradient_accumulation_steps {cfg.gradient_accumulation_steps} x {world} process(es) / "
                        f"--num_generations {cfg.num_generations}): {fix}, or add questions")
    # TRL's sampler drops the last, incomplete step of each epoch; each generated batch is trained on
    # --num_iterations times
    per_epoch = n_train // per_step * cfg.num_iterations
    total = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.num_train_epochs * per_epoch))
    eval_steps = cfg.eval_steps or max(1, total // EVALUATIONS_PER_RUN)
    save_steps = cfg.save_steps or eval_steps
    if save_steps % eval_steps:
        raise UserError(f"--save_steps {save_steps} must be a multiple of --eval_steps {eval_steps} (automatic for "
                        f"{total} steps): set --eval_steps as well")
    n_eval = min(cfg.eval_questions or n_val, n_val)
    return StepPlan(per_step, per_epoch, total, total / per_epoch, eval_steps, save_steps, n_eval,
                    n_eval * cfg.num_generations_eval)
