"""The evaluation's statistics: which questions are scored, and how sure each number is.

* :func:`draw_questions`: ``--num_samples N`` of M questions, a seeded random draw, stratified by the
  file's subject / department field when it has one (benchmark files are sorted by subject: the first
  N would be one department). Proportional allocation, largest remainders; file order kept.
* :func:`metric_stats`: the question is the unit. Samples of one question are not independent, so
  each question's value is the mean over its ``n_samples`` outputs, and the standard error is
  ``sd(question values) / sqrt(n)``; the 95% interval is ``mean ± t(0.975, n-1) · SE``.
* :func:`paired_difference`: tuned minus base on the same questions. 95% interval: percentile
  bootstrap over questions (10,000 resamples, seeded). p-value: exact McNemar test (binomial on the
  discordant questions) for accuracy with one sample per question, else a paired permutation test
  (random sign flips of the per-question differences, 10,000 draws, seeded). "distinguishable from
  zero" means p < 0.05 and an interval that excludes 0.
* :func:`mcq_at_k`: with ``--n_samples k``: pass@1 (mean accuracy over samples), maj@k (the most
  frequent choice of the k, ties to the choice that came first), pass@k (any of the k right).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

BOOTSTRAP = 10_000  # resamples of the paired bootstrap
PERMUTATIONS = 10_000  # sign-flip draws of the paired permutation test
ALPHA = 0.05


# ---- which questions --------------------------------------------------------------------------

def draw_questions(groups: Sequence[str], num_samples: int, seed: int, first: bool = False) -> tuple[list[int], str]:
    """Indices (in file order) of the questions to score, and how they were drawn, in words.

    ``groups``: each question's subject / department ("" when the file has none). ``num_samples`` 0 or
    at least the file's size: all. ``first``: the first N (the old behaviour, by name).
    """
    total = len(groups)
    if num_samples <= 0 or num_samples >= total:
        return list(range(total)), "all"
    if first:
        return list(range(num_samples)), "first N"
    rng = np.random.default_rng(seed)
    if not any(groups):
        return sorted(rng.choice(total, size=num_samples, replace=False).tolist()), "random"
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    names = sorted(members)
    exact = [num_samples * len(members[g]) / total for g in names]
    quota = [math.floor(q) for q in exact]
    # largest remainders get the questions left over; equal remainders in a seeded random order
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - quota[i]), rng.random()))
    for i in order[:num_samples - sum(quota)]:
        quota[i] += 1
    chosen = [idx for g, q in zip(names, quota) for idx in rng.choice(members[g], size=q, replace=False).tolist()]
    return sorted(chosen), "random, stratified by group"


# ---- one model's numbers ----------------------------------------------------------------------

def question_values(runs: Sequence[Sequence[dict]], read) -> list[float] | None:
    """Per question, the mean of ``read(sample)`` over its samples (runs x questions); None when unknown."""
    values = []
    for q in range(len(runs[0])):
        got = [read(run[q]) for run in runs]
        if any(v is None for v in got):
            return None
        values.append(float(np.mean(got)))
    return values


def metric_stats(values: Sequence[float]) -> dict:
    """``{"value", "se", "ci95", "n"}`` over questions: mean, standard error, t-interval (n >= 2)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    n = len(x)
    value = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"value": value, "se": None, "ci95": None, "n": n}
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * se
    return {"value": value, "se": se, "ci95": [value - half, value + half], "n": n}


def mcq_at_k(runs: Sequence[Sequence[dict]], gold: Sequence[str]) -> dict[str, list[float]]:
    """Per-question values of pass@1, maj@k and pass@k for k = the number of sample runs."""
    k = len(runs)
    out: dict[str, list[float]] = {"pass@1": [], f"maj@{k}": [], f"pass@{k}": []}
    for q, answer in enumerate(gold):
        choices = [run[q]["choice"] for run in runs]
        counts = Counter(choices)
        top = max(counts.values())
        majority = next(c for c in choices if counts[c] == top)  # ties: the one that came first
        correct = [float(run[q]["correct"]) for run in runs]
        out["pass@1"].append(float(np.mean(correct)))
        out[f"maj@{k}"].append(float(bool(majority) and majority == answer))
        out[f"pass@{k}"].append(float(max(correct)))
    return out


