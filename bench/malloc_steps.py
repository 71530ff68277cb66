"""Benchmark: the training steps on the CPU with glibc's default allocator and with the setting `make test` uses.

glibc maps every block over its mmap threshold (at most 32 MiB) on its own and gives it back to the
operating system when it is freed. A training step on the 151,936-row stand-in allocates several such
blocks (logits, their gradients) and faults every page of them in again at the next step. `make test` has
the test harness keep freed memory in every stage script run (tests/warm_python.keep_freed_memory: mallopt,
no block mapped on its own, nothing trimmed under 2 GiB); here the same settings are given as the variables
glibc reads at start (``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_``). This runs the real training script (the suite's short QLoRA run: 14
steps, evaluation and a checkpoint every 2) in new processes, alternating the two settings, and reads
``train_runtime`` from its log and the peak resident memory from bench/peak_rss.py.

Reads  MODEL_PATH (default the tiny model that `make demo` builds).
Writes bench/results/malloc_steps.json.

    python bench/malloc_steps.py
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402

SETTINGS = {
    "glibc_default": {},
    "make_test": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"},  # keep_freed_memory's
}


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # model folder (the stand-in: its 151,936-column logits)
    train_file: str = "tests/fixtures/sft_tiny_train.jsonl"  # SFT records to train on
    val_file: str = "tests/fixtures/sft_tiny_val.jsonl"  # SFT records to validate on
    max_steps: int = 14  # training steps per run
    repeats: int = 2  # runs per setting
    output: str = "bench/results/malloc_steps.json"  # where the figures go


def _one_run(cfg: Config, setting: dict, out_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **setting})
    cmd = [sys.executable, str(REPO / "bench/peak_rss.py"), str(REPO / "scripts/train_stf_r1_train_val.py"),
           "--model_path", str(repo_path(cfg.model_path)), "--train_file", str(repo_path(cfg.train_file)),
           "--val_file", str(repo_path(cfg.val_file)), "--output_dir", str(out_dir), "--overwrite_output_dir",
           "--max_length", "128", "--max_steps", str(cfg.max_steps), "--eval_steps", "2", "--save_steps", "2",
           "--logging_steps", "1", "--learning_rate", "5e-3", "--per_device_train_batch_size", "4",
           "--gradient_accumulation_steps", "1", "--save_total_limit", "2", "--seed", "3"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"training run failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    history = [json.loads(line) for line in (out_dir / "training_logs/log_history.jsonl").read_text().splitlines()]
    summary = next(entry for entry in reversed(history) if "train_runtime" in entry)
    peak_kb = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")][-1]
    return {"train_runtime_s": summary["train_runtime"], "process_s": round(wall, 2), "peak_rss_mb": peak_kb // 1024}


@cli_main
def main(cfg: Config) -> None:
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cfg.repeats):
            for name, setting in SETTINGS.items():  # alternating: a busy spell hits both settings
                run = _one_run(cfg, setting, Path(tmp) / f"{name}_{i}")
                runs[name].append(run)
                print(f"[malloc] {name:13s} run {i + 1}: train_runtime {run['train_runtime_s']:.2f} s, "
                      f"process {run['process_s']:.1f} s, peak RSS {run['peak_rss_mb']} MB", flush=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, one thread per run",
        "date": time.strftime("%Y-%m-%d"),
        "model_path": cfg.model_path, "max_steps": cfg.max_steps, "settings": SETTINGS, "runs": runs,
        "best_train_runtime_s": {name: min(r["train_runtime_s"] for r in rs) for name, rs in runs.items()},
        "run": run_info(cfg),
    }
    out = repo_path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    print(f"[malloc] best train_runtime: {result['best_train_runtime_s']} -> {display_path(out)}")


if __name__ == "__main__":
    main(parse_config(Config))
