"""QLoRA supervised fine-tuning of DeepSeek-R1-Distill-Qwen on the R1-format medical SFT data.

Each example is encoded exactly as inference sees it (the model's own chat template with the
generation prompt ``<think>\\n``; the reasoning, ``</think>``, the answer and EOS are the trained
part). The Hugging Face Trainer evaluates the validation loss every ``eval_steps``, keeps the best
adapter, stops early when it stops improving, and resumes exactly from its checkpoints.

Reads:  MODEL_PATH (base model folder), TRAIN_FILE and VAL_FILE ({"input", "output"} JSONL).
Writes: OUTPUT_DIR/checkpoint-N/, OUTPUT_DIR/best_model/ and OUTPUT_DIR/final_model/ (LoRA adapter +
        tokenizer), OUTPUT_DIR/training_logs/ (log_history.jsonl, loss_curve.png, run_info.json;
        encoded_examples.jsonl with --dry_run).

Example:
    python scripts/train_stf_r1_train_val.py --dry_run
    python scripts/train_stf_r1_train_val.py --num_train_epochs 2 --learning_rate 1e-4
    torchrun --nproc_per_node 2 scripts/train_stf_r1_train_val.py      # multi-GPU (DDP)
    torchrun --nproc_per_node 2 scripts/train_stf_r1_train_val.py --fsdp_config configs/fsdp2_qlora.json  # sharded
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.training.checks import check_before_loading  # noqa: E402
from r1_sft.training.config import TrainConfig  # noqa: E402


@dataclass
class Config(TrainConfig):
    # The settings people change most, with their defaults (written only here); every other knob, its default
    # and meaning is in r1_sft/training/config.py TrainConfig (all of them: --help).
    model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # base model folder
    train_file: str = "dataset/sft_r1_train.jsonl"  # training records {"input", "output"}
    val_file: str = "dataset/sft_r1_val.jsonl"  # validation records (eval loss, best model)
    output_dir: str = "model/deepseek_r1_1.5b_lora"  # checkpoints, best_model/, final_model/, training_logs/
    max_length: int = 2048  # longest example in tokens; longer ones are skipped and counted
    use_4bit: bool | str = "auto"  # auto: 4-bit QLoRA only when 16-bit LoRA does not fit the GPU (the start-up [plan] line says which and why); --use_4bit always 4-bit; --no_use_4bit 16-bit LoRA (bf16 or fp16 by GPU)
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


@cli_main
def main(cfg: Config) -> None:
    checked = check_before_loading(cfg)  # every one-line error comes before the Trainer, peft and the model load
    from r1_sft.training.run import run_training  # the Trainer and peft: seconds to import

    run_training(cfg, checked=checked)


if __name__ == "__main__":
    main(parse_config(Config))
