"""report.html: the evaluation in one self-contained page, beside report.md (built from the run's files).

Reads ``summary.json`` and ``predictions.jsonl`` of a run folder, so any run's page can be rebuilt
(``write_report_html(folder)``). Sections, each drawn only from what the summary holds:

* the headline table: with the statistics (``models[NAME]["stats"][METRIC]`` = value, se, ci95, n
  and ``paired["tuned-base"][METRIC]`` = diff, ci95, p_value, method, distinguishable) as value
  [95% interval] and a paired-difference column; without them, mean ± sd over sample runs
  (report.md's table) and tuned - base;
* charts (matplotlib PNG, embedded): headline scores with their intervals, accuracy per
  department / exam group (multiple choice, when the file names groups), answer and reasoning
  length distributions, think-closed / truncated / no-answer shares per model;
* a few questions answered side by side (reasoning folded).
"""
from __future__ import annotations

import json
from pathlib import Path

from r1_sft.evaluation.report import table_rows
from r1_sft.html_page import chart, esc, page, pyplot, table
from r1_sft.jsonl_io import atomic_write_text, read_jsonl

SAMPLES = 3  # questions shown side by side


def _num(v, digits: int = 4):
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return v if isinstance(v, int) else round(v, digits)


def _interval(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def headline_table(summary: dict) -> str:
    models = list(summary["models"])
    stats = {m: summary["models"][m].get("stats") or {} for m in models}
    if any(stats.values()):
        metrics = list(dict.fromkeys(k for m in models for k in stats[m]))
        paired = summary.get("paired") or {}
        header = ["metric", *[f"{m} [95% CI]" for m in models], "n"]
        header += [f"{key}: diff [95% CI], p" for key in paired]
        rows = []
        for metric in metrics:
            row = [metric]
            for m in models:
                s = stats[m].get(metric) or {}
                row.append(f"{_num(s.get('value'))} {_interval(s.get('ci95'))}".strip())
            row.append(next((stats[m][metric].get("n") for m in models if metric in stats[m]), "-"))
            for key, block in paired.items():
                p = block.get(metric)
                if not p:
                    row.append("-")
                    continue
                verdict = "可区分 distinguishable" if p.get("distinguishable") else "不可区分 within noise"
                row.append(f"{_num(p.get('diff'))} {_interval(p.get('ci95'))}, p={_num(p.get('p_value'), 3)} "
                           f"({p.get('method', '')}; {verdict})")
            rows.append(row)
        return table(header, rows, "headline")
    with_delta = len(models) == 2
    header = ["metric", *models] + ([f"{models[1]} - {models[0]}"] if with_delta else [])
    rows = []
    for label, values, spreads in table_rows(summary):
        cells = [label] + [f"{_num(v)}" + (f" ± {_num(s)}" if s is not None else "") for v, s in zip(values, spreads)]
        if with_delta:
            a, b = values
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and label != "n"
            cells.append(_num(b - a) if ok else "")
        rows.append(cells)
    return table(header, rows, "headline")


def headline_chart(summary: dict) -> str:
    """Scores in [0, 1] per model, with the 95% interval (statistics) or the sd over sample runs."""
    plt = pyplot()
    models = list(summary["models"])
    stats = {m: summary["models"][m].get("stats") or {} for m in models}
    if any(stats.values()):
        labels = [k for k in dict.fromkeys(k for m in models for k in stats[m])
                  if all(0 <= (stats[m].get(k) or {}).get("value", 0) <= 1 for m in models)]
        values = [[(stats[m].get(k) or {}).get("value") or 0.0 for k in labels] for m in models]
        errors = []
        for m, vals in zip(models, values):
            cis = [(stats[m].get(k) or {}).get("ci95") or [v, v] for k, v in zip(labels, vals)]
            errors.append([[max(0.0, v - lo) for v, (lo, _) in zip(vals, cis)],
                           [max(0.0, hi - v) for v, (_, hi) in zip(vals, cis)]])
        caption = "主要指标与 95% 置信区间 (headline scores, 95% CI)"
    else:
        rows = [r for r in table_rows(summary) if r[0].startswith(("accuracy", "answer", "format", "outcome"))
                and all(v is None or 0 <= v <= 1 for v in r[1]) and any(v is not None for v in r[1])]
        labels = [r[0] for r in rows]
        values = [[r[1][j] or 0.0 for r in rows] for j in range(len(models))]
        errors = [[r[2][j] or 0.0 for r in rows] for j in range(len(models))]
        caption = "主要指标（误差线：多次采样间的标准差）(headline scores, sd over sample runs)"
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4))
    width = 0.8 / len(models)
    for j, name in enumerate(models):
        ax.bar([i + j * width for i in range(len(labels))], values[j], width, label=name,
               yerr=errors[j] if labels else None, capsize=3)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return chart(fig, "headline", caption)


