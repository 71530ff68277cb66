"""Benchmark: training speed and peak memory of the real 1.5B architecture on one GPU.

Builds, offline, a randomly initialised ``Qwen2ForCausalLM`` with DeepSeek-R1-Distill-Qwen-1.5B's
architecture and the real R1 tokenizer (``r1_sft.model.random_model.build_random_model``) in a temporary
folder, then trains it the way the training script does (``setup_lora_model``, ``make_collator``,
``SFTTrainer`` with the run's ``loss_chunk_tokens``; gradient checkpointing, LoRA r=16 on all
linear layers) for each of

    bf16 LoRA | QLoRA (4-bit NF4)  x  stock loss (full logits) | chunked loss  x  padded | padding-free

on synthetic examples of R1-like lengths. Per configuration, after WARMUP_STEPS untimed steps:
real (non-pad) tokens/s, model FLOP/s and MFU, peak GPU memory (``torch.cuda.max_memory_allocated``)
and, beside it, the memory formula's estimate for the largest batch seen (``r1_sft.training.memory_estimate``).
A random model trains as fast as the real one (content does not change the compute).

Each configuration is isolated: an out-of-memory or any other error is recorded in its row and the
run goes on; the JSON is rewritten (atomically) after every row, so a crash keeps the rows before
it. Before each row the previous one's model and trainer are freed (``gc.collect``,
``empty_cache``) and the peak counter reset: ``memory_before_gb`` shows what was still allocated.

FLOPs (stated in the JSON as ``flops_formula``), per real token of a sequence of length T, with
N = the decoder blocks' linear weights (q, k, v, o, gate, up, down), H = lm_head (hidden x vocab),
L layers of width d:
    (4 + 2c) N  +  4 H  +  (12 + 4c) L d T
LoRA trains no base weight: forward 2N, backward 2N (the input gradients only), c = 1 adds the
forward recomputed by gradient checkpointing (the blocks only: lm_head is outside them); the
attention term counts QK^T and AV (4 L d T forward, PaLM's convention: no causal halving), their
backward (x2) and recompute. LoRA's own matmuls (r=16: under 1%) and the embedding lookup are not
counted. MFU = model FLOP/s over the GPU's dense bf16 peak, looked up by its exact CUDA name
(H100 SXM 989 vs H100 PCIe 756 TFLOP/s, L4 vs L40/L40S); a device not in the table gets no MFU
rather than a wrong one (``--peak_tflops`` gives it).

Planned for 3-4 minutes on one H100/H200 (8 configurations, a few steps each; not yet run on a GPU).
``--smoke`` runs the same code on a tiny architecture in seconds on a CPU (the test suite does, through
bench/gpu_check.sh --smoke): its figures mean nothing.

Reads  nothing (builds its model). Writes bench/results/gpu_train.json.

    python bench/gpu_train.py
    python bench/gpu_train.py --smoke --output /tmp/gpu_train.json
"""
from __future__ import annotations

import gc
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
from r1_sft.model.random_model import REAL_1_5B_ARCH, TINY_RANDOM_ARCH, build_random_model  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402

# Dense bf16 tensor-core peaks in TFLOP/s (no sparsity), by the exact name torch.cuda.get_device_name gives.
# Only cards whose figure is certain; anything else gets no MFU.
BF16_PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H200": 989.4,  # H200 SXM: the H100 SXM's compute, more and faster memory
    "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0, "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L4": 121.0, "NVIDIA L40": 181.0, "NVIDIA L40S": 362.0,
    "NVIDIA A10": 125.0,
    "NVIDIA GeForce RTX 4090": 165.2,  # with fp32 accumulation, as bf16 training uses
    "Tesla T4": 65.0,  # fp16: it has no bf16 units and trains in fp16
}
REAL_ARCH = REAL_1_5B_ARCH
SMOKE_ARCH = TINY_RANDOM_ARCH
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
    peak_tflops: float = 0.0  # the GPU's dense bf16 peak, TFLOP/s; 0 = look its exact name up (unknown: no MFU)
    smoke: bool = False  # tiny architecture, 1 warm-up + 1 timed step, 64 tokens: checks the code path on a CPU
    seed: int = 0  # weights, lengths, token ids
    output: str = "bench/results/gpu_train.json"  # where the figures go


