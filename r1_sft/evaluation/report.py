"""The evaluation's human-readable outputs: the side-by-side table, report.md, report.csv, scores.png.

Everything here reads summary.json's shape (r1_sft/evaluation/run.py writes it); nothing is computed
that summary.json does not hold, so a report can be rebuilt from the summary alone.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from r1_sft.data.splits import SPLIT_NOTES
from r1_sft.evaluation.metrics import SCORE_KEYS
from r1_sft.inference.decoding import describe
from r1_sft.jsonl_io import atomic_open, atomic_write_text

# Rows where lower is better; every other [0, 1] row is higher-is-better.
LOWER_IS_BETTER = ("repetition (4-gram)", "outcome cut_off", "outcome stopped_without_answer")


def _get(block: dict | None, path: Sequence[str]):
    for key in path:
        if not isinstance(block, dict) or key not in block:
            return None
        block = block[key]
    return block


def table_rows(summary: dict) -> list[tuple[str, list, list]]:
    """(metric label, one mean per model, one spread per model or None) in display order."""
    models = list(summary["models"])
    blocks = [summary["models"][m] for m in models]
    first = blocks[0]
    paths: list[tuple[str, tuple[str, ...]]] = []
    if "accuracy" in first:
        paths += [("accuracy", ("accuracy",)), ("accuracy single-answer", ("accuracy_single",)),
                  ("accuracy multi-answer", ("accuracy_multi",)),
                  ("accuracy over answered", ("over_answered", "accuracy"))]
    for part in ("answer", "full"):
        if part in first:
            paths += [(f"{part} {k}", (part, k)) for k in SCORE_KEYS]
    if "answer" in first:
        paths += [(f"over answered: answer {k}", ("over_answered", "answer", k)) for k in SCORE_KEYS]
    paths += [(f"outcome {k}", ("outcome", k)) for k in ("answered", "cut_off", "stopped_without_answer")]
    paths += [(f"format {k}", ("format", k)) for k in ("think_closed", "answer_nonempty", "eos")]
    paths.append(("repetition (4-gram)", ("repetition",)))
    rows = []
    for label, path in paths:
        rows.append((label, [_get(b, path) for b in blocks], [_get(b.get("spread"), path) for b in blocks]))
    lengths = summary.get("lengths", {})
    for k in ("reasoning_chars", "answer_chars", "new_tokens"):
        rows.append((f"mean {k}", [lengths.get(m, {}).get(k) for m in models], [None] * len(models)))
    rows.append(("tokens_per_s", [b["tokens_per_s"] for b in blocks], [None] * len(models)))
    rows.append(("n", [b["n"] for b in blocks], [None] * len(models)))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def render_table(summary: dict) -> str:
    """The side-by-side table as Markdown (also printed to the terminal); ``mean ± sd`` over sample runs."""
    models = list(summary["models"])
    with_delta = len(models) == 2
    header = ["metric", *models] + (["tuned - base"] if with_delta else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values, spreads in table_rows(summary):
        cells = [label] + [_fmt(v) + (f" ± {s:.4f}" if s is not None else "") for v, s in zip(values, spreads)]
        if with_delta:
            a, b = values
            cells.append(_fmt(b - a) if a is not None and b is not None and label != "n" else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_groups(summary: dict) -> str:
    """Accuracy per exam class / subject (multiple choice, when the file names them); "" otherwise."""
    models = list(summary["models"])
    groups = sorted({g for m in models for g in (summary["models"][m].get("groups") or {})})
    if not groups:
        return ""
    lines = ["| group | n | " + " | ".join(f"{m} (95% CI)" for m in models) + " |", "|" + "---|" * (len(models) + 2)]
    for g in groups:
        cells = [summary["models"][m].get("groups", {}).get(g, {}) for m in models]
        n = next((c["n"] for c in cells if c), 0)
        lines.append(f"| {g} | {n} | " + " | ".join(_fmt(c.get("accuracy")) + _interval(c.get("ci95"))
                                                     for c in cells) + " |")
    return "\n".join(lines)


def _interval(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def render_stats(summary: dict) -> str:
    """Headline metrics with their standard error and 95% interval over questions, and each tuned model
    minus base as a paired difference with its interval, p-value and verdict; "" without stats."""
    models = [m for m in summary["models"] if summary["models"][m].get("stats")]
    if not models:
        return ""
    pairs = [p for p in ("tuned-base", "tuned2-base") if p in summary.get("paired", {})]
    header = ["metric", *(f"{m}: value ± SE [95% CI]" for m in models),
              *(f"{p.replace('-', ' − ')} [95% CI], p" for p in pairs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in summary["models"][models[0]]["stats"]:
        cells = [metric]
        for m in models:
            st = summary["models"][m]["stats"].get(metric)
            se = f" ± {st['se']:.4f}" if st and st["se"] is not None else ""
            cells.append(f"{st['value']:.4f}{se}{_interval(st['ci95'])}" if st else "-")
        for p in pairs:
            d = summary["paired"][p].get(metric)
            cells.append(f"{d['diff']:+.4f}{_interval(d['ci95'])}, p = {d['p_value']:.3g}"
                         f"{' (distinguishable from 0)' if d['distinguishable'] else ' (not distinguishable from 0)'}"
                         if d else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, summary: dict) -> None:
    models = list(summary["models"])
    rows = table_rows(summary)
    with_sd = any(s is not None for _, _, spreads in rows for s in spreads)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", *models] + ([f"{m} sd" for m in models] if with_sd else []))
    for label, values, spreads in rows:
        cells = ["" if v is None else v for v in values]
        if with_sd:
            cells += ["" if s is None else s for s in spreads]
        writer.writerow([label, *cells])
    atomic_write_text(path, buf.getvalue())


def write_chart(path: Path, summary: dict) -> None:
    """Two panels: higher-is-better scores and rates (left), lower-is-better repetition and missing answers (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table_rows(summary)
            if r[0].startswith(("accuracy", "answer", "over answered", "outcome", "format", "repetition"))
            and any(v is not None for v in r[1])]
    panels = [("higher is better", [r for r in rows if r[0] not in LOWER_IS_BETTER]),
              ("lower is better", [r for r in rows if r[0] in LOWER_IS_BETTER])]
    models = list(summary["models"])
    widths = [max(1, len(p[1])) for p in panels]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.55 * sum(widths) + 3), 4.5),
                             gridspec_kw={"width_ratios": widths})
    width = 0.8 / len(models)
    for ax, (title, panel) in zip(axes, panels):
        for j, name in enumerate(models):
            values = [v[j] or 0.0 for _, v, _ in panel]
            errors = [s[j] or 0.0 for _, _, s in panel]
            ax.bar([i + j * width for i in range(len(panel))], values, width, label=name,
                   yerr=errors if any(errors) else None, capsize=2)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(panel))])
        ax.set_xticklabels([label for label, _, _ in panel], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("score / rate (0-1)")
    axes[0].legend(fontsize=8)
    fig.suptitle(" vs ".join(models) + ": left higher is better, right lower is better"
                 + (" (error bars: sd over sample runs)" if any(summary["models"][m].get("spread") for m in models)
                    else ""), fontsize=10)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


STATS_NOTE = ("Each question's value is the mean over its samples; SE = sd over questions / sqrt(n), 95% CI = "
              "t-interval. Differences are paired by question: 95% CI from a bootstrap over questions (10,000 "
              "resamples, seeded), p from McNemar's exact test (accuracy, one sample) or a paired permutation test; "
              "distinguishable = p < 0.05 and the interval excludes 0.")


def data_phrase(data: dict) -> str:
    """``10 of 24 questions, seed 42, random, stratified by group``."""
    if "of" not in data:
        return f"{data['questions']} questions"
    return f"{data['questions']} of {data['of']} questions, seed {data['seed']}, {data['drawn']}"


def describe_data(data: dict) -> str:
    """One line naming the file and what its split means for the scores."""
    label, note = SPLIT_NOTES.get(data["split"], ("not a split written by the data stages", ""))
    return f"`{data['file']}` ({label}{': ' + note if note else ''})"


def report_header(cfg, summary: dict) -> list[str]:
    """report.md's lines above the table: data (N of M questions, how drawn), models, decoding, definitions."""
    models = list(summary["models"])
    sd = f"; `±` = standard deviation across the {cfg.n_samples} sample runs" if cfg.n_samples > 1 else ""
    return [
        f"- data: {describe_data(summary['data'])}; task {cfg.task}, {data_phrase(summary['data'])}",
        f"- base: `{cfg.base_model}`" + (f"; tuned: `{cfg.adapter}`" if "tuned" in models else "")
        + (f"; tuned2: `{cfg.adapter2}`" if "tuned2" in models else "") + (" (base model alone)" if len(models) == 1 else ""),
        f"- decoding: {describe(cfg.do_sample, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, cfg.n_samples)},"
        f" backend {cfg.backend}; every score is a mean over all outputs{sd}",
        "- outcome (sums to 1): `answered` = think block closed and an answer follows; `cut_off` = no answer, "
        "generation hit max_new_tokens; `stopped_without_answer` = no answer, the model stopped by itself",
        "- scores in [0, 1] over all outputs (no answer scores 0), and `over answered` over answered outputs only; "
        "ROUGE F1 on jieba words without punctuation, BLEU-4 on characters (sacrebleu zh); `answer` = text after "
        "`</think>`, `full` = reasoning + answer; mcq accuracy = exact set of letters",
        "- lower is better: repetition, cut_off, stopped_without_answer; everything else higher is better",
    ]


def _clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def render_report(header: Sequence[str], summary: dict, predictions: Sequence[dict], num_examples: int) -> str:
    """report.md: the header lines (data, models, decoding), the table, per-group accuracy, a few examples."""
    models = list(summary["models"])
    lines = [f"# Evaluation: {' vs '.join(models)}", "", *header, "", render_table(summary), ""]
    stats = render_stats(summary)
    if stats:
        lines += ["## Uncertainty (the question is the unit)", "", STATS_NOTE, "", stats, ""]
    groups = render_groups(summary)
    if groups:
        lines += ["## Accuracy by exam class / subject", "", groups, ""]
    lines += ["## Examples", ""]
    by_id: dict[str, dict[str, dict]] = {}
    for rec in predictions:
        if rec.get("sample", 0) == 0:
            by_id.setdefault(rec["id"], {})[rec["model"]] = rec
    for rec_id in list(by_id)[:num_examples]:
        recs = by_id[rec_id]
        first = next(iter(recs.values()))
        lines += [f"### {rec_id}", "", f"**问题**: {_clip(first['question'])}", "",
                  f"**参考答案**: {_clip(first['reference'])}", ""]
        for name in models:
            rec = recs.get(name)
            if rec is None:
                continue
            outcome = rec["metrics"].get("outcome")
            missing = {"cut_off": "(no answer: cut off at max_new_tokens)",
                       "stopped_without_answer": "(no answer: the model stopped before giving one)"}
            answer = missing.get(outcome) or (rec["answer"] if rec["answer"] else "(no answer)")
            choice = f" [choice: {rec['choice'] or '-'}]" if "choice" in rec else ""
            lines += [f"**{name}**{choice}: {_clip(answer)}", ""]
    return "\n".join(lines) + "\n"
