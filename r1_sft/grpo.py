"""GRPO after SFT: reinforcement learning with verifiable multiple-choice rewards on TRL's ``GRPOTrainer``.

One entry point, :func:`run_grpo`: MCQ files (any shape ``benchmarks`` reads) -> prompts built by the
project's one MCQ prompt (``benchmarks.mcq_user_text`` + ``r1_format.build_prompt``: no system prompt,
ending in ``<think>\\n``) -> the LoRA model of SFT (``lora.setup_lora_model``: a fresh adapter on the
base, or the SFT adapter folder continued) -> TRL's group sampling, clipped objective and optional KL
-> ``best_model/`` (highest validation accuracy), ``final_model/``, ``checkpoint-N/`` and
``training_logs/`` as SFT writes them, so evaluation, merging, chat and serving take them as they are.

TRL logs per step, and our progress lines show: the summed reward's mean and spread, each reward's
mean and spread (``rewards/accuracy_reward/mean`` is the accuracy, ``format_reward`` the format rate,
``overlong_penalty`` minus the cut fraction), completion lengths, ``completions/clipped_ratio`` (cut at
``max_completion_length``), ``kl`` when ``beta > 0``, entropy and the clip ratios.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .cli import UserError
from .decoding import TEMPERATURE, TOP_P
from .paths import display_path, repo_path, tried_path
from .rewards import ACCURACY_WEIGHT, FORMAT_WEIGHT, OVERLONG_WEIGHT

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's loss_type values
CURVE_KEYS = (("reward", "reward (weighted sum)"), ("rewards/accuracy_reward/mean", "accuracy"),
              ("rewards/format_reward/mean", "format rate"), ("completions/clipped_ratio", "cut at the limit"))


@dataclass
class GrpoConfig:
    """Every GRPO knob. The first block has no default: the stage script's constants give it."""

    # ---- given by scripts/train_grpo.py's constants block
    model_path: str  # base model folder, or the SFT adapter folder to continue (its best_model/)
    train_file: str  # multiple-choice questions to train on (any shape the evaluation reads)
    val_file: str  # validation questions: eval reward and accuracy, best-model choice
    output_dir: str  # checkpoints, best_model/, final_model/, training_logs/
    use_4bit: bool  # QLoRA base (NF4); off = LoRA on 16-bit weights (needed by --use_vllm)
    lora_r: int  # LoRA rank of a new adapter (a continued SFT adapter keeps its own)
    lora_alpha: int  # LoRA scaling numerator of a new adapter
    learning_rate: float  # peak learning rate (AdamW), linear decay
    num_train_epochs: float  # passes over the training questions
    max_steps: int  # optimizer steps; > 0 overrides num_train_epochs
    per_device_train_batch_size: int  # completions per device per micro-batch
    gradient_accumulation_steps: int  # micro-batches per optimizer step; one generation round feeds them all
    num_generations: int  # completions sampled per question (the group); divides batch x accumulation
    max_completion_length: int  # generated tokens per completion; a completion cut here gets the over-length penalty
    beta: float  # KL coefficient against the starting policy; 0 = no reference pass (TRL's default)
    loss_type: str  # TRL's loss: dapo (default), grpo, dr_grpo, bnpo, cispo, sapo, luspo, vespo
    eval_steps: int  # generate on the validation questions every N steps
    save_steps: int  # write OUTPUT_DIR/checkpoint-N every N steps (a multiple of eval_steps)
    seed: int  # seed for LoRA init, question order and sampling
    # ---- the other knobs, with their one default
    accuracy_weight: float = ACCURACY_WEIGHT  # weight of the correctness reward (1 = exact letter set)
    format_weight: float = FORMAT_WEIGHT  # weight of the format reward (think closed once, an answer stating a choice)
    overlong_weight: float = OVERLONG_WEIGHT  # weight of the over-length penalty (-1 for a completion cut at the limit)
    precision: str = "auto"  # auto (bf16 on compute capability >= 8.0, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32
    device: str = "auto"  # auto (the GPU when usable, else the CPU), cuda, or cpu
    lora_target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (q_proj,v_proj,...)
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, ~1/3 more compute
    use_vllm: bool = False  # generate with vLLM colocated on the training GPU (vLLM's own environment; docs/grpo.md)
    vllm_gpu_memory_utilization: float = 0.3  # with --use_vllm: share of the GPU vLLM reserves for its weights and KV cache
    save_total_limit: int = 3  # checkpoints kept on disk (the best one is always kept as well)
    logging_steps: int = 1  # log rewards, accuracy, lengths (and KL) every N steps
    dry_run: bool = False  # read and check the questions, print the first prompt and the memory estimate, then exit
    gpu_memory_gb: float = 0.0  # with --dry_run: say whether the estimate fits a GPU of this many GB
    resume: bool = False  # continue from the newest complete checkpoint-N in OUTPUT_DIR
    overwrite_output_dir: bool = False  # delete an earlier run's checkpoints and results in OUTPUT_DIR first
    report_to: str = "none"  # experiment tracking: none, tensorboard, swanlab, wandb (comma-separated)


