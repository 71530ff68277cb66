"""Peak GPU memory of a GRPO run (TRL 1.16 ``GRPOTrainer`` + LoRA), estimated from config.json before loading.

A GRPO step has two phases that do not overlap in memory, on top of what stays resident:

* **resident**: the policy's weights and its LoRA weights with gradients and AdamW states
  (``memory_estimate.estimate``'s ``weights`` + ``lora``), and, when ``beta > 0``, the reference:
  with a PEFT model TRL keeps NO second model -- it copies the starting adapter into a frozen
  "ref" adapter on the same base (4 bytes per LoRA parameter) and scores with it (adapters off
  for a fresh LoRA). Plus the 1 GB CUDA overhead; plus vLLM's whole reservation when it runs
  colocated (``vllm_gpu_memory_utilization`` x the GPU: its weights copy and KV cache live there).
* **generation** (HF ``generate``): the KV cache of the generation batch, ``G`` completions of
  ``prompt + completion`` tokens (``2 x layers x kv_dim x dtype`` bytes per token), and the
  last position's logits per step (``G x vocab``, in the dtype and again in fp32 for sampling).
* **training**: one micro-batch of ``B`` completions of ``prompt + completion`` tokens through the
  LoRA model (``memory_estimate``'s activations and recomputed-layer terms), and the log-prob pass
  through R1's 151,936-row head. TRL 1.16 never builds the full logits: its fused LM head
  (``trainer/utils.add_fused_lm_head``, ``kernels/chunked_logprob.py``) projects tiles of 4,096
  tokens x 32,768 vocabulary rows into one reused buffer and keeps a few fp32 numbers per token, so
  the head costs ``tile x (dtype + 4)`` bytes plus the fp32 gradient of the hidden states, whatever
  the batch. (Full logits would cost ``B x T x vocab x 12`` bytes: printed for comparison.)
  The reference pass runs without gradients, before the training pass, and is smaller.

Not measured on a GPU (see docs/grpo.md); the SFT formula it builds on is checked against a CPU
measurement in tests/training/test_memory_estimate.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1_sft.training.memory_estimate import CUDA_OVERHEAD_GB, GB, LOSS_BYTES_PER_LOGIT, ModelShape, estimate

TRL_TOKEN_TILE = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE
TRL_VOCAB_TILE = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE
REF_ADAPTER_BYTES_PER_PARAM = 4  # the frozen fp32 "ref" copy of the adapter (beta > 0)


@dataclass(frozen=True)
class GrpoMemory:
    """Estimated peak GPU memory of one GRPO step, in GB, by part."""

    weights_gb: float
    lora_gb: float  # LoRA weights + grads + AdamW
    reference_gb: float  # the frozen "ref" adapter copy (beta > 0), else 0
    vllm_gb: float  # colocated vLLM's reservation, else 0
    generation_gb: float  # KV cache + per-step logits of the generation batch
    training_gb: float  # activations + max(log-prob head, recomputed layer) of one micro-batch
    logprob_head_gb: float  # TRL's tiled head (part of training_gb)
    full_logits_gb: float  # what full-vocabulary logits would cost instead (not used by TRL)
    overhead_gb: float
    total_gb: float
    generation_batch: int
    micro_batch: int
    sequence_tokens: int  # prompt + completion

    @property
    def peak_phase(self) -> str:
        return "generation" if self.generation_gb > self.training_gb else "training"


def grpo_estimate(shape: ModelShape, *, micro_batch: int, generation_batch: int, prompt_tokens: int,
                  completion_tokens: int, use_4bit: bool, beta: float = 0.0, dtype_bytes: int = 2,
                  lora_r: int = 16, lora_target_modules: str = "all-linear", gradient_checkpointing: bool = True,
                  vllm_gb: float = 0.0, overhead_gb: float = CUDA_OVERHEAD_GB) -> GrpoMemory:
    """The parts of the module docstring. ``micro_batch`` = per-device completions per forward/backward;
    ``generation_batch`` = completions generated at once (per device: micro_batch x steps per generation)."""
    tokens = prompt_tokens + completion_tokens
    step = estimate(shape, batch_size=micro_batch, max_length=tokens, use_4bit=use_4bit, dtype_bytes=dtype_bytes,
                    lora_r=lora_r, lora_target_modules=lora_target_modules, dropout_mask_bytes=0,
                    gradient_checkpointing=gradient_checkpointing, loss_chunk_tokens=1, overhead_gb=overhead_gb)
    d, h, V = dtype_bytes, shape.hidden_size, shape.vocab_size
    n_scored = micro_batch * completion_tokens  # only completion positions go through the head
    head = min(n_scored, TRL_TOKEN_TILE) * TRL_VOCAB_TILE * (d + 4) + n_scored * h * (d + 4)
    training = step.activations_gb * GB + max(head, step.layer_backward_gb * GB)
    kv = generation_batch * tokens * shape.num_hidden_layers * 2 * shape.kv_dim * d
    generation = 0.0 if vllm_gb else kv + generation_batch * V * (d + 4)
    reference = step.lora_parameters * REF_ADAPTER_BYTES_PER_PARAM if beta > 0 else 0
    resident = (step.weights_gb + step.lora_gb + overhead_gb + vllm_gb) * GB + reference
    total = resident + max(training, generation)
    return GrpoMemory(step.weights_gb, step.lora_gb, reference / GB, vllm_gb, generation / GB, training / GB,
                      head / GB, micro_batch * tokens * V * LOSS_BYTES_PER_LOGIT / GB, overhead_gb, total / GB,
                      generation_batch, micro_batch, tokens)


def describe_grpo(m: GrpoMemory, gpu_memory_gb: float | None = None) -> str:
    """The ``--dry_run`` block: parts, total, the phase that peaks, and a verdict for one GPU size."""
    lines = [
        f"[memory] estimated peak GPU memory per device: {m.total_gb:.1f} GB (micro-batch {m.micro_batch} and "
        f"generation batch {m.generation_batch} completions of {m.sequence_tokens} tokens; peak in {m.peak_phase})",
        f"[memory]   resident: weights {m.weights_gb:.2f} + LoRA with AdamW {m.lora_gb:.2f} + reference adapter "
        f"{m.reference_gb:.2f} + vLLM {m.vllm_gb:.1f} + CUDA overhead {m.overhead_gb:.1f} GB",
        f"[memory]   then max(generation {m.generation_gb:.2f}, training {m.training_gb:.2f}) GB; the log-prob head "
        f"in TRL's tiles {m.logprob_head_gb:.2f} GB (full 151,936-column logits would be {m.full_logits_gb:.1f} GB)",
    ]
    if gpu_memory_gb:
        verdict = "fits" if m.total_gb <= gpu_memory_gb else "does NOT fit (lower --per_device_train_batch_size " \
                                                             "or --max_completion_length, or use --use_4bit)"
        lines.append(f"[memory] on a {gpu_memory_gb:g} GB GPU: {verdict}")
    lines.append("[memory]   (a formula, not measured on a GPU; see r1_sft/rl/memory.py)")
    return "\n".join(lines)
