"""Engines past one device (r1_sft/training/parallel.py): FSDP2 and DeepSpeed configs checked before any model loads.

FSDP and DeepSpeed run on GPUs only through accelerate 1.15: on this CPU the checks down to the
engine's own config parser are exercised, and the run is refused with one line instead of the
Trainer silently training plain DDP (tests/training/test_fsdp.py runs FSDP2 itself with that gate lifted).
DeepSpeed is optional (requirements-deepspeed.txt): its parser tests run where it is installed,
e.g. ``PYTHONPATH=<pip install --target DIR -r requirements-deepspeed.txt>``.
"""
from __future__ import annotations

import importlib.util
import json

import pytest

import r1_sft.training.parallel as parallel
from r1_sft.cli import UserError
from r1_sft.model.precision import decide_precision
from r1_sft.training.parallel import check_engine, engine_name

from conftest import REPO, run_script, sft_config

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"
ZERO2 = REPO / "configs/deepspeed_zero2.json"


def config(tmp_path, **overrides):
    return sft_config(model_path="model/none", train_file=str(TRAIN), val_file=str(VAL), output_dir=str(tmp_path),
                      **overrides)


def check_on_cpu(cfg) -> None:
    """The engine checks with this machine's plan: the CPU, in float32 unless --precision says otherwise."""
    check_engine(cfg, "cpu", decide_precision("cpu", requested=cfg.precision))


def write(tmp_path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def deepspeed_with(tmp_path, **zero) -> str:
    data = json.loads(ZERO2.read_text())
    data["zero_optimization"].update(zero)
    return write(tmp_path, "ds.json", data)


def test_shipped_configs_name_their_engine(tmp_path):
    for name in ("fsdp2_lora.json", "fsdp2_qlora.json"):
        data = json.loads((REPO / "configs" / name).read_text())
        assert data["version"] == 2 and data["state_dict_type"] == "FULL_STATE_DICT"
        assert data["transformer_layer_cls_to_wrap"] == ["Qwen2DecoderLayer"]
        assert engine_name(config(tmp_path, fsdp_config=str(REPO / "configs" / name))) == "fsdp"
    assert engine_name(config(tmp_path, deepspeed=str(ZERO2))) == "zero2"
    assert engine_name(config(tmp_path)) == "ddp"


@pytest.mark.parametrize("data, message", [
    ({"version": 1}, '"version": 1 is FSDP1'),
    ({"version": 2, "state_dict_type": "SHARDED_STATE_DICT"}, "writes no adapter file"),
    ({"version": 2}, "accelerate 1.15 runs FSDP only on GPUs (on a CPU the Trainer silently trains plain DDP"),
])
def test_fsdp_mistakes_and_this_cpu_are_one_line(tmp_path, monkeypatch, data, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    chunk = 256 if data.pop("chunked", False) else 0
    with pytest.raises(UserError) as err:
        check_on_cpu(config(tmp_path, fsdp_config=write(tmp_path, "fsdp.json", data), loss_chunk_tokens=chunk))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_fsdp_takes_the_chunked_loss_and_zero3_refuses_it_before_loading(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "_needs_gpu", lambda *args: None)  # as on a GPU machine
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_on_cpu(config(tmp_path, fsdp_config=str(REPO / "configs/fsdp2_lora.json"), loss_chunk_tokens=256))
    with pytest.raises(UserError) as err:  # before the deepspeed import: one line with or without the package
        check_on_cpu(config(tmp_path, deepspeed=deepspeed_with(tmp_path, stage=3), loss_chunk_tokens=256))
    assert "ZeRO-3 partitions lm_head" in str(err.value) and "--loss_chunk_tokens 0" in str(err.value)
    assert "\n" not in str(err.value)


def test_fsdp_alone_on_one_process_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "_needs_gpu", lambda *args: None)  # as on a GPU machine
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(UserError, match="FSDP shards over processes; launch with `torchrun --nproc_per_node N"):
        check_on_cpu(config(tmp_path, fsdp_config=str(REPO / "configs/fsdp2_lora.json"), loss_chunk_tokens=0))


def test_deepspeed_without_the_package_is_named_with_its_requirements_file(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    with pytest.raises(UserError, match=r"the deepspeed package is not installed \(pip install -r "
                                        r"requirements-deepspeed.txt\)"):
        check_on_cpu(config(tmp_path, deepspeed=str(ZERO2)))


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="pip install -r requirements-deepspeed.txt")


@needs_deepspeed
@pytest.mark.parametrize("zero, message", [
    ({"stage": 7}, "DeepSpeed rejects the config (ValidationError: 1 validation error for DeepSpeedZeroConfig stage"),
    ({"overlap_comn": True}, "overlap_comn Extra inputs are not permitted"),
])
def test_deepspeed_parses_the_config_itself(tmp_path, zero, message):
    with pytest.raises(UserError) as err:
        check_on_cpu(config(tmp_path, deepspeed=deepspeed_with(tmp_path, **zero)))
    assert message in str(err.value) and "\n" not in str(err.value)


@needs_deepspeed
def test_deepspeed_zero3_with_4bit_is_refused_and_zero2_passes_the_parser(tmp_path):
    with pytest.raises(UserError, match="ZeRO-3 partitions every weight"):
        check_on_cpu(config(tmp_path, deepspeed=deepspeed_with(tmp_path, stage=3), use_4bit=True))
    # The shipped ZeRO-2 config ("auto" values filled as the Trainer fills them) passes DeepSpeed's parser;
    # what stops it here is the CPU.
    with pytest.raises(UserError, match="the Trainer runs DeepSpeed only on GPUs"):
        check_on_cpu(config(tmp_path, deepspeed=str(ZERO2)))


def test_both_engines_at_once_are_refused(tmp_path):
    with pytest.raises(UserError, match="choose one engine"):
        check_on_cpu(config(tmp_path, deepspeed=str(ZERO2), fsdp_config=str(REPO / "configs/fsdp2_lora.json")))


@needs_deepspeed
def test_the_script_refuses_a_rejected_deepspeed_config_before_loading(tiny_model_dir, tmp_path):
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir, "--train_file", TRAIN,
                      "--val_file", VAL, "--output_dir", tmp_path / "out", "--deepspeed",
                      deepspeed_with(tmp_path, stage=7))
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --deepspeed ") and "DeepSpeed rejects" in lines[0]
    assert "[model] loaded" not in proc.stdout


def test_dry_run_plans_fsdp_memory_per_device_on_this_cpu(tiny_model_dir, tmp_path):
    proc = run_script("scripts/train_stf_r1_train_val.py", "--model_path", tiny_model_dir, "--train_file", TRAIN,
                      "--val_file", VAL, "--output_dir", tmp_path / "out", "--fsdp_config",
                      REPO / "configs/fsdp2_lora.json", "--loss_chunk_tokens", "0", "--dry_run")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[memory]")]
    assert any(line.startswith("[memory] fsdp: weights, LoRA weights, gradients and AdamW states sharded")
               for line in lines)
    per_device = next(line for line in lines if "per device at 1/2/4/8 processes" in line)
    totals = [float(x) for x in per_device.split(": ")[1].removesuffix(" GB").split(" / ")]
    assert totals == sorted(totals, reverse=True)
