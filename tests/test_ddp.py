"""The real training script under `torchrun --nproc_per_node 2`: two-process DDP on CPU (gloo), tiny model.

It must be real data parallelism, not two copies of a one-process run: each optimizer step then
consumes both processes' micro-batches, so the epoch counter advances twice as fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from r1_sft.jsonl_io import read_jsonl
from r1_sft.modeling import load_tokenizer
from r1_sft.r1_format import encode_example

REPO = Path(__file__).resolve().parent.parent
TRAIN = "tests/fixtures/sft_tiny_train.jsonl"
VAL = "tests/fixtures/sft_tiny_val.jsonl"
PROCESSES, BATCH, STEPS = 2, 2, 3


def test_torchrun_two_process_ddp_trains_and_writes_the_adapter(tiny_model_dir, tmp_path):
    out = tmp_path / "lora"
    # The documented command, run from another folder; OMP_NUM_THREADS=1 keeps two processes on two cores.
    # Default 4-bit, with an evaluation after every step: training after an evaluation must keep
    # working on CPUs with AVX512-BF16 (bitsandbytes would otherwise switch kernels, then fail in DDP).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
           str(REPO / "scripts/train_stf_r1_train_val.py"),
           "--model_path", str(tiny_model_dir), "--train_file", str(REPO / TRAIN), "--val_file", str(REPO / VAL),
           "--output_dir", str(out),
           "--max_steps", str(STEPS), "--eval_steps", "1", "--save_steps", str(STEPS), "--logging_steps", "1",
           "--per_device_train_batch_size", str(BATCH), "--gradient_accumulation_steps", "1",
           "--max_length", "256", "--seed", "7"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    for folder in ("best_model", "final_model"):
        assert (out / folder / "adapter_config.json").is_file()
        assert (out / folder / "adapter_model.safetensors").stat().st_size > 0
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == list(range(1, STEPS + 1))

    n_train = sum(1 for line in (REPO / TRAIN).read_text(encoding="utf-8").splitlines() if line.strip())
    # One process alone would be at STEPS * BATCH / n_train.
    assert train_logs[-1]["epoch"] == PROCESSES * STEPS * BATCH / n_train, (
        "the two processes trained separately instead of as one DDP job")
    # Throughput is summed over both processes (the padding fraction is a real measurement, 0..1).
    assert all(h["tokens_per_s"] > 0 and 0.0 <= h["padding_fraction"] < 1.0 for h in train_logs)
    # The whole run's real tokens: exactly PROCESSES * STEPS * BATCH distinct training examples.
    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    lengths = [len(encode_example(tokenizer, r["input"], r["output"])["input_ids"]) for r in read_jsonl(REPO / TRAIN)]
    seen = PROCESSES * STEPS * BATCH
    assert sum(sorted(lengths)[:seen]) <= history[-1]["train_real_tokens"] <= sum(sorted(lengths)[-seen:])
