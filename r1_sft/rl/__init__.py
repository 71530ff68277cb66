"""Stage 3b, reinforcement learning: GRPO after SFT on TRL's GRPOTrainer, against checkable answers.

  config   every GRPO knob and its default (GrpoConfig), with the DAPO / Dr. GRPO / TRL choices they offer
  checks   settings, the run's plan and its steps against the question file, checked before anything loads
  grpo     the run: TRL's GRPOConfig, the trainer, outputs, reward curve
  prompts  MCQ questions -> GRPO prompts with their gold answers
  rewards  verifiable rewards (accuracy through the shared answer reader, format, over-length)
  memory   GRPO's GPU memory estimate

May import: the shared modules, r1_sft.data, r1_sft.model, r1_sft.training (GRPO reuses SFT's checks,
callbacks, outputs and memory formula) and r1_sft.inference (its rollouts sample by the decoding protocol).
"""
