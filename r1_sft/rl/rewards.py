"""Verifiable rewards for GRPO on multiple-choice questions, each a small function with a table of cases.

A completion is what R1-Distill generates after its prompt, which already ends in ``<think>\\n``: it
starts INSIDE the think block (``reasoning\\n</think>\\n\\nanswer``), with no opening ``<think>``.

* **accuracy** 1 or 0: the option letters the answer (text after ``</think>``) states, read by the
  project's MCQ reader (``answer_reader.completion_choice``: not fooled by B超 / 维生素C / CT), equal the gold
  set exactly ("AC" for "AC", not "A", not "ABC"). An unclosed think block has no answer: 0.
* **format** 1 or 0: exactly one ``</think>``, no second ``<think>``, and a non-empty answer that
  states a choice the reader finds. (A leading ``<think>``, as an old-template completion may have, is
  tolerated.)
* **overlong** -1 or 0: the completion was cut at ``max_completion_length`` (no EOS at its end), the
  DAPO-style over-length penalty.

The trainer sums them with ``WEIGHTS`` (``--accuracy_weight`` etc.) and logs each one's mean and
spread per step (TRL: ``rewards/<function name>/mean`` and ``/std``): the mean of ``accuracy_reward``
is the accuracy, of ``format_reward`` the format rate, of ``overlong_penalty`` minus the cut fraction.
"""
from __future__ import annotations

import functools
import json
from typing import Callable, Mapping, Sequence

from r1_sft.answer_reader import completion_choice, normalize_gold
from r1_sft.r1_format import THINK_CLOSE, THINK_OPEN

# Default weights of the summed reward (correctness dominates; format and length shape it).
ACCURACY_WEIGHT = 1.0
FORMAT_WEIGHT = 0.25
OVERLONG_WEIGHT = 0.25


def _options(options: Mapping[str, str] | str | None) -> Mapping[str, str] | str:
    """The dataset stores each question's options as a JSON string (dict columns would be padded)."""
    if isinstance(options, str) and options.startswith("{"):
        return json.loads(options)
    return options or "ABCDE"


# ---- one completion ------------------------------------------------------------------------

def accuracy_score(completion: str, gold: str, options: Mapping[str, str] | str = "ABCDE") -> float:
    """1.0 when the stated letters equal the gold set exactly, else 0.0 (unclosed think: 0.0)."""
    choice = completion_choice(completion, _options(options))
    return float(bool(choice) and choice == normalize_gold(gold))


def is_well_formatted(completion: str, options: Mapping[str, str] | str = "ABCDE") -> bool:
    """Think closed exactly once, no second think block, a non-empty answer that states a choice."""
    body = completion.lstrip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN):]
    if body.count(THINK_CLOSE) != 1 or THINK_OPEN in body:
        return False
    answer = body.split(THINK_CLOSE)[1].strip()
    return bool(answer) and bool(completion_choice(completion, _options(options)))


def overlong_score(completion_ids: Sequence[int], eos_token_ids: Sequence[int]) -> float:
    """-1.0 when generation was cut at the limit (the last token is not an end-of-sequence), else 0.0."""
    return 0.0 if completion_ids and completion_ids[-1] in eos_token_ids else -1.0


# ---- TRL reward functions: lists in, one float per completion out -----------------------------
# TRL calls each with prompts, completions, completion_ids and every dataset column as a list.

def accuracy_reward(completions: list[str], answer: list[str], options: list[str], **_) -> list[float]:
    return [accuracy_score(c, a, o) for c, a, o in zip(completions, answer, options)]


def format_reward(completions: list[str], options: list[str], **_) -> list[float]:
    return [float(is_well_formatted(c, o)) for c, o in zip(completions, options)]


def overlong_penalty(completion_ids: list[list[int]], eos_token_ids: Sequence[int] = (), **_) -> list[float]:
    return [overlong_score(ids, eos_token_ids) for ids in completion_ids]


def mcq_reward_funcs(eos_token_ids: Sequence[int], accuracy_weight: float = ACCURACY_WEIGHT,
                     format_weight: float = FORMAT_WEIGHT,
                     overlong_weight: float = OVERLONG_WEIGHT) -> tuple[list[Callable], list[float]]:
    """The three MCQ rewards and their weights, in the order TRL logs them."""
    # a partial (not a closure): picklable, and TRL logs it under the function's own name
    return ([accuracy_reward, format_reward, functools.partial(overlong_penalty, eos_token_ids=tuple(eos_token_ids))],
            [accuracy_weight, format_weight, overlong_weight])
