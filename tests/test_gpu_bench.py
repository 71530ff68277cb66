"""bench/gpu_train.py runs its whole code path on a CPU in --smoke mode and writes the figures' shape."""
from __future__ import annotations

import json

from conftest import run_script

KEYS = {"method", "loss", "batching", "collator", "sampling", "attn_implementation", "precision", "timed_steps",
        "real_tokens", "computed_tokens", "padding_fraction", "seconds", "tokens_per_s", "mfu", "peak_memory_gb",
        "peak_reserved_gb", "largest_step_tokens", "estimate_allocated_gb", "estimate_total_gb", "skipped"}


def test_gpu_bench_smoke(tmp_path):
    out = tmp_path / "gpu_train.json"
    proc = run_script("bench/gpu_train.py", "--smoke", "--output", out, check=True, timeout=600)
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["smoke"] is True and record["device"] == "cpu" and record["bf16_peak_tflops"] is None
    assert record["architecture"]["vocab_size"] == 151936
    rows = record["results"]
    # every combination once: 2 methods x 2 losses x 2 batchings
    assert sorted((r["method"], r["loss"], r["batching"]) for r in rows) == sorted(
        (m, loss, b) for m in ("bf16_lora", "qlora") for loss in ("stock", "chunked")
        for b in ("padded", "padding_free"))
    for row in rows:
        if row["skipped"]:  # QLoRA without bitsandbytes
            assert row["method"] == "qlora"
            continue
        assert set(row) == KEYS
        assert row["timed_steps"] == 1 and row["real_tokens"] > 0 and row["tokens_per_s"] > 0
        assert row["peak_memory_gb"] is None and row["mfu"] is None  # no GPU: not measured, not invented
        assert row["estimate_allocated_gb"] > 0
        assert (row["padding_fraction"] == 0) == (row["batching"] == "padding_free")
        assert row["collator"] == ("PaddingFreeCollator" if row["batching"] == "padding_free"
                                   else "RightPaddingCollator")
    by = {(r["method"], r["loss"], r["batching"]): r for r in rows}
    # the chunked loss's estimate is below the stock one's for the same batches
    assert by["bf16_lora", "chunked", "padded"]["estimate_allocated_gb"] < \
        by["bf16_lora", "stock", "padded"]["estimate_allocated_gb"]
    assert "[write]" in proc.stdout
