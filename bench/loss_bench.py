"""Benchmark: the training loss's real tokens/s and peak memory, through the real training script.

Each arm runs ``scripts/train_stf_r1_train_val.py`` in a fresh process on the same data and model
(the 151,936-row stand-in by default: the output layer dominates, as for the real 1.5B), and reads

* real tokens/s: ``train_tokens_per_s`` from the run's log (``TokenStatsCallback``: non-pad tokens
  over the time spent in training steps, as the training log reports it);
* peak memory: the process's peak RSS (``ru_maxrss``), on a CPU the closest thing to the GPU's peak.

Arms: ``fused`` (the default chunked loss), ``stock`` (``--loss_chunk_tokens 0``: full fp32 logits,
transformers' causal-LM loss). ``--repo DIR`` runs another checkout's training script instead, e.g.
the commit before a change, so before/after figures come from one machine in one sitting. Rounds
alternate the arms (the machine is shared); every round is kept and the median reported.

Example:
    python bench/loss_bench.py                                   # fused vs stock, 2 rounds
    git worktree add /tmp/before HEAD~1 && python bench/loss_bench.py --repo /tmp/before --output bench/results/loss_bench_before.json

Writes bench/results/loss_bench.json (figures, machine, date, git commit, settings).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import REPO_ROOT, display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402

ARMS = {"fused": [], "stock": ["--loss_chunk_tokens", "0"]}


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # base model folder (the 151,936-row stand-in that `make demo` builds)
    train_file: str = "dataset/sft_r1_train.jsonl"  # SFT records {"input", "output"} (make data writes it)
    repo: str = ""  # another checkout whose training script to run (empty = this one)
    arms: str = "fused,stock"  # comma-separated: fused (default loss), stock (--loss_chunk_tokens 0)
    max_steps: int = 15  # optimizer steps per arm (the sample data's epoch at batch 4 is 30)
    per_device_train_batch_size: int = 4  # sequences per step (gradient accumulation 1)
    max_length: int = 1024  # longest example kept, tokens
    use_4bit: bool = False  # 4-bit base (bitsandbytes' CPU kernel is slow; the loss is what is compared)
    torch_threads: int = 1  # OMP_NUM_THREADS of each run (1 keeps figures stable on a shared machine)
    rounds: int = 2  # alternating rounds; the median of the rounds is reported
    output: str = "bench/results/loss_bench.json"  # where the figures go


def run_arm(cfg: Config, script: Path, arm: str, workdir: Path) -> dict:
    out = workdir / arm
    cmd = [sys.executable, str(REPO_ROOT / "bench/peak_rss.py"), str(script),
           "--model_path", str(repo_path(cfg.model_path)),
           "--train_file", str(repo_path(cfg.train_file)), "--val_file", str(repo_path(cfg.train_file)),
           "--output_dir", str(out), "--overwrite_output_dir", "--max_steps", str(cfg.max_steps),
           "--eval_steps", str(cfg.max_steps), "--save_steps", str(cfg.max_steps), "--logging_steps", "5",
           "--per_device_train_batch_size", str(cfg.per_device_train_batch_size), "--gradient_accumulation_steps",
           "1", "--per_device_eval_batch_size", "1", "--max_length", str(cfg.max_length),
           "--use_4bit" if cfg.use_4bit else "--no_use_4bit", "--early_stopping_patience", "0", *ARMS[arm]]
    env = {**os.environ, "OMP_NUM_THREADS": str(cfg.torch_threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"arm": arm, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
    kb = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    end = next(h for h in reversed(history) if "train_tokens_per_s" in h)
    return {"arm": arm, "real_tokens_per_s": end["train_tokens_per_s"], "real_tokens": end.get("train_real_tokens"),
            "peak_rss_mb": round(kb[-1] / 1024), "train_loss": next(h["train_loss"] for h in reversed(history)
                                                                     if "train_loss" in h)}


@cli_main
def main(cfg: Config) -> None:
    arms = [a.strip() for a in cfg.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"error: --arms {','.join(unknown)}: use {', '.join(ARMS)}")
    root = Path(cfg.repo).resolve() if cfg.repo else REPO_ROOT
    script = root / "scripts/train_stf_r1_train_val.py"
    print(f"[bench] {display_path(script)}: arms {arms}, {cfg.rounds} rounds, {cfg.max_steps} steps x "
          f"{cfg.per_device_train_batch_size} sequences, {cfg.torch_threads} thread(s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(cfg.rounds):
            for arm in arms if round_index % 2 == 0 else arms[::-1]:
                row = {"round": round_index, **run_arm(cfg, script, arm, Path(tmp))}
                rows.append(row)
                print(f"[bench] round {round_index} {json.dumps(row)}", flush=True)
    summary = {}
    for arm in arms:
        done = [r for r in rows if r["arm"] == arm and "error" not in r]
        if done:
            summary[arm] = {"real_tokens_per_s_median": statistics.median(r["real_tokens_per_s"] for r in done),
                            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in done)}
    if "fused" in summary and "stock" in summary:
        summary["fused_vs_stock"] = {
            "speed": round(summary["fused"]["real_tokens_per_s_median"] / summary["stock"]["real_tokens_per_s_median"], 2),
            "memory": round(summary["fused"]["peak_rss_mb_median"] / summary["stock"]["peak_rss_mb_median"], 2)}
    report = {"summary": summary, "rows": rows, "settings": asdict(cfg), "script": str(script),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count()}, **run_info(cfg)}
    atomic_write_text(repo_path(cfg.output), json.dumps(report, ensure_ascii=False, indent=2, default=str) + "\n")
    print(f"[bench] {json.dumps(summary)}", flush=True)
    print(f"[write] {display_path(repo_path(cfg.output))}", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
