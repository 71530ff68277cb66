"""Benchmark: loading R1's tokenizer from its own files and from the files transformers writes when it saves it.

Checkpoints, best_model/, final_model/ and merged folders carry a byte copy of the base's tokenizer files
(``r1_sft.model.folders.save_tokenizer``). This measures why: the same tokenizer written out by
``save_pretrained`` (what the Trainer would save) against the base's files, loaded with the project's
loader's call (``AutoTokenizer.from_pretrained``) in one process, alternating, best of ``repeats``.

Reads  MODEL_PATH (default the tiny model that `make demo` builds: R1's real tokenizer files).
Writes bench/results/tokenizer_load.json.

    python bench/tokenizer_load.py
"""
from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.model.folders import save_tokenizer  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # a folder with R1's tokenizer files
    repeats: int = 5  # loads per form
    output: str = "bench/results/tokenizer_load.json"  # where the figures go


@cli_main
def main(cfg: Config) -> None:
    from transformers import AutoTokenizer

    source = repo_path(cfg.model_path)
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"copied": Path(tmp) / "copied", "saved_by_transformers": Path(tmp) / "saved"}
        save_tokenizer(tokenizer, folders["copied"])
        tokenizer.save_pretrained(str(folders["saved_by_transformers"]))
        seconds: dict[str, list[float]] = {name: [] for name in folders}
        for _ in range(cfg.repeats):
            for name, folder in folders.items():
                start = time.perf_counter()
                AutoTokenizer.from_pretrained(str(folder))
                seconds[name].append(round(time.perf_counter() - start, 3))
        sizes = {name: (folder / "tokenizer.json").stat().st_size for name, folder in folders.items()}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "tokenizer_json_bytes": sizes, "load_seconds": seconds,
        "best_load_seconds": {name: min(values) for name, values in seconds.items()},
        "run": run_info(cfg),
    }
    out = repo_path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    print(f"[tokenizer] tokenizer.json bytes {sizes}; best load seconds {result['best_load_seconds']} "
          f"-> {display_path(out)}")


if __name__ == "__main__":
    main(parse_config(Config))
