"""Batches with no compute spent on padding, and the throughput figures that show it.

Two ways to batch SFT examples of very different lengths (R1 answers run 100-1500 tokens):

* ``padding_free``: transformers' ``DataCollatorWithFlattening`` puts the whole micro-batch in one
  row with no padding; ``position_ids`` restart at 0 for every example and the first label of each
  example is -100, so no token learns to predict the next example. Only a FlashAttention
  implementation turns this into less compute (it runs variable-length attention from the
  position ids). SDPA and eager stay *correct* -- transformers 5 ``masking_utils`` detects the
  restarting position ids and builds a block-diagonal mask -- but they attend over the whole row
  (cost grows with the square of the summed length), which is slower than padding (measured:
  ``bench/train_throughput.py``).
* ``length_grouped``: the Trainer's ``train_sampling_strategy="group_by_length"`` puts examples
  of similar length in the same micro-batch, which is padded on the right to its longest example.
  Labels are -100 on padding only, chosen by each example's length -- never by token id, because
  pad == eos and the EOS label teaches the model to stop.

Trap pinned by tests/training/test_batching.py: transformers 5.23 only detects packed sequences when the
forward pass has no KV cache. With the model's default ``use_cache=True`` it creates an empty
cache, skips the detection, and every example silently attends to the ones before it in the row.
The padding-free collator therefore puts ``use_cache=False`` into every batch.

:class:`TokenStatsCallback` adds ``tokens_per_s`` (real, non-pad tokens per second of training,
all processes together) and ``padding_fraction`` to each training log entry.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening, TrainerCallback

from r1_sft.r1_format import IGNORE_INDEX

PADDING_FREE = "padding_free"
LENGTH_GROUPED = "length_grouped"
STRATEGIES = (PADDING_FREE, LENGTH_GROUPED)

# Attention implementations that run packed rows as separate variable-length sequences, so a
# flattened batch costs only its real tokens. Hub kernels are named like "kernels-community/flash-attn2".
_VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash-attn")


def attn_implementation_of(model) -> str | None:
    """The attention implementation a (PEFT-wrapped) model runs with, e.g. "sdpa"."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


def batching_strategy(attn_implementation: str | None) -> str:
    """``padding_free`` for FlashAttention (varlen) implementations, else ``length_grouped``.

    Both are correct on every implementation (tests/training/test_batching.py); this picks the faster one.
    """
    name = attn_implementation or ""
    return PADDING_FREE if any(key in name for key in _VARLEN_ATTENTION) else LENGTH_GROUPED


class PaddingFreeCollator(DataCollatorWithFlattening):
    """``DataCollatorWithFlattening`` that also turns the KV cache off for the forward pass.

    Without ``use_cache=False`` transformers 5 builds a plain causal mask over the whole row and
    examples attend across their boundaries (see the module docstring).
    """

    def __call__(self, features, return_tensors=None, separator_id=None):
        features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        batch = super().__call__(features, return_tensors=return_tensors, separator_id=separator_id)
        batch["use_cache"] = False
        return batch


class RightPaddingCollator(DataCollatorForSeq2Seq):
    """Right-pads to the longest example: input_ids with pad, attention_mask 0, labels -100.

    The label padding is chosen by length (DataCollatorForSeq2Seq pads each label list to the
    batch width), so the real EOS keeps its label although pad == eos. Columns other than
    input_ids and labels (e.g. the dataset's ``length``) are dropped: the model must not see them.
    """

    def __call__(self, features, return_tensors=None):
        if self.tokenizer.padding_side != "right":
            raise ValueError("training batches are padded on the right: load the tokenizer with "
                             "padding_side='right' (r1_sft.model.loading.load_model does for training)")
        features = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        return super().__call__(features, return_tensors=return_tensors)


