"""Serving R1 models over the OpenAI-compatible chat API: generation, the queue, the FastAPI app.

``scripts/serve_model.py`` stays thin. The protocol (request checks, errors, response shapes) is
``openai_api.py``; this module runs it:

* Generation is the chat's and the evaluation's (``generation.stream_reply``, a batch of one: the
  same decoding values, seeding, stop tokens and reasoning/answer streaming; a request's ``seed``
  repeats its reply when generations run one at a time, the random generator being global) on
  worker threads, ``max_concurrency`` at a time on the one model; up to ``max_queue`` more requests
  wait in line, and past that a request gets 429 with Retry-After. A client that goes away
  (mid-stream or while waiting) sets its ``StopFlag``: the generation stops at the next token (a
  waiting one never starts) and its place frees.
* Streamed as server-sent events: a role chunk, ``reasoning_content`` deltas, then ``content``
  deltas, a chunk with the finish reason, a usage chunk when ``stream_options.include_usage``, and
  ``data: [DONE]``.
* Base and tuned from one model (``model_variants``): an adapter kept apart from its base answers its
  own id and ``base`` (adapter layers off); ``/v1/models`` lists both.
* The chat page (``web_page``: ``/``, ``/static/``, ``/api/conversations``) calls this same API.
* Errors: 400 for a bad request (a prompt past the context names the limit), 401 without the key,
  413 past the body size limit, 429 on a full queue, 500 when generation fails; the server goes on.
  One log line per request; never the key, never the text.
"""
from __future__ import annotations

import asyncio
import json
import math
import secrets
import socket
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from r1_sft.cli import UserError
from r1_sft.inference.generation import StopFlag, stream_reply
from r1_sft.inference.model_variants import ModelVariants
from r1_sft.inference.openai_api import (
    ApiError,
    Completion,
    CompletionRequest,
    bad_request,
    check_api_key,
    completion_body,
    delta,
    error_body,
    parse_request,
    sse,
    usage,
)
from r1_sft.r1_format import THINK_CLOSE, parse_output

# ---------------------------------------------------------------- generation

def _reasoning_tokens(tokenizer, new_ids: list[int], text: str, eos_id: int) -> int:
    close_id = tokenizer.convert_tokens_to_ids(THINK_CLOSE)
    if isinstance(close_id, int) and tokenizer.convert_ids_to_tokens(close_id) == THINK_CLOSE:
        if close_id in new_ids:
            return new_ids.index(close_id) + 1
        return len(new_ids) - (1 if new_ids and new_ids[-1] == eos_id else 0)
    # </think> is not one token in this tokenizer: count the reasoning text as it encodes.
    parsed = parse_output(text)
    if not parsed.think_closed:
        return len(new_ids) - (1 if new_ids and new_ids[-1] == eos_id else 0)
    return len(tokenizer(parsed.reasoning + THINK_CLOSE, add_special_tokens=False)["input_ids"])


def generate_completion(model, tokenizer, request: CompletionRequest, stop: StopFlag,
                        on_part: Callable[[str, str], None] | None = None) -> Completion:
    """One reply (batch of one) for ``request``; its reasoning and answer go to ``on_part`` as they come.

    ``stop.set()`` from any thread ends generation at the next token (a client that left).
    """
    reply = stream_reply(model, tokenizer, request.prompt_ids, request.decoding(), on_part, stop=stop)
    reasoning = _reasoning_tokens(tokenizer, reply.token_ids, reply.text, tokenizer.eos_token_id)
    return Completion(reply.text, reply.new_tokens, reasoning, "stop" if reply.stopped_by_eos else "length",
                      reply.stopped_by_user, reply.seconds)


# ---------------------------------------------------------------- the queue

class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after} s")
        self.retry_after = retry_after


