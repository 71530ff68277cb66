"""The memory formula (r1_sft/training/memory_estimate.py): unit checks, and a check against measured CPU memory.

Measurement: one subprocess loads a model through the training code (``setup_lora_model``) and runs
single training steps (forward + backward, fp32 on CPU); each step's memory is its peak resident
set (VmHWM, reset before the step through /proc/self/clear_refs) minus the resident set before it.
glibc's allocator is told to map every block over 128 KiB on its own (MALLOC_MMAP_THRESHOLD_), so
freed tensors go back to the OS and the peak measures live tensors, as torch.cuda.max_memory_allocated
does on a GPU; with glibc's default (a growing threshold) freed blocks stay in the process and the
peak also counts allocator retention (measured: +0.4 GB on the wide model's checkpointed step).

Two models: the project's 151,936-row stand-in (its step memory is nearly all the output layer: the
loss part of the formula), and a random 8-layer, 256-wide model with a 4,096 vocabulary (the
activation part, with and without gradient checkpointing).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # also run as a script (the measuring process)

from r1_sft.training import memory_estimate as me  # noqa: E402

from conftest import GLIBC_MALLOC, run_script, sft_config

# Measured here (2 shared cores, torch 2.13 CPU): stand-in stock 3.606 GB vs formula 3.612 (+0.2%), chunked
# 0.427 vs 0.433 (+1.5%); wide model checkpointed 0.115 vs 0.129 (+12.3%), not checkpointed 0.700 vs 0.711 (+1.6%).
STAND_IN_TOLERANCE = 0.15  # the loss part: large blocks, little allocator noise
WIDE_TOLERANCE = 0.25  # small totals (0.1-0.7 GB): transients the formula does not itemise weigh more
WIDE = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=1024, vocab_size=4096)
BIG, SMALL = (2, 1000), (1, 20)


# ----------------------------------------------------------------------------- unit checks

def test_parts_of_the_real_1_5b():
    shape = me.R1_DISTILL_1_5B
    assert abs(shape.parameters() - 1.777e9) < 0.01e9  # FACTS: about 1.78B
    qlora = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=True)
    bf16 = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=False)
    # 4-bit body ~0.68 GB + embed_tokens and lm_head in bf16 (2 x 233M x 2 B), not fp32
    assert 1.5 < qlora.weights_gb < 1.7
    assert 3.5 < bf16.weights_gb < 3.6
    assert qlora.weights_gb < bf16.weights_gb / 2
    assert qlora.lora_parameters == 16 * 1_154_048 * 1 and abs(qlora.lora_gb - 0.295) < 0.01


def test_chunked_loss_far_below_stock_at_4x2048():
    shape = me.R1_DISTILL_1_5B
    stock = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=True, loss_chunk_tokens=0)
    chunked = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=True, loss_chunk_tokens=256)
    assert stock.loss_gb > 12  # FACTS: ~12 GB of logits, fp32 copies and their gradient before the model
    assert chunked.loss_gb < 1
    assert stock.total_gb - chunked.total_gb > 12


def test_estimate_grows_with_batch_and_checkpointing_saves():
    shape = me.R1_DISTILL_1_5B
    totals = [me.estimate(shape, batch_size=b, max_length=2048, use_4bit=True).total_gb for b in range(1, 40)]
    assert all(a < b for a, b in zip(totals, totals[1:]))
    kept = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=True, gradient_checkpointing=False)
    ckpt = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=True, gradient_checkpointing=True)
    assert kept.activations_gb > 10 * ckpt.activations_gb


@pytest.mark.parametrize("gpu_gb", [8, 16, 24, 80])
@pytest.mark.parametrize("use_4bit", [True, False])
def test_largest_batch_is_the_edge_of_fitting(gpu_gb, use_4bit):
    for shape in (me.R1_DISTILL_1_5B, me.R1_DISTILL_7B):
        best = me.largest_batch_size(shape, gpu_gb, max_length=2048, use_4bit=use_4bit)
        total = lambda b: me.estimate(shape, batch_size=b, max_length=2048, use_4bit=use_4bit).total_gb  # noqa: E731
        if best:
            assert total(best) <= gpu_gb
        assert total(best + 1) > gpu_gb


def test_7b_needs_4bit_on_16gb_and_table_says_so():
    assert me.largest_batch_size(me.R1_DISTILL_7B, 16, max_length=2048, use_4bit=False) == 0
    assert me.largest_batch_size(me.R1_DISTILL_7B, 16, max_length=2048, use_4bit=True) >= 1
    table = me.readme_table()
    assert table.count("\n") == 5 and "放不下" in table.splitlines()[5]


def test_from_folder_and_describe(tmp_path):
    config = {"model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936, "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    est = me.estimate_from_folder(tmp_path, batch_size=4, max_length=2048, use_4bit=True)
    assert est == me.estimate(me.R1_DISTILL_1_5B, batch_size=4, max_length=2048, use_4bit=True)
    text = me.describe(est, gpu_memory_gb=24, shape=me.read_shape(tmp_path))
    best = me.largest_batch_size(me.R1_DISTILL_1_5B, 24, max_length=2048, use_4bit=True)
    assert f"{est.total_gb:.1f} GB" in text and f"largest per-device batch at max_length 2048: {best}" in text
    assert len(text.splitlines()) == 4
    with pytest.raises(ValueError, match="lm_head"):
        me.estimate(me.R1_DISTILL_1_5B, batch_size=1, max_length=8, use_4bit=True, lora_target_modules="qkv")


# ----------------------------------------------------------------------------- measured on the CPU

def _measure(spec: dict) -> list[dict]:
    """Run this file as a script (conftest.run_script: a fork of the warm Python, which applies the mmap
    threshold as glibc would at a new process's start; not `make test`'s R1_SFT_TEST_MALLOC); returns one
    record per step. Each step is measured from its own start, so the memory the process held before counts
    in no step."""
    proc = run_script("tests/training/test_memory_estimate.py", json.dumps(spec), timeout=900,
                      env={"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072", **GLIBC_MALLOC})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"measurement failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def measured(tiny_model_dir, tmp_path_factory):
    wide_dir = tmp_path_factory.mktemp("wide") / "wide"
    steps = [[*SMALL, "stock"], [*BIG, "stock"], [*BIG, "chunked"]]
    return _measure({"models": [
        {"name": "stand_in", "path": str(tiny_model_dir), "use_4bit": True, "ckpt": True, "steps": steps},
        {"name": "wide_ckpt", "path": str(wide_dir), "build": WIDE, "use_4bit": False, "ckpt": True,
         "steps": [[*SMALL, "stock"], [*BIG, "stock"]]},
        {"name": "wide_no_ckpt", "path": str(wide_dir), "use_4bit": False, "ckpt": False,
         "steps": [[*SMALL, "stock"], [*BIG, "stock"]]},
    ]})


def _step_gb(shape, batch_length, *, ckpt: bool, chunk: int, use_4bit: bool) -> float:
    batch, length = batch_length
    # The driver labels 7/8 of each sequence (the first length // 8 positions are prompt).
    return me.estimate(shape, batch_size=batch, max_length=length, use_4bit=use_4bit, dtype_bytes=4,
                       dropout_mask_bytes=4, gradient_checkpointing=ckpt, loss_chunk_tokens=chunk,
                       trained_fraction=1 - 1 / 8).step_gb


def _pick(records, model, batch_length, loss):
    return next(r for r in records if r["model"] == model and (r["batch"], r["length"]) == batch_length
                and r["loss"] == loss)


def _compare(records, model, shape, *, ckpt, chunk, use_4bit, loss):
    measured = (_pick(records, model, BIG, loss)["added"] - _pick(records, model, SMALL, "stock")["added"]) / 1e9
    formula = (_step_gb(shape, BIG, ckpt=ckpt, chunk=chunk, use_4bit=use_4bit)
               - _step_gb(shape, SMALL, ckpt=ckpt, chunk=0, use_4bit=use_4bit))
    print(f"[memory] {model} {loss}: measured {measured:.3f} GB, formula {formula:.3f} GB "
          f"({100 * (formula / measured - 1):+.1f}%)")
    return measured, formula


def test_stand_in_stock_loss_matches_the_formula(measured, tiny_model_dir):
    shape = me.read_shape(tiny_model_dir)
    got, want = _compare(measured, "stand_in", shape, ckpt=True, chunk=0, use_4bit=True, loss="stock")
    assert abs(want - got) <= STAND_IN_TOLERANCE * got


def test_stand_in_chunked_loss_matches_the_formula(measured, tiny_model_dir):
    records = [r for r in measured if r["model"] == "stand_in" and r["loss"] == "chunked"]
    if records and records[0].get("skipped"):
        pytest.skip(f"chunked loss not available: {records[0]['skipped']}")
    shape = me.read_shape(tiny_model_dir)
    got, want = _compare(measured, "stand_in", shape, ckpt=True, chunk=256, use_4bit=True, loss="chunked")
    stock, _ = _compare(measured, "stand_in", shape, ckpt=True, chunk=0, use_4bit=True, loss="stock")
    assert got < stock / 3  # issue 11's aim
    assert abs(want - got) <= WIDE_TOLERANCE * got  # a small figure: allocator noise weighs more


@pytest.mark.parametrize("ckpt", [True, False])
def test_activations_match_the_formula(measured, ckpt):
    shape = me.ModelShape(**WIDE)
    model = "wide_ckpt" if ckpt else "wide_no_ckpt"
    got, want = _compare(measured, model, shape, ckpt=ckpt, chunk=0, use_4bit=False, loss="stock")
    assert abs(want - got) <= WIDE_TOLERANCE * got


# ----------------------------------------------------------------------------- the measuring process

def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _build_wide(path: str, shape: dict) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_sft.model.r1_tokenizer import FIRST_ADDED_ID, write_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(**shape, tie_word_embeddings=False, max_position_embeddings=4096,
                         bos_token_id=FIRST_ADDED_ID, eos_token_id=FIRST_ADDED_ID)
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    write_tokenizer(path)


def _measure_main(spec: dict) -> None:
    import gc

    import torch

    from r1_sft.model.lora import setup_lora_model
    from r1_sft.training.checks import training_plan

    torch.set_num_threads(1)
    try:
        from r1_sft.training.loss import model_loss
    except ImportError as exc:
        model_loss, why = None, str(exc)
    records = []
    for m in spec["models"]:
        if "build" in m:
            _build_wide(m["path"], m["build"])
        cfg = sft_config(model_path=m["path"], use_4bit=m["use_4bit"], gradient_checkpointing=m["ckpt"])
        model, _ = setup_lora_model(cfg, training_plan(cfg))
        vocab = model.get_output_embeddings().weight.shape[0]
        for batch, length, loss_kind in m["steps"]:
            record = {"model": m["name"], "batch": batch, "length": length, "loss": loss_kind}
            if loss_kind == "chunked" and model_loss is None:
                records.append({**record, "skipped": why})
                continue
            ids = torch.randint(10, min(vocab, 150000), (batch, length), generator=torch.Generator().manual_seed(0))
            labels = ids.clone()
            labels[:, : length // 8] = -100
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
            gc.collect()
            before = _rss("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak resident set (VmHWM)
            # As Trainer.compute_loss: only the loss outlives the forward pass (not the logits).
            loss = model(**inputs).loss if loss_kind == "stock" else model_loss(model, inputs, chunk_tokens=256).loss
            loss.backward()
            records.append({**record, "before": before, "added": _rss("VmHWM") - before})
            del loss
            model.zero_grad(set_to_none=True)
        del model
        gc.collect()
    print("RESULT " + json.dumps(records), flush=True)


if __name__ == "__main__":
    _measure_main(json.loads(sys.argv[1]))


def test_per_device_memory_shards_what_each_engine_shards():
    shape = me.R1_DISTILL_7B
    est = me.estimate(shape, batch_size=4, max_length=2048, use_4bit=False)
    assert me.per_device(est, shape, "ddp", 8).total_gb == est.total_gb  # DDP: every device holds everything
    zero1, zero2, zero3, fsdp = (me.per_device(est, shape, e, 8) for e in ("zero1", "zero2", "zero3", "fsdp"))
    # ZeRO-1/2 shard only LoRA state (16 B/param -> 9 and 5.5 B at 8 processes): weights stay whole.
    assert zero1.weights_gb == zero2.weights_gb == est.weights_gb
    assert zero1.lora_gb == pytest.approx(est.lora_gb * 9 / 16) and zero2.lora_gb == pytest.approx(est.lora_gb * 5.5 / 16)
    # ZeRO-3 and FSDP shard the 15 GB of bf16 weights too, keeping the layers they gather.
    assert zero3.lora_gb == fsdp.lora_gb == pytest.approx(est.lora_gb / 8)
    assert est.weights_gb / 8 < zero3.weights_gb < fsdp.weights_gb < est.weights_gb / 2
    # Never sharded: what each device computes on its own micro-batch.
    for sharded in (zero1, zero2, zero3, fsdp):
        assert sharded.activations_gb == est.activations_gb and sharded.loss_gb == est.loss_gb
    totals = [me.per_device(est, shape, "fsdp", n).total_gb for n in (1, 2, 4, 8)]
    assert totals == sorted(totals, reverse=True) and totals[0] > est.total_gb  # one process: only the gathering
    with pytest.raises(ValueError, match="unknown engine"):
        me.per_device(est, shape, "zero4", 2)
