"""Stage 1b: unified ModelScope records -> SFT records {"input", "output"}.

Reads  modelscope_r1_data/converted_data.jsonl (from data/generated_converted_data.py).
Writes dataset/sft_r1_data.jsonl: "input" is the user turn (a non-empty instruction in front of
       the question: R1 takes no system prompt), "output" is R1's native
       "<think>\\n{reasoning}\\n</think>\\n\\n{answer}" (r1_sft/r1_format.py); plus
       sft_r1_data.rejects.jsonl and sft_r1_data.run.json beside it.

    python data/generated_stf_r1_data.py --input modelscope_r1_data/converted_data.jsonl
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.data.conversion import run_conversion  # noqa: E402
from r1_sft.data.records import unified_to_sft  # noqa: E402
from r1_sft.paths import repo_path  # noqa: E402


@dataclass
class Config:
    input: str = "modelscope_r1_data/converted_data.jsonl"  # unified records
    output: str = "dataset/sft_r1_data.jsonl"  # SFT records; rejects and run info beside it
    max_chars: int = 16000  # reject records longer than this (input + reasoning + answer, characters)


@cli_main
def main(cfg: Config):
    transform = functools.partial(unified_to_sft, max_chars=cfg.max_chars)
    run_conversion(cfg, [repo_path(cfg.input)], transform, repo_path(cfg.output))


if __name__ == "__main__":
    main(parse_config(Config))
