"""The training settings: one dataclass, shared by SFT and distillation (GRPO has its own).

The settings people change most (paths, length, QLoRA, LoRA rank, learning rate, epochs, batch,
evaluation cadence, seed) have no default here: each stage script's constants block gives them,
once, where users edit them. Every other knob has its one default below, and shows in ``--help``.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1_sft.training.loss import DEFAULT_CHUNK_TOKENS


@dataclass
class TrainConfig:
    """Every training knob. The first block has no default: each stage script's ``Config`` gives it."""

    # ---- given by each stage script's constants block (its defaults live there, once)
    model_path: str  # base model folder, or a LoRA adapter folder to continue
    train_file: str  # training records {"input", "output"}, JSONL
    val_file: str  # validation records for eval loss and best-model choice, JSONL
    output_dir: str  # checkpoints, best_model/, final_model/, training_logs/
    max_length: int  # longest example in tokens (prompt + reasoning + answer + EOS)
    use_4bit: bool | str  # QLoRA: base weights in 4-bit NF4 with double quantization; --no_use_4bit = 16-bit LoRA (bf16 or fp16 by GPU); auto = 4-bit only when the 16-bit run does not fit the GPU by the memory estimate
    lora_r: int  # LoRA rank
    lora_alpha: int  # LoRA scaling numerator (scale = alpha / r)
    learning_rate: float  # peak learning rate (AdamW)
    num_train_epochs: float  # passes over the training data
    max_steps: int  # optimizer steps; > 0 overrides num_train_epochs
    per_device_train_batch_size: int  # sequences per device per micro-batch
    gradient_accumulation_steps: int  # micro-batches per optimizer step
    eval_steps: int  # evaluate the validation loss every N optimizer steps (and at the last step); 0 = about 4 evaluations per run, at most 50 steps apart
    save_steps: int  # write OUTPUT_DIR/checkpoint-N every N steps (a multiple of eval_steps); 0 = at every evaluation
    early_stopping_patience: int  # stop after N evaluations without a better eval loss; 0 = never
    seed: int  # seed for LoRA init, data order and dropout
    # ---- the other knobs, with their one default
    precision: str = "auto"  # auto (bf16 on compute capability >= 8.0, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32: weights and mixed precision
    device: str = "auto"  # auto (the GPU when usable, else the CPU), cuda, or cpu (train on the CPU even when a GPU is present)
    truncate_long: bool = False  # cut over-length examples instead of skipping them (their EOS is lost: not advised)
    lora_dropout: float = 0.05  # dropout on the LoRA input
    lora_target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (q_proj,v_proj,...)
    lr_scheduler_type: str = "cosine"  # learning-rate schedule after warmup
    warmup_ratio: float = 0.03  # fraction of the steps spent warming up the learning rate
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    max_grad_norm: float = 1.0  # gradient clipping norm
    per_device_eval_batch_size: int = 4  # sequences per device per evaluation batch
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, ~1/3 more compute
    save_total_limit: int = 3  # checkpoints kept on disk (the best one is always kept as well)
    logging_steps: int = 10  # log train loss, learning rate and tokens/s every N steps
    dry_run: bool = False  # tokenize, print statistics and examples, write encoded_examples.jsonl, then exit
    resume: bool = False  # continue from the newest complete checkpoint-N in OUTPUT_DIR
    overwrite_output_dir: bool = False  # delete an earlier run's checkpoints and results in OUTPUT_DIR first
    deepspeed: str = ""  # DeepSpeed config JSON (e.g. configs/deepspeed_zero2.json); needs pip install -r requirements-deepspeed.txt; empty = plain DDP / single device
    fsdp_config: str = ""  # FSDP2 config JSON for the Trainer (configs/fsdp2_lora.json, configs/fsdp2_qlora.json); GPUs under torchrun only
    loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS  # loss through lm_head this many trained positions at a time (0.16 GB per fp32 chunk of R1's logits; no full-vocabulary logits); 0 = the stock loss
    use_liger_kernel: bool = False  # CUDA + liger-kernel installed: Liger's fused linear cross-entropy instead of the chunked loss
    gpu_memory_gb: float = 0.0  # with --dry_run: also print the largest per-device batch that fits a GPU of this many GB
    report_to: str = "none"  # experiment tracking through the Trainer: none, tensorboard, swanlab, wandb (comma-separated; each an optional pip install)
    allow_no_think: bool = False  # train on records whose output is not in the <think> format instead of refusing them
