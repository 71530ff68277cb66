"""The chat page (issue 28) in a real browser: Debian's chromium driven by Playwright.

Two servers, one browser profile for the module:
* the real ``scripts/serve_model.py`` on the stand-in with a random LoRA adapter, an API key and a
  small queue: the page, the key, base and tuned side by side (the base's text equal to the terminal
  chat's), saved conversations the terminal chat reloads, errors as one line, 20 concurrent streams;
* the same app in-process over a scripted model whose reply closes its think block and holds
  markdown (the stand-in never closes it) and that writes slowly on request: reasoning then answer,
  the markdown rendered with no HTML from the model, stop mid-stream.
Every request that leaves 127.0.0.1 fails the module. No assertion depends on the stand-in's text.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from browser import chromium

from r1_sft.inference.serving import ServerSettings, create_app

from conftest import REPO, popen_script, run_script

KEY_ENV, KEY = "R1_SFT_TEST_WEB_KEY", "sk-web-test-3c1d"
QUESTION = "头痛发热怎么办？"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- servers

@pytest.fixture(scope="module")
def adapter_dir(random_adapter) -> Path:
    return random_adapter


@pytest.fixture(scope="module")
def real(adapter_dir, tmp_path_factory):
    """serve_model.py on the adapter: key required, 1 generation at a time + 3 waiting (a browser opens
    at most 6 connections to one server, so 20 requests from a page reach a full queue only below that)."""
    folder = tmp_path_factory.mktemp("web")
    log, conversations = folder / "server.log", folder / "conversations"
    with open(log, "w", encoding="utf-8") as out:
        proc = popen_script("scripts/serve_model.py", "--model", adapter_dir, "--port", "0", "--api_key_env", KEY_ENV,
                            "--max_tokens", "8", "--max_context", "1024", "--max_concurrency", "1", "--max_queue", "3",
                            "--conversations_dir", conversations, cwd=REPO, env={KEY_ENV: KEY}, stdout=out,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (found := re.search(r"chat page: (http://\S+/)", log.read_text(encoding="utf-8"))):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(encoding="utf-8")
        time.sleep(0.2)
    try:
        yield {"url": found.group(1), "conversations": conversations, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class ScriptedModel:
    """Writes a fixed reply token by token through the streamer, ``delay`` seconds per token."""

    def __init__(self, reply_ids: list[int], eos_id: int) -> None:
        self.reply_ids, self.eos_id, self.delay, self.written = reply_ids, eos_id, 0.0, 0

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, input_ids, max_new_tokens, streamer=None, stopping_criteria=(), **kwargs):
        ids, self.written = input_ids, 0
        if streamer is not None:
            streamer.put(input_ids[0])
        for token in (self.reply_ids + [self.eos_id])[:max_new_tokens]:
            if any(bool(c(ids, None).all()) for c in stopping_criteria):
                break
            time.sleep(self.delay)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            self.written += 1
            if streamer is not None:
                streamer.put(torch.tensor([token]))
        if streamer is not None:
            streamer.end()
        return ids


REPLY = ("先考虑普通感冒，再排除流感。\n</think>\n\n**多喝水**，注意休息。\n\n| 药物 | 用法 |\n|---|---|\n"
         "| 布洛芬 | 发热时 |\n\n- 测体温\n- 补充液体\n\n<img src=x onerror=\"window.__pwned=1\">")


@pytest.fixture(scope="module")
def scripted(tiny_model_dir, tmp_path_factory):
    import uvicorn

    from r1_sft.model.folders import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = ScriptedModel(tokenizer(REPLY, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
    settings = ServerSettings(model_name="scripted", context_limit=1024, default_max_tokens=512,
                              conversations_dir=str(tmp_path_factory.mktemp("scripted_conversations")))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(model, tokenizer, settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/", "model": model}
    server.should_exit = True
    thread.join(timeout=10)


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "health", timeout=30) as resp:
        return json.loads(resp.read())


def wait_idle(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (h := health(url)) != {"status": "ok", "running": 0, "waiting": 0}:
        assert time.monotonic() < deadline, f"the server still holds a slot: {h}"
        time.sleep(0.1)


# ---------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("profile")) as (context, outside):
        context.set_default_timeout(120_000)
        yield context
    assert outside == [], f"the page asked for something off this machine: {outside}"


def open_page(browser, url: str, key: str | None = None):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    if key is not None:
        page.click("#settings summary")
        page.fill("#api_key", key)
        page.dispatch_event("#api_key", "change")
        page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.errors = errors
    return page


def answers(page, phase: str, count: int) -> list[dict]:
    """Wait until ``count`` answers reached ``phase``; their model, reasoning, answer text and status."""
    page.wait_for_function(f"document.querySelectorAll('.answer[data-phase={phase}]').length >= {count}")
    return page.evaluate("""() => [...document.querySelectorAll('.answer')].map(a => ({
        model: a.dataset.model, phase: a.dataset.phase, reasoning: a.querySelector('.reasoning-text').textContent,
        answer: a.querySelector('.answer-text').textContent, status: a.querySelector('.status').textContent}))""")


# ---------------------------------------------------------------- the scripted model: what streams in

def test_reasoning_then_answer_stream_in_and_model_html_stays_text(browser, scripted):
    page = open_page(browser, scripted["url"])
    # The value each change set (the next change's old value, then the last value): the order of the phases even
    # when two changes land in one task (several streamed events read at once), where reading the element's
    # current value in the observer would show only the last. The answer starts as "waiting" (no change).
    page.evaluate("""() => { window.__old = [];
        new MutationObserver(ms => ms.forEach(m => window.__old.push(m.oldValue)))
        .observe(document.getElementById('transcript'),
                 {subtree: true, attributes: true, attributeOldValue: true, attributeFilter: ['data-phase']}); }""")
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    (a,) = answers(page, "done", 1)
    phases = page.evaluate("""() => { const seen = [...window.__old.slice(1),
        document.querySelector('.answer').dataset.phase];
        return seen.filter((p, i) => p !== seen[i - 1]); }""")
    assert phases == ["reasoning", "answer", "done"]
    assert a["reasoning"].strip() == "先考虑普通感冒，再排除流感。"
    assert page.inner_text(".answer-text strong") == "多喝水"
    assert page.eval_on_selector_all(".answer-text td", "tds => tds.map(t => t.textContent)") == ["布洛芬", "发热时"]
    assert page.eval_on_selector_all(".answer-text li", "lis => lis.map(t => t.textContent)") == ["测体温", "补充液体"]
    # The model's HTML is shown as characters, never run or turned into an element.
    assert '<img src=x onerror="window.__pwned=1">' in a["answer"]
    assert page.query_selector(".answer-text img") is None and page.evaluate("window.__pwned") is None
    assert page.eval_on_selector(".reasoning", "d => d.open") is False  # folded once the answer began
    assert page.errors == []
    page.close()


def test_stop_mid_stream_ends_generation_on_the_server(browser, scripted):
    model = scripted["model"]
    model.delay = 0.25  # about 15 s for the whole reply
    try:
        page = open_page(browser, scripted["url"])
        page.fill("#input", QUESTION)
        page.click("#send")
        answers(page, "reasoning", 1)
        assert page.is_enabled("#stop") and not page.is_enabled("#send")
        page.click("#stop")
        (a,) = answers(page, "stopped", 1)
        wait_idle(scripted["url"], timeout=10)  # the slot is free again within a token or two
        assert 0 < model.written < len(model.reply_ids) // 2
        assert "已停止" in a["status"] and page.is_enabled("#send") and page.is_enabled("#regenerate")
    finally:
        model.delay = 0.0
    page.click("#regenerate")  # the same question again, answered in full this time
    answers(page, "done", 1)
    assert page.eval_on_selector_all(".exchange", "xs => xs.length") == 1
    assert page.inner_text(".answer-text strong") == "多喝水"
    page.close()


def test_enter_confirming_an_ime_candidate_never_sends(browser, scripted):
    page = open_page(browser, scripted["url"])
    page.focus("#input")
    cdp = browser.new_cdp_session(page)
    cdp.send("Input.imeSetComposition", {"text": "toutong", "selectionStart": 7, "selectionEnd": 7})
    page.keyboard.press("Enter")  # picks the candidate: keydown with isComposing
    cdp.send("Input.insertText", {"text": "头痛"})
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("怎么办")
    assert page.query_selector(".exchange") is None
    page.keyboard.press("Enter")
    answers(page, "done", 1)
    question = page.inner_text(".question")
    assert "头痛" in question and "怎么办" in question and "\n" in question.strip()
    page.close()


# ---------------------------------------------------------------- the real server on the stand-in

def test_page_needs_the_key_then_shows_base_and_tuned(browser, real):
    page = open_page(browser, real["url"])
    assert page.is_visible("#error") and page.inner_text("#error").startswith("401 ")
    page.click("#settings summary")
    page.fill("#api_key", KEY)
    page.dispatch_event("#api_key", "change")
    page.wait_for_function("document.querySelector('#model').options.length == 2")
    assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [adapter_dir_of(real), "base"]
    assert page.is_hidden("#error") and page.is_enabled("#side-by-side")
    page.close()


def test_side_by_side_answers_twice_and_base_equals_the_terminal_chat(browser, real, tiny_model_dir, tmp_path):
    page = open_page(browser, real["url"], KEY)
    page.check("#side-by-side")
    page.fill("#seed", "7")
    page.fill("#max_tokens", "8")
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    pair = answers(page, "done", 2)
    assert [a["model"] for a in pair] == [adapter_dir_of(real), "base"]
    tuned, base = pair
    assert tuned["reasoning"] and base["reasoning"] and tuned["reasoning"] != base["reasoning"]
    assert "seed 7" in tuned["status"] and "seed 7" in base["status"]
    chat = run_script("scripts/chat_with_model.py", "--model", tiny_model_dir, "--once", QUESTION, "--seed", "7",
                      "--max_new_tokens", "8", env=ONE_THREAD, cwd=tmp_path, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    reasoning = chat.stdout.split("[思考 reasoning]\n", 1)[1].split("\n[", 1)[0]
    assert base["reasoning"].strip() == reasoning.strip()
    page.close()


def adapter_dir_of(real) -> str:
    return re.search(r"models: (\S+), base", real["log"].read_text(encoding="utf-8")).group(1)


def test_a_saved_conversation_reloads_in_the_terminal_chat_and_the_page(browser, real, tiny_model_dir, tmp_path):
    page = open_page(browser, real["url"], KEY)
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    (a,) = answers(page, "done", 1)
    page.click("#saved summary")
    page.fill("#save_name", "../页面对话")  # confined to the conversations folder
    page.click("#save")
    page.wait_for_function("document.querySelector('#notice').textContent.includes('已保存')")
    saved = real["conversations"] / "页面对话.json"
    record = json.loads(saved.read_text(encoding="utf-8"))
    assert [t["role"] for t in record["conversation"]] == ["user", "assistant"]
    assert record["conversation"][1]["reasoning"].strip() == a["reasoning"].strip()
    assert record["settings"]["temperature"] == 0.6 and record["settings"]["top_p"] == 0.95

    chat = run_script("scripts/chat_with_model.py", "--model", tiny_model_dir, "--conversations_dir",
                      real["conversations"], input="load 页面对话\n", env=ONE_THREAD, cwd=tmp_path, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert "已加载 loaded 1 turn(s)" in chat.stdout

    page.click("#clear")
    assert page.query_selector(".exchange") is None
    page.select_option("#saved_list", "页面对话")
    page.click("#load")
    page.wait_for_selector(".exchange")
    assert page.inner_text(".question") == QUESTION
    assert page.inner_text(".reasoning-text").strip() == a["reasoning"].strip()
    page.close()


def test_server_errors_show_as_one_readable_line(browser, real):
    page = open_page(browser, real["url"], KEY)
    page.fill("#max_tokens", "1020")  # prompt + 1020 > --max_context 1024: the server answers 400
    page.fill("#input", QUESTION)
    page.press("#input", "Enter")
    (a,) = answers(page, "error", 1)
    assert a["status"].startswith("400 请求有误: this model's maximum context length is 1024 tokens")
    assert "\n" not in a["status"]
    page.close()


def test_twenty_concurrent_streams_from_the_page_end_whole_or_as_429(browser, real):
    page = open_page(browser, real["url"], KEY)
    results = page.evaluate("""async () => {
        const one = (i) => {
            const parts = [];
            return window.R1Chat.streamChat({model: i % 2 ? 'base' : document.querySelector('#model').value,
                messages: [{role: 'user', content: `第${i}个问题：咳嗽怎么办？`}],
                settings: {temperature: 0.6, top_p: 0.95, max_tokens: 16, seed: i},
                onPart: (kind, text) => parts.push(kind)}).then(r => ({...r, parts: parts.length}));
        };
        return Promise.all([...Array(20).keys()].map(one));
    }""")
    whole = [r for r in results if r["done"] and r["finish"] in ("stop", "length") and not r["error"]]
    busy = [r for r in results if r["status"] == 429]
    assert len(whole) + len(busy) == 20, [r for r in results if r not in whole and r not in busy]
    assert len(whole) >= 4 and all(r["parts"] > 0 for r in whole)  # 1 generating + 3 waiting were admitted
    assert busy and all(r["error"].startswith("429 服务器繁忙: the server is busy") and "秒后重试" in r["error"]
                        for r in busy)
    wait_idle(real["url"])
    page.close()