# ---- two models on the same questions ----------------------------------------------------------

def paired_difference(a: Sequence[float], b: Sequence[float], seed: int, binary: bool = False) -> dict:
    """``b - a`` per question: ``{"diff", "ci95", "p_value", "method", "distinguishable"}``.

    ``binary``: both are 0/1 per question (accuracy with one sample): exact McNemar p-value.
    """
    from scipy import stats

    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(d)
    diff = float(d.mean()) if n else 0.0
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(BOOTSTRAP, n))].mean(axis=1) if n else np.zeros(1)
    lo, hi = (float(v) for v in np.percentile(boot, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)]))
    if binary:
        gained, lost = int((d > 0).sum()), int((d < 0).sum())
        p = float(stats.binomtest(gained, gained + lost, 0.5).pvalue) if gained + lost else 1.0
        method = f"McNemar exact ({gained} questions gained, {lost} lost); bootstrap interval"
    else:
        signs = rng.choice([-1.0, 1.0], size=(PERMUTATIONS, n))
        null = np.abs((signs * d).mean(axis=1))
        # +1 in both counts: the observed assignment is one of the permutations (never p = 0)
        p = float((np.sum(null >= abs(diff) - 1e-12) + 1) / (PERMUTATIONS + 1)) if n else 1.0
        method = f"paired permutation (sign flips, {PERMUTATIONS} draws); bootstrap interval"
    return {"diff": diff, "ci95": [lo, hi], "p_value": p, "method": method,
            "distinguishable": bool(p < ALPHA and (lo > 0 or hi < 0))}


# ---- summary.json's "stats", "paired" and per-group intervals -----------------------------------

def _answer_score(key: str):
    return lambda s: s["answer"][key] if "answer" in s else None


# Headline metrics, by the names the metrics module gives them; a metric no sample carries is left out.
HEADLINE = {
    "accuracy": lambda s: s.get("correct"),
    "rougeL": _answer_score("rougeL"),
    "bleu4": _answer_score("bleu4"),
    "answered": lambda s: float(s["outcome"] == "answered"),
    "think_closed": lambda s: s["format"]["think_closed"],
    "answer_nonempty": lambda s: s["format"]["answer_nonempty"],
    "eos": lambda s: s["format"]["eos"],
}


def per_question(runs: Sequence[Sequence[dict]], gold: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Each headline metric's per-question values (mean over the question's samples); MCQ with several
    samples adds pass@1, maj@k and pass@k (``gold``: the normalised gold letters)."""
    values = {}
    for name, read in HEADLINE.items():
        got = question_values(runs, read)
        if got is not None:
            values[name] = got
    if "accuracy" in values and gold is not None and len(runs) > 1:
        values.update(mcq_at_k(runs, gold))
    return values


def model_stats(values: dict[str, list[float]]) -> dict[str, dict]:
    """summary["models"][NAME]["stats"]: {METRIC: {"value", "se", "ci95", "n"}}."""
    return {name: metric_stats(v) for name, v in values.items()}


def paired_stats(values: dict[str, dict[str, list[float]]], seed: int, n_samples: int) -> dict[str, dict]:
    """summary["paired"]: {"tuned-base": {METRIC: ...}, "tuned2-base": ...} for the models present."""
    out = {}
    for name in ("tuned", "tuned2"):
        if name in values and "base" in values:
            base, other = values["base"], values[name]
            out[f"{name}-base"] = {m: paired_difference(base[m], other[m], seed,
                                                        binary=m == "accuracy" and n_samples == 1)
                                   for m in base if m in other}
    return out


def group_stats(runs: Sequence[Sequence[dict]], groups: Sequence[str]) -> dict[str, dict]:
    """Per group (subject / department): {"n": questions, "ci95": accuracy's interval over them}."""
    accuracy = question_values(runs, HEADLINE["accuracy"])
    if accuracy is None or not any(groups):
        return {}
    members: dict[str, list[float]] = {}
    for value, group in zip(accuracy, groups):
        members.setdefault(group or "-", []).append(value)
    return {g: {"n": len(v), "ci95": metric_stats(v)["ci95"]} for g, v in members.items()}
