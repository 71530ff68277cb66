"""Stage 1a: ModelScope R1 medical data -> unified records.

Reads  modelscope_r1_data/r1_data_example.jsonl ({"instruction", "question", "think", "answer",
       "metrics": {"quality_f1"}} per line).
Writes modelscope_r1_data/converted_data.jsonl (unified records, see r1_sft/data/records.py),
       converted_data.rejects.jsonl (every unusable line with its line number and reason) and
       converted_data.run.json (config, versions, counts).

    python data/generated_converted_data.py --input modelscope_r1_data/r1_data_example.jsonl
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.data.conversion import run_conversion  # noqa: E402
from r1_sft.data.records import modelscope_record  # noqa: E402
from r1_sft.paths import repo_path  # noqa: E402


@dataclass
class Config:
    input: str = "modelscope_r1_data/r1_data_example.jsonl"  # ModelScope JSONL
    output: str = "modelscope_r1_data/converted_data.jsonl"  # unified records; rejects and run info beside it
    max_chars: int = 16000  # reject records longer than this (question + reasoning + answer, characters)


@cli_main
def main(cfg: Config):
    transform = functools.partial(modelscope_record, max_chars=cfg.max_chars)
    run_conversion(cfg, [repo_path(cfg.input)], transform, repo_path(cfg.output))


if __name__ == "__main__":
    main(parse_config(Config))
