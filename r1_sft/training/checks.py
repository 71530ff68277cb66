"""Everything a training run can check before it loads a model: values, paths, packages, data, LoRA names.

``check_before_loading(cfg)`` runs first in ``training.run.run_training`` (and in
``scripts/train_distill.py`` before its teacher loads) and returns the run's plan. Each mistake is
a one-line ``UserError`` naming the flag, the value and what is allowed, instead of a traceback
minutes later (or, worse, a run that trains nothing and exits 0). In order:

1. values: epochs/steps, learning rate and schedule, ratios, LoRA settings, batch sizes, seed;
   then the plan (:func:`training_plan`): model folder, device, precision, engine, decided once;
2. input paths: the train/val files; an FSDP or DeepSpeed config (``r1_sft.training.parallel``);
3. ``--report_to``: each tracker is an optional install, named with its ``pip install`` line;
4. data: SFT records whose ``output`` is not in the think format are refused (``allow_no_think``);
5. LoRA target names: matched against the module names of the model built on the meta device
   (no weights read), so ``q_proj,vproj`` is refused instead of silently training q_proj alone.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path
from typing import Iterable

import torch

from r1_sft.cli import UserError
from r1_sft.data.records import BAD_SFT_OUTPUT, RecordError, validate_sft
from r1_sft.model.lora import target_modules
from r1_sft.model.plan import RunPlan, make_plan
from r1_sft.paths import display_path, repo_path, tried_path
from r1_sft.training.config import TrainConfig
from r1_sft.training.encoding import load_sft_records
from r1_sft.training.parallel import check_engine, engine_label, world_size

# --report_to value -> the package its Trainer integration needs.
TRACKERS = {"tensorboard": "tensorboard", "swanlab": "swanlab", "wandb": "wandb"}
FIT_SHARE = 0.9  # the share of the GPU's memory a 16-bit estimate may use before auto picks 4-bit
TEACHER_DOWNLOAD_HINT = ("download it with `python download_model/download_model.py --model_id "
                         "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B`, or pass --teacher_model_path")


# ----------------------------------------------------------------------------- values

def _refuse(name: str, value, allowed: str) -> None:
    raise UserError(f"--{name} {value!r}: {allowed}")


def usable_schedulers() -> list[str]:
    """transformers' SchedulerType names that build with the arguments the Trainer gets from us.

    Some (``cosine_with_min_lr``, ``warmup_stable_decay``) need ``lr_scheduler_kwargs``, which this
    project does not expose: trying each one on a dummy optimizer keeps the list true to the library.
    """
    from transformers import SchedulerType, get_scheduler

    usable = []
    for kind in SchedulerType:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        try:
            get_scheduler(kind.value, optimizer, num_warmup_steps=1, num_training_steps=10)
        except (ValueError, TypeError):
            continue
        usable.append(kind.value)
    return usable


def check_schedule(cfg, *, best_by: str, typical_lr: str) -> None:
    """Checkpoint cadence, length of the run and learning rate: the same rules for SFT and GRPO.

    ``eval_steps`` / ``save_steps`` 0 mean "fit to the run" (``training.schedule``): checked there."""
    if cfg.eval_steps > 0 and cfg.save_steps > 0 and cfg.save_steps % cfg.eval_steps != 0:
        raise UserError(f"--save_steps {cfg.save_steps} must be a multiple of --eval_steps {cfg.eval_steps} "
                        f"(the best checkpoint is chosen by {best_by})")
    if not (cfg.max_steps == -1 or cfg.max_steps >= 1):
        _refuse("max_steps", cfg.max_steps, "must be -1 (train for --num_train_epochs) or at least 1")
    if cfg.max_steps == -1 and not (cfg.num_train_epochs > 0 and math.isfinite(cfg.num_train_epochs)):
        _refuse("num_train_epochs", cfg.num_train_epochs, "must be > 0 (or set --max_steps > 0)")
    if not 0 < cfg.learning_rate < 1:
        _refuse("learning_rate", cfg.learning_rate, f"must be > 0 and < 1 ({typical_lr})")


def check_values(cfg: TrainConfig) -> None:
    """Every user-set number and name, before anything loads (NaN fails every check)."""
    from r1_sft.model.precision import check_run_settings

    check_run_settings(cfg.device, cfg.precision)  # known names (what they mean on this machine: the plan)

    at_least_1 = ("max_length", "per_device_train_batch_size", "per_device_eval_batch_size",
                  "gradient_accumulation_steps", "logging_steps", "save_total_limit", "lora_r")
    for name in at_least_1:
        value = getattr(cfg, name)
        if not value >= 1:
            _refuse(name, value, "must be at least 1")
    for name in ("eval_steps", "save_steps"):
        if not getattr(cfg, name) >= 0:
            _refuse(name, getattr(cfg, name), "must be at least 1, or 0 to fit it to the run")
    if cfg.use_4bit not in (True, False, "auto"):
        _refuse("use_4bit", cfg.use_4bit, "write --use_4bit, --no_use_4bit or --use_4bit auto")
    check_schedule(cfg, best_by="eval loss", typical_lr="typical for LoRA: 5e-5 to 5e-4")
    if not 0 <= cfg.warmup_ratio < 1:
        _refuse("warmup_ratio", cfg.warmup_ratio, "must be >= 0 and < 1 (a fraction of the steps)")
    if not (cfg.weight_decay >= 0 and math.isfinite(cfg.weight_decay)):
        _refuse("weight_decay", cfg.weight_decay, "must be >= 0")
    if not (cfg.max_grad_norm > 0 and math.isfinite(cfg.max_grad_norm)):
        _refuse("max_grad_norm", cfg.max_grad_norm, "must be > 0 (the gradient clipping norm)")
    if not (cfg.lora_alpha > 0 and math.isfinite(cfg.lora_alpha)):
        _refuse("lora_alpha", cfg.lora_alpha, "must be > 0 (LoRA scale = alpha / r)")
    if not 0 <= cfg.lora_dropout < 1:
        _refuse("lora_dropout", cfg.lora_dropout, "must be >= 0 and < 1")
    if not cfg.early_stopping_patience >= 0:
        _refuse("early_stopping_patience", cfg.early_stopping_patience, "must be >= 0 (0 = never stop early)")
    if not 0 <= cfg.seed < 2**32:
        _refuse("seed", cfg.seed, "must be between 0 and 2**32 - 1")
    if cfg.resume and cfg.overwrite_output_dir:
        raise UserError("--resume and --overwrite_output_dir contradict each other: continue the run or start over")
    if not target_modules(cfg.lora_target_modules):
        _refuse("lora_target_modules", cfg.lora_target_modules,
                "name at least one module (e.g. q_proj,v_proj) or write all-linear")
    schedulers = usable_schedulers()
    if cfg.lr_scheduler_type not in schedulers:
        _refuse("lr_scheduler_type", cfg.lr_scheduler_type, f"use one of {', '.join(schedulers)}")
    report_to(cfg.report_to)


def report_to(spec: str) -> list[str]:
    """``--report_to`` as the Trainer's list: "none" -> [], "tensorboard,wandb" -> both. Unknown names refused."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if names in ([], ["none"]):
        return []
    unknown = [name for name in names if name not in TRACKERS]
    if unknown:
        _refuse("report_to", spec, f"{unknown[0]!r} is not one of none, {', '.join(TRACKERS)} "
                                   f"(comma-separated for several)")
    return names


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_trackers(spec: str) -> None:
    """Each tracker in ``--report_to`` is an optional install: name the missing package and its pip line."""
    for name in report_to(spec):
        if not _installed(TRACKERS[name]):
            raise UserError(f"--report_to {name}: the {TRACKERS[name]} package is not installed "
                            f"(pip install {TRACKERS[name]}), or use --report_to none")


