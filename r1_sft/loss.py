"""The training loss, defined once for SFT and both kinds of distillation: chunked over trained tokens.

Loss over the trained tokens (labels != -100, i.e. reasoning + answer + EOS; never the prompt)::

    loss = (1 - λ) · CE(student, labels) + λ · T² · KL(teacher_T ‖ student_T)

λ = 0 (no teacher) is plain SFT: this is the loss ``SFTTrainer`` trains with. Both terms are sums
over trained tokens divided by the same count (``num_items_in_batch`` from the Trainer, so
gradient accumulation and DDP weigh tokens exactly as transformers' own causal-LM loss does).

Memory: full-vocabulary logits (151,936 columns for R1) are never built for the whole batch. The
model runs with ``logits_to_keep=1`` and returns its final (normed) hidden states; the trained
positions are then projected through lm_head ``chunk_tokens`` positions at a time, inside
``torch.utils.checkpoint``: backward recomputes one chunk's logits instead of keeping every
chunk's, so the output layer's extra memory is a few chunk x vocab float32 tensors
(:func:`loss_peak_bytes`) whatever the batch. The stock loss (``chunk_tokens=0`` in the trainer)
computes logits at every position, prompt and padding included, and upcasts them to fp32: about
12 GB at 4 x 2048 tokens for R1's vocabulary (shared FACTS).

Batches: padded (attention_mask) and padding-free (one row, ``position_ids`` restarting per
example) batches reach a teacher exactly as the student, with ``use_cache=False``: transformers
only detects packed rows without a KV cache (see ``r1_sft.batching``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .r1_format import IGNORE_INDEX

# Trained positions per lm_head chunk: 256 x 151,936 fp32 logits = 0.16 GB per live copy.
DEFAULT_CHUNK_TOKENS = 256
# Keys of a collated batch that are targets, not model inputs.
_LABEL_KEYS = ("labels", "shift_labels")


@dataclass
class LossParts:
    """One batch: the loss to optimise and its parts as sums over trained tokens (for logging)."""

    loss: torch.Tensor  # (1-λ)·ce_sum/denominator + λ·T²·kl_sum/denominator
    ce_sum: torch.Tensor  # summed cross-entropy (nats), detached
    kl_sum: torch.Tensor | None  # summed KL(teacher_T ‖ student_T) (nats, no T² factor), detached; None without teacher
    tokens: int  # trained tokens in this batch


def shifted_targets(labels: torch.Tensor, shift_labels: torch.Tensor | None) -> torch.Tensor:
    """Label of the token each position predicts (position i -> labels[i + 1]); -100 at the end.

    Same as transformers' ForCausalLMLoss; a collator's own ``shift_labels`` are used as given.
    In padding-free rows the first label of every example is -100, so no position learns to
    predict the next example's first token.
    """
    if shift_labels is not None:
        return shift_labels
    return F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]


def _chunk_losses(student_hidden, teacher_hidden, targets, student_head, teacher_head, kl_vocab: int,
                  temperature: float):
    """Summed CE and KL of one chunk of positions; called under checkpoint (logits never saved)."""
    logits = student_head(student_hidden).float()
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if teacher_hidden is None:
        return ce, ce.new_zeros(())
    with torch.no_grad():
        teacher_logp = F.log_softmax(teacher_head(teacher_hidden).float()[:, :kl_vocab] / temperature, dim=-1)
    student_logp = F.log_softmax(logits[:, :kl_vocab] / temperature, dim=-1)
    # KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), summed over positions.
    kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")
    return ce, kl


def chunked_loss(student_hidden: torch.Tensor, student_head, labels: torch.Tensor, *,
                    teacher_hidden: torch.Tensor | None = None, teacher_head=None, lambda_kl: float = 0.0,
                    temperature: float = 1.0, kl_vocab: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                    num_items_in_batch: int | torch.Tensor | None = None,
                    shift_labels: torch.Tensor | None = None) -> LossParts:
    """The distillation loss from final hidden states ``[batch, seq, hidden]``, chunked over tokens.

    ``student_head`` / ``teacher_head``: the lm_heads. Without ``teacher_hidden`` only the CE is
    computed (λ must then be 0). ``kl_vocab``: logit columns the KL compares (default: the
    narrower head). ``num_items_in_batch``: the loss denominator (default: this batch's trained
    tokens), as in transformers' causal-LM loss.
    """
    if teacher_hidden is None and lambda_kl != 0:
        raise ValueError("lambda_kl > 0 needs teacher_hidden")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    targets = shifted_targets(labels, shift_labels).to(student_hidden.device)
    trained = targets != IGNORE_INDEX
    student_sel = student_hidden[trained]  # [tokens, hidden]
    teacher_sel = teacher_hidden[trained.to(teacher_hidden.device)].to(student_hidden.device) \
        if teacher_hidden is not None else None
    target_sel = targets[trained]
    tokens = int(target_sel.numel())
    if kl_vocab is None and teacher_head is not None:
        kl_vocab = min(student_head.weight.shape[0], teacher_head.weight.shape[0])

    ce_sum = student_hidden.new_zeros((), dtype=torch.float32)
    kl_sum = ce_sum.clone()
    for start in range(0, tokens, chunk_tokens):
        part = slice(start, start + chunk_tokens)
        teacher_part = teacher_sel[part] if teacher_sel is not None else None
        args = (student_sel[part], teacher_part, target_sel[part], student_head, teacher_head, kl_vocab, temperature)
        if torch.is_grad_enabled() and student_sel.requires_grad:
            ce, kl = checkpoint(_chunk_losses, *args, use_reentrant=False)
        else:
            ce, kl = _chunk_losses(*args)
        ce_sum = ce_sum + ce
        kl_sum = kl_sum + kl

    denominator = num_items_in_batch if num_items_in_batch is not None else max(tokens, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(ce_sum.device)
    loss = (1.0 - lambda_kl) * ce_sum / denominator
    if teacher_hidden is not None and lambda_kl != 0:
        loss = loss + lambda_kl * temperature ** 2 * kl_sum / denominator
    if tokens == 0:  # keep the graph connected so DDP and backward see every parameter
        loss = loss + student_hidden.sum() * 0.0
    return LossParts(loss, ce_sum.detach(), kl_sum.detach() if teacher_hidden is not None else None, tokens)


def loss_peak_bytes(chunk_tokens: int, vocab: int) -> int:
    """Rough peak of the chunk loop: about six float32 ``chunk × vocab`` tensors alive at once."""
    return 6 * 4 * chunk_tokens * vocab


def model_inputs(inputs: dict) -> dict:
    """The batch without its targets: what both student and teacher forward passes receive."""
    return {k: v for k, v in inputs.items() if k not in _LABEL_KEYS}


@torch.no_grad()
def teacher_hidden_states(teacher, inputs: dict) -> torch.Tensor:
    """The teacher's final (normed) hidden states for the student's batch, same layout, no KV cache."""
    device = teacher.get_output_embeddings().weight.device
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in model_inputs(inputs).items()}
    batch["use_cache"] = False  # packed-row detection needs it; the teacher's config has the cache on
    return teacher.get_decoder()(**batch).last_hidden_state


def model_loss(model, inputs: dict, *, teacher=None, lambda_kl: float = 0.0, temperature: float = 1.0,
                      kl_vocab: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                      num_items_in_batch=None, head_model=None) -> LossParts:
    """Student forward (no full logits) + teacher forward (when given) + :func:`chunked_kd_loss`.

    ``model`` is what the Trainer hands over (maybe DDP-wrapped: it is called, never unwrapped
    for the forward pass, so gradient sync still works); ``head_model`` the unwrapped model whose
    lm_head is used (default ``model``). Pass ``teacher=None`` to skip the teacher (CE only).
    """
    head_model = head_model if head_model is not None else model
    outputs = model(**model_inputs(inputs), output_hidden_states=True, logits_to_keep=1)
    student_hidden = outputs.hidden_states[-1]  # == the decoder's normed last_hidden_state
    teacher_hidden = teacher_hidden_states(teacher, inputs) if teacher is not None else None
    return chunked_loss(
        student_hidden, head_model.get_output_embeddings(), inputs["labels"],
        teacher_hidden=teacher_hidden, teacher_head=teacher.get_output_embeddings() if teacher is not None else None,
        lambda_kl=lambda_kl if teacher is not None else 0.0, temperature=temperature, kl_vocab=kl_vocab,
        chunk_tokens=chunk_tokens, num_items_in_batch=num_items_in_batch, shift_labels=inputs.get("shift_labels"))
