"""GRPO after SFT: reinforcement learning with verifiable multiple-choice rewards on TRL's ``GRPOTrainer``.

One entry point, :func:`run_grpo`: MCQ files (any shape ``benchmarks`` reads) -> the step plan, printed
before anything loads (``checks.plan_steps``: questions per step against the file, the run in steps and
epochs, validation on a fixed seeded subset) -> prompts built by the
project's one MCQ prompt (``benchmarks.mcq_user_text`` + ``r1_format.build_prompt``: no system prompt,
ending in ``<think>\\n``) -> the LoRA model of SFT (``lora.setup_lora_model``: a fresh adapter on the
base, or the SFT adapter folder continued) -> TRL's group sampling, clipped objective and optional KL
-> ``best_model/`` (highest validation accuracy), ``final_model/``, ``checkpoint-N/`` and
``training_logs/`` as SFT writes them, so evaluation, merging, chat and serving take them as they are.

TRL logs per step, and our progress lines show: the summed reward's mean and spread, each reward's
mean and spread (``rewards/accuracy_reward/mean`` is the accuracy, ``format_reward`` the format rate,
``overlong_penalty`` the soft length penalty), completion lengths, ``completions/clipped_ratio`` (cut at
``max_completion_length``), ``frac_reward_zero_std`` (groups whose rewards are all equal: no gradient),
``kl`` when ``beta > 0``, entropy and the clip ratios.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from r1_sft.cli import UserError
from r1_sft.paths import display_path, repo_path
from r1_sft.rl.checks import StepPlan, check_grpo_settings, plan_steps
from r1_sft.rl.config import CLIP_LOSSES, GrpoConfig

if TYPE_CHECKING:
    from r1_sft.model.plan import RunPlan

CURVE_KEYS = (("reward", "reward (weighted sum)"), ("rewards/accuracy_reward/mean", "accuracy"),
              ("rewards/format_reward/mean", "format rate"), ("completions/clipped_ratio", "cut at the limit"),
              ("frac_reward_zero_std", "groups with equal rewards"))


# ----------------------------------------------------------------------------- trainer

def r1_grpo_trainer_class():
    """TRL's GRPOTrainer, with prompts tokenized as the template wrote them (its BOS, no second one).

    TRL tokenizes plain-text prompts with the tokenizer's special tokens; R1's template text already
    starts with BOS, and a tokenizer that prepends one (transformers 4.x) would make two.
    """
    from trl import GRPOTrainer

    from r1_sft.training.outputs import CopiedTokenizerSave

    class R1GRPOTrainer(CopiedTokenizerSave, GRPOTrainer):
        def _tokenize_prompts(self, prompts: list):
            if prompts and isinstance(prompts[0], str):
                return self.processing_class(text=prompts, add_special_tokens=False)["input_ids"], None, {}
            return super()._tokenize_prompts(prompts)

    return R1GRPOTrainer


def score_completions_only_on_cpu() -> None:
    """On a CPU, let TRL's fused log-prob head score only the completion positions, as it does on CUDA.

    TRL 1.16 (``trainer/utils.py``) projects only the positions that carry a label on Triton devices;
    elsewhere it projects every position, prompt included, so that Neuron compiles one tile shape. On a
    CPU that only wastes time: with R1's 151,936-row head and a 100-token prompt before 16 generated
    tokens, the log-prob pass did 7x the needed work and took most of each step. The values are the
    same either way (masked positions are zeroed).
    """
    import trl.trainer.utils as trl_utils

    triton_only = trl_utils._use_triton
    if getattr(triton_only, "r1_cpu_compact", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or triton_only(device)

    compact.r1_cpu_compact = True
    trl_utils._use_triton = compact


def build_grpo_args(cfg: GrpoConfig, plan: RunPlan, steps: StepPlan, output_dir: Path, weights: Sequence[float],
                    best_metric: str, vllm_max_model_length: int):
    """TRL's GRPOConfig from ours. The run's length is the step plan's (``checks.plan_steps``), so the plan line
    printed before loading is what runs."""
    from trl import GRPOConfig

    from r1_sft.rl.config import DAPO_EPSILON_HIGH
    from r1_sft.training.callbacks import on_terminal
    from r1_sft.training.checks import report_to

    if "tensorboard" in report_to(cfg.report_to):
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "training_logs" / "tensorboard")
    device = plan.device
    # several validation questions per generate call, whole groups (TRL needs a multiple of the group)
    eval_batch = cfg.num_generations_eval * max(1, cfg.per_device_train_batch_size // cfg.num_generations_eval)
    vllm = {}
    if cfg.use_vllm:
        vllm = dict(
            vllm_mode=cfg.vllm_mode, vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            vllm_max_model_length=vllm_max_model_length, vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,
            # TRL's default (sequence_mask) weights a completion by the product of its per-token ratios, far
            # below 1 for a long one (TRL issue 6789): truncate per token instead (TIS), at TRL's cap of 3
            vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="token_truncate")
        if cfg.vllm_mode == "server" and cfg.vllm_server_base_url:
            vllm["vllm_server_base_url"] = cfg.vllm_server_base_url
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=steps.total_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler_type,  # a float < 1 = share of the steps
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature, top_p=cfg.top_p, epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high or (DAPO_EPSILON_HIGH if cfg.loss_type in CLIP_LOSSES else None),
        importance_sampling_level=cfg.importance_sampling_level, scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated_completions, num_iterations=cfg.num_iterations,
        beta=cfg.beta, loss_type=cfg.loss_type, reward_weights=list(weights),
        disable_dropout=True,  # the ratio compares log-probs of one policy: dropout would only add noise
        num_generations_eval=cfg.num_generations_eval, per_device_eval_batch_size=eval_batch,
        eval_strategy="steps", eval_steps=steps.eval_steps, save_strategy="steps", save_steps=steps.save_steps,
        save_total_limit=cfg.save_total_limit, load_best_model_at_end=True, metric_for_best_model=best_metric,
        greater_is_better=True, logging_steps=cfg.logging_steps, logging_first_step=True,
        log_completions=cfg.log_completions, num_completions_to_print=cfg.num_generations,  # one group per print
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_vllm=cfg.use_vllm, **vllm,
        seed=cfg.seed, report_to=report_to(cfg.report_to), run_name=output_dir.name, disable_tqdm=not on_terminal(),
        use_cpu=device == "cpu", dataloader_pin_memory=device != "cpu", save_only_model=False,
        log_level_replica="error", **plan.precision.trainer_flags)


def memory_plan(cfg: GrpoConfig, plan: RunPlan, longest_prompt: int) -> str:
    """``--dry_run``'s estimate for a GPU (``r1_sft.rl.memory``), from config.json alone."""
    from r1_sft.rl.memory import describe_grpo, grpo_estimate
    from r1_sft.training.memory_estimate import read_shape

    shape = read_shape(plan.folder.base_path)
    gpu = cfg.gpu_memory_gb or 80.0  # vLLM reserves a share of the card: assume an 80 GB one unless told
    colocated = cfg.use_vllm and cfg.vllm_mode == "colocate"  # a vLLM server runs on its own GPU
    est = grpo_estimate(shape, micro_batch=cfg.per_device_train_batch_size,
                        generation_batch=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
                        prompt_tokens=longest_prompt, completion_tokens=cfg.max_completion_length,
                        use_4bit=cfg.use_4bit, beta=cfg.beta, lora_r=cfg.lora_r,
                        lora_target_modules=cfg.lora_target_modules, gradient_checkpointing=cfg.gradient_checkpointing,
                        vllm_gb=cfg.vllm_gpu_memory_utilization * gpu if colocated else 0.0)
    return describe_grpo(est, cfg.gpu_memory_gb or None)


