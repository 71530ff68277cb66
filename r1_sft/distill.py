"""Token-level knowledge distillation from an R1 teacher that shares the student's tokenizer.

Loss over the trained tokens (labels != -100, i.e. reasoning + answer + EOS; never the prompt)::

    loss = (1 - λ) · CE(student, labels) + λ · T² · KL(teacher_T ‖ student_T)

where ``*_T`` are the softmaxes of the logits divided by the temperature T. Both terms are sums
over trained tokens divided by the same count (``num_items_in_batch`` from the Trainer, so
gradient accumulation and DDP weigh tokens exactly as plain SFT does), hence λ = 0 is plain SFT.

Memory: full-vocabulary logits (152k columns for R1) are never built for the whole batch. The
student runs with ``logits_to_keep=1`` and returns its final (normed) hidden states; the teacher
runs its decoder body only. The trained positions are then projected through each lm_head
``chunk_tokens`` positions at a time, inside ``torch.utils.checkpoint``: backward recomputes one
chunk's logits instead of keeping every chunk's, so peak extra memory is a few chunk × vocab
float32 tensors (``kd_peak_bytes``) whatever the batch size.

Batches: padded (attention_mask) and padding-free (one row, ``position_ids`` restarting per
example) batches go to the teacher exactly as to the student, with ``use_cache=False``:
transformers only detects packed rows without a KV cache (see ``r1_sft.batching``), and the
teacher's config has the cache on.

The KL runs over the first ``kl_vocab`` logit columns (the tokenizer's real tokens): R1 models
pad their embedding matrices differently (1.5B: 151,936 rows, 7B: 152,064) for one tokenizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cli import UserError
from .paths import display_path, repo_path
from .training import SFTTrainer

IGNORE_INDEX = -100
# Keys of a collated batch that are targets, not model inputs.
_LABEL_KEYS = ("labels", "shift_labels")


@dataclass
class KDLoss:
    """One batch: the loss to optimise and its parts as sums over trained tokens (for logging)."""

    loss: torch.Tensor  # (1-λ)·ce_sum/denominator + λ·T²·kl_sum/denominator
    ce_sum: torch.Tensor  # summed cross-entropy (nats), detached
    kl_sum: torch.Tensor | None  # summed KL(teacher_T ‖ student_T) (nats, no T² factor), detached; None without teacher
    tokens: int  # trained tokens in this batch


# ----------------------------------------------------------------------------- tokenizer check

def tokenizer_mismatch(student_tokenizer, teacher_tokenizer) -> str | None:
    """Why the two tokenizers would give the same text different ids, or None if they agree.

    Compares the full vocabulary (token -> id, added tokens included), the special token ids
    (bos, eos, pad) and which added tokens are special. Token-level KD compares the two
    distributions id by id, so any difference makes it silently wrong.
    """
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        only_student = sorted(set(student_vocab) - set(teacher_vocab))
        only_teacher = sorted(set(teacher_vocab) - set(student_vocab))
        moved = sorted(t for t in set(student_vocab) & set(teacher_vocab) if student_vocab[t] != teacher_vocab[t])
        details = [f"{len(student_vocab)} vs {len(teacher_vocab)} tokens"]
        if only_student:
            details.append(f"{len(only_student)} only in the student, e.g. {only_student[0]!r}")
        if only_teacher:
            details.append(f"{len(only_teacher)} only in the teacher, e.g. {only_teacher[0]!r}")
        if moved:
            details.append(f"{len(moved)} with other ids, e.g. {moved[0]!r} "
                           f"{student_vocab[moved[0]]} vs {teacher_vocab[moved[0]]}")
        return "vocabularies differ: " + "; ".join(details)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        s, t = getattr(student_tokenizer, name), getattr(teacher_tokenizer, name)
        if s != t:
            return f"{name} differs: {s} vs {t}"
    special = lambda tok: {i: a.special for i, a in tok.added_tokens_decoder.items()}  # noqa: E731
    if special(student_tokenizer) != special(teacher_tokenizer):
        return "added tokens differ in which are special"
    return None


def check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_path, teacher_path) -> None:
    """UserError (one line, exit 2) when the teacher's tokenizer differs from the student's."""
    why = tokenizer_mismatch(student_tokenizer, teacher_tokenizer)
    if why is not None:
        raise UserError(
            f"{display_path(repo_path(teacher_path))}: the teacher's tokenizer differs from the student's "
            f"{display_path(repo_path(student_path))} ({why}); token-level distillation needs the same tokenizer "
            f"(e.g. DeepSeek-R1-Distill-Qwen-7B/14B for the 1.5B) -- pick such a teacher, or drop "
            f"--use_teacher_logits for sequence-level distillation on its answers")


def check_vocab_widths(student, teacher, kl_vocab: int) -> None:
    """Both models need one logit column per tokenizer token (extra padding rows are fine)."""
    for who, model in (("student", student), ("teacher", teacher)):
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < kl_vocab:
            raise UserError(f"the {who}'s lm_head has {rows} rows for {kl_vocab} tokenizer tokens "
                            f"(a broken or mismatched model folder)")


# ----------------------------------------------------------------------------- the loss

def _shifted_targets(labels: torch.Tensor, shift_labels: torch.Tensor | None) -> torch.Tensor:
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


def chunked_kd_loss(student_hidden: torch.Tensor, student_head, labels: torch.Tensor, *,
                    teacher_hidden: torch.Tensor | None = None, teacher_head=None, lambda_kl: float = 0.0,
                    temperature: float = 1.0, kl_vocab: int | None = None, chunk_tokens: int = 1024,
                    num_items_in_batch: int | torch.Tensor | None = None,
                    shift_labels: torch.Tensor | None = None) -> KDLoss:
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
    targets = _shifted_targets(labels, shift_labels).to(student_hidden.device)
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
    return KDLoss(loss, ce_sum.detach(), kl_sum.detach() if teacher_hidden is not None else None, tokens)


def kd_peak_bytes(chunk_tokens: int, vocab: int) -> int:
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


def distillation_loss(model, inputs: dict, *, teacher=None, lambda_kl: float = 0.0, temperature: float = 1.0,
                      kl_vocab: int | None = None, chunk_tokens: int = 1024,
                      num_items_in_batch=None, head_model=None) -> KDLoss:
    """Student forward (no full logits) + teacher forward (when given) + :func:`chunked_kd_loss`.

    ``model`` is what the Trainer hands over (maybe DDP-wrapped: it is called, never unwrapped
    for the forward pass, so gradient sync still works); ``head_model`` the unwrapped model whose
    lm_head is used (default ``model``). Pass ``teacher=None`` to skip the teacher (CE only).
    """
    head_model = head_model if head_model is not None else model
    outputs = model(**model_inputs(inputs), output_hidden_states=True, logits_to_keep=1)
    student_hidden = outputs.hidden_states[-1]  # == the decoder's normed last_hidden_state
    teacher_hidden = teacher_hidden_states(teacher, inputs) if teacher is not None else None
    return chunked_kd_loss(
        student_hidden, head_model.get_output_embeddings(), inputs["labels"],
        teacher_hidden=teacher_hidden, teacher_head=teacher.get_output_embeddings() if teacher is not None else None,
        lambda_kl=lambda_kl if teacher is not None else 0.0, temperature=temperature, kl_vocab=kl_vocab,
        chunk_tokens=chunk_tokens, num_items_in_batch=num_items_in_batch, shift_labels=inputs.get("shift_labels"))


# ----------------------------------------------------------------------------- the Trainer

def check_kd_settings(lambda_kl: float, kd_temperature: float, kd_chunk_tokens: int) -> None:
    """Refuse KD settings that make no sense, before anything loads."""
    if not 0.0 <= lambda_kl <= 1.0:
        raise UserError(f"--lambda_kl {lambda_kl}: must be between 0 and 1 (0 = plain SFT, 1 = KL only)")
    if kd_temperature <= 0:
        raise UserError(f"--kd_temperature {kd_temperature}: must be > 0 (1.0 = the models' own distributions)")
    if kd_chunk_tokens < 1:
        raise UserError(f"--kd_chunk_tokens {kd_chunk_tokens}: must be >= 1")


class KDTrainer(SFTTrainer):
    """The SFT trainer (``training.SFTTrainer``) with the distillation loss; plugs into ``training.run_training``.

    The teacher is frozen and stays in eval mode. Training steps skip the teacher when λ = 0;
    evaluation always runs it, so ``eval_kl_loss`` (the student's per-token KL to the teacher on
    the validation set) is logged for every λ. Logs add ``ce_loss`` / ``kl_loss`` (per trained
    token, averaged over the logging window and all processes) beside ``loss``; ``eval_loss`` (the
    best-model criterion) is the same mix as the training loss.
    """

    def __init__(self, *args, teacher_model=None, lambda_kl: float = 0.5, kd_temperature: float = 1.0,
                 kl_vocab: int | None = None, kd_chunk_tokens: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        check_kd_settings(lambda_kl, kd_temperature, kd_chunk_tokens)
        if teacher_model is None and lambda_kl > 0:
            raise UserError("lambda_kl > 0 needs a teacher model (--teacher_model_path)")
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.eval()
            teacher_model.requires_grad_(False)
            if kl_vocab is not None:
                check_vocab_widths(self.model, teacher_model, kl_vocab)
        self.lambda_kl = lambda_kl
        self.kd_temperature = kd_temperature
        self.kl_vocab = kl_vocab
        self.kd_chunk_tokens = kd_chunk_tokens
        # [ce_sum, kl_sum, tokens] since the last log, per mode; kept on the device (no sync per step)
        self._kd_sums = {mode: torch.zeros(3, dtype=torch.float64, device=self.args.device)
                         for mode in ("train", "eval")}
        self._kd_has_kl = {"train": False, "eval": False}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        use_teacher = self.teacher_model is not None and (mode == "eval" or self.lambda_kl > 0)
        parts = distillation_loss(
            model, inputs, teacher=self.teacher_model if use_teacher else None, lambda_kl=self.lambda_kl,
            temperature=self.kd_temperature, kl_vocab=self.kl_vocab, chunk_tokens=self.kd_chunk_tokens,
            num_items_in_batch=num_items_in_batch, head_model=self.accelerator.unwrap_model(model))
        loss = parts.loss
        # Same scaling as Trainer.compute_loss: the denominator counted tokens on all processes,
        # and DDP averages gradients over processes.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        kl_sum = parts.kl_sum if parts.kl_sum is not None else torch.zeros_like(parts.ce_sum)
        self._kd_sums[mode] += torch.stack([parts.ce_sum, kl_sum, parts.ce_sum.new_tensor(parts.tokens)]).to(
            self._kd_sums[mode])
        self._kd_has_kl[mode] |= parts.kl_sum is not None
        return (loss, CausalLMOutputWithPast(loss=loss)) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if mode == "eval" or "loss" in logs:
            ce, kl, tokens = _sum_over_processes(self._kd_sums[mode]).tolist()
            prefix = "eval_" if mode == "eval" else ""
            if tokens > 0:
                logs[f"{prefix}ce_loss"] = round(ce / tokens, 4)
                if self._kd_has_kl[mode]:
                    logs[f"{prefix}kl_loss"] = round(kl / tokens, 4)
            self._kd_sums[mode].zero_()
        super().log(logs, start_time)


def _sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    tensor = values.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.cpu()


# ----------------------------------------------------------------------------- teacher loading

def load_teacher(teacher_path: str | Path, student_tokenizer, student_path, *, use_4bit: bool):
    """Check the teacher's tokenizer against the student's (cheap, first), then load it frozen.

    Returns ``(teacher_model, kl_vocab)``; ``kl_vocab`` = the tokenizer's size.
    """
    from .modeling import load_model, load_tokenizer

    if not str(teacher_path).strip():
        raise UserError("--use_teacher_logits needs --teacher_model_path (a teacher sharing the student's "
                        "tokenizer, e.g. model/deepseek_ai/DeepSeek-R1-Distill-Qwen-7B)")
    teacher_tokenizer = load_tokenizer(teacher_path, padding_side="right")
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_path, teacher_path)
    teacher, _ = load_model(teacher_path, use_4bit=use_4bit, for_training=False)
    teacher.requires_grad_(False)
    return teacher, len(student_tokenizer)
