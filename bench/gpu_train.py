"""Benchmark: training speed and peak memory of the real 1.5B architecture on one GPU.

Builds, offline, a randomly initialised ``Qwen2ForCausalLM`` with DeepSeek-R1-Distill-Qwen-1.5B's
architecture (hidden 1536, 28 layers, 12 heads / 2 KV heads, FFN 8960, vocab 151,936, untied) and
the real R1 tokenizer (``r1_sft.tiny_model.write_tokenizer``) in a temporary folder, then trains it
the way the training script does (``setup_lora_model``, ``make_collator``, ``SFTTrainer`` with the
run's ``loss_chunk_tokens``; gradient checkpointing, LoRA r=16 on all linear layers) for each of

    bf16 LoRA | QLoRA (4-bit NF4)  x  stock loss (full logits) | chunked loss  x  padded | padding-free

on synthetic examples of R1-like lengths. Per configuration, after WARMUP_STEPS untimed steps:
real (non-pad) tokens/s, MFU (FLOPS_PER_TOKEN x tokens/s over the GPU's dense bf16 peak), peak
GPU memory (``torch.cuda.max_memory_allocated``) and, beside it, the memory formula's estimate
for the largest batch seen (``r1_sft.memory_estimate``). A random model trains as fast as the real
one (content does not change the compute). QLoRA needs bitsandbytes; without it those rows say so.

About 3-4 minutes on one H100/H200 (8 configurations, a few steps each). ``--smoke`` runs the same
code on a tiny architecture in seconds on a CPU (the test suite does): its figures mean nothing.

Reads  nothing (builds its model). Writes bench/results/gpu_train.json.

    python bench/gpu_train.py
    python bench/gpu_train.py --smoke --output /tmp/gpu_train.json
"""
from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOPS, no sparsity), matched on the CUDA device name, most specific first.
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("RTX 4090", 165.0), ("L4", 121.0),
                    ("A10", 125.0), ("T4", 65.0))  # T4: fp16 (it has no bf16 units)
REAL_ARCH = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936)
SMOKE_ARCH = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=151936)  # real vocabulary: pad and EOS ids are 151643
METHODS = (("bf16_lora", False), ("qlora", True))
LOSSES = ("stock", "chunked")
BATCHINGS = ("padded", "padding_free")


@dataclass
class Config:
    per_device_train_batch_size: int = 4  # sequences per micro-batch (the training default)
    max_length: int = 2048  # longest synthetic example, tokens (the training default)
    min_length: int = 512  # shortest synthetic example, tokens (lengths uniform in between, like R1 answers)
    prompt_fraction: float = 0.125  # leading share of each example with label -100 (the prompt)
    loss_chunk_tokens: int = 256  # the chunked arms' TrainConfig.loss_chunk_tokens
    warmup_steps: int = 2  # untimed steps per configuration (kernel autotuning, allocator warm-up)
    steps: int = 6  # timed optimizer steps per configuration
    flops_per_token: float = 6.2e9  # training FLOPs per real token of the 1.5B with checkpointing (shared FACTS)
    smoke: bool = False  # tiny architecture, 1 warm-up + 1 timed step, 64 tokens: checks the code path on a CPU
    seed: int = 0  # weights, lengths, token ids
    output: str = "bench/results/gpu_train.json"  # where the figures go


