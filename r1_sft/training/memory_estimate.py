"""Peak GPU memory of a (Q)LoRA training run, estimated from config.json before any model loads.

The formula, for one device and one micro-batch of ``B`` sequences of ``T`` tokens (the worst case:
every sequence ``max_length`` long; padding-free batches hold the same count of real tokens)::

    peak = weights + lora_state + activations_stash + max(loss, layer_backward) + overhead

* **weights**: every parameter in the weight dtype (``d`` bytes: 2 for bf16/fp16, 4 for fp32 as on
  CPU). With ``use_4bit`` the decoder body's linear weights are NF4 with double quantization:
  0.5 byte/param + an 8-bit absmax per 64-weight block + an fp32 absmax per 256 blocks
  (0.5159 byte/param); biases and norms stay in ``d``, embed_tokens and lm_head stay in ``d``
  (not fp32: the trainer does not upcast them).
* **lora_state**: every LoRA weight in fp32 with its fp32 gradient and AdamW's two moments:
  16 bytes per LoRA parameter, ``r * (in + out)`` parameters per targeted linear layer
  ("all-linear" = q/k/v/o/gate/up/down_proj; lm_head only if named).
* **activations** (bytes per token per decoder layer, ``h`` hidden, ``f`` FFN, ``q = heads*head_dim``,
  ``k = kv_heads*head_dim``, flash attention or SDPA's flash/memory-efficient kernels with
  grouped-query attention: no T^2 term, K/V not repeated)::

        two RMSNorms (fp32 copy of the input + rsqrt)        2 * (4h + 4)
        attention saved q, k, v, output, logsumexp            d * (2q + 2k) + 4 * heads
        MLP: gate output, SiLU(gate), up output               3 * d * f
        per LoRA layer: its input + the dropout mask (1 byte
          on CUDA; a mask of the input's dtype on CPU), rank r   in * (d + m) + r * d
        frozen base linears (bf16 or 4-bit) save nothing

  For the 1.5B in bf16 with LoRA on all linear layers that is about 125 KB per token per layer.
  Without gradient checkpointing every layer keeps that (``stash = L * per_layer * B*T``). With
  checkpointing (HF, per decoder layer) only each layer's input is kept (``stash = L * h * d * B*T``),
  and backward recomputes one layer at a time: ``layer_backward`` = that layer's activations +
  its gradients in flight (``(3f * d + 16h)`` bytes per token) + a dequantised 4-bit weight
  (the largest linear, twice) under QLoRA.
* **loss**: the cross-entropy's peak is three fp32 copies of its logits (the log-softmax output
  it saves, the gradient arriving from the NLL, the gradient it produces), 12 bytes per logit.
  Stock (full-vocabulary) loss: every position, ``B*T x vocab`` logits: 15 GB for the 1.5B at
  4 x 2048. Chunked loss (``loss_chunk_tokens``): one chunk's logits, ``chunk x vocab``, whatever the
  batch, plus the gathered hidden states of the trained positions and their gradient (the fused loss
  computes it in the forward pass and keeps it for backward; no second lm_head pass). The loss
  peak (start of backward) and the recomputed layer (later) do not coincide: the larger counts.
* **overhead**: a fixed 1.0 GB for the CUDA context, cuBLAS workspaces and allocator slack (the
  CUDA context is not in ``torch.cuda.max_memory_allocated``; ``allocated_gb`` leaves it out).

Checked by ``tests/training/test_memory_estimate.py`` against the measured peak RSS of one CPU training step
(fp32) on the 151,936-row stand-in; not yet against a GPU measurement (``bench/gpu_train.py``
prints both side by side).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from r1_sft.training.loss import DEFAULT_CHUNK_TOKENS

GB = 1e9  # decimal gigabytes, as GPU vendors count
NF4_DOUBLE_QUANT_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + 8-bit absmax/64 + fp32/16384
LORA_BYTES_PER_PARAM = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
LOSS_BYTES_PER_LOGIT = 12  # three fp32 copies alive in the cross-entropy's backward
CUDA_OVERHEAD_GB = 1.0  # CUDA context + cuBLAS workspace + allocator slack
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields the estimate needs (Qwen2 / Llama-style decoder)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # default hidden_size // num_attention_heads
    attention_bias: bool = True  # Qwen2: q/k/v have biases

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                               "vocab_size") if k not in config]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)} (not a decoder-only causal LM config?)")
        return cls(hidden_size=config["hidden_size"], num_hidden_layers=config["num_hidden_layers"],
                   num_attention_heads=config["num_attention_heads"],
                   num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
                   intermediate_size=config["intermediate_size"], vocab_size=config["vocab_size"],
                   tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                   head_dim=config.get("head_dim"),
                   attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")))

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, f = self.hidden_size, self.intermediate_size
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}

    def body_linear_params(self) -> int:
        return self.num_hidden_layers * sum(i * o for i, o in self.linear_shapes().values())

    def small_params(self) -> int:
        """Biases and norm weights: never quantised."""
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        return self.num_hidden_layers * (bias + 2 * self.hidden_size) + self.hidden_size

    def embedding_params(self) -> int:
        """embed_tokens + lm_head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def parameters(self) -> int:
        return self.body_linear_params() + self.small_params() + self.embedding_params()