def groups_chart(summary: dict) -> str | None:
    """Accuracy per department / exam group (multiple choice with named groups), with intervals when given."""
    models = list(summary["models"])
    groups = sorted({g for m in models for g in (summary["models"][m].get("groups") or {})})
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(groups) * len(models) + 1)))
    height = 0.8 / len(models)
    for j, m in enumerate(models):
        blocks = [(summary["models"][m].get("groups") or {}).get(g) or {} for g in groups]
        values = [b.get("accuracy") or 0.0 for b in blocks]
        cis = [b.get("ci95") or [v, v] for b, v in zip(blocks, values)]
        err = [[max(0.0, v - lo) for v, (lo, _) in zip(values, cis)], [max(0.0, hi - v) for v, (_, hi) in zip(values, cis)]]
        ax.barh([i + j * height for i in range(len(groups))], values, height, label=m, xerr=err, capsize=2)
    ax.set_yticks([i + height * (len(models) - 1) / 2 for i in range(len(groups))])
    ax.set_yticklabels(groups, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    return chart(fig, "groups", "各科室 / 分组准确率 (accuracy per department / group)")


def lengths_chart(summary: dict, predictions: list[dict]) -> str | None:
    models = list(summary["models"])
    if not predictions:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in ((axes[0], "answer", "answer length (chars)"), (axes[1], "reasoning", "reasoning length (chars)")):
        for m in models:
            lengths = [len(p.get(key) or "") for p in predictions if p.get("model") == m]
            ax.hist(lengths, bins=20, alpha=0.55, label=m)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("outputs")
        ax.legend(fontsize=8)
    return chart(fig, "lengths", "回答与推理长度分布 (answer and reasoning length distributions)")


def outcomes_chart(summary: dict) -> str:
    plt = pyplot()
    models = list(summary["models"])
    kinds = [("think closed", ("format", "think_closed")), ("truncated", ("outcome", "cut_off")),
             ("no answer", ("outcome", "stopped_without_answer"))]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = 0.8 / len(models)
    for j, m in enumerate(models):
        block = summary["models"][m]
        values = [(block.get(a) or {}).get(b) or 0.0 for _, (a, b) in kinds]
        ax.bar([i + j * width for i in range(len(kinds))], values, width, label=m)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(kinds))])
    ax.set_xticklabels([k for k, _ in kinds])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of outputs")
    ax.legend(fontsize=8)
    return chart(fig, "outcomes", "思考闭合 / 被截断 / 无回答的比例 (think closed, truncated, no answer)")


def samples_table(summary: dict, predictions: list[dict], count: int = SAMPLES) -> str:
    models = list(summary["models"])
    by_id: dict[str, dict[str, dict]] = {}
    for rec in predictions:
        if rec.get("sample", 0) == 0:
            by_id.setdefault(str(rec.get("id")), {})[rec.get("model")] = rec
    rows = []
    for rec_id in list(by_id)[:count]:
        recs = by_id[rec_id]
        first = next(iter(recs.values()))
        cells = [f"<td>{esc(first.get('question'))}</td>", f"<td>{esc(first.get('reference'))}</td>"]
        for m in models:
            rec = recs.get(m) or {}
            answer = rec.get("answer") or f"(no answer: {rec.get('outcome') or '-'})"
            reasoning = rec.get("reasoning") or ""
            folded = f"<details><summary>推理 reasoning</summary>{esc(reasoning)}</details>" if reasoning else ""
            cells.append(f"<td>{esc(answer)}{folded}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in ["问题 question", "参考 reference", *models])
    return f'<table class="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_report_html(summary: dict, predictions: list[dict]) -> str:
    models = list(summary["models"])
    data = summary.get("data") or {}
    facts = [f"data: {data.get('file', '-')} (split {data.get('split') or '-'}, {data.get('questions', '-')} questions)"]
    if "drawn" in data or "of" in data:
        facts.append(f"questions drawn: {data.get('drawn', '-')} of {data.get('of', '-')} (seed {data.get('seed', '-')})")
    facts.append("decoding: " + json.dumps(summary.get("decoding") or {}, ensure_ascii=False))
    parts = [f"<h1>评测报告 Evaluation: {esc(' vs '.join(models))}</h1>",
             "<ul>" + "".join(f"<li>{esc(f)}</li>" for f in facts) + "</ul>",
             "<h2>主要结果 Headline</h2>", headline_table(summary), headline_chart(summary)]
    groups = groups_chart(summary)
    parts += ["<h2>分科室 By department / group</h2>",
              groups or '<p class="note">此任务没有科室 / 分组 (no groups in this task).</p>']
    lengths = lengths_chart(summary, predictions)
    parts += ["<h2>长度分布 Lengths</h2>", lengths or '<p class="note">no predictions.jsonl beside the summary.</p>',
              "<h2>输出状态 Outcomes</h2>", outcomes_chart(summary)]
    if predictions:
        parts += ["<h2>示例 Side-by-side samples</h2>", samples_table(summary, predictions)]
    return page(f"Evaluation: {' vs '.join(models)}", parts)


def write_report_html(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the run's summary.json (and predictions.jsonl when present)."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    predictions_file = run_dir / "predictions.jsonl"
    predictions = list(read_jsonl(predictions_file)) if predictions_file.is_file() else []
    out = run_dir / "report.html"
    atomic_write_text(out, render_report_html(summary, predictions))
    return out
