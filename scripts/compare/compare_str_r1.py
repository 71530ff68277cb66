"""The seed's batch comparison of the base and fine-tuned models: a thin call of the evaluation code.

Same flags, files, decoding protocol and metrics as scripts/evaluate_model.py (r1_sft/evaluation/run.py
does the work); kept under its seed name. Results go to scripts/compare/evaluation_results/RUN_NAME/.

Reads:  DATA (default dataset/sft_r1_test.jsonl, the held-out test split), BASE_MODEL, ADAPTER ("" or absent default = base only).
Writes: OUTPUT_DIR/RUN_NAME/ predictions.jsonl, summary.json, report.md, report.csv, scores.png, run_info.json

Example:
    python scripts/compare/compare_str_r1.py --num_samples 20
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.evaluation.run import DEFAULT_ADAPTER, DEFAULT_BASE, EvalConfig, run_evaluation  # noqa: E402


@dataclass
class Config(EvalConfig):
    base_model: str = DEFAULT_BASE  # base model folder ("base")
    adapter: str = DEFAULT_ADAPTER  # fine-tuned adapter or merged folder ("tuned"); "" = base only
    num_samples: int = 20  # N questions of DATA, a seeded random draw (stratified by subject/department when the file has one); 0 = all


@cli_main
def main(cfg: Config):
    run_evaluation(cfg)


if __name__ == "__main__":
    main(parse_config(Config))