# The real models (config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B and -7B).
R1_DISTILL_1_5B = ModelShape(1536, 28, 12, 2, 8960, 151936)
R1_DISTILL_7B = ModelShape(3584, 28, 28, 4, 18944, 152064)


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak GPU memory of one training step, in GB (1e9 bytes), by part."""

    weights_gb: float  # base model weights (4-bit body + compute-dtype embeddings, or all in the dtype)
    lora_gb: float  # LoRA weights + grads + AdamW states (fp32, 16 B/param)
    activations_gb: float  # saved activations (checkpointed layer inputs, or every layer's)
    layer_backward_gb: float  # one recomputed layer + its gradients in flight (+ 4-bit dequant), checkpointing
    loss_gb: float  # cross-entropy logits peak (full batch for the stock loss, one chunk for chunked)
    overhead_gb: float  # CUDA context, workspaces, allocator slack
    total_gb: float  # weights + lora + activations + max(loss, layer_backward) + overhead
    batch_size: int
    max_length: int
    tokens: int  # tokens per micro-batch = batch_size * max_length
    lora_parameters: int
    settings: dict  # the inputs, for the printed block

    @property
    def step_gb(self) -> float:
        """What one training step adds on top of the loaded model and optimizer state."""
        return self.activations_gb + max(self.loss_gb, self.layer_backward_gb)

    @property
    def allocated_gb(self) -> float:
        """The part ``torch.cuda.max_memory_allocated`` sees (no CUDA context)."""
        return self.total_gb - self.overhead_gb


def _targets(target_modules: str | Sequence[str]) -> list[str]:
    if isinstance(target_modules, str):
        names = list(ALL_LINEAR) if target_modules.strip() == "all-linear" else \
            [n.strip() for n in target_modules.split(",") if n.strip()]
    else:
        names = list(target_modules)
    unknown = [n for n in names if n not in ALL_LINEAR and n != "lm_head"]
    if unknown:
        raise ValueError(f"LoRA target modules {unknown} not known to the estimate (use all-linear or "
                         f"names from {', '.join(ALL_LINEAR)}, lm_head)")
    return names


def activation_bytes_per_token_layer(shape: ModelShape, dtype_bytes: int, targets: Sequence[str], lora_r: int,
                                     dropout_mask_bytes: int = 1) -> int:
    """Bytes one decoder layer saves for backward, per token (see the module docstring).

    ``dropout_mask_bytes``: 1 on CUDA (a bool mask), the dtype's size on CPU (PyTorch's CPU dropout
    keeps a scaled noise tensor), 0 with lora_dropout 0.
    """
    d, h, f = dtype_bytes, shape.hidden_size, shape.intermediate_size
    norms = 2 * (4 * h + 4)
    attention = d * (2 * shape.q_dim + 2 * shape.kv_dim) + 4 * shape.num_attention_heads
    mlp = 3 * d * f
    shapes = shape.linear_shapes()
    lora = sum(shapes[n][0] * (d + dropout_mask_bytes) + lora_r * d for n in targets if n in shapes)
    return norms + attention + mlp + lora


def estimate(shape: ModelShape, *, batch_size: int, max_length: int, use_4bit: bool, dtype_bytes: int = 2,
             lora_r: int = 16, lora_target_modules: str | Sequence[str] = "all-linear", dropout_mask_bytes: int = 1,
             gradient_checkpointing: bool = True, loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS, trained_fraction: float = 1.0,
             overhead_gb: float = CUDA_OVERHEAD_GB) -> MemoryEstimate:
    """Peak memory of one training step (module docstring). ``loss_chunk_tokens`` 0 = the stock loss.

    ``trained_fraction``: share of positions with a label (the chunked loss only gathers those);
    1.0 is the worst case. ``dropout_mask_bytes``: see :func:`activation_bytes_per_token_layer`
    (pass ``dtype_bytes`` for a CPU run). ``loss_chunk_tokens`` default = TrainConfig's (256).
    """
    if batch_size < 0 or max_length < 1 or dtype_bytes not in (2, 4) or lora_r < 1:
        raise ValueError(f"bad estimate settings: batch_size={batch_size}, max_length={max_length}, "
                         f"dtype_bytes={dtype_bytes}, lora_r={lora_r}")
    d, h, L, V = dtype_bytes, shape.hidden_size, shape.num_hidden_layers, shape.vocab_size
    targets = _targets(lora_target_modules)
    tokens = batch_size * max_length

    body = shape.body_linear_params() * (NF4_DOUBLE_QUANT_BYTES_PER_PARAM if use_4bit else d)
    weights = body + (shape.small_params() + shape.embedding_params()) * d

    shapes = {**shape.linear_shapes(), "lm_head": (h, V)}
    lora_params = sum(lora_r * sum(shapes[n]) * (1 if n == "lm_head" else L) for n in targets)
    lora = lora_params * LORA_BYTES_PER_PARAM

    per_layer = activation_bytes_per_token_layer(shape, d, targets, lora_r, dropout_mask_bytes)
    head_io = 4 * h + 4 + h * d  # final norm's fp32 copy + its output (the lm_head input)
    if gradient_checkpointing:
        stash = tokens * (L * h * d + head_io)
        grads = 3 * d * shape.intermediate_size + 16 * h
        dequant = 2 * max(i * o for i, o in shape.linear_shapes().values()) * d if use_4bit else 0
        layer_backward = tokens * (per_layer + grads) + dequant
    else:
        # The fused chunked loss takes the last hidden states from a decoder hook: no other layer's output is kept.
        stash = tokens * (L * per_layer + h * d + head_io)
        layer_backward = 0
    if loss_chunk_tokens > 0:
        trained = int(tokens * trained_fraction)
        # One chunk's logits in flight; the trained positions' hidden states and their gradient (computed
        # in the forward pass, kept for backward), both in the forward's dtype.
        loss = min(loss_chunk_tokens, trained) * V * LOSS_BYTES_PER_LOGIT + trained * h * 2 * d
    else:
        loss = tokens * V * LOSS_BYTES_PER_LOGIT

    total = weights + lora + stash + max(loss, layer_backward) + overhead_gb * GB
    settings = dict(batch_size=batch_size, max_length=max_length, use_4bit=use_4bit, dtype_bytes=dtype_bytes,
                    lora_r=lora_r, lora_target_modules=",".join(targets), gradient_checkpointing=gradient_checkpointing,
                    loss_chunk_tokens=loss_chunk_tokens, parameters=shape.parameters())
    return MemoryEstimate(weights / GB, lora / GB, stash / GB, layer_backward / GB, loss / GB, overhead_gb,
                          total / GB, batch_size, max_length, tokens, lora_params, settings)


def largest_batch_size(shape: ModelShape, gpu_memory_gb: float, *, max_length: int, limit: int = 4096,
                       **settings) -> int:
    """The largest per-device batch size whose estimate fits in ``gpu_memory_gb`` (0: not even one)."""
    def fits(batch: int) -> bool:
        return estimate(shape, batch_size=batch, max_length=max_length, **settings).total_gb <= gpu_memory_gb

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):  # the estimate grows with the batch: double, then bisect
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def read_shape(model_dir: str | Path) -> ModelShape:
    """The ModelShape of a model folder's config.json (an adapter folder: give its base)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read config.json ({exc})") from None
    return ModelShape.from_config(config)