def plot_reward_curve(log_history: Sequence[dict], path: Path) -> bool:
    """Reward, accuracy, format rate and cut fraction per step (train), validation accuracy; False if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from r1_sft.jsonl_io import atomic_open

    series = [(label, [(h["step"], h[key]) for h in log_history if h.get(key) is not None]) for key, label in CURVE_KEYS]
    series.append(("validation accuracy", [(h["step"], h["eval_rewards/accuracy_reward/mean"]) for h in log_history
                                           if h.get("eval_rewards/accuracy_reward/mean") is not None]))
    series = [(label, points) for label, points in series if points]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, points in series:
        ax.plot(*zip(*points), label=label, marker="o" if len(points) < 30 else None, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- entry point

@dataclass
class GrpoResult:
    best_model: Path
    final_model: Path
    global_step: int
    best_accuracy: float | None
    log_history: list[dict]


def run_grpo(cfg: GrpoConfig, reward_funcs: Sequence[Callable] | None = None,
             reward_weights: Sequence[float] | None = None) -> GrpoResult | None:
    """Check -> read questions -> (dry run: report and stop) -> GRPO -> best/final adapters and logs.

    ``reward_funcs`` / ``reward_weights``: other rewards in TRL's shape (default: the three MCQ rewards
    with the configured weights); the best checkpoint is the one with the highest validation mean of
    the first. Returns None on a dry run.
    """
    from r1_sft.model.folders import load_tokenizer, save_tokenizer
    from r1_sft.model.lora import setup_lora_model
    from r1_sft.rl.prompts import load_questions, prompt_dataset, prompt_lengths
    from r1_sft.rl.rewards import mcq_reward_funcs
    from r1_sft.run_info import save_run_info
    from r1_sft.training.callbacks import (
        LogHistoryCallback,
        NonFiniteGuardCallback,
        end_reason,
        quiet_dataset_bars,
        use_progress_output,
    )
    from r1_sft.training.outputs import clear_output_dir, complete_checkpoints, copy_adapter, portable_adapter_config
    from r1_sft.training.trainer import last_finite_checkpoint

    plan = check_grpo_settings(cfg)  # values, the plan, paths, vLLM, trackers, LoRA names: nothing loaded yet
    train_records = load_questions(cfg.train_file, "train_file")
    val_records = load_questions(cfg.val_file, "val_file")
    n_val = len(val_records)
    steps = plan_steps(cfg, len(train_records), n_val)  # a file too small for one step stops here
    val_records = eval_subset(val_records, steps.eval_questions, cfg.seed)
    quiet_dataset_bars()
    output_dir = repo_path(cfg.output_dir)
    logs_dir = output_dir / "training_logs"
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = print if is_main else (lambda *a, **k: None)

    say(plan.describe(), flush=True)
    say(steps.describe(cfg, len(train_records), n_val), flush=True)
    tokenizer = load_tokenizer(plan.folder, padding_side="left")
    train, val = prompt_dataset(train_records, tokenizer), prompt_dataset(val_records, tokenizer)
    lengths = prompt_lengths(train, tokenizer)
    multi = sum(r.multi for r in train_records)
    say(f"[data] train: {len(train)} questions ({multi} multiple-answer) from {display_path(repo_path(cfg.train_file))}"
        f"; val: {len(val)} from {display_path(repo_path(cfg.val_file))}; prompt tokens min {min(lengths)}, "
        f"max {max(lengths)}", flush=True)
    longest = max(lengths + prompt_lengths(val, tokenizer))
    vllm_length = cfg.vllm_max_model_length or longest + cfg.max_completion_length
    if cfg.use_vllm:
        say(f"[vllm] {cfg.vllm_mode}; context {vllm_length} tokens (longest prompt {longest} + completion "
            f"{cfg.max_completion_length}), rollouts at temperature {cfg.temperature}, top_p {cfg.top_p}", flush=True)
    if cfg.dry_run:
        say("[dry_run] first prompt, as the model sees it (completions continue after its <think>\\n):")
        say(train[0]["prompt"])
        say(memory_plan(cfg, plan, max(lengths)), flush=True)
        say("[dry_run] no model loaded, no training done", flush=True)
        return None

    resume_from = None
    if cfg.resume:
        done = complete_checkpoints(output_dir)
        resume_from = done[-1] if done else None
        say(f"[resume] continuing from {display_path(resume_from)}" if done else
            f"[resume] no complete checkpoint in {display_path(output_dir)}: starting from scratch", flush=True)
    elif complete_checkpoints(output_dir) or (output_dir / "best_model").exists():
        if not cfg.overwrite_output_dir:
            raise UserError(f"{display_path(output_dir)}: holds an earlier run (pass --resume to continue it, "
                            f"--overwrite_output_dir to start over, or another --output_dir)")
        if is_main:
            clear_output_dir(output_dir)

    if reward_funcs is None:
        reward_funcs, reward_weights = mcq_reward_funcs(
            [tokenizer.eos_token_id], cfg.max_completion_length, cfg.accuracy_weight, cfg.format_weight,
            cfg.overlong_weight, partial_credit=cfg.partial_credit)
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
    from trl.trainer.utils import get_callable_name

    best_metric = f"rewards/{get_callable_name(reward_funcs[0])}/mean"
    from transformers import set_seed

    set_seed(cfg.seed)  # before the LoRA weights are initialised
    lora_settings = _LoraSettings(cfg)
    model, tokenizer = setup_lora_model(lora_settings, plan)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    args = build_grpo_args(cfg, plan, steps, output_dir, weights, best_metric, vllm_length)
    if is_main:
        model.print_trainable_parameters()
        save_run_info(cfg, logs_dir / "run_info.json", plan)
    score_completions_only_on_cpu()
    guard = NonFiniteGuardCallback(output_dir)  # NaN/inf weights: never checkpointed; 3 steps in a row stop the run
    trainer = r1_grpo_trainer_class()(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=train,
                                      eval_dataset=val, processing_class=tokenizer,
                                      callbacks=[LogHistoryCallback(logs_dir / "log_history.jsonl"), guard])
    use_progress_output(trainer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    best_dir, final_dir = output_dir / "best_model", output_dir / "final_model"
    trainer.save_model(str(best_dir))  # load_best_model_at_end put the best adapter in memory
    if trainer.is_world_process_zero():
        import shutil

        from r1_sft.jsonl_io import write_jsonl
        from r1_sft.training.log_report import write_training_report

        shutil.rmtree(best_dir / "ref", ignore_errors=True)  # TRL's frozen reference copy (beta > 0): not ours
        save_tokenizer(tokenizer, best_dir)
        (best_dir / "training_args.bin").unlink(missing_ok=True)
        if guard.last_finite:
            copy_adapter(output_dir / f"checkpoint-{state.global_step}", final_dir, tokenizer)
        else:
            print(f"[guard] {final_dir.name}/ not written: the adapter after step {state.global_step} has NaN/inf "
                  f"weights; {last_finite_checkpoint(output_dir)}", flush=True)
        write_jsonl(logs_dir / "log_history.jsonl", state.log_history)
        plotted = plot_reward_curve(state.log_history, logs_dir / "reward_curve.png")
        write_training_report(logs_dir, state.log_history, "GRPO")  # training_logs/report.html
        for folder in (best_dir, final_dir):
            if not folder.is_dir():
                continue
            portable_adapter_config(folder)
            save_run_info(cfg, folder / "run_info.json", plan)
        print(f"[grpo] {end_reason(args, state, None)}", flush=True)
        if state.best_model_checkpoint:
            print(f"[grpo] best validation {best_metric.split('/')[1]} {state.best_metric:.4f}: {best_dir.name}/ = "
                  f"{Path(state.best_model_checkpoint).name}; {final_dir.name}/ = checkpoint-{state.global_step}",
                  flush=True)
        else:
            print(f"[grpo] no evaluation ran ({state.global_step} steps < --eval_steps {steps.eval_steps}): "
                  f"{best_dir.name}/ and {final_dir.name}/ both hold the last adapter", flush=True)
        print(f"[write] {display_path(best_dir)}, {display_path(final_dir)}, {display_path(logs_dir)}/"
              f"log_history.jsonl ({len(state.log_history)} entries){', reward_curve.png' if plotted else ''}, "
              f"run_info.json", flush=True)
    return GrpoResult(best_dir, final_dir, state.global_step, state.best_metric, list(state.log_history))


def eval_subset(records: list, n: int, seed: int) -> list:
    """A fixed validation subset: ``n`` questions drawn with ``seed``, in file order (all when n >= the file)."""
    import random

    if n >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), n))]


class _LoraSettings:
    """What ``lora.setup_lora_model`` reads, from a GrpoConfig: dropout off (see ``disable_dropout``)."""

    def __init__(self, cfg: GrpoConfig):
        for name in ("gradient_checkpointing", "lora_r", "lora_alpha", "lora_target_modules"):
            setattr(self, name, getattr(cfg, name))
        self.lora_dropout = 0.0
