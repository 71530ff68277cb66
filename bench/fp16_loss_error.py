"""Benchmark: LoRA gradient error of the fused chunked loss and the stock loss under fp16, against fp32.

What a T4 user's fp16 run does to one batch: fp16 weights, fp32 LoRA adapters on the attention and on
lm_head, the forward under fp16 autocast, the loss multiplied by a GradScaler's scale (65,536 at the
start) and the gradients divided by it. The loss denominator ``N`` is the Trainer's
``num_items_in_batch``: trained tokens over the whole accumulated, multi-GPU batch, so it is far
larger than one micro-batch's tokens. Each arm's LoRA gradients are compared with the same model's
fp32 gradients (same weights, no autocast, no scale).

Reported per (arm, N): how many LoRA tensors have a non-finite gradient, and the largest relative
error ``||g - g_fp32|| / ||g_fp32||`` over the finite ones.

Arms: ``stock`` (transformers' causal-LM loss on full logits), ``fused`` (``r1_sft.training.loss``,
the default). To compare with an older loss, run this file from that checkout (``git worktree add``).

Example:
    python bench/fp16_loss_error.py --model_path model/tiny_r1

Writes bench/results/fp16_loss_error.json (table, settings, git commit).
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # base model folder (the 151,936-row stand-in `make demo` builds)
    denominators: str = "40,8192,65536"  # loss denominators N (num_items_in_batch), comma-separated
    loss_scale: float = 65536.0  # the GradScaler's scale (torch's default init_scale)
    batch: int = 2  # sequences in the micro-batch
    seq_len: int = 21  # tokens per sequence (20 trained positions each: N=40 is the batch itself)
    lora_targets: str = "q_proj,v_proj,lm_head"  # LoRA target modules
    seeds: int = 3  # random batches; the largest error over them is reported
    output: str = "bench/results/fp16_loss_error.json"  # where the figures go


def _lora(base, targets, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # not zero: every adapter tensor gets a real gradient
            torch.nn.init.normal_(p, std=0.02)
    return model


def _grads(model, batch, arm: str, n: int, scale: float, fp16: bool, chunked_loss_fn):
    import torch

    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=torch.float16) if fp16 else torch.autocast("cpu", enabled=False)
    if arm == "stock":
        with ctx:
            loss = model(**batch, num_items_in_batch=torch.tensor(n)).loss
    else:
        inner = model.get_base_model()
        kept = {}
        handle = inner.get_decoder().register_forward_hook(lambda m, a, o: kept.update(h=o.last_hidden_state))
        with ctx:
            model(input_ids=batch["input_ids"], logits_to_keep=1)
        handle.remove()
        loss = chunked_loss_fn(kept["h"], inner.get_output_embeddings(), batch["labels"], chunk_tokens=16,
                               num_items_in_batch=n).loss
    scale_t = torch.tensor(scale, dtype=torch.float32)
    (loss.float() * scale_t).backward()  # what GradScaler.scale(loss).backward() does
    inv = (1.0 / scale_t)
    return {name: (p.grad.float() * inv) for name, p in model.named_parameters() if p.requires_grad}


def main(cfg: Config) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from r1_sft.training.loss import chunked_loss

    model_dir = Path(cfg.model_path) if Path(cfg.model_path).is_absolute() else ROOT / cfg.model_path
    print(f"[fp16] {model_dir}: LoRA on {cfg.lora_targets}, scale {cfg.loss_scale:g}, "
          f"{cfg.batch} x {cfg.seq_len} tokens, {cfg.seeds} seeds", flush=True)
    targets = [t.strip() for t in cfg.lora_targets.split(",")]
    base16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float16)
    rows = []
    for n in [int(x) for x in cfg.denominators.split(",")]:
        for arm in ("stock", "fused"):
            worst, bad = 0.0, 0
            for seed in range(cfg.seeds):
                m16 = _lora(copy.deepcopy(base16), targets, seed)
                m32 = copy.deepcopy(m16).float()
                gen = torch.Generator().manual_seed(100 + seed)
                ids = torch.randint(0, 151000, (cfg.batch, cfg.seq_len), generator=gen)
                batch = {"input_ids": ids, "labels": ids.clone()}
                g16 = _grads(m16, batch, arm, n, cfg.loss_scale, True, chunked_loss)
                g32 = _grads(m32, batch, arm, n, 1.0, False, chunked_loss)
                for name, g in g16.items():
                    if not torch.isfinite(g).all():
                        bad += 1
                        continue
                    ref = g32[name]
                    worst = max(worst, float((g - ref).norm() / ref.norm().clamp_min(1e-30)))
            total = len(g16) * cfg.seeds
            rows.append({"arm": arm, "N": n, "nonfinite_tensors": f"{bad}/{total}", "max_rel_error": worst})
            print(f"[fp16] N={n:>6} {arm:>5}: non-finite LoRA grads {bad}/{total}, "
                  f"max relative error {100 * worst:.2f}%", flush=True)
    return {"rows": rows, "settings": cfg.__dict__, "torch": torch.__version__}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from r1_sft.cli import parse_config
    from r1_sft.jsonl_io import atomic_write_text
    from r1_sft.run_info import git_commit

    config = parse_config(Config)
    report = main(config)
    report["git_commit"] = git_commit()
    out = ROOT / config.output
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(f"[write] {out}")
