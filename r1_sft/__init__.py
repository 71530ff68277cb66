"""Shared code for the 医疗报告 R1 SFT stage scripts.

Modules, by concern:
  paths       repository-root path resolution
  cli         constants dataclass -> command-line flags, one-line user errors
  run_info    resolved config, library versions and git commit saved beside outputs
  r1_format   the R1 think format: build SFT targets, build prompts, encode, parse outputs
  generation  batched, left-padded generation with throughput (optional vLLM backend)
  metrics     every evaluation metric for Chinese text (ROUGE on jieba words, BLEU-4 zh, format, repetition)
  evaluation  load questions, generate with base and tuned, score, write the report
  library_output  library chatter silenced once, here, before any library is imported
"""
from .library_output import quiet_libraries

quiet_libraries()
