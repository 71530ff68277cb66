"""GRPO after SFT: reinforcement learning with verifiable multiple-choice rewards (TRL's GRPOTrainer).

For each training question the model samples a group of completions (temperature 0.6 as R1 advises,
top_p 1.0 so the sampler's log-probs are the trainer's); each completion is scored by three small rewards
(r1_sft/rl/rewards.py): the exact set of option letters stated after </think> (the project's MCQ reader),
the format (a reasoning, think closed once, an answer that states a choice) and DAPO's soft over-length
penalty (a ramp over the last 20% of the budget, -1 when cut at the limit). The
policy -- a new LoRA adapter on the base, or the SFT adapter continued -- is pushed toward the
completions that beat their group's mean. Every step logs each reward's mean and spread, accuracy,
format rate, completion length, the fraction cut off, the share of groups whose rewards are all equal
(they teach nothing), and the KL when --beta > 0. Before anything loads, one line gives the plan: questions
per step, steps per epoch, the run in steps and epochs, validation cadence and cost (docs/grpo.md).

Reads:  MODEL_PATH (base model folder, or the SFT adapter folder, e.g. model/deepseek_r1_1.5b_lora/best_model),
        TRAIN_FILE and VAL_FILE (multiple-choice questions: the project's JSONL from data/split_mcq_data.py,
        or a CMB-Exam JSON/JSONL, CMExam CSV or MedQA-MCMLE JSONL file).
Writes: OUTPUT_DIR/checkpoint-N/, OUTPUT_DIR/best_model/ (highest validation accuracy) and OUTPUT_DIR/final_model/
        (LoRA adapter + tokenizer), OUTPUT_DIR/training_logs/ (log_history.jsonl, reward_curve.png, run_info.json).

Example:
    python data/split_mcq_data.py
    python scripts/train_grpo.py --dry_run --gpu_memory_gb 24
    python scripts/train_grpo.py --model_path model/deepseek_r1_1.5b_lora/best_model --num_train_epochs 2
    python scripts/evaluate_model.py --task mcq --data dataset/mcq_test.jsonl --num_samples 0 \
        --adapter model/deepseek_r1_1.5b_lora/best_model --adapter2 model/deepseek_r1_1.5b_grpo/best_model
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.rl.config import GrpoConfig  # noqa: E402
from r1_sft.rl.grpo import run_grpo  # noqa: E402


@dataclass
class Config(GrpoConfig):
    # The settings people change most; every other knob (and its meaning) is in r1_sft/rl/config.py GrpoConfig.
    model_path: str = "model/deepseek_r1_1.5b_lora/best_model"  # the SFT adapter to continue (or a base model folder)
    train_file: str = "dataset/mcq_train.jsonl"  # multiple-choice training questions (data/split_mcq_data.py)
    val_file: str = "dataset/mcq_val.jsonl"  # validation questions (eval accuracy, best model)
    output_dir: str = "model/deepseek_r1_1.5b_grpo"  # checkpoints, best_model/, final_model/, training_logs/
    use_4bit: bool = False  # QLoRA base; off by default: the 1.5B fits in 16 bits and --use_vllm needs them
    lora_r: int = 16  # LoRA rank of a new adapter (a continued SFT adapter keeps its own)
    lora_alpha: int = 32  # LoRA scale numerator of a new adapter
    learning_rate: float = 1e-5  # peak learning rate (RL steps are small: 10-20x below SFT's)
    num_train_epochs: float = 1.0  # passes over the training questions (the recipe is in epochs: docs/grpo.md)
    max_steps: int = -1  # optimizer steps; > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 8  # micro-batches per step: 64 completions = 8 questions x 8 per step
    num_generations: int = 8  # completions per question (the group GRPO compares)
    max_completion_length: int = 2048  # generated tokens per completion (R1 reasons at length; cut ones are penalised)
    beta: float = 0.0  # KL coefficient to the starting policy (0: no reference pass, as DAPO / Dr. GRPO)
    loss_type: str = "dapo"  # TRL's loss aggregation (dapo: token-level, no length bias)
    eval_steps: int = 0  # validation accuracy every N steps (0 = 4 times per run, the last near its end)
    save_steps: int = 0  # checkpoint every N steps (a multiple of eval_steps; 0 = at each validation)
    seed: int = 42  # LoRA init, question order, sampling


@cli_main
def main(cfg: Config) -> None:
    run_grpo(cfg)


if __name__ == "__main__":
    main(parse_config(Config))
