"""The real training script under `torchrun --nproc_per_node 2`: two-process DDP on CPU (gloo), tiny model.

It must be real data parallelism, not two copies of a one-process run: each optimizer step then
consumes both processes' micro-batches, so the epoch counter advances twice as fast. And eval_loss
must be the single-process value of the same weights on a validation set that does not divide
evenly over the processes (7 records on 2 ranks), on the chunked loss and on the stock loss.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1_sft.jsonl_io import read_jsonl
from r1_sft.model.folders import load_tokenizer
from r1_sft.model.loading import load_model
from r1_sft.r1_format import encode_example
from r1_sft.training.loss import model_loss

from conftest import WARM_CLIENT, warm_client_env

REPO = Path(__file__).resolve().parents[2]
TRAIN = "tests/fixtures/sft_tiny_train.jsonl"
VAL = "tests/fixtures/sft_tiny_val.jsonl"
PROCESSES, BATCH, STEPS, VAL_RECORDS = 2, 2, 3, 7
# Same weights and examples in one process: only the float summation order (batch shapes) differs.
EVAL_TOLERANCE = 1e-4


def torchrun_train(tiny_model_dir: Path, tmp_path: Path, *extra: str, warm: bool = False) -> tuple[Path, Path]:
    """The documented command, run from another folder; returns (output folder, validation file).

    ``warm``: torchrun starts its workers as ``tests/warm_client.py SCRIPT`` (forks of the test worker's warm
    Python: the same script, the same environment, without importing the libraries twice more)."""
    out, val = tmp_path / "lora", tmp_path / "val7.jsonl"
    lines = (REPO / VAL).read_text(encoding="utf-8").splitlines()[:VAL_RECORDS]
    val.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(PROCESSES),
           *([str(WARM_CLIENT)] if warm else []), str(REPO / "scripts/train_stf_r1_train_val.py"),
           "--model_path", str(tiny_model_dir), "--train_file", str(REPO / TRAIN), "--val_file", str(val),
           "--output_dir", str(out),
           "--max_steps", str(STEPS), "--eval_steps", "1", "--save_steps", "1", "--logging_steps", "1",
           "--per_device_train_batch_size", str(BATCH), "--gradient_accumulation_steps", "1",
           "--max_length", "256", "--seed", "7", *extra]
    # OMP_NUM_THREADS=1 keeps two processes on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(warm_client_env() if warm else {})}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out, val


def read_history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]


def one_process_eval_loss(checkpoint: Path, val: Path, use_4bit: bool) -> float:
    """Mean cross-entropy over every trained token of ``val``, one example at a time, in this process."""
    model, tokenizer = load_model(checkpoint, use_4bit=use_4bit, for_training=True)  # the training 4-bit kernel
    model.eval()
    ce_sum, tokens = 0.0, 0
    with torch.no_grad():
        for record in read_jsonl(val):
            enc = encode_example(tokenizer, record["input"], record["output"], max_length=256)
            batch = {key: torch.tensor([enc[key]]) for key in ("input_ids", "labels")}
            parts = model_loss(model, batch)
            ce_sum, tokens = ce_sum + float(parts.ce_sum), tokens + parts.tokens
    return ce_sum / tokens


def assert_eval_losses_match_one_process(out: Path, val: Path, use_4bit: bool) -> None:
    evals = {h["step"]: h["eval_loss"] for h in read_history(out) if "eval_loss" in h}
    assert sorted(evals) == list(range(1, STEPS + 1))
    # The last checkpoint survives save_total_limit; its weights are the ones evaluated at that step.
    reference = one_process_eval_loss(out / f"checkpoint-{STEPS}", val, use_4bit)
    assert evals[STEPS] == pytest.approx(reference, rel=EVAL_TOLERANCE), (evals, reference)


def test_torchrun_two_process_ddp_trains_and_writes_the_adapter(tiny_model_dir, tmp_path):
    # Default 4-bit, with an evaluation after every step: training after an evaluation must keep
    # working on CPUs with AVX512-BF16 (bitsandbytes would otherwise switch kernels, then fail in DDP).
    out, val = torchrun_train(tiny_model_dir, tmp_path)

    for folder in ("best_model", "final_model"):
        assert (out / folder / "adapter_config.json").is_file()
        assert (out / folder / "adapter_model.safetensors").stat().st_size > 0
    history = read_history(out)
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
    # Chunked loss (the default): 7 validation records on 2 ranks, the 8th slot a repeated example.
    assert_eval_losses_match_one_process(out, val, use_4bit=True)


def test_torchrun_eval_loss_on_the_stock_loss_equals_one_process(tiny_model_dir, tmp_path):
    """The stock loss path (--loss_chunk_tokens 0; Liger takes the same path on CUDA) on uneven ranks."""
    out, val = torchrun_train(tiny_model_dir, tmp_path, "--loss_chunk_tokens", "0", "--no_use_4bit", warm=True)
    assert_eval_losses_match_one_process(out, val, use_4bit=False)
