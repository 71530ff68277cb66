"""Supervised fine-tuning machinery shared by the SFT and distillation scripts.

One entry point, :func:`run_training`: records -> token ids and labels (through
``r1_format.encode_example``, the same code inference uses) -> (Q)LoRA model -> the Hugging Face
Trainer (its own evaluation, checkpoints, best-model tracking, early stopping and resume) ->
``best_model/``, ``final_model/`` and ``training_logs/`` in the output folder.

Extension point for a script with another loss (e.g. knowledge distillation)::

    class KDTrainer(SFTTrainer):
        def __init__(self, *args, teacher_model=None, **kwargs): ...
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None): ...

    run_training(cfg, trainer_cls=KDTrainer, trainer_kwargs={"teacher_model": teacher})

``cfg`` is a :class:`TrainConfig` (or a subclass adding the script's own fields).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from r1_sft.cli import UserError
from r1_sft.jsonl_io import write_jsonl
from r1_sft.model.folders import save_tokenizer
from r1_sft.model.lora import setup_lora_model, target_modules
from r1_sft.model.plan import RunPlan
from r1_sft.paths import display_path, repo_path
from r1_sft.run_info import save_run_info
from r1_sft.training.batching import TokenStatsCallback, make_collator
from r1_sft.training.callbacks import (
    LogHistoryCallback,
    SaveWhenStoppingCallback,
    end_summary,
    on_terminal,
    plot_loss_curve,
    quiet_dataset_bars,
    use_progress_output,
)
from r1_sft.training.checks import check_before_loading, report_to
from r1_sft.training.config import TrainConfig
from r1_sft.training.encoding import describe_split, load_split, render_trained_example, write_encoded_examples
from r1_sft.training.log_report import write_training_report
from r1_sft.training.outputs import (
    check_output_dir,
    clear_output_dir,
    complete_checkpoints,
    holds_earlier_run,
    portable_adapter_config,
)
from r1_sft.training.parallel import engine_name
from r1_sft.training.schedule import Schedule, plan_schedule
from r1_sft.training.trainer import SFTTrainer


@dataclass
class TrainingResult:
    best_model: Path
    final_model: Path
    global_step: int
    best_eval_loss: float | None
    log_history: list[dict] = field(default_factory=list)



def memory_plan(cfg: TrainConfig, plan: RunPlan, longest: int) -> str:
    """The estimated peak GPU memory of this run (``r1_sft.training.memory_estimate``), from config.json alone.

    Estimated for a GPU (16-bit weights; QLoRA's NF4 body) at the longest encoded example, capped
    by max_length; with ``gpu_memory_gb`` also the largest per-device batch that fits.
    """
    from r1_sft.training.memory_estimate import describe, describe_engine, estimate, read_shape

    shape = read_shape(plan.folder.base_path)
    est = estimate(shape, batch_size=cfg.per_device_train_batch_size, max_length=min(longest, cfg.max_length),
                   use_4bit=cfg.use_4bit, dtype_bytes=2, lora_r=cfg.lora_r,
                   lora_target_modules=cfg.lora_target_modules, dropout_mask_bytes=1 if cfg.lora_dropout else 0,
                   gradient_checkpointing=cfg.gradient_checkpointing, loss_chunk_tokens=cfg.loss_chunk_tokens)
    return "\n".join([describe(est, gpu_memory_gb=cfg.gpu_memory_gb or None, shape=shape),
                      describe_engine(est, shape, engine_name(cfg))])


def lora_targets(cfg: TrainConfig, plan: RunPlan) -> list[str]:
    """The module names LoRA will wrap: the continued adapter's own, else --lora_target_modules."""
    import json

    from r1_sft.model.folders import ADAPTER_CONFIG

    folder = plan.folder
    if folder.adapter_path is not None:
        targets = json.loads((folder.adapter_path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("target_modules")
        return [targets] if isinstance(targets, str) else list(targets or [])
    spec = target_modules(cfg.lora_target_modules)
    return [spec] if isinstance(spec, str) else spec


def check_loss_settings(cfg: TrainConfig, plan: RunPlan) -> None:
    """The loss switches, checked before anything loads."""
    if cfg.loss_chunk_tokens < 0:
        raise UserError(f"--loss_chunk_tokens {cfg.loss_chunk_tokens}: must be >= 0 (0 = the stock full-logits loss)")
    if not cfg.use_liger_kernel:
        return
    if "lm_head" in lora_targets(cfg, plan):
        # Liger's fused loss multiplies by lm_head.weight itself: an adapter on lm_head would get no gradient.
        raise UserError("--use_liger_kernel: LoRA targets lm_head, whose adapter Liger's fused loss would silently "
                        "leave untrained; drop lm_head from --lora_target_modules or use the default chunked loss")
    import importlib.util

    if not plan.device.startswith("cuda"):
        raise UserError("--use_liger_kernel: Liger-Kernel runs on CUDA GPUs only (on this machine the chunked "
                        "loss, the default, keeps the memory down)")
    if importlib.util.find_spec("liger_kernel") is None:
        raise UserError("--use_liger_kernel: the liger-kernel package is not installed "
                        "(pip install -r requirements-gpu.txt)")


def build_training_args(cfg: TrainConfig, plan: RunPlan, output_dir: Path, sampling_strategy: str,
                        schedule: Schedule | None = None) -> TrainingArguments:
    """The Trainer's arguments: the run's settings, with device and precision from the plan."""
    distributed = plan.world_size > 1
    eval_steps = schedule.eval_steps if schedule else cfg.eval_steps
    save_steps = schedule.save_steps if schedule else cfg.save_steps
    if "tensorboard" in report_to(cfg.report_to):
        # transformers 5 has no TrainingArguments.logging_dir: its TensorBoard callback reads this variable.
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(output_dir / "training_logs" / "tensorboard")
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a fraction of the steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        prediction_loss_only=True,  # eval needs only the loss: never gather vocab-sized logits
        remove_unused_columns=False,  # the collator picks its columns
        train_sampling_strategy=sampling_strategy,
        length_column_name="length",
        seed=cfg.seed,
        report_to=report_to(cfg.report_to),
        run_name=output_dir.name,  # the trackers' run name: the output folder's
        disable_tqdm=not on_terminal(),  # in a log file: no bar, training.callbacks writes compact lines instead
        dataloader_pin_memory=plan.device.startswith("cuda"),
        # On a machine without CUDA, accelerate runs real multi-process DDP under torchrun only
        # with use_cpu set; without it each process silently trains alone. --device cpu sets it too.
        use_cpu=plan.device == "cpu",
        save_only_model=False,  # optimizer, scheduler and RNG state are needed for an exact resume
        ddp_find_unused_parameters=False if distributed else None,
        deepspeed=str(repo_path(cfg.deepspeed)) if cfg.deepspeed else None,
        fsdp=True if cfg.fsdp_config else None,  # FSDP2 as the config says (r1_sft.training.parallel checked it: version 2, full state dict)
        fsdp_config=str(repo_path(cfg.fsdp_config)) if cfg.fsdp_config else None,
        use_liger_kernel=cfg.use_liger_kernel,
        log_level_replica="error",  # DDP replicas would otherwise re-enable library warnings the user cannot act on
        **plan.precision.trainer_flags,
    )


# ----------------------------------------------------------------------------- entry point

def run_training(cfg: TrainConfig, trainer_cls: type[Trainer] = SFTTrainer, trainer_kwargs: dict | None = None,
                 callbacks: Sequence[TrainerCallback] = (), checked: tuple[RunPlan, dict] | None = None
                 ) -> TrainingResult | None:
    """Check -> plan -> encode -> (dry run: report and stop) -> train -> save best/final adapters and logs.

    ``trainer_cls`` / ``trainer_kwargs``: a subclass of :class:`SFTTrainer` and its extra constructor
    arguments (e.g. a distillation loss with its teacher). ``callbacks`` are added after ours.
    ``checked``: what :func:`check_before_loading` returned, when the caller ran it already (the
    distillation script, before its teacher loads). Returns None on a dry run.
    """
    from r1_sft.model.folders import load_tokenizer

    # values, the plan, paths, trackers, data format, LoRA names: nothing loaded yet
    plan, no_think = checked or check_before_loading(cfg)
    check_loss_settings(cfg, plan)
    quiet_dataset_bars()
    output_dir = repo_path(cfg.output_dir)
    logs_dir = output_dir / "training_logs"
    if not cfg.dry_run:
        check_output_dir(output_dir, cfg.resume, cfg.overwrite_output_dir)
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = print if is_main else (lambda *a, **k: None)
    say(plan.describe(), flush=True)

    tokenizer = load_tokenizer(plan.folder, padding_side="right")
    train = load_split(cfg.train_file, tokenizer, cfg, "train")
    val = load_split(cfg.val_file, tokenizer, cfg, "val")
    if is_main:
        describe_split("train", cfg.train_file, train, cfg.max_length)
        describe_split("val", cfg.val_file, val, cfg.max_length)
        if any(no_think.values()):
            print(f"[data] trained as they are (--allow_no_think): {no_think['train']} train and {no_think['val']} "
                  f"val records whose output is not in the think format", flush=True)
    schedule = plan_schedule(cfg, len(train.dataset), plan.world_size)
    say("\n".join(schedule.describe(len(val.dataset))), flush=True)

    if cfg.dry_run:
        first = train.dataset[0]
        print("[dry_run] first training example; the trained part (labels != -100) is inside ⟦ ⟧:")
        print(render_trained_example(tokenizer, first["input_ids"], first["labels"]))
        path = logs_dir / "encoded_examples.jsonl"
        n = write_encoded_examples(path, train.dataset)
        print(f"[dry_run] wrote {n} encoded examples to {display_path(path)}; no training done", flush=True)
        print(memory_plan(cfg, plan, max(train.dataset["length"])), flush=True)
        return None

    resume_from = None
    if cfg.resume:
        done = complete_checkpoints(output_dir)
        if done:
            resume_from = done[-1]
            say(f"[resume] continuing from {display_path(resume_from)}", flush=True)
        else:
            say(f"[resume] no complete checkpoint in {display_path(output_dir)}: starting from scratch", flush=True)
    elif holds_earlier_run(output_dir) and is_main:  # --overwrite_output_dir (check_output_dir ran above)
        clear_output_dir(output_dir)

    set_seed(cfg.seed)  # before the LoRA weights are initialised
    model, tokenizer = setup_lora_model(cfg, plan, tokenizer)
    collator, sampling_strategy = make_collator(tokenizer, model)
    args = build_training_args(cfg, plan, output_dir, sampling_strategy, schedule)
    if is_main:
        model.print_trainable_parameters()
        save_run_info(cfg, logs_dir / "run_info.json", plan)

    all_callbacks: list[TrainerCallback] = [SaveWhenStoppingCallback(), TokenStatsCallback()]
    early_stopping = None
    if cfg.early_stopping_patience > 0:
        early_stopping = EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience)
        all_callbacks.insert(0, early_stopping)
    all_callbacks += list(callbacks)
    all_callbacks.append(LogHistoryCallback(logs_dir / "log_history.jsonl"))  # last: sees every added value

    best_dir, final_dir = output_dir / "best_model", output_dir / "final_model"
    trainer = trainer_cls(model=model, args=args, data_collator=collator, train_dataset=train.dataset,
                          eval_dataset=val.dataset, processing_class=tokenizer, callbacks=all_callbacks,
                          **{"loss_chunk_tokens": cfg.loss_chunk_tokens, "final_dir": final_dir,
                             **(trainer_kwargs or {})})
    use_progress_output(trainer)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    if not trainer.final_saved:  # no best model was loaded (no evaluation ran): memory holds the last step
        trainer.save_final_adapter()
    # load_best_model_at_end has put the best adapter in memory (every rank saves: sharded engines gather);
    # without an evaluation memory holds the last step, never saved when it is NaN/inf (the guard said so).
    best_finite = not trainer.final_skipped or state.best_model_checkpoint is not None
    if best_finite:
        trainer.save_model(str(best_dir))
    if trainer.is_world_process_zero():
        if best_finite:
            save_tokenizer(tokenizer, best_dir)
            (best_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in run_info.json
        write_jsonl(logs_dir / "log_history.jsonl", state.log_history)
        plotted = plot_loss_curve(state.log_history, logs_dir / "loss_curve.png")
        write_training_report(logs_dir, state.log_history)  # training_logs/report.html: loss, lr, grad norm
        for folder in (best_dir, final_dir):
            if folder.is_dir():
                portable_adapter_config(folder)
                save_run_info(cfg, folder / "run_info.json", plan)
        for line in end_summary(args, state, early_stopping, best_dir, final_dir, schedule.eval_steps):
            print(line, flush=True)
        print(f"[write] {display_path(best_dir)} (best adapter), {display_path(final_dir)} (last adapter), "
              f"{display_path(logs_dir)}/log_history.jsonl ({len(state.log_history)} entries)"
              f"{', loss_curve.png' if plotted else ''}, run_info.json"
              f"{', tensorboard/' if 'tensorboard' in args.report_to else ''}", flush=True)
    return TrainingResult(best_dir, final_dir, state.global_step, state.best_metric, list(state.log_history))