# ----------------------------------------------------------------------------- paths

def training_plan(cfg: TrainConfig) -> RunPlan:
    """The run's decisions, once: model folder (a missing or incomplete one: one line with the download
    hint; a dry run needs only config.json and the tokenizer), device, precision, 4-bit, attention,
    engine and world size.

    ``--use_4bit auto`` is resolved here (:func:`decide_4bit`) and written back into ``cfg``, so the
    config saved beside the outputs records what ran.
    """
    processes = world_size()
    plan = make_plan(cfg.model_path, device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit is True,
                     for_training=True, engine=engine_label(cfg, processes), world_size=processes,
                     require_weights=not cfg.dry_run,
                     quantization={True: "--use_4bit: 4-bit QLoRA as asked",
                                   False: "--no_use_4bit: LoRA on unquantized weights as asked"}.get(cfg.use_4bit, ""))
    if cfg.use_4bit == "auto":
        use_4bit, why = decide_4bit(cfg, plan)
        plan = dataclasses.replace(plan, use_4bit=use_4bit, quantization=why)
    cfg.use_4bit = plan.use_4bit
    return plan


def decide_4bit(cfg: TrainConfig, plan: RunPlan) -> tuple[bool, str]:
    """``--use_4bit auto``: 4-bit only when the 16-bit run does not fit the GPU by the memory estimate.

    The estimate (``memory_estimate``, config.json only) is taken at the worst case: every sequence
    ``--max_length`` long, ``--per_device_train_batch_size`` of them, on this run's engine. On a CPU
    there is no card to fit: QLoRA stays, the path the project's CPU tests and ``make demo`` run;
    a dry run with ``--gpu_memory_gb N`` decides as an N GB GPU would.
    """
    from r1_sft.model.plan import gpu_memory_gb
    from r1_sft.training.memory_estimate import estimate, per_device, read_shape
    from r1_sft.training.parallel import engine_name

    card = gpu_memory_gb(plan.device)
    if card is None and cfg.dry_run and cfg.gpu_memory_gb > 0:
        card = cfg.gpu_memory_gb  # planning on a CPU for a GPU of this size: decide as that GPU would
    if card is None:
        return True, "--use_4bit auto on a CPU: QLoRA (no GPU memory to fit; --no_use_4bit trains fp32 LoRA)"
    shape = read_shape(plan.folder.base_path)

    def peak(use_4bit: bool) -> float:
        settings = dict(batch_size=cfg.per_device_train_batch_size, max_length=cfg.max_length, use_4bit=use_4bit,
                        dtype_bytes=2, lora_r=cfg.lora_r, gradient_checkpointing=cfg.gradient_checkpointing,
                        loss_chunk_tokens=cfg.loss_chunk_tokens)
        try:
            est = estimate(shape, lora_target_modules=cfg.lora_target_modules, **settings)
        except ValueError:  # module names the estimate does not know (or an adapter's own): count all linear layers
            est = estimate(shape, lora_target_modules="all-linear", **settings)
        return per_device(est, shape, engine_name(cfg), plan.world_size).total_gb

    sixteen = peak(False)
    if sixteen <= FIT_SHARE * card:
        return False, (f"--use_4bit auto: 16-bit LoRA, estimated {sixteen:.1f} GB fits the {card:.0f} GB GPU "
                       f"(batch {cfg.per_device_train_batch_size} x {cfg.max_length} tokens)")
    four = peak(True)
    tail = "" if four <= FIT_SHARE * card else \
        "; even that may not fit: lower --per_device_train_batch_size or --max_length"
    return True, (f"--use_4bit auto: 4-bit QLoRA, 16-bit LoRA would need an estimated {sixteen:.1f} GB of the "
                  f"{card:.0f} GB GPU, 4-bit {four:.1f} GB{tail}")


