"""The evaluation's human-readable outputs: the side-by-side table, report.md, report.csv, scores.png.

Everything here reads summary.json's shape (r1_sft/evaluation/run.py writes it); nothing is computed
that summary.json does not hold, so a report can be rebuilt from the summary alone.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from r1_sft.evaluation.metrics import SCORE_KEYS
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
    lines = ["| group | n | " + " | ".join(models) + " |", "|" + "---|" * (len(models) + 2)]
    for g in groups:
        cells = [summary["models"][m].get("groups", {}).get(g, {}) for m in models]
        n = next((c["n"] for c in cells if c), 0)
        lines.append(f"| {g} | {n} | " + " | ".join(_fmt(c.get("accuracy")) for c in cells) + " |")
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


def _clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def render_report(header: Sequence[str], summary: dict, predictions: Sequence[dict], num_examples: int) -> str:
    """report.md: the header lines (data, models, decoding), the table, per-group accuracy, a few examples."""
    models = list(summary["models"])
    lines = [f"# Evaluation: {' vs '.join(models)}", "", *header, "", render_table(summary), ""]
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
