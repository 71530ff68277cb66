"""The training loss, defined once for SFT and both kinds of distillation: chunked over trained tokens.

Loss over the trained tokens (labels != -100, i.e. reasoning + answer + EOS; never the prompt)::

    loss = (1 - λ) · CE(student, labels) + λ · T² · KL(teacher_T ‖ student_T)

λ = 0 (no teacher) is plain SFT: this is the loss ``SFTTrainer`` trains with. Both terms are sums
over trained tokens divided by the same count (``num_items_in_batch`` from the Trainer, so
gradient accumulation and DDP weigh tokens exactly as transformers' own causal-LM loss does).

Memory and speed: full-vocabulary logits (151,936 columns for R1) are never built for the whole
batch. The model runs with ``logits_to_keep=1``; a hook on its decoder keeps the final (normed)
hidden states and nothing else (``output_hidden_states=True`` would keep every layer's). The
trained positions are then projected through lm_head ``chunk_tokens`` positions at a time by a
fused linear cross-entropy (:class:`_FusedHeadLoss`): each chunk's gradient (towards the hidden
states and any trainable head weights, e.g. LoRA on lm_head) is computed in the forward pass, right
after its logits, and the logits are dropped. Backward only scales the stored gradients: no second
lm_head pass (as ``torch.utils.checkpoint`` would need), and the output layer's extra memory is a
few chunk x vocab float32 tensors (:func:`loss_peak_bytes`) whatever the batch. The stock loss
(``chunk_tokens=0`` in the trainer) computes logits at every position, prompt and padding
included, and upcasts them to fp32: about 12 GB at 4 x 2048 tokens for R1's vocabulary (FACTS).

Precision: under the Trainer's bf16/fp16 mixed precision, accelerate runs autocast around the
model's forward only and hands back fp32 outputs; the head is applied here, outside that forward.
Each chunk therefore runs under autocast in the head's own dtype (bf16 or fp16 weights), exactly as
lm_head would inside the forward, and its logits are upcast to fp32 for the softmax. With fp32
weights no autocast is opened.

Batches: padded (attention_mask) and padding-free (one row, ``position_ids`` restarting per
example) batches reach a teacher exactly as the student, with ``use_cache=False``: transformers
only detects packed rows without a KV cache (see ``r1_sft.training.batching``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1_sft.r1_format import IGNORE_INDEX

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


def _autocast_for(head) -> contextlib.AbstractContextManager:
    """Autocast in the head's dtype when its weights are 16-bit (as the model's forward would run it)."""
    dtype = head.weight.dtype
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(head.weight.device.type, dtype=dtype)
    return contextlib.nullcontext()


def _chunk_terms(hidden, teacher_hidden, targets, student_head, teacher_head, kl_vocab: int, temperature: float):
    """Summed CE and KL(teacher_T ‖ student_T) of one chunk of positions, logits in fp32."""
    with _autocast_for(student_head):
        logits = student_head(hidden)
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="sum")
    if teacher_hidden is None:
        return ce, None
    with torch.no_grad(), _autocast_for(teacher_head):
        teacher_logits = teacher_head(teacher_hidden)
    teacher_logp = F.log_softmax(teacher_logits.float()[:, :kl_vocab] / temperature, dim=-1)
    student_logp = F.log_softmax(logits[:, :kl_vocab] / temperature, dim=-1)
    # KL(teacher ‖ student) = Σ p_t (log p_t − log p_s), summed over positions.
    return ce, F.kl_div(student_logp, teacher_logp, log_target=True, reduction="sum")


class _FusedHeadLoss(torch.autograd.Function):
    """Chunked lm_head + CE (+ KL) whose gradients are computed in the forward pass, chunk by chunk.

    Inputs: the trained positions' hidden states ``[tokens, hidden]`` and the head's trainable
    parameters (so autograd routes their gradients); ``spec`` holds everything else. Outputs: the
    weighted loss (differentiable), the CE and KL sums (not).

    fp16: the stored gradients are those of the *summed* loss ``(1-λ)·CE_sum + λ·T²·KL_sum``, in fp32,
    not of the final loss: ``(p - y)/N`` for the non-target vocabulary underflows in fp16 once the
    denominator N (trained tokens over the accumulated, multi-process batch) reaches thousands. Backward
    applies ``1/N`` and the incoming gradient (the GradScaler's or DeepSpeed's loss scale, 65,536 at the
    start) in fp32 and casts once, at the end: the scale itself never passes through fp16 (max 65,504).
    """

    @staticmethod
    def forward(ctx, hidden, spec, *params):
        ce_weight, kl_weight = spec["ce_weight"], spec["kl_weight"]
        want = [hidden] + [p for p in params]
        grads = [torch.zeros_like(hidden, dtype=torch.float32)] + \
            [torch.zeros_like(p, dtype=torch.float32) for p in params]
        ce_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        kl_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        chunk = spec["chunk_tokens"]
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            x = hidden[part].detach().requires_grad_(True)
            teacher = spec["teacher_sel"][part] if spec["teacher_sel"] is not None else None
            with torch.enable_grad():
                ce, kl = _chunk_terms(x, teacher, spec["targets"][part], spec["head"], spec["teacher_head"],
                                      spec["kl_vocab"], spec["temperature"])
                local = ce * ce_weight + (kl * kl_weight if kl is not None else 0.0)  # O(1) weights, no 1/N
                chunk_grads = torch.autograd.grad(local, [x] + want[1:], allow_unused=True)
            grads[0][part] = chunk_grads[0].float()
            for total, g in zip(grads[1:], chunk_grads[1:]):
                if g is not None:
                    total += g.float()
            ce_sum += ce.detach()
            if kl is not None:
                kl_sum += kl.detach()
        ctx.save_for_backward(*grads)
        ctx.hidden_dtype = hidden.dtype
        ctx.param_dtypes = [p.dtype for p in params]
        ctx.inv_denominator = 1.0 / spec["denominator"]
        ctx.mark_non_differentiable(ce_sum, kl_sum)
        loss = (ce_sum * ce_weight + kl_sum * kl_weight) * ctx.inv_denominator
        return loss, ce_sum, kl_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        hidden_grad, *param_grads = ctx.saved_tensors
        factor = grad_loss.float() * ctx.inv_denominator  # loss scale / N, in fp32
        scaled = [(g * factor).to(dtype) for g, dtype in zip(param_grads, ctx.param_dtypes)]
        return ((hidden_grad * factor).to(ctx.hidden_dtype), None, *scaled)


def chunked_loss(student_hidden: torch.Tensor, student_head, labels: torch.Tensor, *,
                 teacher_hidden: torch.Tensor | None = None, teacher_head=None, lambda_kl: float = 0.0,
                 temperature: float = 1.0, kl_vocab: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 num_items_in_batch: int | torch.Tensor | None = None,
                 shift_labels: torch.Tensor | None = None) -> LossParts:
    """The distillation loss from final hidden states ``[batch, seq, hidden]``, chunked over tokens.

    ``student_head`` / ``teacher_head``: the lm_heads (a LoRA-wrapped head trains its adapter).
    Without ``teacher_hidden`` only the CE is computed (λ must then be 0). ``kl_vocab``: logit
    columns the KL compares (default: the narrower head). ``num_items_in_batch``: the loss
    denominator (default: this batch's trained tokens), as in transformers' causal-LM loss.
    """
    if teacher_hidden is None and lambda_kl != 0:
        raise ValueError("lambda_kl > 0 needs teacher_hidden")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    targets = shifted_targets(labels, shift_labels).to(student_hidden.device)
    trained = targets != IGNORE_INDEX
    student_sel = student_hidden[trained]  # [tokens, hidden]
    teacher_sel = teacher_hidden[trained.to(teacher_hidden.device)].to(student_hidden.device) \
        if teacher_hidden is not None else None
    tokens = int(trained.sum())
    if kl_vocab is None and teacher_head is not None:
        kl_vocab = min(student_head.weight.shape[0], teacher_head.weight.shape[0])

    denominator = num_items_in_batch if num_items_in_batch is not None else max(tokens, 1)
    denominator = float(denominator) if torch.is_tensor(denominator) else float(denominator)
    use_kl = teacher_hidden is not None and lambda_kl != 0
    spec = dict(targets=targets[trained], teacher_sel=teacher_sel, head=student_head, teacher_head=teacher_head,
                kl_vocab=kl_vocab, temperature=temperature, chunk_tokens=chunk_tokens,
                denominator=denominator, ce_weight=1.0 - lambda_kl,
                kl_weight=lambda_kl * temperature ** 2 if use_kl else 0.0)
    params = [p for p in student_head.parameters() if p.requires_grad]
    # LoRA on lm_head alone without gradient checkpointing: the hidden states need no gradient, the head does.
    if torch.is_grad_enabled() and (student_sel.requires_grad or params):
        loss, ce_sum, kl_sum = _FusedHeadLoss.apply(student_sel, spec, *params)
    else:
        with torch.no_grad():
            ce_sum = torch.zeros((), dtype=torch.float32, device=student_hidden.device)
            kl_sum = ce_sum.clone()
            for start in range(0, tokens, chunk_tokens):
                part = slice(start, start + chunk_tokens)
                ce, kl = _chunk_terms(student_sel[part], teacher_sel[part] if teacher_sel is not None else None,
                                      spec["targets"][part], student_head, teacher_head, kl_vocab, temperature)
                ce_sum += ce
                if kl is not None:
                    kl_sum += kl
            loss = (ce_sum * spec["ce_weight"] + kl_sum * spec["kl_weight"]) / denominator
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


def final_hidden_states(model, head_model, inputs: dict) -> torch.Tensor:
    """The decoder's final (normed) hidden states of ``model``'s forward, and no other layer's.

    ``model`` is called (it may be DDP-wrapped); a forward hook on ``head_model``'s decoder keeps its
    ``last_hidden_state`` as it leaves the decoder (in the forward's own dtype, before accelerate's
    fp32 conversion of the outputs).
    """
    return _forward(model, head_model, inputs)[0]


def _forward(model, head_model, inputs: dict):
    """(final hidden states, the model's output with its one position of logits)."""
    kept = {}

    def keep(_module, _args, output):
        kept["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = head_model.get_decoder().register_forward_hook(keep)
    try:
        output = model(**model_inputs(inputs), logits_to_keep=1)
    finally:
        handle.remove()
    return kept["hidden"], output


def model_loss(model, inputs: dict, *, teacher=None, lambda_kl: float = 0.0, temperature: float = 1.0,
                      kl_vocab: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                      num_items_in_batch=None, head_model=None) -> LossParts:
    """Student forward (no full logits) + teacher forward (when given) + :func:`chunked_loss`.

    ``model`` is what the Trainer hands over (maybe DDP-wrapped: it is called, never unwrapped
    for the forward pass, so gradient sync still works); ``head_model`` the unwrapped model whose
    lm_head is used (default ``model``). Pass ``teacher=None`` to skip the teacher (CE only).
    """
    head_model = head_model if head_model is not None else model
    student_hidden, output = _forward(model, head_model, inputs)
    teacher_hidden = teacher_hidden_states(teacher, inputs) if teacher is not None else None
    head = head_model.get_output_embeddings()
    with unsharded_head(model, head_model) as sharded:
        parts = chunked_loss(
            student_hidden, head, inputs["labels"],
            teacher_hidden=teacher_hidden, teacher_head=teacher.get_output_embeddings() if teacher is not None else None,
            lambda_kl=lambda_kl if teacher is not None else 0.0, temperature=temperature, kl_vocab=kl_vocab,
            chunk_tokens=chunk_tokens, num_items_in_batch=num_items_in_batch, shift_labels=inputs.get("shift_labels"))
        if sharded and parts.loss.requires_grad:
            # the forward's one position of logits joins the graph (x 0): FSDP2's pre-backward hooks on the
            # forward's outputs then fire as with the stock loss, unsharding what the backward reads
            parts.loss = parts.loss + output.logits.float().sum() * 0.0
        return parts


@contextlib.contextmanager
def unsharded_head(model, head_model):
    """Under FSDP2, the whole weights of lm_head and the final norm for the loss; yields whether sharded.

    The head runs outside the model's forward, after FSDP2 resharded its group (reading a shard
    crashed the process in backward). The groups that own lm_head and the final norm are unsharded
    here (``FSDPModule.unshard()``): the module's parameters are then the full tensors, and
    :class:`_FusedHeadLoss` takes those as inputs, so its backward accumulates their gradients.
    The caller adds the forward's one position of logits to the loss (x 0) so that FSDP2's own
    pre-backward hooks fire as with the stock loss; its end-of-backward callback runs the post-backward
    of every group whose hooks did not, which reduce-scatters those gradients and reshards (torch 2.13,
    ``_root_post_backward_final_callback``). Without grad (evaluation) it reshards at once.
    Measured on 2 CPU processes: eval_loss equal to one process's (tests/training/test_fsdp.py).
    """
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        yield False
        return
    fsdp = [m for m in model.modules() if isinstance(m, FSDPModule)]
    needed = [head_model.get_output_embeddings(), getattr(head_model.get_decoder(), "norm", None)]
    owners = []
    for module in needed:
        # the innermost group holding the module: modules() lists a parent before its children
        holding = [m for m in fsdp if module is not None and any(sub is module for sub in m.modules())]
        if holding and holding[-1] not in owners:
            owners.append(holding[-1])
    for owner in owners:
        owner.unshard()
    try:
        yield bool(owners)
    finally:
        if not torch.is_grad_enabled():
            for owner in owners:
                owner.reshard()
