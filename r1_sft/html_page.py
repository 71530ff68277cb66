"""Self-contained HTML reports (evaluation's report.html, training's training_logs/report.html).

One file opens offline: styles inline, every chart a matplotlib PNG embedded as a ``data:`` URL,
every text escaped. Nothing is fetched from anywhere, so the file can be mailed or archived as is.
"""
from __future__ import annotations

import base64
import html
import io
import warnings
from typing import Iterable, Sequence

# Chinese labels (departments, questions) need a CJK font; the first one installed is used.
CJK_FONTS = ["Noto Sans CJK SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "SimHei", "Microsoft YaHei",
             "PingFang SC", "DejaVu Sans"]

STYLE = """
body { font: 15px/1.55 system-ui, "Noto Sans CJK SC", "Microsoft YaHei", sans-serif; color: #1f2328;
       max-width: 1100px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure.chart { margin: 1em 0; } figure.chart img { max-width: 100%; border: 1px solid #eee; }
figcaption, .note { color: #656d76; font-size: .88em; }
.samples td { max-width: 30em; white-space: pre-wrap; }
details { color: #656d76; }
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def pyplot():
    """matplotlib's pyplot on the file-only backend, with a CJK-capable font first in line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.sans-serif"] = CJK_FONTS
    plt.rcParams["axes.unicode_minus"] = False
    return plt


def chart(fig, name: str, caption: str) -> str:
    """A figure as an embedded PNG (``<figure class="chart" data-chart=NAME>``); the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # no CJK font installed: boxes, not errors
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure class="chart" data-chart="{esc(name)}"><img alt="{esc(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>')


def table(header: Sequence[str], rows: Iterable[Sequence], css_class: str = "") -> str:
    """An HTML table; cells are escaped; a number cell is right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float)) and not isinstance(cell, bool)
            cells.append(f'<td class="num">{esc(cell)}</td>' if numeric else f"<td>{esc(cell)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def page(title: str, parts: Sequence[str]) -> str:
    """The whole document: ``parts`` are HTML fragments already escaped (``esc``, ``table``, ``chart``)."""
    return ("<!doctype html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
