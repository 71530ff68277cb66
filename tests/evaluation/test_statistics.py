"""Evaluation statistics (r1_sft/evaluation/statistics.py): which questions are scored and how sure the numbers are.

Hand computations on small fixed tables, and the real evaluation on a file sorted by department.
"""
from __future__ import annotations

import json
import math

import pytest

from r1_sft.evaluation.questions import load_items, select_items
from r1_sft.evaluation.statistics import draw_questions, mcq_at_k, metric_stats, paired_difference


def test_standard_error_and_interval_match_a_hand_computation():
    # 8 questions, 6 right: mean 0.75; squared deviations 6 x 0.0625 + 2 x 0.5625 = 1.5, sd = sqrt(1.5 / 7)
    # = 0.462910; SE = sd / sqrt(8) = 0.163663; t(0.975, 7 df) = 2.364624 (t table); half width 0.386999.
    st = metric_stats([1, 0, 1, 1, 0, 1, 1, 1])
    assert st["value"] == 0.75 and st["n"] == 8
    assert st["se"] == pytest.approx(0.163663, abs=1e-6)
    assert st["ci95"] == pytest.approx([0.75 - 0.386999, 0.75 + 0.386999], abs=1e-5)
    assert metric_stats([1.0])["se"] is None  # one question: no interval, not a fake one


def test_question_is_the_unit_not_the_sample():
    """4 samples of 2 questions are 2 observations: the interval is that of the 2 question means."""
    from r1_sft.evaluation.statistics import per_question

    def sample(correct):
        return {"correct": float(correct), "choice": "A" if correct else "B", "outcome": "answered",
                "format": {"think_closed": 1.0, "answer_nonempty": 1.0, "eos": 1.0}}

    runs = [[sample(1), sample(0)], [sample(1), sample(1)], [sample(1), sample(0)], [sample(1), sample(0)]]
    values = per_question(runs, gold=["A", "A"])
    assert values["accuracy"] == [1.0, 0.25] and metric_stats(values["accuracy"])["n"] == 2
    assert values["pass@1"] == [1.0, 0.25] and values["maj@4"] == [1.0, 0.0] and values["pass@4"] == [1.0, 1.0]


def test_maj_at_k_and_pass_at_k_by_hand():
    def s(choice, gold):
        return {"choice": choice, "correct": float(choice == gold)}

    gold = ["A", "B", "C"]
    # question 1: A A B -> majority A (right), pass@3 1; question 2: C C B -> majority C (wrong), pass@3 1;
    # question 3: "" D C tie -> the first ("" = no answer) -> wrong, pass@3 1
    runs = [[s("A", "A"), s("C", "B"), s("", "C")], [s("A", "A"), s("C", "B"), s("D", "C")],
            [s("B", "A"), s("B", "B"), s("C", "C")]]
    got = mcq_at_k(runs, gold)
    assert got["pass@1"] == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    assert got["maj@3"] == [1.0, 0.0, 0.0] and got["pass@3"] == [1.0, 1.0, 1.0]


def test_mcnemar_p_value_and_the_verdict():
    base = [1, 0, 0, 0, 0, 0, 0, 0]
    tuned = [1, 1, 1, 1, 1, 1, 1, 0]  # 6 questions gained, none lost: exact two-sided p = 2 x 0.5^6
    d = paired_difference(base, tuned, seed=0, binary=True)
    assert d["diff"] == pytest.approx(0.75) and d["p_value"] == pytest.approx(0.03125)
    assert d["ci95"][0] > 0 and d["distinguishable"] and d["method"].startswith("McNemar")
    # 1 gained, 1 lost: no evidence of a change
    same = paired_difference([1, 0, 1, 0], [0, 1, 1, 0], seed=0, binary=True)
    assert same["p_value"] == 1.0 and not same["distinguishable"] and same["ci95"][0] < 0 < same["ci95"][1]


def test_paired_permutation_and_bootstrap_are_seeded():
    a = [0.2, 0.4, 0.5, 0.1, 0.3, 0.6, 0.2, 0.4, 0.5, 0.3]
    b = [x + 0.1 for x in a]  # every question +0.1: p is the smallest a permutation test can give
    first, again = paired_difference(a, b, seed=7), paired_difference(a, b, seed=7)
    assert first == again  # same seed, same interval and p
    assert first["diff"] == pytest.approx(0.1) and first["ci95"] == pytest.approx([0.1, 0.1])
    assert first["p_value"] < 0.01 and first["distinguishable"] and first["method"].startswith("paired permutation")
    noise = paired_difference(a, list(reversed(a)), seed=7)
    assert noise["p_value"] > 0.5 and not noise["distinguishable"]