# ----------------------------------------------------------------------------- checks (nothing loaded)

def _refuse(name: str, value, allowed: str) -> None:
    raise UserError(f"--{name} {value!r}: {allowed}")


def check_grpo_settings(cfg: GrpoConfig) -> None:
    """Values, paths, trackers, vLLM and LoRA names: every check that needs no loaded model."""
    from .modeling import decide_precision, pick_device, resolve_model_folder
    from .train_checks import check_lora_targets, check_schedule, check_trackers, meta_model

    decide_precision(pick_device(cfg.device), requested=cfg.precision)
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
    folder = resolve_model_folder(cfg.model_path)
    for flag in ("train_file", "val_file"):
        if not repo_path(getattr(cfg, flag)).is_file():
            raise UserError(f"--{flag} {tried_path(repo_path(getattr(cfg, flag)))}: question file not found (run "
                            f"data/split_mcq_data.py, or pass a CMB-Exam / CMExam / MedQA-MCMLE file)")
    if folder.adapter_path is None:
        check_lora_targets(meta_model(cfg.model_path), cfg.lora_target_modules)


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


# ----------------------------------------------------------------------------- trainer

def r1_grpo_trainer_class():
    """TRL's GRPOTrainer, with prompts tokenized as the template wrote them (its BOS, no second one).

    TRL tokenizes plain-text prompts with the tokenizer's special tokens; R1's template text already
    starts with BOS, and a tokenizer that prepends one (transformers 4.x) would make two.
    """
    from trl import GRPOTrainer

    class R1GRPOTrainer(GRPOTrainer):
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


def build_grpo_args(cfg: GrpoConfig, output_dir: Path, weights: Sequence[float], best_metric: str):
    from trl import GRPOConfig

    from .modeling import pick_device
    from .train_callbacks import on_terminal
    from .train_checks import report_to
    from .training import compute_precision

    if "tensorboard" in report_to(cfg.report_to):
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "training_logs" / "tensorboard")
    device = pick_device(cfg.device)
    return GRPOConfig(
        output_dir=str(output_dir), num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
        temperature=TEMPERATURE, top_p=TOP_P,  # R1's sampling protocol, as evaluation samples
        beta=cfg.beta, loss_type=cfg.loss_type, reward_weights=list(weights),
        disable_dropout=True,  # the ratio compares log-probs of one policy: dropout would only add noise
        per_device_eval_batch_size=cfg.num_generations,  # one question's group per evaluation batch
        eval_strategy="steps", eval_steps=cfg.eval_steps, save_strategy="steps", save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit, load_best_model_at_end=True, metric_for_best_model=best_metric,
        greater_is_better=True, logging_steps=cfg.logging_steps, logging_first_step=True,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        use_vllm=cfg.use_vllm, vllm_mode="colocate", vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        seed=cfg.seed, report_to=report_to(cfg.report_to), run_name=output_dir.name, disable_tqdm=not on_terminal(),
        use_cpu=device == "cpu", dataloader_pin_memory=device != "cpu", save_only_model=False,
        log_level_replica="error", **compute_precision(cfg.precision, cfg.device))


def memory_plan(cfg: GrpoConfig, longest_prompt: int) -> str:
    """``--dry_run``'s estimate for a GPU (``r1_sft.grpo_memory``), from config.json alone."""
    from .grpo_memory import describe_grpo, grpo_estimate
    from .memory_estimate import read_shape
    from .modeling import resolve_model_folder

    shape = read_shape(resolve_model_folder(cfg.model_path).base_path)
    gpu = cfg.gpu_memory_gb or 80.0  # vLLM reserves a share of the card: assume an 80 GB one unless told
    est = grpo_estimate(shape, micro_batch=cfg.per_device_train_batch_size,
                        generation_batch=cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
                        prompt_tokens=longest_prompt, completion_tokens=cfg.max_completion_length,
                        use_4bit=cfg.use_4bit, beta=cfg.beta, lora_r=cfg.lora_r,
                        lora_target_modules=cfg.lora_target_modules, gradient_checkpointing=cfg.gradient_checkpointing,
                        vllm_gb=cfg.vllm_gpu_memory_utilization * gpu if cfg.use_vllm else 0.0)
    return describe_grpo(est, cfg.gpu_memory_gb or None)


