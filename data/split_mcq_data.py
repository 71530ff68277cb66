"""MCQ data stage: split multiple-choice questions into train / validation / test for GRPO and evaluation.

Reads  INPUT: one file in any shape the evaluation reads -- CMB-Exam JSON or JSONL, CMExam CSV,
       MedQA-MCMLE JSONL or the project's {"question", "options", "answer"} JSONL (default: the 69
       original sample questions in mcq_data/medical_mcq.jsonl).
Writes OUTPUT_DIR/mcq_train.jsonl, mcq_val.jsonl, mcq_test.jsonl in the project's shape (no question
       in two splits: duplicates are found on the normalised question text; test and val drawn one per
       length bin, byte-identical for the same seed); OUTPUT_DIR/mcq_stats.json (counts, run info) and
       OUTPUT_DIR/<input stem>.mcq.rejects.jsonl (each unusable record with its place and reason:
       no_answer, answer_not_in_options, bad_question, not_mcq, invalid_json, duplicate_question, ...).

    python data/split_mcq_data.py
    python data/split_mcq_data.py --input CMB/CMB-val-merge.json --val_ratio 0.1 --test_ratio 0.2
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, name_field, parse_config  # noqa: E402
from r1_sft.data.mcq_split import split_mcq  # noqa: E402
from r1_sft.paths import repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    input: str = "mcq_data/medical_mcq.jsonl"  # multiple-choice questions: CMB-Exam, CMExam CSV, MedQA-MCMLE or the project's JSONL
    output_dir: str = "dataset"  # folder for the three splits, the stats and the rejects
    train_file: str = name_field("mcq_train.jsonl")  # GRPO training questions, inside output_dir
    val_file: str = name_field("mcq_val.jsonl")  # validation questions (GRPO's eval reward, best model), inside output_dir
    test_file: str = name_field("mcq_test.jsonl")  # held-out questions for base vs SFT vs GRPO, inside output_dir
    stats_file: str = name_field("mcq_stats.json")  # counts per split and rejects by reason, inside output_dir
    val_ratio: float = 0.1  # fraction of the (deduplicated) questions for validation; at least 1
    test_ratio: float = 0.2  # fraction for the held-out test split; at least 1
    seed: int = 42  # same seed and input -> byte-identical splits


@cli_main
def main(cfg: Config):
    files = {"train": cfg.train_file, "val": cfg.val_file, "test": cfg.test_file}
    split_mcq(repo_path(cfg.input), repo_path(cfg.output_dir), files, cfg.stats_file, cfg.val_ratio,
              cfg.test_ratio, cfg.seed, run=run_info(cfg))


if __name__ == "__main__":
    main(parse_config(Config))
