"""The GPU benches on a CPU: bench/gpu_check.sh --smoke runs the whole prepared GPU check (bench/gpu_train.py
--smoke included, then real training, evaluation and merging on a tiny random model); gpu_train's FLOP
count, peak table and row isolation in memory."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, warm_client_env, warm_python_command

KEYS = {"method", "loss", "batching", "collator", "sampling", "attn_implementation", "precision", "timed_steps",
        "real_tokens", "computed_tokens", "padding_fraction", "seconds", "tokens_per_s", "flops_per_token",
        "tflops_per_s", "mfu", "peak_memory_gb", "peak_reserved_gb", "largest_step_tokens", "estimate_allocated_gb",
        "estimate_total_gb", "skipped", "error", "memory_before_gb"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_train", REPO / "bench" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_train"] = module  # its dataclass looks its module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """``bash bench/gpu_check.sh --smoke`` run once, as a user would; returns (its OUT, its WORK, its stdout)."""
    out, work = tmp_path_factory.mktemp("gpu_check_out"), tmp_path_factory.mktemp("gpu_check_work")
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--smoke"], cwd=REPO, capture_output=True,
                          text=True, timeout=1200,
                          env={**os.environ, "OUT": str(out), "WORK": str(work), "PYTHON": str(warm_python_command()),
                               **warm_client_env()})  # its Python steps: forks of the warm Python
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, work, proc.stdout


def test_gpu_check_smoke_runs_the_whole_sequence_and_writes_its_figures(gpu_check):
    out, work, stdout = gpu_check
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["smoke"] is True and summary["all_passed"] is True
    assert [s["step"] for s in summary["steps"]] == ["environment", "bench", "build_model", "data", "train_qlora",
                                                     "train_lora", "evaluate", "merge"]  # no install in --smoke
    assert all(s["exit_code"] == 0 and s["seconds"] > 0 for s in summary["steps"])
    assert summary["environment"].startswith("python ") and f"torch {torch.__version__}" in summary["environment"]
    for name in ("qlora", "lora"):  # a few real steps of the real training script, with its evaluation loss
        run = summary["training"][name]
        assert run["train"]["step"] == 2 and run["train"]["train_tokens_per_s"] > 0
        assert run["last_eval"]["eval_loss"] > 0
        assert (out / name / "training_logs" / "log_history.jsonl").is_file()  # figures in OUT, weights in WORK
        assert not (out / name / "best_model").exists()
        adapter = json.loads((work / name / "best_model" / "adapter_config.json").read_text(encoding="utf-8"))
        assert adapter["base_model_name_or_path"].endswith("random_model")
    assert "4-bit" in (out / "train_qlora.log").read_text() and "4-bit" not in (out / "train_lora.log").read_text()
    config = json.loads((work / "random_model" / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == 151936 and config["hidden_size"] == 64  # the tiny random model
    evaluation = json.loads(Path(summary["evaluation_summary"]).read_text(encoding="utf-8"))
    assert set(evaluation["models"]) == {"base", "tuned"}  # base vs the QLoRA adapter, scored
    assert (work / "merged" / "merge_info.json").is_file() and any((work / "merged").glob("*.safetensors"))
    assert summary["bench"] == str(out / "gpu_train.json")
    assert "all passed" in stdout


def test_gpu_bench_smoke(gpu_check):
    out, _, _ = gpu_check
    proc_stdout = (out / "bench.log").read_text(encoding="utf-8")
    record = json.loads((out / "gpu_train.json").read_text(encoding="utf-8"))
    assert record["smoke"] is True and record["device"] == "cpu" and record["bf16_peak_tflops"] is None
    assert record["complete"] is True and "(4 + 2c) N + 4 H" in record["flops_formula"]
    assert record["architecture"]["vocab_size"] == 151936
    rows = record["results"]
    # every combination once: 2 methods x 2 losses x 2 batchings
    assert sorted((r["method"], r["loss"], r["batching"]) for r in rows) == sorted(
        (m, loss, b) for m in ("bf16_lora", "qlora") for loss in ("stock", "chunked")
        for b in ("padded", "padding_free"))
    for row in rows:
        assert row["error"] is None, row
        if row["skipped"]:  # QLoRA without bitsandbytes
            assert row["method"] == "qlora"
            continue
        assert set(row) == KEYS
        assert row["timed_steps"] == 1 and row["real_tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["tflops_per_s"] > 0 and row["flops_per_token"] > 0
        assert row["peak_memory_gb"] is None and row["mfu"] is None  # no GPU: not measured, not invented
        assert row["estimate_allocated_gb"] > 0
        assert (row["padding_fraction"] == 0) == (row["batching"] == "padding_free")
        assert row["collator"] == ("PaddingFreeCollator" if row["batching"] == "padding_free"
                                   else "RightPaddingCollator")
    by = {(r["method"], r["loss"], r["batching"]): r for r in rows}
    # the chunked loss's estimate is below the stock one's for the same batches
    assert by["bf16_lora", "chunked", "padded"]["estimate_allocated_gb"] < \
        by["bf16_lora", "stock", "padded"]["estimate_allocated_gb"]
    # the same examples: the FLOP count per real token does not depend on the padding
    assert by["bf16_lora", "stock", "padded"]["flops_per_token"] == by["bf16_lora", "stock", "padding_free"][
        "flops_per_token"]
    assert "[write]" in proc_stdout and "0 failed" in proc_stdout


def test_peak_is_looked_up_by_exact_device_name(bench):
    assert bench.peak_tflops_of("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert bench.peak_tflops_of("NVIDIA H100 PCIe") == 756.0  # not the SXM figure
    assert bench.peak_tflops_of("NVIDIA L4") == 121.0 and bench.peak_tflops_of("NVIDIA L40S") == 362.0
    assert bench.peak_tflops_of("NVIDIA L40") == 181.0
    assert bench.peak_tflops_of("NVIDIA H100 NVL") is None  # unknown: no MFU rather than a wrong one
    assert bench.peak_tflops_of("NVIDIA H100 NVL", override=835.0) == 835.0


def test_flop_count_of_the_real_1_5b(bench):
    arch = bench.REAL_ARCH
    n, h = bench.linear_weights(arch)
    assert h == 1536 * 151936
    per_layer = 1536 * 1536 * 2 + 1536 * 256 * 2 + 1536 * 8960 * 3  # q, o; k, v (2 KV heads of 128); MLP
    assert n == 28 * per_layer
    # one sequence of 2,048 tokens with checkpointing: 6N + 4H per token, attention 16 L d T per token
    flops = bench.model_flops(arch, 2048, 2048 ** 2)
    assert flops == pytest.approx((6 * n + 4 * h) * 2048 + 16 * 28 * 1536 * 2048 ** 2)
    assert 10e9 < flops / 2048 < 10.5e9  # about 10.2 GFLOP per token at 2,048 tokens
    assert bench.model_flops(arch, 2048, 2048 ** 2, checkpointing=False) < flops


def test_sequence_lengths_padded_and_padding_free(bench):
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    assert bench.sequence_lengths(torch.zeros(2, 4), mask, None) == [3, 4]
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert bench.sequence_lengths(torch.zeros(1, 9), None, positions) == [3, 2, 4]


def test_a_failing_row_is_recorded_and_the_run_goes_on_writing_after_every_row(bench, tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    seen = []

    def fake_run_config(cfg, model_dir, arch, method, use_4bit, loss, batching, examples, peak, row):
        # every earlier row is already on disk when the next one starts
        on_disk = json.loads(out.read_text(encoding="utf-8"))["results"] if out.exists() else []
        seen.append(len(on_disk))
        if (method, loss, batching) == ("bf16_lora", "stock", "padded"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.64 GiB")
        if (method, loss, batching) == ("bf16_lora", "chunked", "padded"):
            raise RuntimeError("expected m1 and m2 to have the same dtype")
        row.update(tokens_per_s=1.0, tflops_per_s=0.1, mfu=None, padding_fraction=0.0, peak_memory_gb=None,
                   estimate_allocated_gb=0.1)

    monkeypatch.setattr(bench, "run_config", fake_run_config)
    monkeypatch.setattr(bench, "build_random_model", lambda folder, arch, seed: folder)  # no model needed
    bench.main(bench.Config(smoke=True, output=str(out)))
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["complete"] is True and len(record["results"]) == 8
    assert seen == list(range(len(seen)))  # rows written one by one
    by = {(r["method"], r["loss"], r["batching"]): r for r in record["results"]}
    assert by["bf16_lora", "stock", "padded"]["error"].startswith("out of memory: CUDA out of memory")
    assert by["bf16_lora", "chunked", "padded"]["error"] == "RuntimeError: expected m1 and m2 to have the same dtype"
    assert by["bf16_lora", "stock", "padding_free"]["error"] is None
    assert by["bf16_lora", "stock", "padding_free"]["tokens_per_s"] == 1.0
