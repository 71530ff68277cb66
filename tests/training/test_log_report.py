"""training_logs/report.html (issue 28): loss, learning rate, grad norm and GRPO's rewards as charts,
opened in a real browser (Debian's chromium through Playwright), offline."""
from __future__ import annotations

import pytest
from browser import chromium

from r1_sft.training.log_report import render_training_report, write_training_report

SFT = [{"loss": 2.5 - 0.1 * s, "grad_norm": 1.0 + 0.05 * s, "learning_rate": 2e-4 * (1 - s / 10), "epoch": s / 10,
        "step": s} for s in range(1, 10)] + [{"eval_loss": 2.2, "step": 5}, {"eval_loss": 1.9, "step": 9},
                                             {"train_runtime": 12.5, "step": 9}]
# The keys TRL's GRPOTrainer logs (rewards per reward function, kl, completion lengths).
GRPO = [{"loss": 0.01, "grad_norm": 0.3, "learning_rate": 1e-5, "reward": 0.2 + 0.05 * s, "reward_std": 0.1,
         "rewards/accuracy_reward/mean": 0.1 * s, "rewards/format_reward/mean": 0.5, "kl": 0.001 * s,
         "completions/mean_length": 300 - s, "step": s} for s in range(1, 6)] + [
    {"eval_rewards/accuracy_reward/mean": 0.3, "eval_reward": 0.6, "step": 5}]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("profile")) as (context, outside):
        yield context
    assert outside == [], outside


def charts_shown(browser, path) -> tuple[dict, str]:
    page = browser.new_page()
    page.goto(path.as_uri())
    charts = page.eval_on_selector_all("figure.chart", """fs => Object.fromEntries(fs.map(f => {
        const img = f.querySelector('img'); return [f.dataset.chart, img.complete && img.naturalWidth > 100]; }))""")
    text = page.inner_text("body")
    page.close()
    return charts, text


def test_sft_logs_show_loss_learning_rate_and_grad_norm(browser, tmp_path):
    path = write_training_report(tmp_path, SFT, "SFT")
    charts, text = charts_shown(browser, path)
    assert charts == {"loss": True, "learning_rate": True, "grad_norm": True}
    assert "eval_loss" in text and "train_runtime" in text  # every logged key is in the values table
    assert "http" not in path.read_text(encoding="utf-8")


def test_grpo_logs_add_rewards_kl_and_length(browser, tmp_path):
    path = write_training_report(tmp_path, GRPO, "GRPO")
    charts, text = charts_shown(browser, path)
    assert charts == {"loss": True, "learning_rate": True, "grad_norm": True, "rewards": True, "kl": True,
                      "length": True}
    for key in ("rewards/accuracy_reward/mean", "rewards/format_reward/mean", "eval_reward"):
        assert key in text


def test_nothing_logged_says_so():
    assert "nothing was logged" in render_training_report([{"train_runtime": 1.0, "step": 0}])
