"""OpenAI-compatible server (issue 15): scripts/serve_model.py through the real `openai` client.

One server on the tiny stand-in serves the whole module (started as a subprocess, as a user would);
a second, in-process server runs the same app over a scripted model whose output closes its think
block, so the split into reasoning and answer is pinned over HTTP. No assertion depends on the
stand-in's token ids or output text.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import torch

from r1_sft.inference.generation import ReplyParts
from r1_sft.inference.openai_api import ApiError, conversation_messages, delta
from r1_sft.inference.serving import ServerSettings, create_app
from r1_sft.paths import display_path
from r1_sft.r1_format import build_prompt, encode_prompt

from conftest import REPO, popen_script, run_script

SCRIPT = "scripts/serve_model.py"
KEY_ENV, KEY = "R1_SFT_TEST_SERVE_KEY", "sk-test-5e3f9b1c-never-logged"
CONTEXT = 1024        # --max_context: small enough that a long question passes it
SLOW = 900            # max_tokens = min_tokens of a request that stays busy until its client leaves


class Server:
    def __init__(self, proc: subprocess.Popen, log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url
        self.host, self.port = re.match(r"http://([^:/]+):(\d+)", url).groups()

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key or "none", max_retries=0, timeout=120)

    def raw(self, method: str, path: str, body: bytes | None = None, key: str = KEY):
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
        conn.request(method, path, body, {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
        conn.close()
        return status, json.loads(data)

    def health(self) -> dict:
        return self.raw("GET", "/health")[1]

    def wait_idle(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (h := self.health()) != {"status": "ok", "running": 0, "waiting": 0}:
            assert time.monotonic() < deadline, f"server still busy: {h}"
            time.sleep(0.1)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def wait_for_url(proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        found = re.search(r"listening on (http://\S+/v1)", text)
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = popen_script(SCRIPT, "--model", tiny_model_dir, "--port", "0", "--api_key_env", KEY_ENV, "--max_tokens",
                            "8", "--max_context", CONTEXT, "--max_concurrency", "1", "--max_queue", "3",
                            "--max_body_bytes", "65536", cwd=REPO, env={KEY_ENV: KEY}, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        yield Server(proc, log, wait_for_url(proc, log))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ask(question: str = "头痛发热怎么办？") -> list[dict]:
    return [{"role": "user", "content": question}]


def collect(stream) -> dict:
    """Reasoning and answer deltas of a stream, in order, with the finish reason and usage."""
    seen = {"order": [], "reasoning": "", "content": "", "finish": None, "usage": None, "roles": [], "ids": set()}
    for chunk in stream:
        seen["ids"].add(chunk.id)
        if chunk.usage is not None:
            seen["usage"] = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.role:
                seen["roles"].append(delta.role)
            reasoning = getattr(delta, "reasoning_content", None)
            seen["reasoning_new_name"] = seen.get("reasoning_new_name", "") + (getattr(delta, "reasoning", None) or "")
            if reasoning:
                seen["order"].append("reasoning")
                seen["reasoning"] += reasoning
            if delta.content:
                seen["order"].append("content")
                seen["content"] += delta.content
            if choice.finish_reason:
                seen["finish"] = choice.finish_reason
    return seen


# ---------------------------------------------------------------- in memory

def test_delta_stream_cuts_at_think_close_split_across_pieces():
    out = []
    parts = ReplyParts(lambda kind, text: out.append(delta(kind, text)))
    for piece in ["先考虑", "感冒。\n</th", "ink>\n\n", "多喝水", "。"]:
        parts.feed(piece)
    parts.flush()
    # reasoning under both names, the same text: vLLM 0.11+ clients read "reasoning", DeepSeek's "reasoning_content"
    assert out == [{"reasoning": "先考虑", "reasoning_content": "先考虑"},
                   {"reasoning": "感冒。\n", "reasoning_content": "感冒。\n"}, {"content": "多喝水"}, {"content": "。"}]


def test_prompt_folds_the_system_message_and_drops_earlier_reasoning(tiny_model_dir):
    from r1_sft.model.folders import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "你是医生SYSTEMMARK。"},
        {"role": "user", "content": "第一个问题QUESTION1"},
        {"role": "assistant", "content": "<think>\n秘密推理REASONINGMARK\n</think>\n\n回答ANSWER1",
         "reasoning_content": "另一段推理REASONINGFIELD"},
        {"role": "user", "content": [{"type": "text", "text": "第二个问题"}, {"type": "text", "text": "QUESTION2"}]},
    ]
    chat = conversation_messages(messages)
    assert chat == [{"role": "user", "content": "你是医生SYSTEMMARK。\n\n第一个问题QUESTION1"},
                    {"role": "assistant", "content": "回答ANSWER1"},
                    {"role": "user", "content": "第二个问题QUESTION2"}]
    text = build_prompt(tokenizer, chat)
    assert "REASONINGMARK" not in text and "REASONINGFIELD" not in text and "ANSWER1" in text
    # The system text sits inside the first user turn, not raw in front of it (R1 takes no system prompt).
    assert text.index("<｜User｜>") < text.index("SYSTEMMARK") < text.index("QUESTION1")
    ids = encode_prompt(tokenizer, chat)
    assert ids.count(tokenizer.bos_token_id) == 1 and text.endswith("<think>\n")


@pytest.mark.parametrize("messages, param", [
    ([], "messages"),
    ([{"role": "tool", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "messages"),
    ([{"role": "system", "content": "only a system prompt"}], "messages"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content[0]"),
    ([{"role": "user"}], "messages[0].content"),
])
def test_bad_messages_are_named(messages, param):
    with pytest.raises(ApiError) as err:
        conversation_messages(messages)
    assert err.value.status == 400 and err.value.param == param


# ---------------------------------------------------------------- the stand-in, through the real client

def test_plain_completion_keeps_reasoning_apart_with_usage(server):
    client = server.client()
    given = server.proc.args[server.proc.args.index("--model") + 1]
    assert [m.id for m in client.models.list().data] == [display_path(Path(given))]  # as given
    r = client.chat.completions.create(model="tiny", messages=ask(), max_tokens=6, extra_body={"min_tokens": 6},
                                       temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.reasoning_content, str) and choice.message.reasoning_content
    assert "</think>" not in choice.message.reasoning_content + choice.message.content
    assert choice.finish_reason == "length"  # min_tokens kept EOS away; 6 tokens are all it may write
    u = r.usage
    assert u.completion_tokens == 6 and u.total_tokens == u.prompt_tokens + 6 and u.prompt_tokens > 0
    assert 1 <= u.completion_tokens_details.reasoning_tokens <= 6
    if not choice.message.content:  # the think block never closed: every token was reasoning
        assert u.completion_tokens_details.reasoning_tokens == 6


def test_stream_sends_reasoning_then_answer_then_finish_usage_done(server):
    client = server.client()
    kwargs = dict(model="tiny", messages=ask("孩子发烧39度怎么办？"), max_tokens=8, temperature=0)
    plain = client.chat.completions.create(**kwargs)
    seen = collect(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert seen["roles"] == ["assistant"] and len(seen["ids"]) == 1
    assert seen["order"] and seen["order"] == sorted(seen["order"], key=["reasoning", "content"].index)
    # Greedy: the stream is the same answer as the plain response, cut the same way.
    assert seen["reasoning"].strip() == plain.choices[0].message.reasoning_content
    assert seen["content"].strip() == plain.choices[0].message.content
    assert seen["finish"] == plain.choices[0].finish_reason
    assert seen["usage"].model_dump() == plain.usage.model_dump()
    # Without include_usage no chunk carries usage; the stream still ends with data: [DONE] (the
    # openai client stops there).
    assert collect(client.chat.completions.create(**kwargs, stream=True))["usage"] is None


def test_seed_repeats_a_sampled_answer(server):
    client = server.client()
    kwargs = dict(model="tiny", messages=ask(), max_tokens=8, temperature=1.0, top_p=1.0, seed=1234)
    first, second = (client.chat.completions.create(**kwargs).choices[0].message for _ in range(2))
    assert first.reasoning_content == second.reasoning_content


def test_earlier_reasoning_stays_out_of_the_prompt(server):
    client = server.client()
    secret = "秘密推理" * 40
    turn = [{"role": "user", "content": "第一个问题"}]
    follow = [{"role": "user", "content": "第二个问题"}]

    def prompt_tokens(assistant: dict) -> int:
        r = client.chat.completions.create(model="tiny", messages=turn + [assistant] + follow, max_tokens=1)
        return r.usage.prompt_tokens

    with_reasoning = prompt_tokens({"role": "assistant", "content": f"<think>\n{secret}\n</think>\n\n多喝水。",
                                    "reasoning_content": secret})
    answer_only = prompt_tokens({"role": "assistant", "content": "多喝水。"})
    alone = client.chat.completions.create(model="tiny", messages=follow, max_tokens=1).usage.prompt_tokens
    assert with_reasoning == answer_only > alone


def test_missing_or_wrong_key_is_401_and_never_logged(server):
    for key in (None, "wrong-key"):
        with pytest.raises(openai.AuthenticationError) as err:
            server.client(key).chat.completions.create(model="tiny", messages=ask(), max_tokens=1)
        assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong-key").models.list()
    assert KEY not in server.log_text()


@pytest.mark.parametrize("changes, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": CONTEXT}, "max_tokens"),
    ({"n": 2}, "n"),
])
def test_bad_requests_are_400_with_openai_errors(server, changes, param):
    body = {"model": "tiny", "messages": ask(), "max_tokens": 1, **changes}
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(**body)
    assert err.value.status_code == 400
    assert set(err.value.body) == {"message", "type", "param", "code"} and err.value.body["param"] == param


def test_malformed_body_unknown_path_and_oversized_body(server):
    for body in (b"{not json", b"[1, 2]", "{\"messages\": \"头痛\"}".encode()):
        status, data = server.raw("POST", "/v1/chat/completions", body)
        assert status == 400 and set(data["error"]) == {"message", "type", "param", "code"}
    status, data = server.raw("GET", "/v1/nothing")
    assert status == 404 and data["error"]["code"] == "not_found"
    with pytest.raises(openai.APIStatusError) as err:
        server.client().chat.completions.create(model="tiny", messages=ask("头" * 30_000), max_tokens=1)
    assert err.value.status_code == 413 and err.value.body["code"] == "request_too_large"


def test_prompt_past_the_context_is_400_naming_the_limit(server):
    long_question = "".join(f"第{i}天头痛" for i in range(400))  # thousands of tokens, under the body limit
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model="tiny", messages=ask(long_question))
    assert err.value.body["code"] == "context_length_exceeded" and str(CONTEXT) in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # a fitting prompt, but prompt + max_tokens does not fit
        server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=CONTEXT - 2)
    assert err.value.body["code"] == "context_length_exceeded"
    assert server.client().chat.completions.create(model="tiny", messages=ask(), max_tokens=1).choices


def test_full_queue_is_429_and_clients_that_leave_stop_their_generation(server):
    server.wait_idle()
    client = server.client()
    slow = dict(model="tiny", messages=ask(), max_tokens=SLOW, extra_body={"min_tokens": SLOW}, stream=True)
    running = client.chat.completions.create(**slow)
    first = [next(running), next(running)]  # the role chunk, then generated text: it is generating
    waiting = [client.chat.completions.create(**slow) for _ in range(3)]  # admitted: their headers came back
    ids = [first[0].id] + [next(stream).id for stream in waiting]  # each sends its role chunk at once
    assert server.health() == {"status": "ok", "running": 1, "waiting": 3}
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="tiny", messages=ask(), max_tokens=1)
    assert err.value.status_code == 429 and err.value.body["code"] == "rate_limit_exceeded"
    assert int(err.value.response.headers["retry-after"]) >= 1
    for stream in waiting + [running]:
        stream.close()  # the clients go away: three while waiting, one mid-stream
    server.wait_idle()  # would take minutes if the generations ran on to max_tokens
    lines = {i: next(line for line in server.log_text().splitlines() if i in line and "prompt" in line)
             for i in ids}
    assert "stopped early" in lines[ids[0]]
    assert int(re.search(r"completion (\d+) tokens", lines[ids[0]]).group(1)) < SLOW
    assert all("stopped early" in lines[i] or "the client left while waiting" in lines[i] for i in ids[1:])
    # ... and the server goes on serving.
    r = client.chat.completions.create(model="tiny", messages=ask(), max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_four_concurrent_requests_are_all_answered(server):
    server.wait_idle()
    client = server.client()

    def one(i: int):
        return client.chat.completions.create(model="tiny", messages=ask(f"第{i}个问题：咳嗽怎么办？"), max_tokens=4,
                                              stream=i % 2 == 1)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    finishes = [r.choices[0].finish_reason if i % 2 == 0 else collect(r)["finish"] for i, r in enumerate(results)]
    assert all(f in ("stop", "length") for f in finishes)


# ---------------------------------------------------------------- scripted model: reasoning and answer apart

class ScriptedModel:
    """Writes a fixed reply token by token (through the streamer), as ``generate`` would."""

    def __init__(self, reply_ids: list[int], eos_id: int) -> None:
        self.reply_ids, self.eos_id = reply_ids, eos_id

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, input_ids, max_new_tokens, streamer=None, stopping_criteria=(), **kwargs):
        ids = input_ids
        if streamer is not None:
            streamer.put(input_ids[0])
        for token in (self.reply_ids + [self.eos_id])[:max_new_tokens]:
            if any(bool(c(ids, None).all()) for c in stopping_criteria):
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
        if streamer is not None:
            streamer.end()
        return ids


@pytest.fixture(scope="module")
def scripted(tiny_model_dir):
    import uvicorn

    from r1_sft.model.folders import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    reply = tokenizer("先考虑感冒。\n</think>\n\n多喝水，注意休息。", add_special_tokens=False)["input_ids"]
    model = ScriptedModel(reply, tokenizer.eos_token_id)
    app = create_app(model, tokenizer, ServerSettings(model_name="scripted", context_limit=512))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="none", max_retries=0), \
        reply, tokenizer
    uv.should_exit = True
    thread.join(timeout=10)


def test_reasoning_and_answer_apart_in_both_shapes(scripted):
    client, reply, tokenizer = scripted
    close_at = reply.index(tokenizer.convert_tokens_to_ids("</think>")) + 1
    r = client.chat.completions.create(model="scripted", messages=ask(), max_tokens=100)
    message = r.choices[0].message
    assert (message.reasoning_content, message.content) == ("先考虑感冒。", "多喝水，注意休息。")
    assert message.reasoning == message.reasoning_content  # vLLM 0.11+'s name, the same text
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(reply) + 1  # the EOS counts
    assert r.usage.completion_tokens_details.reasoning_tokens == close_at
    seen = collect(client.chat.completions.create(model="scripted", messages=ask(), max_tokens=100, stream=True,
                                                  stream_options={"include_usage": True}))
    assert seen["reasoning"].strip() == "先考虑感冒。" and seen["content"] == "多喝水，注意休息。"
    assert seen["reasoning_new_name"] == seen["reasoning"]  # streamed under both names too
    assert seen["order"] == sorted(seen["order"], key=["reasoning", "content"].index) and "content" in seen["order"]
    assert seen["finish"] == "stop" and seen["usage"].model_dump() == r.usage.model_dump()
    cut = client.chat.completions.create(model="scripted", messages=ask(), max_tokens=3)
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content == ""


# ---------------------------------------------------------------- start-up errors

def test_unset_key_variable_or_taken_port_is_a_one_line_error(tiny_model_dir):
    proc = run_script(SCRIPT, "--model", tiny_model_dir, "--api_key_env", "R1_SERVE_TEST_UNSET_VARIABLE",
                      env={"R1_SERVE_TEST_UNSET_VARIABLE": None}, timeout=120)
    assert proc.returncode == 2 and "R1_SERVE_TEST_UNSET_VARIABLE" in proc.stderr and "Traceback" not in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = run_script(SCRIPT, "--model", tiny_model_dir, "--port", taken.getsockname()[1], timeout=120)
    assert proc.returncode == 2 and "--port" in proc.stderr and "Traceback" not in proc.stderr
    assert "[model] loaded" not in proc.stdout  # refused before the model loads
