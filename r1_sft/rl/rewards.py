"""Verifiable rewards for GRPO on multiple-choice questions, each a small function with a table of cases.

A completion is what R1-Distill generates after its prompt, which already ends in ``<think>\\n``: it
starts INSIDE the think block (``reasoning\\n</think>\\n\\nanswer``), with no opening ``<think>``.

* **accuracy** 1 or 0: the option letters the answer (text after ``</think>``) states, read by the
  project's MCQ reader (``answer_reader.completion_choice``: not fooled by B超 / 维生素C / CT), equal the gold
  set exactly ("AC" for "AC", not "A", not "ABC"). An unclosed think block has no answer: 0. With
  ``partial_credit`` a multiple-answer question pays ``PARTIAL_CREDIT`` for a proper subset of its gold
  letters with no wrong one ("A" for "AC"); off by default, as the exams score the exact set.
* **format** 1 or 0: a non-empty reasoning, exactly one ``</think>``, no second ``<think>``, and a
  non-empty answer that states a choice the reader finds. (A leading ``<think>``, as an old-template
  completion may have, is tolerated.)
* **overlong** between -1 and 0: DAPO's soft over-length punishment (arXiv 2503.14476, eq. 13, TRL's
  ``get_soft_overlong_punishment``): 0 up to the last ``OVERLONG_RAMP`` of ``max_completion_length``, then
  a linear ramp down to -1 at the limit; a completion cut at the limit (no EOS at its end) gets -1.

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
OVERLONG_RAMP = 0.2  # the share of the completion budget the soft penalty ramps over (DAPO: 4,096 of 20,480)
PARTIAL_CREDIT = 0.5  # --partial_credit: a correct proper subset of a multiple-answer question's letters


def _options(options: Mapping[str, str] | str | None) -> Mapping[str, str] | str:
    """The dataset stores each question's options as a JSON string (dict columns would be padded)."""
    if isinstance(options, str) and options.startswith("{"):
        return json.loads(options)
    return options or "ABCDE"


# ---- one completion ------------------------------------------------------------------------

def accuracy_score(completion: str, gold: str, options: Mapping[str, str] | str = "ABCDE",
                   partial_credit: bool = False) -> float:
    """1.0 when the stated letters equal the gold set exactly, else 0.0 (unclosed think: 0.0); with
    ``partial_credit``, PARTIAL_CREDIT for a proper subset of a multiple-answer gold set."""
    choice, gold = completion_choice(completion, _options(options)), normalize_gold(gold)
    if choice and choice == gold:
        return 1.0
    if partial_credit and choice and len(gold) > 1 and set(choice) < set(gold):
        return PARTIAL_CREDIT
    return 0.0


def is_well_formatted(completion: str, options: Mapping[str, str] | str = "ABCDE") -> bool:
    """A non-empty reasoning, think closed exactly once, no second think block, an answer that states a choice."""
    body = completion.lstrip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN):]
    if body.count(THINK_CLOSE) != 1 or THINK_OPEN in body:
        return False
    reasoning, answer = (part.strip() for part in body.split(THINK_CLOSE))
    return bool(reasoning) and bool(answer) and bool(completion_choice(completion, _options(options)))


def overlong_score(completion_ids: Sequence[int], eos_token_ids: Sequence[int], max_length: int = 0,
                   ramp: float = OVERLONG_RAMP) -> float:
    """-1.0 when generation was cut at the limit (the last token is not an end-of-sequence); else DAPO's
    ramp over the last ``ramp`` share of ``max_length`` (0 = no ramp: 0.0)."""
    if not (completion_ids and completion_ids[-1] in eos_token_ids):
        return -1.0
    cache = int(max_length * ramp)
    if not (max_length and cache):
        return 0.0
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(max_length, cache)([completion_ids])[0]


# ---- TRL reward functions: lists in, one float per completion out -----------------------------
# TRL calls each with prompts, completions, completion_ids and every dataset column as a list.

def accuracy_reward(completions: list[str], answer: list[str], options: list[str], partial_credit: bool = False,
                    **_) -> list[float]:
    return [accuracy_score(c, a, o, partial_credit) for c, a, o in zip(completions, answer, options)]


def format_reward(completions: list[str], options: list[str], **_) -> list[float]:
    return [float(is_well_formatted(c, o)) for c, o in zip(completions, options)]


def overlong_penalty(completion_ids: list[list[int]], eos_token_ids: Sequence[int] = (), max_length: int = 0,
                     **_) -> list[float]:
    return [overlong_score(ids, eos_token_ids, max_length) for ids in completion_ids]


def mcq_reward_funcs(eos_token_ids: Sequence[int], max_completion_length: int = 0,
                     accuracy_weight: float = ACCURACY_WEIGHT, format_weight: float = FORMAT_WEIGHT,
                     overlong_weight: float = OVERLONG_WEIGHT,
                     partial_credit: bool = False) -> tuple[list[Callable], list[float]]:
    """The three MCQ rewards and their weights, in the order TRL logs them (``max_completion_length`` 0: no ramp)."""
    # partials (not closures): picklable, and TRL logs each under the function's own name
    accuracy = functools.partial(accuracy_reward, partial_credit=True) if partial_credit else accuracy_reward
    overlong = functools.partial(overlong_penalty, eos_token_ids=tuple(eos_token_ids), max_length=max_completion_length)
    return [accuracy, format_reward, overlong], [accuracy_weight, format_weight, overlong_weight]