def check_paths(cfg: TrainConfig) -> None:
    """The data files exist (nothing is read beyond that; the model folder is the plan's)."""
    for flag, value in (("train_file", cfg.train_file), ("val_file", cfg.val_file)):
        path = repo_path(value)
        if not path.is_file():
            raise UserError(f"--{flag} {tried_path(path)}: data file not found (run the data stage, step 1, "
                            f"or pass the right file)")


def check_teacher_folder(path: str) -> None:
    """The distillation teacher's folder, with the hint that fits it (download the 7B, not the 1.5B)."""
    from r1_sft.model.folders import DOWNLOAD_HINT, resolve_model_folder

    if not str(path).strip():
        raise UserError(f"--use_teacher_logits needs --teacher_model_path ({TEACHER_DOWNLOAD_HINT})")
    try:
        resolve_model_folder(path)
    except UserError as exc:
        message = str(exc).replace("model folder", "teacher model folder", 1)
        raise UserError(message.replace(DOWNLOAD_HINT, TEACHER_DOWNLOAD_HINT)) from None


# ----------------------------------------------------------------------------- data

def think_format_problems(records: Iterable[dict]) -> list[int]:
    """1-based indices of records whose ``output`` is not ``<think>\\n…\\n</think>\\n\\n…`` (records.validate_sft)."""
    bad = []
    for index, record in enumerate(records, 1):
        try:
            validate_sft(record)
        except RecordError as exc:
            if exc.reason != BAD_SFT_OUTPUT:
                raise
            bad.append(index)
    return bad


