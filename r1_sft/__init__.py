"""Shared code for the 医疗报告 R1 SFT stage scripts.

Modules, by concern:
  library_output   library chatter silenced once, here, before any library is imported
  paths, cli       path resolution (typed: current folder; defaults: repo root); constants dataclass -> flags,
                   one-line user errors
  run_info         resolved config, library versions and git commit saved beside outputs (and read back: QLoRA or not)
  jsonl_io         atomic writes, JSONL reading
  records, splits  data stage (conversion streams a stage's lines, rejects by reason): validate and normalise both sources, rejects, dedup, stratified train/val/test splits
  r1_format        the R1 think format: SFT targets, prompts, training encoding, output parsing
  tiny_model       the offline stand-in: the real R1 tokenizer, 151,936 rows, brief plain-text pre-training;
                   random models of the real 1.5B shape (benchmarks, the GPU check)
  hardware         is the GPU usable: a visible GPU that torch cannot use is a one-line error naming the fix
  modeling         the one loader (base / adapter / merged), the one precision decision (--precision, --device), merging
  batching         padded or padding-free collators, token and padding statistics
  loss             the chunked training loss for SFT and distillation (no full-vocabulary logits)
  train_config     the training settings (headline defaults live in each stage script's constants)
  sft_data         SFT records -> token ids and labels; split statistics; the dry run's rendering
  lora             the trainable model: frozen (4-bit) base + LoRA, or a continued adapter
  sft_trainer      the Trainer subclass: the project's loss, token-weighted eval_loss, resumable shuffle
  run_outputs      a run's folder: complete checkpoints, adapter copies, clearing an earlier run
  parallel         past one device: DDP, FSDP2 or DeepSpeed ZeRO, checked before loading (docs/multi_gpu.md)
  training         the run: checks, TrainingArguments, the Trainer, best/final adapters and logs;
                   train_checks (settings checked before loading), train_callbacks (progress lines,
                   end summary, loss curve)
  distill          token-level distillation from a teacher sharing the tokenizer
  grpo, grpo_data, rewards   GRPO after SFT on TRL's GRPOTrainer: MCQ prompts, verifiable rewards (accuracy,
                   format, over-length) with case tables; grpo_memory (its GPU memory estimate)
  memory_estimate  peak GPU memory of a training run, from config.json
  decoding         the R1 decoding protocol: values, top-k off, seed + batch index (evaluation, chat, server)
  generation       the one generation path: batched/left-padded or streamed (reasoning apart), stop on
                   request, torchrun sharding, loading for generation (optional vLLM backend)
  metrics, mcq     Chinese metrics (ROUGE on jieba words without punctuation, BLEU-4 zh, format, repetition);
                   the multiple-choice answer reader
  benchmarks       CMB-Exam, CMExam, MedQA-MCMLE and the project's MCQ files; the one MCQ user turn
  mcq_split        MCQ data stage: any benchmark shape -> leakage-free train / val / test, rejects by reason
  evaluation, eval_report   base vs tuned (vs tuned2) on held-out questions (one process or torchrun); tables,
                   report, chart
  conversation     a chat's settings, history without reasoning and context window (trimming)
  chat_store, chat saved conversations (save/load); the terminal chat (commands, streaming output)
  serving, openai_api       the OpenAI-compatible server in DeepSeek's reasoning shape
  teacher_api, teacher_store   teacher generation from DeepSeek-R1 / vLLM: client, retries, resumable output
"""
from .library_output import quiet_libraries

quiet_libraries()
