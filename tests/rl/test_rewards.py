"""The GRPO rewards (r1_sft/rl/rewards.py) as case tables: what a completion of R1-Distill earns.

Completions start inside the think block (the prompt ends in ``<think>\\n``): no opening tag.
"""
from __future__ import annotations

import json

import pytest

from r1_sft.rl.rewards import (
    accuracy_reward,
    accuracy_score,
    format_reward,
    is_well_formatted,
    mcq_reward_funcs,
    overlong_score,
)

OPTS = {"A": "腹部B超", "B": "腹部CT", "C": "血清淀粉酶", "D": "维生素C", "E": "胃镜"}

ACCURACY_CASES = [
    # (completion, gold, reward, why)
    ("患者上腹痛向腰背部放射……\n</think>\n\n答案：C", "C", 1.0, "R1-Distill shape, no opening <think>"),
    ("<think>\n分析\n</think>\n\n答案：C", "C", 1.0, "an opening <think> is tolerated"),
    ("分析\n</think>\n\n答案：B", "C", 0.0, "wrong letter"),
    ("首选检查是B超还是CT？应查淀粉酶。\n</think>\n\n首选腹部B超。", "A", 0.0,
     "B超 is an exam, not option B (and not A): no choice stated"),
    ("分析\n</think>\n\n应补充维生素C，故选D", "D", 1.0, "维生素C is not option C"),
    ("分析\n</think>\n\n先做CT，答案：B", "B", 1.0, "CT is not option C"),
    ("分析\n</think>\n\n建议患者选择B超复查。答案：A", "A", 1.0, "选择B超 is a verb + exam, the statement wins"),
    ("答案：C\n（思考尚未结束", "C", 0.0, "unclosed think: no answer, even if a letter appears"),
    ("分析\n</think>\n\n", "C", 0.0, "closed think, empty answer"),
    ("分析\n</think>\n\n答案：A、C", "AC", 1.0, "multi-answer: exact set"),
    ("分析\n</think>\n\n答案：CA", "AC", 1.0, "multi-answer: order does not matter"),
    ("分析\n</think>\n\n答案：A", "AC", 0.0, "multi-answer: a subset is wrong"),
    ("分析\n</think>\n\n答案：ABC", "AC", 0.0, "multi-answer: a superset is wrong"),
    ("分析\n</think>\n\n**C. 血清淀粉酶**", "C", 1.0, "bold letter with its option text"),
    ("分析\n</think>\n\nＣ", "C", 1.0, "full-width letter alone on the last line"),
]


@pytest.mark.parametrize("completion,gold,reward,why", ACCURACY_CASES, ids=[c[3] for c in ACCURACY_CASES])
def test_accuracy_table(completion, gold, reward, why):
    assert accuracy_score(completion, gold, OPTS) == reward, why


FORMAT_CASES = [
    # (completion, well formatted, why)
    ("推理过程\n</think>\n\n答案：C", True, "R1-Distill completion without an opening <think>"),
    ("<think>\n推理\n</think>\n\n答案：C", True, "with an opening <think> (old template)"),
    ("推理\n</think>\n\n答案：A、C", True, "multi-answer statement"),
    ("推理过程还没有结束，答案：C", False, "unclosed think"),
    ("推理\n</think>\n\n", False, "empty answer"),
    ("推理\n</think>\n\n这道题很难，需要结合临床。", False, "answer states no choice"),
    ("推理\n</think>\n\n首选B超。", False, "B超 is not a choice"),
    ("推理\n</think>\n\n答案：C\n</think>\n\n答案：D", False, "two </think>"),
    ("推理\n</think>\n\n<think>再想想</think>答案：C", False, "a second think block"),
    ("\n</think>\n\n答案：C", False, "empty reasoning"),
    ("<think>\n  \n</think>\n\n答案：C", False, "blank reasoning inside an opening <think>"),
]


@pytest.mark.parametrize("completion,ok,why", FORMAT_CASES, ids=[c[2] for c in FORMAT_CASES])
def test_format_table(completion, ok, why):
    assert is_well_formatted(completion, OPTS) is ok, why