def estimate_from_folder(model_dir: str | Path, **settings) -> MemoryEstimate:
    """:func:`estimate` for the model in ``model_dir`` (reads only config.json)."""
    return estimate(read_shape(model_dir), **settings)


def describe(est: MemoryEstimate, gpu_memory_gb: float | None = None, shape: ModelShape | None = None) -> str:
    """A short block for ``--dry_run``: the parts, the total and, for a GPU size, the largest batch."""
    s = est.settings
    method = "QLoRA (NF4)" if s["use_4bit"] else f"LoRA on {'bf16/fp16' if s['dtype_bytes'] == 2 else 'fp32'} weights"
    loss = f"chunked ({s['loss_chunk_tokens']} tokens)" if s["loss_chunk_tokens"] > 0 else "stock (full logits)"
    act = "checkpointed" if s["gradient_checkpointing"] else "all kept"
    lines = [
        f"[memory] estimated peak GPU memory per device: {est.total_gb:.1f} GB "
        f"({method}, batch {est.batch_size} x {est.max_length} tokens, r={s['lora_r']}, loss {loss})",
        f"[memory]   weights {est.weights_gb:.2f} + LoRA with AdamW {est.lora_gb:.2f} + activations ({act}) "
        f"{est.activations_gb:.2f} + max(loss {est.loss_gb:.2f}, layer backward {est.layer_backward_gb:.2f}) "
        f"+ CUDA overhead {est.overhead_gb:.1f} GB",
    ]
    if gpu_memory_gb is not None:
        if shape is None:
            raise ValueError("describe(..., gpu_memory_gb=...) needs the model's shape")
        keys = ("use_4bit", "dtype_bytes", "lora_r", "lora_target_modules", "gradient_checkpointing",
                "loss_chunk_tokens")
        best = largest_batch_size(shape, gpu_memory_gb, max_length=est.max_length, **{k: s[k] for k in keys})
        verdict = "fits" if est.total_gb <= gpu_memory_gb else "does NOT fit"
        lines.append(f"[memory] on a {gpu_memory_gb:g} GB GPU: batch {est.batch_size} {verdict}; largest "
                     f"per-device batch at max_length {est.max_length}: {best}"
                     + (" (nothing fits: use 4-bit, a shorter max_length or a larger GPU)" if best == 0 else ""))
    lines.append("[memory]   (a formula, checked against a CPU measurement; see r1_sft/training/memory_estimate.py)")
    return "\n".join(lines)