class StepTimer:
    """Trainer callback: wall time, real/computed tokens and the sum of squared real sequence lengths
    (the attention FLOPs) of the steps after ``warmup`` (CUDA-synchronised)."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        self.warmup, self.seconds, self.real, self.computed, self.max_tokens = warmup, 0.0, 0, 0, 0
        self.squared_lengths = 0  # sum over timed sequences of T^2: the attention term of the FLOP count
        self._step = [0, 0, 0]  # this step's real tokens, computed tokens, sum of T^2
        self._t0, self._hook = 0.0, None
        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                timer._hook = model.register_forward_pre_hook(timer._count, with_kwargs=True)

            def on_step_begin(self, args, state, control, **kwargs):
                timer._sync()
                if state.global_step == timer.warmup:
                    timer._reset_peak()
                timer._step, timer._t0 = [0, 0, 0], time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer._sync()
                if state.global_step > timer.warmup:  # global_step already counts this step
                    timer.seconds += time.perf_counter() - timer._t0
                    timer.real += timer._step[0]
                    timer.computed += timer._step[1]
                    timer.squared_lengths += timer._step[2]
                    timer.max_tokens = max(timer.max_tokens, timer._step[1])

            def on_train_end(self, args, state, control, **kwargs):
                if timer._hook is not None:
                    timer._hook.remove()

        self.callback = _Callback()

    def _count(self, module, args, kwargs):
        import torch

        from r1_sft.training.batching import batch_token_counts

        if module.training and torch.is_grad_enabled():
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                real, computed = batch_token_counts(ids, kwargs.get("attention_mask"))
                lengths = sequence_lengths(ids, kwargs.get("attention_mask"), kwargs.get("position_ids"))
                self._step[0] += real
                self._step[1] += computed
                self._step[2] += sum(t * t for t in lengths)

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


def sequence_lengths(input_ids, attention_mask, position_ids) -> list[int]:
    """Real length of every sequence in a batch: mask rows (padded) or position_ids restarts (padding-free)."""
    if attention_mask is not None and attention_mask.dim() == 2:
        return [int(n) for n in attention_mask.sum(dim=1).tolist()]
    if position_ids is not None:
        starts = (position_ids.reshape(-1) == 0).nonzero().reshape(-1).tolist() + [position_ids.numel()]
        return [b - a for a, b in zip(starts, starts[1:]) if b > a]
    return [input_ids.shape[-1]] * (input_ids.numel() // max(input_ids.shape[-1], 1))


def peak_tflops_of(device_name: str, override: float = 0.0) -> float | None:
    """Dense bf16 peak by exact device name; None for a device not in the table (no MFU then)."""
    return override if override > 0 else BF16_PEAK_TFLOPS.get(device_name.strip())


def linear_weights(arch: dict) -> tuple[int, int]:
    """``(N, H)``: the decoder blocks' linear weights and lm_head's, from the architecture."""
    d, ffn, layers = arch["hidden_size"], arch["intermediate_size"], arch["num_hidden_layers"]
    kv = d // arch["num_attention_heads"] * arch["num_key_value_heads"]
    per_layer = d * d * 2 + d * kv * 2 + d * ffn * 3  # q, o; k, v; gate, up, down
    return layers * per_layer, d * arch["vocab_size"]


FLOPS_FORMULA = ("per real token of a length-T sequence: (4 + 2c) N + 4 H + (12 + 4c) L d T; N = decoder linear "
                 "weights, H = lm_head weights, L layers of width d, c = 1 with gradient checkpointing "
                 "(LoRA: no base-weight gradients; LoRA matmuls and embedding lookups not counted)")


def model_flops(arch: dict, real_tokens: int, squared_lengths: int, checkpointing: bool = True) -> float:
    """Training FLOPs of ``real_tokens`` in sequences whose squared lengths sum to ``squared_lengths``."""
    n, h = linear_weights(arch)
    c = 1 if checkpointing else 0
    attention = (12 + 4 * c) * arch["num_hidden_layers"] * arch["hidden_size"]
    return ((4 + 2 * c) * n + 4 * h) * real_tokens + attention * squared_lengths


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
               examples: list[dict], peak_tflops: float | None, row: dict) -> None:
    """Train one configuration and fill ``row`` with its figures (the caller frees the memory)."""
    import torch
    from transformers import TrainingArguments, set_seed

    from r1_sft.model.lora import setup_lora_model
    from r1_sft.model.plan import make_plan
    from r1_sft.training import memory_estimate
    from r1_sft.training.batching import LENGTH_GROUPED, PADDING_FREE, attn_implementation_of, make_collator
    from r1_sft.training.trainer import SFTTrainer

    chunk = cfg.loss_chunk_tokens if loss == "chunked" else 0
    set_seed(cfg.seed)
    # The training scripts' default LoRA recipe (scripts/train_stf_r1_train_val.py, TrainConfig).
    plan = make_plan(model_dir, use_4bit=use_4bit, for_training=True)
    model, tokenizer = setup_lora_model(SimpleNamespace(
        gradient_checkpointing=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules="all-linear"), plan)
    collator, sampling = make_collator(tokenizer, model, strategy=PADDING_FREE if batching == "padding_free"
                                       else LENGTH_GROUPED)
    timer = StepTimer(cfg.warmup_steps)
    precision = plan.precision.trainer_flags
    on_gpu = torch.cuda.is_available()
    row.update({"collator": type(collator).__name__, "sampling": sampling,
                "attn_implementation": attn_implementation_of(model),
                "precision": "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32"})
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=cfg.per_device_train_batch_size,
                                 max_steps=cfg.warmup_steps + cfg.steps, logging_steps=10 ** 6, save_strategy="no",
                                 report_to="none", train_sampling_strategy=sampling, length_column_name="length",
                                 remove_unused_columns=False, seed=cfg.seed, learning_rate=1e-4, disable_tqdm=True,
                                 use_cpu=not on_gpu, **precision)
        trainer = SFTTrainer(model=model, args=args, data_collator=collator, train_dataset=examples,
                             callbacks=[timer.callback], loss_chunk_tokens=chunk)
        trainer.train()
    dtype_bytes = 2 if (precision["bf16"] or precision["fp16"]) else 4
    est = memory_estimate.estimate(memory_estimate.ModelShape(**arch), batch_size=1,
                                   max_length=max(timer.max_tokens, 1), use_4bit=use_4bit, dtype_bytes=dtype_bytes,
                                   dropout_mask_bytes=1 if on_gpu else dtype_bytes,
                                   loss_chunk_tokens=chunk, trained_fraction=1 - cfg.prompt_fraction)
    seconds = timer.seconds
    tokens_per_s = timer.real / seconds if seconds > 0 else None
    flops = model_flops(arch, timer.real, timer.squared_lengths)
    flops_per_s = flops / seconds if seconds > 0 else None
    row.update({
        "timed_steps": cfg.steps, "real_tokens": timer.real, "computed_tokens": timer.computed,
        "padding_fraction": round(1 - timer.real / timer.computed, 4) if timer.computed else None,
        "seconds": round(seconds, 3), "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "flops_per_token": round(flops / timer.real) if timer.real else None,
        "tflops_per_s": float(f"{flops_per_s / 1e12:.4g}") if flops_per_s else None,
        "mfu": round(flops_per_s / (peak_tflops * 1e12), 4) if flops_per_s and peak_tflops else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if on_gpu else None,
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 3) if on_gpu else None,
        "largest_step_tokens": timer.max_tokens,
        "estimate_allocated_gb": round(est.allocated_gb, 3),  # compare with peak_memory_gb
        "estimate_total_gb": round(est.total_gb, 3),  # + CUDA context and slack: compare with the GPU's size
    })


def release_memory() -> float | None:
    """Free what the previous row left (its objects are gone by now) and reset the peak; GB still allocated."""
    import torch

    gc.collect()
    if not torch.cuda.is_available():
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / 1e9, 3)


def isolated_row(cfg: Config, model_dir: Path, arch: dict, method: str, use_4bit: bool, loss: str, batching: str,
                 examples: list[dict], peak: float | None) -> dict:
    """One configuration; an out-of-memory or any other error becomes the row's ``error`` and the run goes on."""
    import importlib.util
    import traceback

    import torch

    row = {"method": method, "loss": loss, "batching": batching, "skipped": None, "error": None,
           "memory_before_gb": release_memory()}
    if use_4bit and importlib.util.find_spec("bitsandbytes") is None:
        row["skipped"] = "bitsandbytes is not installed"
        return row
    try:
        run_config(cfg, model_dir, arch, method, use_4bit, loss, batching, examples, peak, row)
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0]}"
    except Exception as exc:  # noqa: BLE001 - any failure is this row's result, not the end of the benchmark
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc()
    return row


