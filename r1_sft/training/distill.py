"""Token-level knowledge distillation from an R1 teacher that shares the student's tokenizer.

Loss over the trained tokens (labels != -100, i.e. reasoning + answer + EOS; never the prompt)::

    loss = (1 - λ) · CE(student, labels) + λ · T² · KL(teacher_T ‖ student_T)

where ``*_T`` are the softmaxes of the logits divided by the temperature T; λ = 0 is plain SFT.
The loss itself, chunked over trained tokens so that full-vocabulary logits are never built for
the batch, is ``r1_sft.training.loss`` (the one implementation SFT trains with too); the teacher runs its
decoder body only, and its hidden states go through its lm_head chunk by chunk beside the student's.

The KL runs over the first ``kl_vocab`` logit columns (the tokenizer's real tokens): R1 models
pad their embedding matrices differently (1.5B: 151,936 rows, 7B: 152,064) for one tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.paths import display_path, repo_path
from r1_sft.training.loss import DEFAULT_CHUNK_TOKENS, LossParts, model_loss
from r1_sft.training.trainer import SFTTrainer, sum_over_processes

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


# ----------------------------------------------------------------------------- the Trainer

def check_kd_settings(lambda_kl: float, kd_temperature: float, kd_chunk_tokens: int) -> None:
    """Refuse KD settings that make no sense, before anything loads."""
    if not 0.0 <= lambda_kl <= 1.0:
        raise UserError(f"--lambda_kl {lambda_kl}: must be between 0 and 1 (0 = plain SFT, 1 = KL only)")
    if kd_temperature <= 0:
        raise UserError(f"--kd_temperature {kd_temperature}: must be > 0 (1.0 = the models' own distributions)")
    if kd_chunk_tokens < 1:
        raise UserError(f"--kd_chunk_tokens {kd_chunk_tokens}: must be >= 1")


def check_token_level_run(cfg) -> None:
    """What token-level distillation supports besides its own settings, before the teacher loads.

    The teacher is a full frozen copy in every process (DDP, DeepSpeed ZeRO-1/2). FSDP and ZeRO-3
    would shard the student but not the teacher: refused. The loss is always the chunked one, in
    chunks of ``kd_chunk_tokens``: ``loss_chunk_tokens`` (SFT's chunk size) is refused, not ignored.
    """
    from r1_sft.training.parallel import deepspeed_stage

    if cfg.loss_chunk_tokens != DEFAULT_CHUNK_TOKENS:
        what = ("the stock loss has no teacher term" if cfg.loss_chunk_tokens == 0 else
                f"token-level distillation chunks by --kd_chunk_tokens (pass --kd_chunk_tokens {cfg.loss_chunk_tokens})")
        raise UserError(f"--loss_chunk_tokens {cfg.loss_chunk_tokens} with --use_teacher_logits: {what}; "
                        f"drop --loss_chunk_tokens")
    engine = "--fsdp_config" if cfg.fsdp_config else "--deepspeed (ZeRO-3)" if deepspeed_stage(cfg) == 3 else None
    if engine:
        raise UserError(f"{engine} with --use_teacher_logits: the student would be sharded but the teacher is a full "
                        f"copy in every process; token-level distillation runs under DDP or DeepSpeed ZeRO-1/2")


class KDTrainer(SFTTrainer):
    """The SFT trainer (``training.trainer.SFTTrainer``) with the distillation loss; plugs into ``training.run.run_training``.

    The teacher is frozen and stays in eval mode. Training steps skip the teacher when λ = 0;
    evaluation always runs it, so ``eval_kl_loss`` (the student's per-token KL to the teacher on
    the validation set) is logged for every λ. Logs add ``ce_loss`` / ``kl_loss`` (per trained
    token, averaged over the logging window and all processes) beside ``loss``; ``eval_loss`` (the
    best-model criterion) is the same mix as the training loss, averaged over all trained tokens.
    The loss is always the chunked one (``kd_chunk_tokens`` positions per chunk): the stock loss
    has no teacher term.
    """

    def __init__(self, *args, teacher_model=None, lambda_kl: float = 0.5, kd_temperature: float = 1.0,
                 kl_vocab: int | None = None, kd_chunk_tokens: int = DEFAULT_CHUNK_TOKENS, **kwargs):
        check_kd_settings(lambda_kl, kd_temperature, kd_chunk_tokens)
        kwargs.pop("loss_chunk_tokens", None)
        super().__init__(*args, loss_chunk_tokens=kd_chunk_tokens, **kwargs)
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

    @property
    def uses_stock_loss(self) -> bool:
        return False

    def loss_parts(self, model, inputs, num_items_in_batch, mode: str) -> LossParts:
        use_teacher = self.teacher_model is not None and (mode == "eval" or self.lambda_kl > 0)
        return model_loss(
            model, inputs, teacher=self.teacher_model if use_teacher else None, lambda_kl=self.lambda_kl,
            temperature=self.kd_temperature, kl_vocab=self.kl_vocab, chunk_tokens=self.loss_chunk_tokens,
            num_items_in_batch=num_items_in_batch, head_model=self.accelerator.unwrap_model(model))

    def token_mean_loss(self, ce_sum: float, kl_sum: float, tokens: float) -> float:
        loss = (1.0 - self.lambda_kl) * ce_sum / tokens
        if self._has_kl["eval"] and self.lambda_kl != 0:
            loss += self.lambda_kl * self.kd_temperature ** 2 * kl_sum / tokens
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        if mode == "eval" or "loss" in logs:
            ce, kl, tokens = sum_over_processes(self._loss_sums[mode]).tolist()
            prefix = "eval_" if mode == "eval" else ""
            if tokens > 0:
                logs[f"{prefix}ce_loss"] = round(ce / tokens, 4)
                if self._has_kl[mode]:
                    logs[f"{prefix}kl_loss"] = round(kl / tokens, 4)
            self._loss_sums[mode].zero_()
        super().log(logs, start_time)


# ----------------------------------------------------------------------------- teacher loading

def load_teacher(teacher_path: str | Path, student_tokenizer, student_plan, *, use_4bit: bool, precision: str = "auto"):
    """Check the teacher's tokenizer against the student's (cheap, first), then load it frozen.

    Returns ``(teacher_model, kl_vocab)``; ``kl_vocab`` = the tokenizer's size. The teacher runs on the
    student's device (``student_plan``, the run's plan) in ``--precision``'s inference dtype for its
    own weights; its plan line is printed.
    """
    from r1_sft.model.folders import load_tokenizer
    from r1_sft.model.loading import load_model
    from r1_sft.model.plan import make_plan

    if not str(teacher_path).strip():
        raise UserError("--use_teacher_logits needs --teacher_model_path (a teacher sharing the student's "
                        "tokenizer, e.g. model/deepseek_ai/DeepSeek-R1-Distill-Qwen-7B)")
    teacher_tokenizer = load_tokenizer(teacher_path, padding_side="right")
    check_same_tokenizer(student_tokenizer, teacher_tokenizer, student_plan.folder.model_path, teacher_path)
    plan = make_plan(teacher_path, device=student_plan.device, precision=precision, use_4bit=use_4bit)
    print(f"[teacher] {plan.describe()}", flush=True)
    teacher, _ = load_model(plan)
    teacher.requires_grad_(False)
    return teacher, len(student_tokenizer)
