"""The OpenAI chat-completions protocol in DeepSeek's reasoning shape: requests, errors, responses.

Pure functions and small classes (no model, no web framework), used by ``serving.py``:

* ``parse_request`` checks a request body and encodes its prompt with the chat's own code
  (``r1_format.chat_messages`` + ``encode_prompt``): earlier assistant turns enter without their
  reasoning, exactly one BOS, the prompt ends in ``<think>\\n``. R1 takes no system prompt, so system
  (and ``developer``) messages are folded into the first user turn, in front of the question, as the
  data stage does with instructions (``build_user_text``).
* ``completion_body`` answers with ``message.reasoning_content`` and ``message.reasoning`` (the think
  block, the same text under DeepSeek's name and vLLM 0.11+'s) apart from
  ``message.content`` (the answer), ``finish_reason`` ``stop``/``length``, and usage with
  ``completion_tokens_details.reasoning_tokens``; ``delta`` turns a streamed part (generation's
  ``ReplyParts``: reasoning first, then answer) into a ``reasoning_content`` + ``reasoning`` or ``content`` delta.
* Errors are ``ApiError``: an HTTP status and OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import hmac
import json
import math
from dataclasses import dataclass

from r1_sft.inference.decoding import TEMPERATURE, TOP_P, Decoding
from r1_sft.r1_format import build_user_text, chat_messages, encode_prompt, parse_output

ROLES = ("system", "developer", "user", "assistant")
SYSTEM_ROLES = ("system", "developer")  # "developer" is OpenAI's newer name for the system message
MAX_SEED = 2**63


# ---------------------------------------------------------------- errors

class ApiError(Exception):
    """An error answered as OpenAI's JSON error body with an HTTP status."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------- requests

@dataclass(frozen=True)
class CompletionRequest:
    """A validated chat-completion request, its prompt already encoded."""

    prompt_ids: list[int]
    max_tokens: int
    min_tokens: int = 0
    temperature: float = TEMPERATURE  # 0 = greedy
    top_p: float = TOP_P
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False

    def decoding(self) -> Decoding:
        """The generation values: temperature 0 = greedy; a seed makes the reply repeatable."""
        return Decoding.from_temperature(self.temperature, self.top_p, self.max_tokens, self.seed, self.min_tokens)


def _text_of(content, param: str, required: bool) -> str:
    """A message's text: a string, or OpenAI's list of ``{"type": "text", "text": ...}`` parts."""
    if content is None and not required:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(f"{param}[{i}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                  f"are supported", f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    raise bad_request(f"{param} must be a string or a list of text parts", param)


def conversation_messages(messages) -> list[dict]:
    """Check OpenAI ``messages`` and turn them into the chat's messages for ``encode_prompt``.

    System/developer messages are folded into the first user turn (R1 takes no system prompt);
    earlier assistant turns keep only their answers (``chat_messages``); a ``reasoning_content``
    sent back by a client is ignored. The last message must be the user's.
    """
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of {\"role\", \"content\"} objects", "messages")
    system, turns = [], []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with role and content", param)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{param}.role: unknown role {role!r} (this server takes system, user and assistant "
                              f"messages)", f"{param}.role")
        text = _text_of(message.get("content"), f"{param}.content", required=role != "assistant")
        if role in SYSTEM_ROLES:
            system.append(text.strip())
        else:
            turns.append({"role": role, "content": text})
    if not turns or turns[-1]["role"] != "user":
        raise bad_request("the last message must be the user's (a system message alone is not a question)", "messages")
    instruction = "\n\n".join(s for s in system if s)
    if instruction:
        first = next(t for t in turns if t["role"] == "user")
        first["content"] = build_user_text(first["content"], instruction)
    return chat_messages(turns[:-1], turns[-1]["content"])


def _number(body: dict, name: str, default, *, integer: bool, low, high, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (not integer and not math.isfinite(value)):
        raise bad_request(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'>' if low_open else '>='} {low} and <= {high}"
        raise bad_request(f"{name} = {value!r} is out of range (must be {bounds})", name)
    return value


def parse_request(body, tokenizer, context_limit: int, default_max_tokens: int) -> CompletionRequest:
    """Validate a chat-completion body and encode its prompt; ApiError (400) says what is wrong."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise bad_request("model must be a string", "model")
    if body.get("n") not in (None, 1):
        raise bad_request("n must be 1 (one answer per request)", "n")
    if body.get("stop") not in (None, "", []):
        raise bad_request("stop sequences are not supported (the answer ends at the model's end-of-sentence token)",
                          "stop")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict)
                                or not isinstance(options.get("include_usage", False), bool)):
        raise bad_request("stream_options must be an object like {\"include_usage\": true}", "stream_options")
    messages = conversation_messages(body.get("messages"))

    temperature = _number(body, "temperature", TEMPERATURE, integer=False, low=0, high=2)
    top_p = _number(body, "top_p", TOP_P, integer=False, low=0, high=1, low_open=True)
    seed = _number(body, "seed", None, integer=True, low=-MAX_SEED, high=MAX_SEED - 1)
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, name, None, integer=True, low=1, high=context_limit - 1)

    prompt_ids = encode_prompt(tokenizer, messages)
    room = context_limit - len(prompt_ids)
    if max_tokens is None and room >= 1:
        max_tokens = min(default_max_tokens, room)
    if max_tokens is None or max_tokens > room:
        asked = f" + {max_tokens} ({name})" if max_tokens is not None else ""
        raise bad_request(f"this model's maximum context length is {context_limit} tokens; the messages take "
                          f"{len(prompt_ids)}{asked}. Shorten the messages or lower {name}",
                          "messages", "context_length_exceeded")
    # vLLM's extension: generate at least this many tokens before the end-of-sentence may come.
    min_tokens = _number(body, "min_tokens", 0, integer=True, low=0, high=max_tokens)
    return CompletionRequest(prompt_ids, max_tokens, min_tokens, float(temperature), float(top_p), seed,
                             bool(body.get("stream")), bool((options or {}).get("include_usage")))


def check_api_key(authorization: str | None, api_key: str | None) -> None:
    if api_key is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------- responses

@dataclass
class Completion:
    text: str              # generated text, special tokens skipped (reasoning, </think>, answer)
    completion_tokens: int  # generated tokens, EOS included
    reasoning_tokens: int   # tokens up to and including </think>; all but EOS when it never closed
    finish_reason: str      # "stop" (EOS) or "length" (max_tokens)
    stopped: bool           # ended early by its StopFlag: the client left, or the server is stopping
    seconds: float


def usage(prompt_tokens: int, completion: Completion) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": prompt_tokens + completion.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": completion.reasoning_tokens}}


def completion_body(completion_id: str, created: int, model_name: str, prompt_tokens: int,
                    completion: Completion) -> dict:
    """The non-streamed response: reasoning and answer apart, as DeepSeek's reasoner returns them."""
    parsed = parse_output(completion.text)
    # vLLM 0.11+ names the field "reasoning"; DeepSeek's API and older clients read "reasoning_content"
    message = {"role": "assistant", "content": parsed.answer, "reasoning": parsed.reasoning,
               "reasoning_content": parsed.reasoning}
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": completion.finish_reason}],
            "usage": usage(prompt_tokens, completion)}


def delta(kind: str, text: str) -> dict:
    """A streamed part (``"reasoning"`` or ``"answer"``) as DeepSeek's reasoner streams it; reasoning under
    both names (``reasoning``: vLLM 0.11+, ``reasoning_content``: DeepSeek), the same text."""
    return {"reasoning": text, "reasoning_content": text} if kind == "reasoning" else {"content": text}


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"