def plot_reward_curve(log_history: Sequence[dict], path: Path) -> bool:
    """Reward, accuracy, format rate and cut fraction per step (train), validation accuracy; False if empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .jsonl_io import atomic_open

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
    from .lora import setup_lora_model
    from .grpo_data import load_questions, prompt_dataset, prompt_lengths
    from .modeling import load_tokenizer
    from .rewards import mcq_reward_funcs
    from .run_info import save_run_info
    from .run_outputs import clear_output_dir, complete_checkpoints, copy_adapter, portable_adapter_config
    from .train_callbacks import LogHistoryCallback, end_reason, quiet_dataset_bars, use_progress_output

    check_grpo_settings(cfg)  # values, paths, vLLM, trackers, LoRA names: nothing loaded yet
    train_records = load_questions(cfg.train_file, "train_file")
    val_records = load_questions(cfg.val_file, "val_file")
    quiet_dataset_bars()
    output_dir = repo_path(cfg.output_dir)
    logs_dir = output_dir / "training_logs"
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = print if is_main else (lambda *a, **k: None)

    tokenizer = load_tokenizer(cfg.model_path, padding_side="left")
    train, val = prompt_dataset(train_records, tokenizer), prompt_dataset(val_records, tokenizer)
    lengths = prompt_lengths(train, tokenizer)
    multi = sum(r.multi for r in train_records)
    say(f"[data] train: {len(train)} questions ({multi} multiple-answer) from {display_path(repo_path(cfg.train_file))}"
        f"; val: {len(val)} from {display_path(repo_path(cfg.val_file))}; prompt tokens min {min(lengths)}, "
        f"max {max(lengths)}", flush=True)
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    say(f"[grpo] {per_step // cfg.num_generations} question(s) x {cfg.num_generations} completions of up to "
        f"{cfg.max_completion_length} tokens per step; beta {cfg.beta}, loss {cfg.loss_type}", flush=True)
    if cfg.dry_run:
        say("[dry_run] first prompt, as the model sees it (completions continue after its <think>\\n):")
        say(train[0]["prompt"])
        say(memory_plan(cfg, max(lengths)), flush=True)
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
            [tokenizer.eos_token_id], cfg.accuracy_weight, cfg.format_weight, cfg.overlong_weight)
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
    from trl.trainer.utils import get_callable_name

    best_metric = f"rewards/{get_callable_name(reward_funcs[0])}/mean"
    from transformers import set_seed

    set_seed(cfg.seed)  # before the LoRA weights are initialised
    lora_settings = _LoraSettings(cfg)
    model, tokenizer = setup_lora_model(lora_settings)
    tokenizer.padding_side = "left"  # generation pads prompts on the left
    args = build_grpo_args(cfg, output_dir, weights, best_metric)
    if is_main:
        model.print_trainable_parameters()
        save_run_info(cfg, logs_dir / "run_info.json")
    score_completions_only_on_cpu()
    trainer = r1_grpo_trainer_class()(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=train,
                                      eval_dataset=val, processing_class=tokenizer,
                                      callbacks=[LogHistoryCallback(logs_dir / "log_history.jsonl")])
    use_progress_output(trainer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    best_dir, final_dir = output_dir / "best_model", output_dir / "final_model"
    trainer.save_model(str(best_dir))  # load_best_model_at_end put the best adapter in memory
    if trainer.is_world_process_zero():
        import shutil

        from .jsonl_io import write_jsonl

        shutil.rmtree(best_dir / "ref", ignore_errors=True)  # TRL's frozen reference copy (beta > 0): not ours
        tokenizer.save_pretrained(str(best_dir))
        (best_dir / "training_args.bin").unlink(missing_ok=True)
        copy_adapter(output_dir / f"checkpoint-{state.global_step}", final_dir, tokenizer)
        write_jsonl(logs_dir / "log_history.jsonl", state.log_history)
        plotted = plot_reward_curve(state.log_history, logs_dir / "reward_curve.png")
        for folder in (best_dir, final_dir):
            portable_adapter_config(folder)
            save_run_info(cfg, folder / "run_info.json")
        print(f"[grpo] {end_reason(args, state, None)}", flush=True)
        if state.best_model_checkpoint:
            print(f"[grpo] best validation {best_metric.split('/')[1]} {state.best_metric:.4f}: {best_dir.name}/ = "
                  f"{Path(state.best_model_checkpoint).name}; {final_dir.name}/ = checkpoint-{state.global_step}",
                  flush=True)
        else:
            print(f"[grpo] no evaluation ran ({state.global_step} steps < --eval_steps {cfg.eval_steps}): "
                  f"{best_dir.name}/ and {final_dir.name}/ both hold the last adapter", flush=True)
        print(f"[write] {display_path(best_dir)}, {display_path(final_dir)}, {display_path(logs_dir)}/"
              f"log_history.jsonl ({len(state.log_history)} entries){', reward_curve.png' if plotted else ''}, "
              f"run_info.json", flush=True)
    return GrpoResult(best_dir, final_dir, state.global_step, state.best_metric, list(state.log_history))


class _LoraSettings:
    """What ``lora.setup_lora_model`` reads, from a GrpoConfig: dropout off (see ``disable_dropout``)."""

    def __init__(self, cfg: GrpoConfig):
        for name in ("model_path", "use_4bit", "gradient_checkpointing", "precision", "device", "lora_r",
                     "lora_alpha", "lora_target_modules"):
            setattr(self, name, getattr(cfg, name))
        self.lora_dropout = 0.0