# What each multi-process engine shards (r1_sft/training/parallel.py); activations, the loss and the CUDA
# overhead are never sharded: each device computes on its own micro-batch.
ENGINES = {
    "ddp": "nothing sharded (every device holds the model, the LoRA weights, their gradients and AdamW states)",
    "zero1": "AdamW states sharded; weights, LoRA weights and gradients whole on every device",
    "zero2": "AdamW states and LoRA gradients sharded; weights and LoRA weights whole on every device",
    "zero3": "weights, LoRA weights, gradients and AdamW states sharded; one layer gathered at a time",
    "fsdp": "weights, LoRA weights, gradients and AdamW states sharded per decoder layer; two layers and the "
            "root unit (embeddings, final norm, lm_head) gathered at a time",
}


def per_device(est: MemoryEstimate, shape: ModelShape, engine: str, processes: int) -> MemoryEstimate:
    """``est`` (one device, nothing sharded) on each of ``processes`` devices under ``engine`` (:data:`ENGINES`).

    LoRA state per parameter: fp32 weight 4 + gradient 4 + AdamW 8 bytes; ZeRO-1 divides the 8,
    ZeRO-2 the 12, ZeRO-3/FSDP all 16. ZeRO-3/FSDP divide the frozen weights too, plus what is
    gathered while it computes: two decoder layers (the current and the prefetched one) and, for
    FSDP, the root unit with the embeddings and lm_head; ZeRO-3 one embedding matrix at a time.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (use one of {', '.join(ENGINES)})")
    n, s = max(1, processes), est.settings
    lora_bytes = est.lora_parameters * {"ddp": 16, "zero1": 8 + 8 / n, "zero2": 4 + 12 / n}.get(engine, 16 / n)
    weights = est.weights_gb * GB
    if engine in ("zero3", "fsdp"):
        d, L = s["dtype_bytes"], shape.num_hidden_layers
        body = NF4_DOUBLE_QUANT_BYTES_PER_PARAM if s["use_4bit"] else d
        layer = shape.body_linear_params() / L * body + shape.small_params() / L * d
        embeddings = shape.embedding_params() * d
        root = embeddings if engine == "fsdp" else embeddings / (1 if shape.tie_word_embeddings else 2)
        weights = weights / n + 2 * layer + root
    total = est.total_gb - est.weights_gb - est.lora_gb + (weights + lora_bytes) / GB
    return replace(est, weights_gb=weights / GB, lora_gb=lora_bytes / GB, total_gb=total,
                   settings={**s, "engine": engine, "processes": n})


def describe_engine(est: MemoryEstimate, shape: ModelShape, engine: str, counts: Sequence[int] = (1, 2, 4, 8)) -> str:
    """Lines for ``--dry_run``: what ``engine`` shards, and the estimated peak per device at each process count."""
    totals = " / ".join(f"{per_device(est, shape, engine, n).total_gb:.1f}" for n in counts)
    return (f"[memory] {engine}: {ENGINES[engine]}; never sharded: activations, the loss, CUDA overhead\n"
            f"[memory]   per device at {'/'.join(map(str, counts))} processes: {totals} GB")


def readme_table(gpu_sizes: Sequence[float] = (16, 24, 40, 80), max_length: int = 2048,
                 loss_chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> str:
    """The README's table: largest per-device batch for the 1.5B and the 7B, QLoRA vs bf16 LoRA.

    Gradient checkpointing, chunked loss (``loss_chunk_tokens``), LoRA r=16 on all linear layers.
    "每条序列" is the marginal cost of one more sequence at large batch.
    """
    rows = ["| 模型 | 方式 | 固定部分（权重 + LoRA/AdamW + 1 GB 开销） | 每条序列 | "
            + " | ".join(f"{g:g} GB" for g in gpu_sizes) + " |",
            "|---|---|---|---|" + "---|" * len(gpu_sizes)]
    for name, shape in (("1.5B", R1_DISTILL_1_5B), ("7B", R1_DISTILL_7B)):
        for use_4bit, label in ((True, "QLoRA（4 位）"), (False, "16 位 LoRA")):
            kw = dict(max_length=max_length, use_4bit=use_4bit, loss_chunk_tokens=loss_chunk_tokens)
            one, big, bigger = (estimate(shape, batch_size=b, **kw) for b in (1, 32, 64))
            fixed = one.weights_gb + one.lora_gb + one.overhead_gb
            per_sequence = (bigger.total_gb - big.total_gb) / 32
            cells = [str(largest_batch_size(shape, g, **kw) or "放不下") for g in gpu_sizes]
            rows.append(f"| {name} | {label} | {fixed:.1f} GB | {per_sequence:.2f} GB | " + " | ".join(cells) + " |")
    return "\n".join(rows)
