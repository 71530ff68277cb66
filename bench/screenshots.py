"""Screenshots for the docs: the chat page (base and tuned side by side) and an evaluation's report.html.

Starts scripts/serve_model.py on a free local port with the adapter, opens the page in Debian's
chromium (Playwright, as the browser tests do), asks one question side by side with a fixed seed and
waits for both answers; then opens report.html and shows its top (table and first charts). Nothing is drawn by hand: run it
again after the page or the report changes. Needs chromium (`make test` installs it) and a CJK font
(fonts-wqy-microhei, installed with it) for readable Chinese.

Reads:  an adapter folder (--model), an evaluation folder holding report.html (--eval_run)
Writes: docs/images/chat_page.png, docs/images/report.png

    python bench/screenshots.py --model model/tiny_r1_lora/best_model --eval_run scripts/compare/evaluation_results/demo
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from r1_sft.cli import UserError, cli_main, parse_config, path_field  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402


@dataclass
class Config:
    model: str = path_field("model/tiny_r1_lora/best_model")  # adapter served as tuned, with base beside it
    eval_run: str = path_field("scripts/compare/evaluation_results/demo")  # folder with report.html
    question: str = "高血压患者平时饮食要注意什么？"  # asked side by side
    seed: int = 42  # the same seed for base and tuned
    max_tokens: int = 160  # generation budget per answer (tokens)
    out_dir: str = path_field("docs/images")  # where the PNGs go


def serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    out = open(log, "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts/serve_model.py"), "--model", str(model), "--port", "0",
                             "--max_tokens", "512", "--model_name", "tuned", "--conversations_dir", str(log.parent / "conversations")],
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (found := re.search(r"chat page: (http://\S+/)", log.read_text(encoding="utf-8"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"the server did not start:\n{log.read_text(encoding='utf-8')[-2000:]}")
        time.sleep(0.3)
    return proc, found.group(1)


@cli_main
def main(cfg: Config) -> None:
    model, report = repo_path(cfg.model), repo_path(cfg.eval_run) / "report.html"
    if not (model / "adapter_config.json").is_file():
        raise UserError(f"--model {cfg.model}: no LoRA adapter there (make demo trains model/tiny_r1_lora)")
    if not report.is_file():
        raise UserError(f"--eval_run {cfg.eval_run}: no report.html there (python scripts/evaluate_model.py writes it)")
    out_dir = repo_path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from browser import chromium

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(model, Path(tmp) / "server.log")
        try:
            with chromium(Path(tmp) / "profile") as (context, outside):
                context.set_default_timeout(600_000)
                page = context.new_page()
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']")
                page.check("#side-by-side")
                page.click("#settings summary")
                page.fill("#seed", str(cfg.seed))
                page.fill("#max_tokens", str(cfg.max_tokens))
                page.click("#settings summary")
                page.fill("#input", cfg.question)
                page.press("#input", "Enter")
                page.wait_for_function("document.querySelectorAll('.answer[data-phase=done]').length == 2")
                page.screenshot(path=str(out_dir / "chat_page.png"))
                page.goto(report.as_uri())
                page.set_viewport_size({"width": 1100, "height": 1000})
                page.screenshot(path=str(out_dir / "report.png"), full_page=True,
                                clip={"x": 0, "y": 0, "width": 1100, "height": 2400})
            if outside:
                raise UserError(f"the pages asked for something off this machine: {outside}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"[write] {display_path(out_dir / 'chat_page.png')}, {display_path(out_dir / 'report.png')}")


if __name__ == "__main__":
    main(parse_config(Config))
