"""training_logs/report.html: a run's log history as one self-contained page of charts.

Drawn from the Trainer's ``log_history`` (the entries of ``log_history.jsonl``), one chart per
family of keys that the run logged, x = optimizer step:

  loss           ``loss`` (train) and ``eval_loss``
  learning_rate  ``learning_rate``
  grad_norm      ``grad_norm`` (before clipping)
  rewards        GRPO (TRL): ``reward`` and every ``rewards/<function>/mean``, their ``eval_`` twins
  kl             GRPO: ``kl`` to the reference model
  length         GRPO: ``completions/mean_length``

plus a table of each key's first, last, lowest and highest value. SFT and GRPO runs call the same writer.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from r1_sft.html_page import chart, esc, page, pyplot, table
from r1_sft.jsonl_io import atomic_write_text

REWARD_KEY = re.compile(r"^(eval_)?(reward|rewards/.+/mean)$")
CHARTS = [  # (name, caption, does a key belong)
    ("loss", "训练 / 验证损失 (train and eval loss)", lambda k: k in ("loss", "eval_loss")),
    ("learning_rate", "学习率 (learning rate)", lambda k: k == "learning_rate"),
    ("grad_norm", "梯度范数 (grad norm, before clipping)", lambda k: k == "grad_norm"),
    ("rewards", "奖励 (GRPO rewards: total and per reward function)", lambda k: bool(REWARD_KEY.match(k))),
    ("kl", "与参考模型的 KL (GRPO kl)", lambda k: k in ("kl", "eval_kl")),
    ("length", "生成长度 (GRPO completions/mean_length)", lambda k: k in ("completions/mean_length",
                                                                         "eval_completions/mean_length")),
]


def series(log_history: Sequence[dict]) -> dict[str, list[tuple[int, float]]]:
    """Every numeric key of the history as (step, value) points, in logging order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        if not isinstance(step, int):
            continue
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((step, float(value)))
    return out


def render_training_report(log_history: Sequence[dict], title: str = "Training") -> str:
    points = series(log_history)
    parts = [f"<h1>{esc(title)}: training_logs</h1>",
             f'<p class="note">{len(log_history)} log entries; x = optimizer step.</p>']
    drawn = 0
    plt = pyplot()
    for name, caption, belongs in CHARTS:
        keys = [k for k in points if belongs(k)]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for key in keys:
            xs, ys = zip(*points[key])
            ax.plot(xs, ys, label=key, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if name == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        parts.append(chart(fig, name, caption))
        drawn += 1
    if not drawn:
        parts.append('<p class="note">nothing was logged (no step reached --logging_steps).</p>')
    rows = [[key, len(p), round(p[0][1], 6), round(p[-1][1], 6), round(min(v for _, v in p), 6),
             round(max(v for _, v in p), 6)] for key, p in sorted(points.items())]
    parts += ["<h2>数值 Values</h2>", table(["key", "points", "first", "last", "min", "max"], rows)]
    return page(f"{title}: training_logs", parts)


def write_training_report(logs_dir: str | Path, log_history: Sequence[dict], title: str = "Training") -> Path:
    """Write ``logs_dir/report.html`` (atomic) and return its path."""
    out = Path(logs_dir) / "report.html"
    atomic_write_text(out, render_training_report(log_history, title))
    return out