def make_collator(tokenizer, model, strategy: str | None = None) -> tuple[Any, str]:
    """The collator for ``model``'s attention implementation, and the Trainer sampling strategy to use.

    Returns ``(collator, train_sampling_strategy)``: ``(PaddingFreeCollator, "random")`` or
    ``(RightPaddingCollator, "group_by_length")``. ``strategy`` forces one of :data:`STRATEGIES`.
    ``model`` may also be an attention implementation name.
    """
    attn = model if isinstance(model, str) or model is None else attn_implementation_of(model)
    strategy = strategy or batching_strategy(attn)
    if strategy == PADDING_FREE:
        return PaddingFreeCollator(), "random"
    if strategy == LENGTH_GROUPED:
        collator = RightPaddingCollator(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX,
                                        return_tensors="pt")
        return collator, "group_by_length"
    raise ValueError(f"unknown batching strategy {strategy!r} (use one of {STRATEGIES})")


def batch_token_counts(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[int, int]:
    """``(real, computed)`` tokens of one batch: the model computes on every position, padding included.

    Real tokens are the attention mask's ones; a batch without a 2-D mask (padding-free) has no padding.
    """
    computed = int(input_ids.numel())
    if attention_mask is None or attention_mask.dim() != 2:
        return computed, computed
    return int(attention_mask.sum()), computed


def padding_fraction(real: int, computed: int) -> float:
    return 0.0 if computed == 0 else 1.0 - real / computed


class TokenStatsCallback(TrainerCallback):
    """Adds ``tokens_per_s`` and ``padding_fraction`` to every training log entry.

    Tokens are counted by a forward pre-hook on the model while it trains (evaluation is not
    counted); time is the wall time of the training steps themselves, data loading included,
    evaluation, logging and checkpoint saving excluded. Under DDP the counts are summed over all
    processes, so ``tokens_per_s`` is the whole job's rate. The summary log at the end of
    training gets ``train_tokens_per_s`` and ``train_padding_fraction`` over the whole run.
    """

    def __init__(self) -> None:
        self._hook = None
        self._window = [0, 0]  # real, computed tokens since the last log
        self._total = [0, 0]  # real, computed tokens since training began
        self._window_time = 0.0
        self._total_time = 0.0
        self._mark = time.perf_counter()

    def _count(self, module, args, kwargs) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if not isinstance(input_ids, torch.Tensor):
            return
        real, computed = batch_token_counts(input_ids, kwargs.get("attention_mask"))
        self._window[0] += real
        self._window[1] += computed

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and self._hook is None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._window_time += now - self._mark
        self._mark = now

    def _restart_clock(self, *args, **kwargs):
        # Logging, evaluation and saving just ran: their time is not training time.
        self._mark = time.perf_counter()

    on_evaluate = _restart_clock
    on_save = _restart_clock

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._restart_clock()
        if logs is None:
            return
        is_train_log, is_summary = "loss" in logs, "train_runtime" in logs
        if not (is_train_log or is_summary):
            return  # evaluation logs
        # Both kinds of log happen on every process at the same step, so the sum cannot deadlock.
        real, computed = _sum_over_processes(self._window, args.device)
        window_time = self._window_time
        self._total[0] += real
        self._total[1] += computed
        self._total_time += window_time
        self._window, self._window_time = [0, 0], 0.0
        added = {}
        if is_train_log and computed and window_time > 0:
            added = {"tokens_per_s": round(real / window_time, 1),
                     "padding_fraction": round(padding_fraction(real, computed), 4)}
        elif is_summary and self._total[1] and self._total_time > 0:
            added = {"train_tokens_per_s": round(self._total[0] / self._total_time, 1),
                     "train_padding_fraction": round(padding_fraction(*self._total), 4),
                     "train_real_tokens": self._total[0]}
        if added:
            logs.update(added)
            # The Trainer appended a copy of ``logs`` to the history just before calling us.
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(added)

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _sum_over_processes(counts: Sequence[int], device) -> tuple[int, int]:
    """Sum token counts over DDP processes (every process logs at the same steps)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        tensor = torch.tensor(list(counts), dtype=torch.int64, device=device)
        torch.distributed.all_reduce(tensor)
        return int(tensor[0]), int(tensor[1])
    return int(counts[0]), int(counts[1])
