"""Asking an R1 teacher over the OpenAI-compatible chat API: one request, retries, the reply judged.

Works with DeepSeek's ``deepseek-reasoner`` (reasoning in ``message.reasoning_content``,
``delta.reasoning_content`` when streaming; the answer in ``content``) and with a local vLLM or
SGLang server (``--reasoning-parser deepseek_r1`` gives the same fields; without a parser the
``content`` is ``reasoning</think>answer``, usually with no opening ``<think>``).

Each question is one user turn (R1 takes no system prompt) and nothing is ever sent back, so the
API's "reasoning_content in the input is a 400" rule cannot bite. The client's own retries are off:
:func:`TeacherClient.complete` retries itself, so it can count retries, log them and honour
``Retry-After``. The API key lives only inside the client; every message that leaves this module
has it masked.
"""
from __future__ import annotations

import email.utils
import json
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from r1_sft.data.records import THINK_TAG, find_think_tag
from r1_sft.r1_format import THINK_CLOSE, parse_output

# Reject reasons of the generation stage (stable: tests and users grep for them).
TRUNCATED = "truncated"            # finish_reason "length" (or any end other than "stop")
NO_REASONING = "no_reasoning"      # neither reasoning_content nor text before </think>
EMPTY_ANSWER = "empty_answer"      # nothing after the reasoning
REQUEST_FAILED = "request_failed"  # no usable response after the retries (status or error in detail)
# THINK_TAG (from records): a think tag left inside the reasoning or the answer.

RETRY_STATUS = frozenset({408, 409, 429})      # plus every 5xx: overload, gateway, server errors
FATAL_STATUS = {401: "the API key was refused", 402: "the account has no balance left",
                403: "the API key may not use this model", 404: "no such model or endpoint"}
MAX_RETRY_AFTER = 3600.0  # seconds: a Retry-After beyond this is taken as this (a broken header)
_DETAIL_CHARS = 300       # error text kept in a reject's detail


class RequestFailed(Exception):
    """No usable response for this question (after the retries, or a non-retryable status)."""


class FatalAPIError(Exception):
    """A failure every later request would repeat (bad key, no balance, wrong model or URL)."""


class Cancelled(Exception):
    """The run is stopping: a request waiting to be retried gives up."""


