"""The one package behind the 医疗报告 R1 SFT stage scripts, laid out like the pipeline users run.

One folder per stage (each ``__init__`` says what it holds and which folders it may import):

  data/        1. sources -> validated records -> train / val / test splits; MCQ files; teacher answers
  model/       2. folders, device and precision, the run's plan, loading, LoRA, the offline stand-in
  training/    3. SFT and distillation on the Hugging Face Trainer: checks, encoding, loss, engines, outputs
  rl/          3b. GRPO on TRL's GRPOTrainer: settings, checks, prompts, rewards, memory
  inference/   5. the one generation path: decoding, generation, chat, the OpenAI-compatible server
  evaluation/  4. base vs tuned on held-out questions: questions, metrics, report

Shared by every stage, at the top:
  cli             constants dataclass -> flags, one-line user errors
  paths           path resolution (typed: current folder; defaults: repository root)
  r1_format       the R1 think format: SFT targets, prompts, training encoding, output parsing
  answer_reader   the multiple-choice answer reader (evaluation's scoring and GRPO's reward)
  jsonl_io        atomic writes, JSONL reading
  run_info        resolved config, the run's plan, library versions and git commit beside outputs
  library_output  library chatter silenced once, before any library is imported
  html_page       self-contained HTML reports: embedded charts, escaped text (evaluation, training)

Imports go one way: shared < data, model < training < rl; model < inference < rl, evaluation;
data < evaluation (tests/shared/test_structure.py). Stage scripts import the package; nothing imports a script.
"""
from r1_sft.library_output import quiet_libraries

quiet_libraries()