EOS = (151643,)
OVERLONG_CASES = [
    ([11, 22, 151643], 0.0, "stopped by EOS"),
    ([11, 22, 33], -1.0, "cut at the limit (no EOS)"),
    ([151643], 0.0, "EOS right away"),
    ([], -1.0, "nothing generated"),
]


@pytest.mark.parametrize("ids,reward,why", OVERLONG_CASES, ids=[c[2] for c in OVERLONG_CASES])
def test_overlong_table(ids, reward, why):
    assert overlong_score(ids, EOS) == reward, why


SOFT_CASES = [
    # (length with EOS at the end, penalty at a 100-token limit with DAPO's ramp over the last 20)
    (50, 0.0, "well within the budget"),
    (80, 0.0, "the ramp starts after 80 tokens"),
    (90, -0.5, "half way down the ramp"),
    (100, -1.0, "stopped on the last allowed token"),
]


@pytest.mark.parametrize("length,penalty,why", SOFT_CASES, ids=[c[2] for c in SOFT_CASES])
def test_soft_overlong_ramp(length, penalty, why):
    ids = [11] * (length - 1) + [EOS[0]]
    assert overlong_score(ids, EOS, max_length=100) == pytest.approx(penalty), why
    assert overlong_score([11] * length, EOS, max_length=100) == -1.0  # no EOS: cut at the limit


PARTIAL_CASES = [
    # (answer, gold, exact-set reward, with --partial_credit)
    ("答案：A", "AC", 0.0, 0.5),
    ("答案：A、C", "AC", 1.0, 1.0),
    ("答案：A、B", "AC", 0.0, 0.0),  # a wrong letter earns nothing
    ("答案：A、B、C", "AC", 0.0, 0.0),
    ("答案：B", "C", 0.0, 0.0),  # single-answer questions have no partial credit
]


@pytest.mark.parametrize("answer,gold,exact,partial", PARTIAL_CASES)
def test_partial_credit_only_when_asked(answer, gold, exact, partial):
    completion = f"分析\n</think>\n\n{answer}"
    assert accuracy_score(completion, gold, OPTS) == exact
    assert accuracy_score(completion, gold, OPTS, partial_credit=True) == partial


def test_trl_shaped_functions_read_dataset_columns():
    """TRL passes each dataset column as a list; options travel as JSON strings."""
    options = json.dumps(OPTS, ensure_ascii=False)
    completions = ["x\n</think>\n\n答案：C", "x\n</think>\n\n答案：D", "还在想"]
    kw = dict(prompts=["p"] * 3, completion_ids=[[1, 151643], [1, 151643], [1, 2]], answer=["C"] * 3,
              options=[options] * 3, trainer_state=None)
    assert accuracy_reward(completions, **kw) == [1.0, 0.0, 0.0]
    assert format_reward(completions, **kw) == [1.0, 1.0, 0.0]
    funcs, weights = mcq_reward_funcs(EOS)
    assert funcs[2](completions=completions, **kw) == [0.0, 0.0, -1.0]
    from trl.trainer.utils import get_callable_name

    assert [get_callable_name(f) for f in funcs] == ["accuracy_reward", "format_reward", "overlong_penalty"]
    assert len(weights) == 3 and weights[0] > weights[1] > 0
    # --partial_credit keeps the logged name; at a 10-token limit the ramp covers tokens 9-10
    partial, _ = mcq_reward_funcs(EOS, max_completion_length=10, partial_credit=True)
    assert get_callable_name(partial[0]) == "accuracy_reward"
    assert partial[0](completions=["x\n</think>\n\n答案：A"], **{**kw, "answer": ["AC"], "options": [options]}) == [0.5]
    assert partial[2](completions=completions, **{**kw, "completion_ids": [[1] * 9 + [151643]]}) == [-1.0]


def test_trl_own_think_format_reward_fails_r1_distill():
    """Why the project has its own format reward: TRL's expects an opening <think>."""
    from trl.rewards import think_format_reward

    completion = "推理过程\n</think>\n\n答案：C"
    assert think_format_reward([[{"content": completion}]]) == [0.0]
    assert is_well_formatted(completion, OPTS)
