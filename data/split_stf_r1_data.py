"""Stage 1c: split an SFT file into train, validation and held-out test sets.

Reads  dataset/sft_r1_data.jsonl (from data/generated_stf_r1_data.py).
Writes dataset/sft_r1_train.jsonl, dataset/sft_r1_val.jsonl and dataset/sft_r1_test.jsonl: questions
       deduplicated after normalising width, case, whitespace and punctuation (no question in two
       splits), stratified by length, byte-identical for the same seed; training reads train and
       val, scripts/evaluate_model.py scores test by default. Also dataset/sft_r1_stats.json (counts,
       character-length percentiles per split, run info) and dataset/sft_r1_data.split.rejects.jsonl
       (duplicates and bad lines, with line numbers and reasons).

The ratios, seed and output folder shared with data/split_sft_train.py are in r1_sft/data/splits.py
(SplitConfig); this file names its own input and output files.

    python data/split_stf_r1_data.py --val_ratio 0.1 --test_ratio 0.1 --seed 42
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, name_field, parse_config  # noqa: E402
from r1_sft.data.splits import SplitConfig, run_split  # noqa: E402


@dataclass
class Config(SplitConfig):
    input: str = "dataset/sft_r1_data.jsonl"  # SFT records {"input", "output"}
    train_file: str = name_field("sft_r1_train.jsonl")  # training split, inside output_dir
    val_file: str = name_field("sft_r1_val.jsonl")  # validation split (eval loss, best checkpoint), inside output_dir
    test_file: str = name_field("sft_r1_test.jsonl")  # held-out test split (evaluation only), inside output_dir
    stats_file: str = name_field("sft_r1_stats.json")  # counts and length percentiles, inside output_dir


@cli_main
def main(cfg: Config):
    run_split(cfg)


if __name__ == "__main__":
    main(parse_config(Config))
