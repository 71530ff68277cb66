"""GRPO's settings: every knob, with its one default (the stage script's constants give the first block)."""
from __future__ import annotations

from dataclasses import dataclass

from r1_sft.rl.rewards import ACCURACY_WEIGHT, FORMAT_WEIGHT, OVERLONG_WEIGHT

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's loss_type values


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
