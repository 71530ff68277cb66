"""Stage 1f: split an SFT file into train and validation sets.

Reads  dataset/sft_train.jsonl (from data/build_sft_dataset.py).
Writes dataset/train.jsonl and dataset/val.jsonl: questions deduplicated after normalising width,
       case, whitespace and punctuation (no question in both splits), stratified by length,
       byte-identical for the same seed; dataset/sft_stats.json (counts, character-length
       percentiles per split, run info) and dataset/sft_train.split.rejects.jsonl (duplicates and
       bad lines, with line numbers and reasons).

    python data/split_sft_train.py --val_ratio 0.1 --seed 42
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
    input: str = "dataset/sft_train.jsonl"  # SFT records {"input", "output"}
    output_dir: str = "dataset"  # folder for the train/val files, stats and rejects
    train_file: str = name_field("train.jsonl")  # training split, inside output_dir
    val_file: str = name_field("val.jsonl")  # validation split, inside output_dir
    stats_file: str = name_field("sft_stats.json")  # counts and length percentiles, inside output_dir
    val_ratio: float = 0.1  # fraction of (deduplicated) records for validation; at least 1 record
    seed: int = 42  # same seed and input -> byte-identical splits


@cli_main
def main(cfg: Config):
    split_jsonl(repo_path(cfg.input), repo_path(cfg.output_dir), cfg.train_file, cfg.val_file,
                cfg.stats_file, cfg.val_ratio, cfg.seed, run=run_info(cfg))


if __name__ == "__main__":
    main(parse_config(Config))
