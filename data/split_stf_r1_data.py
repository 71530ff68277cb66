"""Stage 1c: split an SFT file into train and validation sets.

Reads  dataset/sft_r1_data.jsonl (from data/generated_stf_r1_data.py).
Writes dataset/sft_r1_train.jsonl and dataset/sft_r1_val.jsonl: questions deduplicated after normalising width,
       case, whitespace and punctuation (no question in both splits), stratified by length,
       byte-identical for the same seed; dataset/sft_r1_stats.json (counts, character-length
       percentiles per split, run info) and dataset/sft_r1_data.split.rejects.jsonl (duplicates and
       bad lines, with line numbers and reasons).

    python data/split_stf_r1_data.py --val_ratio 0.1 --seed 42
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, name_field, parse_config  # noqa: E402
from r1_sft.paths import repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402
from r1_sft.splits import split_jsonl  # noqa: E402


@dataclass
class Config:
    input: str = "dataset/sft_r1_data.jsonl"  # SFT records {"input", "output"}
    output_dir: str = "dataset"  # folder for the train/val files, stats and rejects
    train_file: str = name_field("sft_r1_train.jsonl")  # training split, inside output_dir
    val_file: str = name_field("sft_r1_val.jsonl")  # validation split, inside output_dir
    stats_file: str = name_field("sft_r1_stats.json")  # counts and length percentiles, inside output_dir
    val_ratio: float = 0.1  # fraction of (deduplicated) records for validation; at least 1 record
    seed: int = 42  # same seed and input -> byte-identical splits


@cli_main
def main(cfg: Config):
    split_jsonl(repo_path(cfg.input), repo_path(cfg.output_dir), cfg.train_file, cfg.val_file,
                cfg.stats_file, cfg.val_ratio, cfg.seed, run=run_info(cfg))


if __name__ == "__main__":
    main(parse_config(Config))