class StepTimer:
    """Trainer callback: wall time and real/computed tokens of the steps after ``warmup`` (CUDA-synchronised)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        self.warmup, self.seconds, self.real, self.computed, self.max_tokens = warmup, 0.0, 0, 0, 0
        self._step_tokens, self._t0, self._hook = [0, 0], 0.0, None
        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                timer._hook = model.register_forward_pre_hook(timer._count, with_kwargs=True)

            def on_step_begin(self, args, state, control, **kwargs):
                timer._sync()
                if state.global_step == timer.warmup:
                    timer._reset_peak()
                timer._step_tokens, timer._t0 = [0, 0], time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer._sync()
                if state.global_step > timer.warmup:  # global_step already counts this step
                    timer.seconds += time.perf_counter() - timer._t0
                    timer.real += timer._step_tokens[0]
                    timer.computed += timer._step_tokens[1]
                    timer.max_tokens = max(timer.max_tokens, timer._step_tokens[1])

            def on_train_end(self, args, state, control, **kwargs):
                if timer._hook is not None:
                    timer._hook.remove()

        self.callback = _Callback()

    def _count(self, module, args, kwargs):
        import torch

        from r1_sft.batching import batch_token_counts

        if module.training and torch.is_grad_enabled():
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                real, computed = batch_token_counts(ids, kwargs.get("attention_mask"))
                self._step_tokens[0] += real
                self._step_tokens[1] += computed

    @staticmethod
    def _sync():
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    @staticmethod
    def _reset_peak():
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()


def bf16_peak_tflops(device_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def build_model(folder: Path, arch: dict, seed: int) -> None:
    """A random bf16 Qwen2 with ``arch`` and the real R1 tokenizer, saved as a model folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1_sft.tiny_model import FIRST_ADDED_ID, write_tokenizer

    config = Qwen2Config(**arch, tie_word_embeddings=False, max_position_embeddings=131072, rope_theta=10000.0,
                         rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=FIRST_ADDED_ID,
                         eos_token_id=FIRST_ADDED_ID, initializer_range=0.02)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 1.8B weights on a CPU is slow
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synthetic_examples(cfg: Config, count: int, vocab: int, eos_id: int) -> list[dict]:
    rng = random.Random(cfg.seed)
    examples = []
    for _ in range(count):
        length = rng.randint(cfg.min_length, cfg.max_length)
        prompt = max(1, int(length * cfg.prompt_fraction))
        ids = [rng.randrange(10, min(vocab, 151643)) for _ in range(length - 1)] + [eos_id]
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "length": length})
    return examples


def run_config(cfg: Config, model_dir: Path, arch: dict, method: str, use_4bit: bool, loss: str, batching: str,
               examples: list[dict], peak_tflops: float | None) -> dict:
    import torch
    from transformers import TrainingArguments, set_seed

    from r1_sft import memory_estimate
    from r1_sft.batching import LENGTH_GROUPED, PADDING_FREE, attn_implementation_of, make_collator
    from r1_sft.lora import setup_lora_model
    from r1_sft.sft_trainer import SFTTrainer
    from r1_sft.training import compute_precision

    row = {"method": method, "loss": loss, "batching": batching}
    chunk = cfg.loss_chunk_tokens if loss == "chunked" else 0
    set_seed(cfg.seed)
    # The training scripts' default LoRA recipe (scripts/train_stf_r1_train_val.py, TrainConfig).
    model, tokenizer = setup_lora_model(SimpleNamespace(
        model_path=str(model_dir), use_4bit=use_4bit, gradient_checkpointing=True, precision="auto", device="auto",
        lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules="all-linear"))
    collator, sampling = make_collator(tokenizer, model, strategy=PADDING_FREE if batching == "padding_free"
                                       else LENGTH_GROUPED)
    timer = StepTimer(cfg.warmup_steps)
    precision = compute_precision()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=cfg.per_device_train_batch_size,
                                 max_steps=cfg.warmup_steps + cfg.steps, logging_steps=10 ** 6, save_strategy="no",
                                 report_to="none", train_sampling_strategy=sampling, length_column_name="length",
                                 remove_unused_columns=False, seed=cfg.seed, learning_rate=1e-4, disable_tqdm=True,
                                 use_cpu=not torch.cuda.is_available(), **precision)
        trainer = SFTTrainer(model=model, args=args, data_collator=collator, train_dataset=examples,
                             callbacks=[timer.callback], loss_chunk_tokens=chunk)
        trainer.train()
    dtype_bytes = 2 if (precision["bf16"] or precision["fp16"]) else 4
    est = memory_estimate.estimate(memory_estimate.ModelShape(**arch), batch_size=1,
                                   max_length=max(timer.max_tokens, 1), use_4bit=use_4bit, dtype_bytes=dtype_bytes,
                                   dropout_mask_bytes=1 if torch.cuda.is_available() else dtype_bytes,
                                   loss_chunk_tokens=chunk, trained_fraction=1 - cfg.prompt_fraction)
    tokens_per_s = timer.real / timer.seconds if timer.seconds > 0 else None
    on_gpu = torch.cuda.is_available()
    row.update({
        "collator": type(collator).__name__, "sampling": sampling, "attn_implementation": attn_implementation_of(model),
        "precision": "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32",
        "timed_steps": cfg.steps, "real_tokens": timer.real, "computed_tokens": timer.computed,
        "padding_fraction": round(1 - timer.real / timer.computed, 4) if timer.computed else None,
        "seconds": round(timer.seconds, 3), "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "mfu": round(tokens_per_s * cfg.flops_per_token / (peak_tflops * 1e12), 4)
        if tokens_per_s and peak_tflops else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if on_gpu else None,
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3) if on_gpu else None,
        "largest_step_tokens": timer.max_tokens,
        "estimate_allocated_gb": round(est.allocated_gb, 3),  # compare with peak_memory_gb
        "estimate_total_gb": round(est.total_gb, 3),  # + CUDA context and slack: compare with the GPU's size
        "skipped": None,
    })
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return row