def check_think_format(cfg: TrainConfig) -> dict[str, int]:
    """Refuse train/val records without the think format unless ``allow_no_think``; returns counts per split."""

    counts = {}
    for name, value in (("train", cfg.train_file), ("val", cfg.val_file)):
        path = repo_path(value)
        records = load_sft_records(path)
        bad = think_format_problems(records)
        counts[name] = len(bad)
        if bad and not cfg.allow_no_think:
            raise UserError(f"{display_path(path)}: {len(bad)} of {len(records)} records have an output not in the "
                            f"think format '<think>\\n{{reasoning}}\\n</think>\\n\\n{{answer}}' (first: record "
                            f"{bad[0]}); rebuild the file with the data stage (it rejects them), or pass "
                            f"--allow_no_think to train on them as they are")
    return counts


# ----------------------------------------------------------------------------- LoRA target names

def linear_module_names(model) -> list[str]:
    """Short names of the model's linear layers (q_proj, ..., lm_head), in model order; peft layers seen through."""
    names: list[str] = []
    for full_name, module in model.named_modules():
        parts = full_name.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue  # peft's own A/B layers
        if parts[-1] == "base_layer":
            parts = parts[:-1]
        if isinstance(module, torch.nn.Linear) and parts[-1] not in names:
            names.append(parts[-1])
    return names


def check_lora_targets(model, spec: str) -> None:
    """Each name in ``spec`` must match a module of ``model`` (peft's rule: the name or a dotted suffix)."""

    targets = target_modules(spec)
    if targets == "all-linear":
        return
    module_names = [name.removesuffix(".base_layer") for name, _ in model.named_modules()]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in module_names):
            raise UserError(f"--lora_target_modules {spec!r}: {target!r} matches no module of the model; "
                            f"valid names: {', '.join(linear_module_names(model))} (or all-linear)")


def meta_model(base_path: str | Path):
    """The architecture of the full-weights folder ``base_path`` on the meta device: module names
    without reading or allocating weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(repo_path(base_path)))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# ----------------------------------------------------------------------------- all of it

def check_before_loading(cfg: TrainConfig) -> tuple[RunPlan, dict[str, int]]:
    """Values, the plan, paths, trackers, think format, LoRA names: everything that needs no loaded model.

    Returns the run's plan and the number of records without the think format per split (0 unless
    ``allow_no_think``).
    """
    check_values(cfg)
    plan = training_plan(cfg)
    check_paths(cfg)
    check_engine(cfg, plan.device, plan.precision)
    check_trackers(cfg.report_to)
    counts = check_think_format(cfg)
    if plan.folder.adapter_path is None:  # an adapter folder keeps its own targets
        check_lora_targets(meta_model(plan.folder.base_path), cfg.lora_target_modules)
    return plan, counts