def test_the_draw_is_stratified_seeded_and_in_file_order():
    groups = ["内科"] * 50 + ["外科"] * 30 + ["儿科"] * 20  # a benchmark file sorted by department
    chosen, drawn = draw_questions(groups, 10, seed=42)
    assert drawn == "random, stratified by group" and chosen == sorted(chosen) and len(set(chosen)) == 10
    counts = {g: sum(groups[i] == g for i in chosen) for g in set(groups)}
    assert counts == {"内科": 5, "外科": 3, "儿科": 2}  # proportional
    assert draw_questions(groups, 10, seed=42)[0] == chosen and draw_questions(groups, 10, seed=1)[0] != chosen
    assert draw_questions(groups, 10, seed=42, first=True) == (list(range(10)), "first N")
    assert draw_questions(groups, 0, seed=42) == (list(range(100)), "all")
    assert draw_questions([""] * 100, 10, seed=3)[1] == "random"


def _department_sorted_file(path, per_department: int = 8) -> list[str]:
    departments = ["内科", "外科", "儿科", "妇产科"]
    with open(path, "w", encoding="utf-8") as fh:
        for d in departments:
            for i in range(per_department):
                fh.write(json.dumps({"id": f"{d}-{i}", "question": f"{d}第{i}题：下列哪项正确？", "subject": d,
                                     "options": {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}, "answer": "ABCD"[i % 4]},
                                    ensure_ascii=False) + "\n")
    return departments


def test_num_samples_scores_several_departments_and_the_same_questions_with_the_same_seed(
        tiny_model_dir, tmp_path, monkeypatch):
    """evaluate_model.py --num_samples 10 on a file sorted by department (the first 10 would be one)."""
    from r1_sft.evaluation.run import EvalConfig, run_evaluation

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "sorted.jsonl"
    departments = _department_sorted_file(data)
    assert {item.group for item in load_items(data, "mcq")[:10]} == {"内科", "外科"}  # what first-N scored

    ids = []
    for run in ("one", "two"):
        run_evaluation(EvalConfig(task="mcq", data=str(data), num_samples=10, base_model=str(tiny_model_dir),
                                  adapter="", max_new_tokens=4, output_dir=str(tmp_path), run_name=run))
        preds = [json.loads(line) for line in (tmp_path / run / "predictions.jsonl").open(encoding="utf-8")]
        ids.append([p["id"] for p in preds])
    assert ids[0] == ids[1] and len(set(ids[0])) == 10  # same seed, same questions
    assert {i.split("-")[0] for i in ids[0]} == set(departments)  # every department, not the first one or two
    summary = json.loads((tmp_path / "one" / "summary.json").read_text(encoding="utf-8"))
    assert summary["data"] | {} == {**summary["data"], "questions": 10, "of": 32, "seed": 42,
                                     "drawn": "random, stratified by group"}
    groups = summary["models"]["base"]["groups"]
    assert sum(g["n"] for g in groups.values()) == 10
    assert all(len(g["ci95"]) == 2 and g["ci95"][0] <= g["accuracy"] <= g["ci95"][1] for g in groups.values())
    report = (tmp_path / "one" / "report.md").read_text(encoding="utf-8")
    assert "10 of 32 questions, seed 42, random, stratified by group" in report
    acc = summary["models"]["base"]["stats"]["accuracy"]
    assert acc["n"] == 10 and math.isclose(acc["value"], summary["models"]["base"]["accuracy"])
    # the same draw as select_items gives (one definition for every caller)
    assert [i.id for i in select_items(load_items(data, "mcq"), 10, 42)[0]] == ids[0]


def test_paired_blocks_exist_only_for_the_models_present():
    from r1_sft.evaluation.statistics import paired_stats

    base = {"accuracy": [0.0, 1.0, 0.0, 1.0], "think_closed": [1.0, 1.0, 0.0, 1.0]}
    tuned = {"accuracy": [1.0, 1.0, 1.0, 1.0], "think_closed": [1.0, 1.0, 1.0, 1.0]}
    both = paired_stats({"base": base, "tuned": tuned, "tuned2": base}, seed=1, n_samples=1)
    assert list(both) == ["tuned-base", "tuned2-base"]
    assert both["tuned-base"]["accuracy"]["method"].startswith("McNemar")  # accuracy, one sample per question
    assert both["tuned-base"]["think_closed"]["method"].startswith("paired permutation")
    assert both["tuned2-base"]["accuracy"]["diff"] == 0.0 and not both["tuned2-base"]["accuracy"]["distinguishable"]
    assert paired_stats({"base": base}, seed=1, n_samples=1) == {}
