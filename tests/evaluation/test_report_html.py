"""report.html (issue 28) opened in a real browser: Debian's chromium driven by Playwright, offline.

One real ``scripts/evaluate_model.py`` run on the stand-in (today's summary.json) and the same run
with the statistics fields the statistics issue adds (intervals, paired difference, groups with
intervals, questions drawn), written by hand into a copy. Each page must show every chart it names,
load nothing from the network, and keep model text as text.
"""
from __future__ import annotations

import json
import shutil

import pytest
from browser import chromium

from r1_sft.evaluation.report_html import write_report_html

from conftest import REPO, run_script

SFT_VAL = REPO / "tests" / "fixtures" / "eval_sft_val.jsonl"


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    proc = run_script("scripts/evaluate_model.py", "--base_model", tiny_model_dir, "--adapter", "", "--data", SFT_VAL,
                      "--num_samples", "2", "--n_samples", "2", "--max_new_tokens", "12", "--batch_size", "2",
                      "--output_dir", out, "--run_name", "r", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report.html" in proc.stdout
    return out / "r"


def with_statistics(run_dir, folder):
    """A copy of the run whose summary carries the statistics issue's fields (two models, groups)."""
    shutil.copytree(run_dir, folder)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    base = summary["models"]["base"]
    tuned = json.loads(json.dumps(base))
    summary["models"] = {"base": base, "tuned": tuned}
    summary["data"].update({"of": 2400, "seed": 42, "drawn": 2})
    for name, value in (("base", 0.41), ("tuned", 0.57)):
        block = summary["models"][name]
        block["stats"] = {"answer rouge-l": {"value": value, "se": 0.03, "ci95": [value - 0.06, value + 0.06], "n": 2},
                          "format think_closed": {"value": value / 2, "se": 0.02, "ci95": [value / 2 - 0.04,
                                                                                           value / 2 + 0.04], "n": 2}}
        block["groups"] = {"内科": {"accuracy": value, "n": 1, "ci95": [0.1, 0.9]},
                           "儿科": {"accuracy": value / 2, "n": 1, "ci95": [0.0, 0.7]}}
    summary["paired"] = {"tuned-base": {"answer rouge-l": {"diff": 0.16, "ci95": [0.04, 0.28], "p_value": 0.012,
                                                           "method": "paired bootstrap", "distinguishable": True}}}
    (folder / "summary.json").write_text(json.dumps(summary, ensure_ascii=False), encoding="utf-8")
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    tuned_lines = []
    for line in lines:
        rec = json.loads(line)
        rec.update(model="tuned", answer='<script>window.__ran=1</script>**答**')
        tuned_lines.append(json.dumps(rec, ensure_ascii=False))
    (folder / "predictions.jsonl").write_text("\n".join(lines + tuned_lines) + "\n", encoding="utf-8")
    return write_report_html(folder)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("profile")) as (context, outside):
        yield context
    assert outside == [], f"report.html asked for something off this machine: {outside}"


def shown_charts(browser, path) -> dict:
    page = browser.new_page()
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    charts = page.eval_on_selector_all("figure.chart", """fs => Object.fromEntries(fs.map(f => {
        const img = f.querySelector('img');
        return [f.dataset.chart, img.complete && img.naturalWidth > 100 && img.naturalHeight > 100]; }))""")
    text = page.inner_text("body")
    ran = page.evaluate("window.__ran")
    page.close()
    return {"charts": charts, "text": text, "ran": ran}


def test_evaluation_writes_report_html_whose_charts_all_show(browser, run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html
    seen = shown_charts(browser, run_dir / "report.html")
    assert seen["charts"] == {"headline": True, "lengths": True, "outcomes": True}
    assert "no groups in this task" in seen["text"]
    # the evaluation's statistics: each headline metric with its 95% interval over questions
    assert "[95% CI]" in seen["text"] and "rouge" in seen["text"].lower(), seen["text"][:2000]
    assert "头痛" in seen["text"] or "问题 question" in seen["text"]


def test_statistics_render_intervals_paired_difference_and_groups(browser, run_dir, tmp_path):
    path = with_statistics(run_dir, tmp_path / "stats")
    seen = shown_charts(browser, path)
    assert seen["charts"] == {"headline": True, "groups": True, "lengths": True, "outcomes": True}
    text = seen["text"]
    assert "base [95% CI]" in text and "0.57 [0.51, 0.63]" in text
    assert "0.16 [0.04, 0.28], p=0.012 (paired bootstrap; 可区分 distinguishable)" in text
    assert "questions drawn: 2 of 2400 (seed 42)" in text
    # a model's answer that holds HTML is shown as those characters, never run
    assert "<script>window.__ran=1</script>**答**" in text and seen["ran"] is None
