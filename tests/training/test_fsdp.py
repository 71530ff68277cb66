"""FSDP2 through the Trainer: `torchrun --nproc_per_node 2 ... --fsdp_config configs/fsdp2_lora.json` on the CPU.

accelerate 1.15 enables FSDP only on GPUs; tests/cpu_fsdp/sitecustomize.py lifts that gate for these
launches (see its docstring), so the real script runs PyTorch's FSDP2 over gloo: weights sharded per
decoder layer, checkpoints written by FSDP, the adapter gathered to rank 0 and saved once.

Checked: it trains, evaluates (7 validation records on 2 ranks: uneven), resumes from a checkpoint
to the same adapter, writes best_model/ and final_model/ that the chat loads, and its eval_loss
equals a one-process run with the same global batch (4 sequences per step) within EVAL_TOLERANCE, both
with the default chunked loss (lm_head and the final norm unsharded around it: r1_sft.training.loss).

The 16 training records make the length-grouped shuffle identical for 1 x 4 and 2 x 2 sequences
per step (one megabatch of 4 either way), so both runs see the same examples at every step.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, WARM_CLIENT, run_script, warm_client_env

SCRIPT = REPO / "scripts/train_stf_r1_train_val.py"
STEPS = 3
# float32 on both sides; only the order of the sums differs (gradients reduce-scattered over two
# ranks, padded to each rank's longest example). Measured: 4e-8 relative at step 2. A wrong
# global batch or a loss counted per rank moves eval_loss by far more than 1e-5.
EVAL_TOLERANCE = 1e-5


def data(tmp_path: Path) -> list[str]:
    train, val = tmp_path / "train16.jsonl", tmp_path / "val7.jsonl"
    train.write_text("\n".join((REPO / "tests/fixtures/sft_tiny_train.jsonl").read_text().splitlines()[:16]) + "\n")
    val.write_text("\n".join((REPO / "tests/fixtures/sft_tiny_val.jsonl").read_text().splitlines()[:7]) + "\n")
    return ["--train_file", str(train), "--val_file", str(val)]


def common(tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    # The default (chunked) loss on both sides. No dropout, so the one-process run draws the same (no) masks.
    return ["--model_path", str(tiny_model_dir), *data(tmp_path), "--max_steps", str(STEPS), "--eval_steps", "1",
            "--save_steps", "1", "--logging_steps", "1", "--gradient_accumulation_steps", "1", "--max_length", "256",
            "--seed", "7", "--no_use_4bit", "--lora_dropout", "0"]


def torchrun(args: list[str], cwd: Path, config: str = "fsdp2_lora.json") -> subprocess.CompletedProcess:
    # torchrun's workers are forks of the test worker's warm Python (tests/warm_client.py), which adds
    # PYTHONPATH and runs the shim's sitecustomize as a new interpreter's start-up would.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "R1_SFT_TEST_CPU_FSDP": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests/cpu_fsdp"), str(REPO)]), **warm_client_env()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(WARM_CLIENT), str(SCRIPT),
           "--fsdp_config", str(REPO / "configs" / config), "--per_device_train_batch_size", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def evals(out: Path) -> dict[int, float]:
    history = [json.loads(line) for line in (out / "training_logs/log_history.jsonl").read_text().splitlines()]
    return {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def test_fsdp2_trains_evaluates_resumes_and_matches_one_process(tiny_model_dir, tmp_path):
    args = common(tiny_model_dir, tmp_path)
    out = tmp_path / "fsdp"
    torchrun([*args, "--output_dir", str(out)], tmp_path)

    # FSDP really ran: its own checkpoint files, beside the adapter the Trainer gathered for rank 0.
    checkpoint = out / f"checkpoint-{STEPS}"
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    final = adapter(out / "final_model")
    assert all(not k.endswith("base_layer.weight") for k in final)  # the adapter only, whole (not sharded) tensors
    assert final.keys() == adapter(checkpoint).keys()
    assert all(torch.equal(final[k], adapter(checkpoint)[k]) for k in final)

    one = tmp_path / "one"
    proc = run_script("scripts/train_stf_r1_train_val.py", *args, "--output_dir", one, "--per_device_train_batch_size",
                      "4", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sharded, single = evals(out), evals(one)
    assert sorted(sharded) == sorted(single) == list(range(1, STEPS + 1))
    assert single[STEPS] < single[1]  # it learnt something: the comparison is not between two untrained models
    for step in single:
        assert sharded[step] == pytest.approx(single[step], rel=EVAL_TOLERANCE), (sharded, single)

    # Resume: the last checkpoint and the results gone, as if killed after checkpoint-(STEPS-1).
    for name in (f"checkpoint-{STEPS}", "best_model", "final_model"):
        shutil.rmtree(out / name)
    resumed = torchrun([*args, "--output_dir", str(out), "--resume"], tmp_path)
    assert f"[resume] continuing from {out / f'checkpoint-{STEPS - 1}'}" in resumed.stdout
    again = adapter(out / "final_model")
    assert all(torch.allclose(again[k], final[k], rtol=1e-5, atol=1e-7) for k in final)

    chat = run_script("scripts/chat_with_model.py", "--model", out / "final_model", "--once", "头痛怎么办？",
                      "--max_new_tokens", "8", "--conversations_dir", tmp_path / "conv", env={"OMP_NUM_THREADS": "1"})
    assert chat.returncode == 0, chat.stdout[-2000:] + chat.stderr[-2000:]
    assert "LoRA adapter" in chat.stdout


def test_fsdp2_qlora_shards_4bit_weights_and_matches_one_process(tiny_model_dir, tmp_path):
    """configs/fsdp2_qlora.json: NF4 weights stored in the compute dtype (float32 here), one optimizer step."""
    args = [a for a in common(tiny_model_dir, tmp_path) if a != "--no_use_4bit"] + ["--max_steps", "1",
                                                                                   "--warmup_ratio", "0"]
    out, one = tmp_path / "fsdp_qlora", tmp_path / "one_qlora"
    proc = torchrun([*args, "--output_dir", str(out)], tmp_path, config="fsdp2_qlora.json")
    assert "4-bit NF4" in proc.stdout
    assert (out / "checkpoint-1/pytorch_model_fsdp.bin").is_file()
    single = run_script("scripts/train_stf_r1_train_val.py", *args, "--output_dir", one,
                        "--per_device_train_batch_size", "4", cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert evals(out)[1] == pytest.approx(evals(one)[1], rel=EVAL_TOLERANCE)
    assert adapter(out / "final_model").keys() == adapter(one / "final_model").keys()