def describe_row(row: dict) -> str:
    name = f"{row['method']:>9} {row['loss']:>7} {row['batching']:>12}"
    if row.get("skipped"):
        return f"[bench] {name}: skipped ({row['skipped']})"
    mem = f"peak {row['peak_memory_gb']} GB (formula {row['estimate_allocated_gb']} GB)" \
        if row["peak_memory_gb"] is not None else f"formula {row['estimate_allocated_gb']} GB (no GPU)"
    mfu = f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
    return f"[bench] {name}: {row['tokens_per_s']} real tokens/s{mfu}, padding {row['padding_fraction']}, {mem}"


@cli_main
def main(cfg: Config):
    import importlib.util

    import torch

    if cfg.smoke:
        cfg.warmup_steps, cfg.steps, cfg.max_length, cfg.min_length = 1, 1, 64, 16
        cfg.per_device_train_batch_size = min(cfg.per_device_train_batch_size, 2)
        cfg.loss_chunk_tokens = min(cfg.loss_chunk_tokens, 32)
    arch = SMOKE_ARCH if cfg.smoke else REAL_ARCH
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = bf16_peak_tflops(device) if torch.cuda.is_available() else None
    print(f"[bench] device {device}; bf16 peak {peak} TFLOPS; architecture {arch}", flush=True)
    examples = synthetic_examples(cfg, cfg.per_device_train_batch_size * (cfg.warmup_steps + cfg.steps),
                                  arch["vocab_size"], eos_id=151643)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_train_model_") as tmp:
        model_dir = Path(tmp)
        build_model(model_dir, arch, cfg.seed)
        print(f"[bench] built a random {arch['num_hidden_layers']}-layer model in {model_dir}", flush=True)
        for method, use_4bit in METHODS:
            for loss in LOSSES:
                for batching in BATCHINGS:
                    if use_4bit and importlib.util.find_spec("bitsandbytes") is None:
                        row = {"method": method, "loss": loss, "batching": batching,
                               "skipped": "bitsandbytes is not installed"}
                    else:
                        row = run_config(cfg, model_dir, arch, method, use_4bit, loss, batching, examples, peak)
                    print(describe_row(row), flush=True)
                    rows.append(row)
    record = {"note": ("smoke run on a tiny architecture: checks the code path, the figures mean nothing"
                       if cfg.smoke else "random weights with the real 1.5B architecture: real speed and memory"),
              "device": device, "bf16_peak_tflops": peak, "smoke": cfg.smoke, "architecture": arch,
              "flops_per_token": cfg.flops_per_token, "config": asdict(cfg), "results": rows, "run": run_info(cfg)}
    out = repo_path(cfg.output)
    atomic_write_text(out, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    print(f"[write] {display_path(out)} ({len(rows)} configurations)", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
