"""GRPO's settings: every knob, with its one default (the stage script's constants give the first block)."""
from __future__ import annotations

from dataclasses import dataclass

from r1_sft.inference.decoding import TEMPERATURE
from r1_sft.rl.rewards import ACCURACY_WEIGHT, FORMAT_WEIGHT, OVERLONG_WEIGHT

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's loss_type values
CLIP_LOSSES = ("grpo", "dr_grpo", "dapo", "bnpo", "luspo")  # ratio clipped to [1 - epsilon, 1 + epsilon_high]
DAPO_EPSILON_HIGH = 0.28  # DAPO's clip-higher (arXiv 2503.14476)
SCALE_REWARDS = ("group", "batch", "none")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
LR_SCHEDULERS = ("linear", "constant", "constant_with_warmup", "cosine")
VLLM_MODES = ("colocate", "server")
EVALUATIONS_PER_RUN = 4  # --eval_steps 0: validate about this many times, so best_model/ is chosen among them


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
    eval_steps: int  # validate every N steps; 0 = about EVALUATIONS_PER_RUN times per run, the last near its end
    save_steps: int  # write OUTPUT_DIR/checkpoint-N every N steps (a multiple of eval_steps); 0 = at each evaluation
    seed: int  # seed for LoRA init, question order and sampling
    # ---- the other knobs, with their one default
    # rollouts and the clipped objective (TRL's GRPOConfig names; sources in docs/grpo.md)
    temperature: float = TEMPERATURE  # training rollouts' temperature (R1's 0.6; TRL scores with the same one)
    top_p: float = 1.0  # training rollouts' nucleus: 1.0 so the sampler's log-probs equal the trainer's (vLLM)
    epsilon: float = 0.2  # lower clip of the policy ratio (1 - epsilon)
    epsilon_high: float = 0.0  # upper clip: 0 = DAPO's clip-higher 0.28; cispo needs it set (ScaleRL: 5.0)
    importance_sampling_level: str = "token"  # token (GRPO/DAPO) or sequence (GSPO; what --loss_type luspo needs)
    scale_rewards: str = "group"  # group (divide by the group's std, GRPO), batch, or none (Dr. GRPO)
    mask_truncated_completions: bool = False  # leave completions cut at the limit out of the loss (DAPO's filter)
    num_iterations: int = 1  # optimisation passes over each generated batch (mu in GRPO; > 1 reuses rollouts)
    warmup_ratio: float = 0.0  # share of the steps spent warming the learning rate up from 0
    lr_scheduler_type: str = "linear"  # linear (decay to 0), constant, constant_with_warmup, cosine
    # evaluation during training: a fixed, seeded subset, a few completions per question
    eval_questions: int = 64  # validation questions per evaluation (seeded subset of --val_file; 0 = all)
    num_generations_eval: int = 2  # completions per validation question (evaluation costs questions x this)
    log_completions: bool = False  # print a sample of prompts, completions and rewards at each logging step
    partial_credit: bool = False  # multiple-answer: a correct proper subset earns PARTIAL_CREDIT (exams: exact set)
    accuracy_weight: float = ACCURACY_WEIGHT  # weight of the correctness reward (1 = exact letter set)
    format_weight: float = FORMAT_WEIGHT  # weight of the format reward (think closed once, an answer stating a choice)
    overlong_weight: float = OVERLONG_WEIGHT  # weight of the over-length penalty (-1 for a completion cut at the limit)
    precision: str = "auto"  # auto (bf16 on compute capability >= 8.0, fp16 on older GPUs, fp32 on CPU), bf16, fp16 or fp32
    device: str = "auto"  # auto (the GPU when usable, else the CPU), cuda, or cpu
    lora_target_modules: str = "all-linear"  # "all-linear" or comma-separated module names (q_proj,v_proj,...)
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, ~1/3 more compute
    use_vllm: bool = False  # generate with vLLM (its own environment; docs/grpo.md); needs 16-bit LoRA (--no_use_4bit)
    vllm_mode: str = "colocate"  # colocate (vLLM inside the training process) or server (`trl vllm-serve` apart)
    vllm_server_base_url: str = ""  # server mode: the server's URL ("" = http://localhost:8000)
    vllm_gpu_memory_utilization: float = 0.3  # colocate: share of the GPU vLLM reserves for its weights and KV cache
    vllm_max_model_length: int = 0  # colocate: vLLM's context; 0 = longest prompt + --max_completion_length
    vllm_enable_sleep_mode: bool = False  # colocate: vLLM frees its memory during the optimizer step (slower wake-up)
    save_total_limit: int = 3  # checkpoints kept on disk (the best one is always kept as well)
    logging_steps: int = 1  # log rewards, accuracy, lengths (and KL) every N steps
    dry_run: bool = False  # read and check the questions, print the first prompt and the memory estimate, then exit
    gpu_memory_gb: float = 0.0  # with --dry_run: say whether the estimate fits a GPU of this many GB
    resume: bool = False  # continue from the newest complete checkpoint-N in OUTPUT_DIR
    overwrite_output_dir: bool = False  # delete an earlier run's checkpoints and results in OUTPUT_DIR first
    report_to: str = "none"  # experiment tracking: none, tensorboard, swanlab, wandb (comma-separated)
