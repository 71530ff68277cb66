"""Stage 4, evaluation: base vs tuned (vs tuned2) on held-out questions, open answers and MCQ.

  run      the evaluation: questions, generation through r1_sft.inference, scoring, one process or torchrun
  questions  the evaluation file's questions as prompts and references
  metrics  Chinese metrics (ROUGE on jieba words, BLEU-4 zh, format, repetition), MCQ accuracy
  statistics  which questions (seeded, stratified draw); standard errors, intervals, paired tests, maj@k / pass@k
  report   tables, report.md, summary, chart
  report_html  report.html: one self-contained page (headline with intervals, charts, samples)

The multiple-choice answer reader is shared (r1_sft/answer_reader.py): GRPO's reward reads answers
with the same code. Benchmark files are read by r1_sft.data.benchmarks.

May import: the shared modules, r1_sft.data, r1_sft.model and r1_sft.inference.
"""
