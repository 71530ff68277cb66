"""Stage 3, training: QLoRA / LoRA SFT and distillation on the Hugging Face Trainer, one GPU or many.

  config     the training settings (headline defaults live in each stage script's constants)
  checks     settings checked before anything loads (one-line errors); the run's plan, --use_4bit auto
  schedule   steps, evaluations and checkpoints of a run (--eval_steps 0: fitted to its length)
  encoding   SFT records -> token ids and labels (loss on the assistant turn only); split statistics
  batching   padded or padding-free collators, token and padding statistics
  loss       the chunked training loss (no full-vocabulary logits)
  trainer    the Trainer subclass: the project's loss, token-weighted eval_loss, the non-finite guard
  callbacks  progress lines, end summary, loss curve
  log_report training_logs/report.html: loss, learning rate, grad norm (and GRPO's rewards) as charts
  outputs    a run's folder: complete checkpoints, best / final adapters, clearing an earlier run
  memory_estimate  peak GPU memory of a training run, from config.json (the dry run's plan)
  parallel   past one device: DDP, FSDP2 or DeepSpeed ZeRO, checked before loading
  distill    token-level distillation from a teacher sharing the tokenizer
  run        the run: checks, plan, TrainingArguments, the Trainer, outputs and logs

May import: the shared modules, r1_sft.data and r1_sft.model.
"""