class _Retryable(Exception):
    def __init__(self, kind: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.kind = kind  # for counting: "HTTP 429", "timeout", "connection", "bad_response"
        self.detail = detail
        self.retry_after = retry_after


@dataclass(frozen=True)
class Completion:
    """What the server said, before judging it."""

    reasoning_content: str | None
    content: str
    finish_reason: str | None
    model: str | None
    usage: dict | None


@dataclass(frozen=True)
class Judged:
    """A reply as an answer (``reason`` None) or as a reject with its reason and detail."""

    reasoning: str
    answer: str
    reason: str | None = None
    detail: str = ""


def request_body(model: str, user_text: str, max_tokens: int, temperature: float, top_p: float,
                 stream: bool) -> dict:
    """The chat request for one question. deepseek-reasoner ignores temperature and top_p; a local
    R1 uses them (DeepSeek advises 0.6 / 0.95)."""
    body = {"model": model, "messages": [{"role": "user", "content": user_text}],
            "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}  # usage arrives in a last, choice-less chunk
    return body


def retry_after_seconds(headers) -> float | None:
    """``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date) -> seconds, or None."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return min(max(float(value) / 1000.0, 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(retry: int, base: float, cap: float, retry_after: float | None,
                  rng: random.Random | None = None) -> float:
    """Seconds before retry number ``retry`` (0-based): exponential with jitter, at most ``cap``,
    and never sooner than the server's ``Retry-After``.

    The jitter (a uniform draw over the upper half of the step) spreads the retries of requests
    that failed together, so a rate-limited server is not hit again by all of them at once.
    """
    step = min(cap, base * (2 ** retry))
    delay = step / 2 + (rng or random).uniform(0, step / 2)
    return max(delay, retry_after) if retry_after is not None else delay


def reasoning_steps(reasoning: str) -> list[str]:
    """The teacher-file ``reasoning`` list: the reasoning split on blank lines."""
    return [s.strip() for s in re.split(r"\n[ \t\u3000]*\n", reasoning) if s.strip()]


def judge(completion: Completion) -> Judged:
    """Split a reply into reasoning and answer, or say why it cannot be a training example."""
    if completion.finish_reason not in (None, "stop"):
        tokens = (completion.usage or {}).get("completion_tokens")
        spent = f" after {tokens} completion tokens" if tokens is not None else ""
        hint = "; raise --max_tokens" if completion.finish_reason == "length" else ""
        return Judged("", "", TRUNCATED, f"finish_reason {completion.finish_reason!r}{spent}{hint}")
    reasoning = (completion.reasoning_content or "").strip()
    answer = completion.content.strip()
    if not reasoning and THINK_CLOSE in answer:
        # A server without a reasoning parser: "reasoning</think>answer" (opening tag optional).
        parsed = parse_output(answer)
        reasoning, answer = parsed.reasoning, parsed.answer
    if not reasoning:
        return Judged("", answer, NO_REASONING, "no reasoning_content and no text before </think> "
                                                "(is this a reasoning model? for vLLM add "
                                                "--reasoning-parser deepseek_r1)")
    if not answer:
        return Judged(reasoning, "", EMPTY_ANSWER, "nothing after the reasoning")
    for name, text in (("reasoning", reasoning), ("answer", answer)):
        tag = find_think_tag(text)
        if tag:
            return Judged(reasoning, answer, THINK_TAG, f"the {name} contains the tag {tag!r}")
    return Judged(reasoning, answer)


def _message_reasoning(obj) -> str | None:
    # DeepSeek and older vLLM call it reasoning_content; newer vLLM also sends it as "reasoning".
    for name in ("reasoning_content", "reasoning"):
        value = getattr(obj, name, None)
        if isinstance(value, str) and value:
            return value
    return None


def _usage(obj) -> dict | None:
    usage = getattr(obj, "usage", None)
    return usage.model_dump(exclude_none=True) if usage is not None else None


class TeacherClient:
    """One OpenAI-compatible endpoint, shared by the worker threads (the client is thread-safe)."""

    def __init__(self, base_url: str, api_key: str, timeout: float):
        import httpx2
        import openai

        self._openai, self._httpx = openai, httpx2
        self._secret = api_key
        self.base_url = base_url
        self.timeout = timeout
        # timeout: httpx's connect/read/write limits, i.e. how long the server may stay silent.
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=0)

    def redact(self, text: str) -> str:
        """``text`` with the API key masked (an error body may echo the request's headers)."""
        return text.replace(self._secret, "***") if self._secret else text

    def close(self) -> None:
        self._client.close()

    def complete(self, body: dict, max_retries: int, backoff_base: float, backoff_max: float,
                 stop: threading.Event, on_retry: Callable[[int, str, str, float], None] | None = None,
                 rng: random.Random | None = None) -> tuple[Completion, int]:
        """Send ``body`` until a usable response arrives; returns it and the number of retries.

        Retries (at most ``max_retries``) on 408/409/429/5xx, timeouts, dropped connections and
        bodies that are not a chat completion, waiting :func:`backoff_delay`; before each wait it
        calls ``on_retry(retry number, kind, detail, seconds)``. Raises RequestFailed
        (with the status or error) when they run out or the status is not worth retrying,
        FatalAPIError on 401/402/403/404, Cancelled when ``stop`` is set while waiting.
        """
        for retry in range(max_retries + 1):
            try:
                return self._attempt(body), retry
            except _Retryable as exc:
                detail = self.redact(exc.detail)
                if retry == max_retries:
                    raise RequestFailed(f"{detail} (after {max_retries + 1} attempts)") from None
                delay = backoff_delay(retry, backoff_base, backoff_max, exc.retry_after, rng)
                if on_retry is not None:
                    honoured = exc.retry_after is not None and delay == exc.retry_after
                    on_retry(retry + 1, exc.kind, detail + (" (Retry-After honoured)" if honoured else ""),
                             delay)
                if stop.wait(delay):
                    raise Cancelled from None
        raise AssertionError("unreachable")

    def _attempt(self, body: dict) -> Completion:
        openai, httpx = self._openai, self._httpx
        try:
            if body.get("stream"):
                return self._read_stream(self._client.chat.completions.create(**body))
            return self._read_plain(self._client.chat.completions.create(**body))
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = self.redact(str(exc))[:_DETAIL_CHARS]
            if status in FATAL_STATUS:
                raise FatalAPIError(f"HTTP {status} from {self.base_url}: {FATAL_STATUS[status]} "
                                    f"({message})") from None
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(f"HTTP {status}", f"HTTP {status}: {message}",
                                 retry_after_seconds(exc.response.headers)) from None
            raise RequestFailed(f"HTTP {status}: {message}") from None
        except (openai.APITimeoutError, httpx.TimeoutException):
            raise _Retryable("timeout", f"timed out (the server was silent for --timeout {self.timeout:g} s)") from None
        except (openai.APIConnectionError, httpx.TransportError) as exc:
            cause = exc.__cause__ or exc
            raise _Retryable("connection", f"connection error: {type(cause).__name__}: {cause}"[:_DETAIL_CHARS]) from None
        except (openai.APIError, json.JSONDecodeError, ValueError) as exc:
            # A body that is not a chat completion (a proxy's error page, an error event mid-stream).
            raise _Retryable("bad_response", f"bad response: {type(exc).__name__}: {exc}"[:_DETAIL_CHARS]) from None

    def _read_plain(self, response) -> Completion:
        if not hasattr(response, "choices"):  # the client hands back a non-JSON body as text
            snippet = " ".join(str(response).split())[:80]
            raise _Retryable("bad_response", f"bad response: the body is not JSON ({snippet!r})")
        if not response.choices:
            raise _Retryable("bad_response", "bad response: no choices")
        choice = response.choices[0]
        return Completion(_message_reasoning(choice.message), choice.message.content or "",
                          choice.finish_reason, response.model, _usage(response))

    def _read_stream(self, stream) -> Completion:
        reasoning, content = [], []
        finish_reason = model = usage = None
        seen = False
        try:
            for chunk in stream:
                seen = True
                model = getattr(chunk, "model", None) or model
                usage = _usage(chunk) or usage
                for choice in getattr(chunk, "choices", None) or []:
                    delta = choice.delta
                    if delta is not None:
                        if (part := _message_reasoning(delta)) is not None:
                            reasoning.append(part)
                        if delta.content:
                            content.append(delta.content)
                    finish_reason = choice.finish_reason or finish_reason
        finally:
            stream.close()
        if not seen:
            raise _Retryable("bad_response", "bad response: an empty stream (the body was not server-sent events)")
        if finish_reason is None:
            raise _Retryable("bad_response", "bad response: the stream ended before a finish_reason")
        return Completion("".join(reasoning) or None, "".join(content), finish_reason, model, usage)