class GenerationQueue:
    """At most ``concurrency`` generations run at once on worker threads; ``max_queue`` more wait.

    A request holds its place until its generation has really finished (not merely until its client
    left), so a new one never starts beside a generation that is still winding down.
    """

    def __init__(self, concurrency: int, max_queue: int) -> None:
        self.concurrency, self.max_queue = concurrency, max_queue
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._stops: set[StopFlag] = set()
        self._mean_seconds = 0.0  # typical duration of one generation (s), for Retry-After

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._admitted - self._running

    def retry_after(self) -> int:
        """Seconds until a place is likely free: about one generation."""
        return max(1, math.ceil(self._mean_seconds))

    def submit(self, work: Callable[[], Completion], stop: StopFlag) -> Future:
        """Queue ``work``; QueueFull when ``concurrency + max_queue`` requests are already in."""
        with self._lock:
            if self._admitted >= self.concurrency + self.max_queue:
                raise QueueFull(self.retry_after())
            self._admitted += 1
            self._stops.add(stop)

        def run() -> Completion | None:
            if stop.requested:
                return None  # the client left while waiting: nothing to generate
            with self._lock:
                self._running += 1
            t0 = time.perf_counter()
            try:
                return work()
            finally:
                seconds = time.perf_counter() - t0
                with self._lock:
                    self._running -= 1
                    # A moving average: recent generations say best how long the next wait is.
                    self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds if self._mean_seconds else seconds

        def release(_: Future) -> None:
            with self._lock:
                self._admitted -= 1
                self._stops.discard(stop)

        future = self._executor.submit(run)
        future.add_done_callback(release)
        return future

    def close(self) -> None:
        """Stop every generation and drop the waiting ones (server shutdown)."""
        with self._lock:
            stops = list(self._stops)
        for stop in stops:
            stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- the app

@dataclass
class ServerSettings:
    model_name: str                 # the served model's id in /v1/models and responses (with "base" beside an adapter)
    context_limit: int              # prompt + completion tokens the model can attend to
    default_max_tokens: int = 2048  # completion budget when a request names none
    max_concurrency: int = 1
    max_queue: int = 8
    max_body_bytes: int = 4 * 1024 * 1024
    api_key: str | None = field(default=None, repr=False)  # never printed
    cors_origins: tuple[str, ...] = ()
    conversations_dir: str | None = None  # where the page saves conversations; None = no page


async def read_json_body(request, limit: int):
    """The request's JSON body; 413 past ``limit`` bytes (checked before and while reading)."""
    too_large = ApiError(413, f"request body larger than {limit} bytes", code="request_too_large",
                         headers={"Connection": "close"})
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})") from None


def create_app(model, tokenizer, settings: ServerSettings):
    """The FastAPI app: POST /v1/chat/completions, GET /v1/models, GET /health (and the chat page)."""
    queue = GenerationQueue(settings.max_concurrency, settings.max_queue)
    variants = ModelVariants(model, settings.model_name)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.close()

    app = FastAPI(title="r1_sft OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.queue, app.state.variants = queue, variants
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}", code=code),
                            status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "running": queue.running, "waiting": queue.waiting}

    @app.get("/v1/models")
    async def models(request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": started, "owned_by": "r1_sft",
                                            "max_model_len": settings.context_limit} for name in variants.ids]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_api_key(request.headers.get("authorization"), settings.api_key)
        body = await read_json_body(request, settings.max_body_bytes)
        req = parse_request(body, tokenizer, settings.context_limit, settings.default_max_tokens)
        model_id = variants.resolve(body.get("model"))
        completion_id, created = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        stop = StopFlag()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()  # streaming: ("part", (kind, text)) ... then ("done", future)

        def to_loop(item) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop has closed (server shutting down)
                pass

        on_part = (lambda kind, text: to_loop(("part", (kind, text)))) if req.stream else None
        try:
            future = queue.submit(lambda: _generate_with(variants, model_id, tokenizer, req, stop, on_part), stop)
        except QueueFull as full:
            raise ApiError(429, f"the server is busy ({queue.running} generating, {queue.waiting} waiting); "
                           f"retry after {full.retry_after} s", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(full.retry_after)}) from None
        future.add_done_callback(_logger(completion_id, len(req.prompt_ids), req.stream))
        if req.stream:
            future.add_done_callback(lambda f: to_loop(("done", f)))
            return StreamingResponse(_stream(events, stop, completion_id, created, model_id, req),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        waiting = asyncio.wrap_future(future)
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())  # failures are logged by _logger
        while not (await asyncio.wait({waiting}, timeout=0.5))[0]:
            if await request.is_disconnected():
                stop.set()  # nobody is waiting for this answer any more
                return JSONResponse(error_body("the client closed the request", code="client_closed"), 499)
        completion = _result(future)
        if completion is None:  # stopped before it started: the server is shutting down
            raise ApiError(503, "the server is shutting down", type="server_error")
        return completion_body(completion_id, created, model_id, len(req.prompt_ids), completion)

    if settings.conversations_dir is not None:
        from r1_sft.inference.web_page import add_page_routes

        add_page_routes(app, settings)
    return app


