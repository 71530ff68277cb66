"""A fake OpenAI-compatible chat server on 127.0.0.1 for the teacher-generation tests.

Speaks ``POST /v1/chat/completions`` plain and streaming (SSE), like DeepSeek's
``deepseek-reasoner``: the reasoning in ``reasoning_content``, the answer in ``content``. Each
question (the user turn's text) can be given a script of scenarios, one per attempt; the last one
repeats, and a question without a script is answered at once. Scenarios:

    ok              reasoning_content + content, finish_reason stop
    think_in_content  no reasoning_content; content "reasoning</think>answer" (vLLM without a parser)
    429             HTTP 429 with Retry-After (seconds, ``retry_after``)
    500             HTTP 500; the error body echoes the Authorization header (a leak we must not repeat)
    slow            nothing for ``slow_s`` seconds, then ok (the client should have timed out)
    length          finish_reason length (cut off)
    non_json        HTTP 200 with an HTML body
    drop            the connection is closed without a response
    no_reasoning    only content, no reasoning anywhere
    empty_answer    reasoning but an empty content
    think_tag       a <think> tag left inside the reasoning
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REASONING = "用户问的是一个常见的医疗问题，先弄清楚症状和持续时间。\n\n再考虑需要排除的危险情况，最后给出就医建议。"
ANSWER = "建议先观察症状变化，必要时到相应专科就诊；出现危险信号请立即就医。"


def reasoning_for(question: str) -> str:
    return f"问题是：{question}\n\n{REASONING}"


def answer_for(question: str) -> str:
    return f"关于“{question[:12]}”：{ANSWER}"


class FakeOpenAI:
    def __init__(self, api_key: str, retry_after: str = "1", slow_s: float = 2.0, delay_s: float = 0.0):
        self.api_key = api_key
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.delay_s = delay_s  # every answer waits this long (for killing a run mid-way)
        self.scripts: dict[str, list[str]] = {}
        self.requests: list[dict] = []  # {"question", "scenario", "stream", "body"}
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def questions_asked(self) -> list[str]:
        with self._lock:
            return [r["question"] for r in self.requests]

    def _next_scenario(self, question: str) -> str:
        with self._lock:
            n = self._attempts.get(question, 0)
            self._attempts[question] = n + 1
            script = self.scripts.get(question, ["ok"])
            return script[min(n, len(script) - 1)]

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json",
                      headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: dict, headers: dict | None = None):
                self._send(status, json.dumps(obj, ensure_ascii=False).encode(), headers=headers)

            def do_POST(self):
                try:
                    self._post()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

            def _post(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                auth = self.headers.get("Authorization", "")
                if auth != f"Bearer {fake.api_key}":
                    return self._json(401, {"error": {"message": "Authentication Fails (invalid key)",
                                                      "type": "authentication_error"}})
                question = body["messages"][-1]["content"]
                scenario = fake._next_scenario(question)
                stream = bool(body.get("stream"))
                with fake._lock:
                    fake.requests.append({"question": question, "scenario": scenario, "stream": stream,
                                          "body": body})
                if scenario == "429":
                    return self._json(429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
                                      headers={"Retry-After": fake.retry_after})
                if scenario == "500":
                    return self._json(500, {"error": {"message": f"internal error (request had {auth})"}})
                if scenario == "non_json":
                    return self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                if scenario == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if scenario == "slow":
                    time.sleep(fake.slow_s)
                elif fake.delay_s:
                    time.sleep(fake.delay_s)
                reasoning, content, finish = reasoning_for(question), answer_for(question), "stop"
                if scenario == "think_in_content":
                    reasoning, content = None, f"{reasoning}\n</think>\n\n{content}"
                elif scenario == "length":
                    content, finish = content[:5], "length"
                elif scenario == "no_reasoning":
                    reasoning = None
                elif scenario == "empty_answer":
                    content = ""
                elif scenario == "think_tag":
                    reasoning = "<think>\n" + reasoning
                usage = {"prompt_tokens": 10 + len(question), "completion_tokens": 100, "total_tokens": 110 + len(question),
                         "completion_tokens_details": {"reasoning_tokens": 80}}
                if stream:
                    return self._stream(body, reasoning, content, finish, usage)
                message = {"role": "assistant", "content": content}
                if reasoning is not None:
                    message["reasoning_content"] = reasoning
                self._json(200, {"id": "cmpl-1", "object": "chat.completion", "created": int(time.time()),
                                 "model": body["model"],
                                 "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                                 "usage": usage})

            def _stream(self, body, reasoning, content, finish, usage):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

                def chunk(delta: dict | None, finish_reason=None, usage_=None):
                    obj = {"id": "cmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": body["model"],
                           "choices": [] if delta is None else
                           [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
                    if usage_ is not None:
                        obj["usage"] = usage_
                    self.wfile.write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode())
                    self.wfile.flush()

                chunk({"role": "assistant", "content": ""})
                if reasoning:
                    for part in (reasoning[: len(reasoning) // 2], reasoning[len(reasoning) // 2:]):
                        chunk({"reasoning_content": part})
                for part in (content[: len(content) // 2], content[len(content) // 2:]):
                    if part:
                        chunk({"content": part})
                chunk({}, finish_reason=finish)
                if (body.get("stream_options") or {}).get("include_usage"):
                    chunk(None, usage_=usage)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler
