"""scripts/merge_lora.py: adapter + base -> one standalone model folder that loads and generates.

The adapter is made here with random (non-zero) LoRA weights, so the merge visibly changes the
model and the logits comparison means something; no training run is needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_script, save_random_adapter

SCRIPT = "scripts/merge_lora.py"
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    out = save_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "best_model", r=8, alpha=16,
                              targets="all-linear")
    return out


def prompt_ids(tokenizer) -> torch.Tensor:
    from r1_sft.r1_format import encode_prompt

    return torch.tensor([encode_prompt(tokenizer, [{"role": "user", "content": "高血压患者平时饮食要注意什么？"}])])


def test_merged_folder_loads_generates_and_matches_the_adapter(adapter_dir, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from r1_sft.model.loading import load_model

    out = tmp_path / "merged"
    proc = run_script(SCRIPT, "--adapter", adapter_dir, "--output_dir", out, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "[write]" in proc.stdout and "float32" in proc.stdout  # no GPU here: float32

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names, names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["Qwen2ForCausalLM"]
    assert json.loads((out / "generation_config.json").read_text())["temperature"] == 0.6

    # Plain transformers, no peft, no project code: what vLLM and others will do.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = prompt_ids(tokenizer)
    generated = merged.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    assert generated.shape[1] > ids.shape[1]

    adapter_model, _ = load_model(adapter_dir, device="cpu", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        merged_logits = merged(ids).logits
        adapter_logits = adapter_model(input_ids=ids).logits
        base_logits = base(ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)  # the adapter really was merged in


def test_a_folder_that_is_not_an_adapter_is_refused(tiny_model_dir, tmp_path):
    proc = run_script(SCRIPT, "--adapter", tiny_model_dir, "--output_dir", tmp_path / "merged", env=ENV)
    assert proc.returncode == 2 and "not a LoRA adapter folder" in proc.stderr
    assert not (tmp_path / "merged").exists()
