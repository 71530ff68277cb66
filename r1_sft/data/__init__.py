"""Stage 1, data: raw sources -> validated SFT / MCQ records -> train / validation / test splits.

  records       what a line of each source must be (rejects by reason), normalisation, dedup keys
  conversion    streams a data stage: reads a source, writes kept lines and rejects
  splits        stratified, seeded train / validation / test splits (the ratios and seed live here)
  benchmarks    CMB-Exam, CMExam, MedQA-MCMLE and the project's MCQ files -> one question shape
  mcq_split     the MCQ data stage: any benchmark shape -> leakage-free train / val / test
  teacher_api   DeepSeek-R1 / vLLM teacher client: requests, retries, rate limits
  teacher_store resumable teacher output (r1_generated/*.jsonl)

May import: the shared modules (r1_sft/*.py). Nothing else in r1_sft.
"""