def describe_row(row: dict) -> str:
    name = f"{row['method']:>9} {row['loss']:>7} {row['batching']:>12}"
    if row.get("skipped"):
        return f"[bench] {name}: skipped ({row['skipped']})"
    if row.get("error"):
        return f"[bench] {name}: FAILED ({row['error']})"
    mem = f"peak {row['peak_memory_gb']} GB (formula {row['estimate_allocated_gb']} GB)" \
        if row["peak_memory_gb"] is not None else f"formula {row['estimate_allocated_gb']} GB (no GPU)"
    mfu = f", MFU {100 * row['mfu']:.1f}%" if row["mfu"] is not None else ""
    return (f"[bench] {name}: {row['tokens_per_s']} real tokens/s, {row['tflops_per_s']} TFLOP/s{mfu}, "
            f"padding {row['padding_fraction']}, {mem}")


@cli_main
def main(cfg: Config):
    import torch

    if cfg.smoke:
        cfg.warmup_steps, cfg.steps, cfg.max_length, cfg.min_length = 1, 1, 64, 16
        cfg.per_device_train_batch_size = min(cfg.per_device_train_batch_size, 2)
        cfg.loss_chunk_tokens = min(cfg.loss_chunk_tokens, 32)
    arch = SMOKE_ARCH if cfg.smoke else REAL_ARCH
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = peak_tflops_of(device, cfg.peak_tflops) if torch.cuda.is_available() else None
    n, h = linear_weights(arch)
    peak_text = f"{peak} TFLOP/s" if peak else "unknown (no MFU; --peak_tflops gives it)"
    print(f"[bench] device {device}; dense bf16 peak {peak_text}; architecture {arch}", flush=True)
    print(f"[bench] FLOPs {FLOPS_FORMULA}; here N = {n:,}, H = {h:,}", flush=True)
    examples = synthetic_examples(cfg, cfg.per_device_train_batch_size * (cfg.warmup_steps + cfg.steps),
                                  arch["vocab_size"], eos_id=151643)
    out = repo_path(cfg.output)
    record = {"note": ("smoke run on a tiny architecture: checks the code path, the figures mean nothing"
                       if cfg.smoke else "random weights with the real 1.5B architecture: real speed and memory"),
              "device": device, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "bf16_peak_tflops": peak, "smoke": cfg.smoke, "architecture": arch,
              "flops_formula": FLOPS_FORMULA, "decoder_linear_weights": n, "lm_head_weights": h,
              "config": asdict(cfg), "results": [], "complete": False, "run": run_info(cfg)}
    with tempfile.TemporaryDirectory(prefix="gpu_train_model_") as tmp:
        model_dir = build_random_model(Path(tmp), arch, cfg.seed)
        print(f"[bench] built a random {arch['num_hidden_layers']}-layer model in {model_dir}", flush=True)
        for method, use_4bit in METHODS:
            for loss in LOSSES:
                for batching in BATCHINGS:
                    row = isolated_row(cfg, model_dir, arch, method, use_4bit, loss, batching, examples, peak)
                    print(describe_row(row), flush=True)
                    record["results"].append(row)
                    atomic_write_text(out, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    release_memory()
    record["complete"] = True
    atomic_write_text(out, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    failed = sum(1 for r in record["results"] if r["error"])
    print(f"[write] {display_path(out)} ({len(record['results'])} configurations, {failed} failed)", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
