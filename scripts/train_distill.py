"""Distil an R1 teacher into DeepSeek-R1-Distill-Qwen-1.5B: sequence-level (default) or token-level.

Sequence-level (default): plain QLoRA SFT on the teacher's answers (the teacher branch
r1_generated/ -> dataset/train.jsonl + dataset/val.jsonl), with everything the SFT trainer has:
the same encoding, QLoRA, padding-free batches, evaluation, best model, early stopping, resume.

Token-level (``--use_teacher_logits``): a teacher that shares the student's tokenizer (e.g.
DeepSeek-R1-Distill-Qwen-7B or 14B) runs frozen beside the student, and the loss over the
trained (reasoning + answer) tokens becomes
    (1 - LAMBDA_KL) · CE + LAMBDA_KL · KD_TEMPERATURE² · KL(teacher ‖ student)
(r1_sft/training/distill.py; chunked over tokens, so full-vocabulary logits are never held for the whole
batch). A teacher with another tokenizer is refused (one line, exit code 2) before training.

Reads:  MODEL_PATH (student base), TRAIN_FILE and VAL_FILE ({"input", "output"} JSONL),
        TEACHER_MODEL_PATH (token-level only).
Writes: OUTPUT_DIR/checkpoint-N/, best_model/, final_model/ (LoRA adapter + tokenizer),
        training_logs/ (log_history.jsonl with ce_loss / kl_loss / eval_kl_loss, loss_curve.png,
        run_info.json).

Example:
    python scripts/train_distill.py                                   # sequence-level
    python download_model/download_model.py --model_id deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
    python scripts/train_distill.py --use_teacher_logits --lambda_kl 0.5 --kd_temperature 1.0
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.model.folders import load_tokenizer  # noqa: E402
from r1_sft.paths import display_path, repo_path, tried_path  # noqa: E402
from r1_sft.training.checks import check_before_loading, check_teacher_folder, check_values  # noqa: E402
from r1_sft.training.config import TrainConfig  # noqa: E402
from r1_sft.training.distill import (  # noqa: E402
    KDTrainer,
    check_kd_settings,
    check_same_tokenizer,
    check_token_level_run,
    load_teacher,
)
from r1_sft.training.loss import loss_peak_bytes  # noqa: E402
from r1_sft.training.outputs import check_output_dir  # noqa: E402
from r1_sft.training.run import run_training  # noqa: E402


@dataclass
class Config(TrainConfig):
    # The settings people change most, with their defaults (written only here); every other knob, its default
    # and meaning is in r1_sft/training/config.py TrainConfig (all of them: --help).
    model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # student base model folder
    train_file: str = "dataset/train.jsonl"  # teacher-branch training records {"input", "output"}
    val_file: str = "dataset/val.jsonl"  # teacher-branch validation records (eval loss, best model)
    output_dir: str = "model/deepseek_r1_1.5b_distill"  # checkpoints, best_model/, final_model/, training_logs/
    max_length: int = 2048  # longest example in tokens; longer ones are skipped and counted
    use_4bit: bool | str = True  # student in 4-bit NF4 (QLoRA; the estimate behind "auto" does not count a teacher); --no_use_4bit for 16-bit LoRA (bf16 or fp16 by GPU), --use_4bit auto as in SFT
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale numerator (scale = alpha / r)
    learning_rate: float = 2e-4  # peak learning rate
    num_train_epochs: float = 3.0  # passes over the training data
    max_steps: int = -1  # optimizer steps; > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 4  # sequences per device per micro-batch
    gradient_accumulation_steps: int = 4  # micro-batches per optimizer step (effective batch 16 on one GPU)
    eval_steps: int = 0  # validation loss every N steps and at the end; 0 = fit to the run: about 4 evaluations, at most 50 steps apart
    save_steps: int = 0  # checkpoint every N steps (a multiple of eval_steps); 0 = at every evaluation
    early_stopping_patience: int = 3  # stop after N evaluations without improvement (0 = off)
    seed: int = 42  # LoRA init, data order, dropout
    use_teacher_logits: bool = False  # token-level KD from a teacher's logits; off = sequence-level (SFT on its answers)
    teacher_model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-7B"  # teacher folder (same tokenizer as the student)
    teacher_use_4bit: bool = True  # teacher weights in 4-bit NF4 (7B: ~5 GB instead of ~15 GB); --no_teacher_use_4bit for bf16
    lambda_kl: float = 0.5  # weight λ of the KL term, 0..1 (0 = plain SFT; 1 = KL only)
    kd_temperature: float = 1.0  # softmax temperature T of both models in the KL (the KL is scaled by T²)
    kd_chunk_tokens: int = 256  # trained positions per logits chunk (memory ≈ 24 bytes × chunk × vocab)


@cli_main
def main(cfg: Config) -> None:
    # Cheap checks first: a large teacher takes minutes to load.
    check_values(cfg)
    check_kd_settings(cfg.lambda_kl, cfg.kd_temperature, cfg.kd_chunk_tokens)
    for data_file in (cfg.train_file, cfg.val_file):
        if not repo_path(data_file).is_file():
            raise UserError(f"{tried_path(repo_path(data_file))}: data file not found (run the teacher branch of "
                            f"step 1: data/generated_teacher_filtered.py, build_sft_dataset.py, split_sft_train.py)")
    if not cfg.use_teacher_logits:
        print(f"[distill] sequence-level: SFT on the teacher's answers in {cfg.train_file} "
              f"(--use_teacher_logits for token-level distillation)", flush=True)
        run_training(cfg)
        return
    checked = check_before_loading(cfg)  # the student's side: its plan, paths, trackers, data format, LoRA names
    plan = checked[0]
    check_teacher_folder(cfg.teacher_model_path)
    check_token_level_run(cfg)  # engines and loss flags that cannot carry a teacher
    if not cfg.dry_run:  # before minutes of teacher loading, not after
        check_output_dir(repo_path(cfg.output_dir), cfg.resume, cfg.overwrite_output_dir)

    student_tokenizer = load_tokenizer(plan.folder, padding_side="right")
    if cfg.dry_run:  # check the pairing, show the encoding, load no model
        check_same_tokenizer(student_tokenizer, load_tokenizer(cfg.teacher_model_path), cfg.model_path,
                             cfg.teacher_model_path)
        print(f"[distill] teacher {display_path(repo_path(cfg.teacher_model_path))} shares the student's tokenizer",
              flush=True)
        run_training(cfg, checked=checked)
        return
    teacher, kl_vocab = load_teacher(cfg.teacher_model_path, student_tokenizer, plan,
                                     use_4bit=cfg.teacher_use_4bit, precision=cfg.precision)
    when = "every step" if cfg.lambda_kl > 0 else "evaluation only (lambda_kl=0: training is plain SFT)"
    print(f"[distill] token-level: loss = {1 - cfg.lambda_kl:g}·CE + {cfg.lambda_kl:g}·{cfg.kd_temperature:g}²·"
          f"KL(teacher ‖ student) over trained tokens; teacher runs {when}; KL over {kl_vocab} tokens in chunks "
          f"of {cfg.kd_chunk_tokens} positions (~{loss_peak_bytes(cfg.kd_chunk_tokens, kl_vocab) / 2**30:.2f} GiB)",
          flush=True)
    run_training(cfg, trainer_cls=KDTrainer, trainer_kwargs=dict(
        teacher_model=teacher, lambda_kl=cfg.lambda_kl, kd_temperature=cfg.kd_temperature, kl_vocab=kl_vocab,
        kd_chunk_tokens=cfg.kd_chunk_tokens), checked=checked)


if __name__ == "__main__":
    main(parse_config(Config))