def _generate_with(variants: ModelVariants, model_id: str, tokenizer, req: CompletionRequest, stop: StopFlag,
                   on_part) -> Completion:
    with variants.use(model_id) as model:
        return generate_completion(model, tokenizer, req, stop, on_part)


def _result(future: Future) -> Completion | None:
    """The finished generation (None: skipped, its client left while waiting); ApiError 500 when it
    failed -- the failure is logged and the server goes on -- and 503 when shutdown dropped it."""
    if future.cancelled():
        raise ApiError(503, "the server is shutting down", type="server_error")
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 -- any failure in generate must not take the server down
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None


def _logger(completion_id: str, prompt_tokens: int, stream: bool) -> Callable[[Future], None]:
    """A done-callback that logs one line per request when its generation ends (never the key or text)."""
    def log(future: Future) -> None:
        head = f"[serve] {completion_id} {'stream' if stream else 'completion'}: prompt {prompt_tokens}"
        if future.cancelled():
            print(f"{head} tokens, cancelled (server shutting down)", flush=True)
            return
        if future.exception() is not None:
            exc = future.exception()
            traceback.print_exception(exc)
            print(f"{head} tokens, generation failed: {type(exc).__name__}: {exc}", flush=True)
            return
        completion = future.result()
        if completion is None:
            print(f"{head} tokens, not generated: the client left while waiting", flush=True)
            return
        speed = completion.completion_tokens / completion.seconds if completion.seconds > 0 else 0.0
        end = "stopped early (client gone or server stopping)" if completion.stopped \
            else f"finish {completion.finish_reason}"
        print(f"{head} + completion {completion.completion_tokens} tokens (reasoning {completion.reasoning_tokens}), "
              f"{end}, {completion.seconds:.1f} s, {speed:.1f} tokens/s", flush=True)
    return log


async def _stream(events: asyncio.Queue, stop: StopFlag, completion_id: str, created: int, model_name: str,
                  req: CompletionRequest):
    """Server-sent events for one streamed completion. When the client closes the connection,
    Starlette cancels this generator; ``finally`` then sets ``stop``, which ends the generation."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name}

    def chunk(changes: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": changes, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice]})

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "part":
                yield chunk(delta(*value))
                continue
            try:
                completion = _result(value)
            except ApiError as exc:
                yield sse(exc.body())  # the openai client raises it as an APIError
                return
            if completion is not None:
                yield chunk({}, completion.finish_reason)
                if req.include_usage:  # OpenAI's shape: one more chunk, no choices, the usage
                    yield sse({**head, "choices": [], "usage": usage(len(req.prompt_ids), completion)})
                yield sse("[DONE]")
            return
    finally:
        stop.set()  # harmless once generation has ended; stops it when the client left early


# ---------------------------------------------------------------- running

def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on host:port now (before the model loads), so a taken port is a one-line error at once."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        raise UserError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                        f"pick another --port (0 = any free port) or stop the program using it") from None
    return sock


def run_server(app, sock: socket.socket) -> None:
    """Serve ``app`` on the bound socket with uvicorn until Ctrl-C (or SIGTERM)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.queue.close()  # Ctrl-C: end running generations now, so open streams finish at once
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)
    try:
        Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands Ctrl-C on after its own clean shutdown
        pass
    print("[serve] stopped", flush=True)
