"""Stage 1d: merge the teacher (R1-generated) files into unified records.

Reads  r1_generated/0*.jsonl, in name order ({"question", "reasoning": [step, ...], "answer"}).
Writes r1_generated/teacher_filtered.jsonl (unified records, steps joined with newlines),
       teacher_filtered.rejects.jsonl (each unusable line with its file, line number and reason)
       and teacher_filtered.run.json.

    python data/generated_teacher_filtered.py --input_dir r1_generated --pattern "0*.jsonl"
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.data.conversion import run_conversion  # noqa: E402
from r1_sft.data.records import teacher_record  # noqa: E402
from r1_sft.paths import display_path, repo_path, tried_path  # noqa: E402


@dataclass
class Config:
    input_dir: str = "r1_generated"  # folder of teacher JSONL files
    pattern: str = "0*.jsonl"  # glob of the teacher files inside input_dir (merged in name order)
    output: str = "r1_generated/teacher_filtered.jsonl"  # unified records; rejects and run info beside it
    max_chars: int = 16000  # reject records longer than this (question + reasoning + answer, characters)


@cli_main
def main(cfg: Config):
    input_dir, output = repo_path(cfg.input_dir), repo_path(cfg.output)
    if not input_dir.is_dir():
        raise UserError(f"{tried_path(input_dir)}: folder not found (check --input_dir)")
    # Never merge our own outputs back in, whatever the pattern.
    own = {output.name, f"{output.stem}.rejects.jsonl"}
    inputs = [p for p in sorted(input_dir.glob(cfg.pattern))
              if p.is_file() and p.name not in own and not p.name.endswith(".rejects.jsonl")]
    if not inputs:
        raise UserError(f"{display_path(input_dir)}: no file matches {cfg.pattern!r} "
                        f"(check --input_dir and --pattern)")
    transform = functools.partial(teacher_record, max_chars=cfg.max_chars)
    run_conversion(cfg, inputs, transform, output)


if __name__ == "__main__":
    main(parse_config(Config))
