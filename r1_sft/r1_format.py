"""The R1 think format, defined once: SFT targets, prompts, training encoding, output parsing (also streamed).

DeepSeek-R1 distills answer as ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}<eos>``. Their chat
template (see shared FACTS):
  * writes BOS itself; under transformers 4.x the tokenizer adds another one (5.x, pinned here, adds
    none), so template text is always encoded with add_special_tokens=False: one BOS under both;
  * cuts every assistant turn to the text after ``</think>`` -- so a training string rendered
    through the template loses its reasoning. The target is therefore appended by hand;
  * ends the generation prompt with ``<｜Assistant｜><think>\\n`` (older revisions stop at
    ``<｜Assistant｜>``; we add the ``<think>\\n`` then), so generated text has no opening tag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
GENERATION_PREFIX = THINK_OPEN + "\n"
IGNORE_INDEX = -100  # label of positions the loss skips (the prompt; padding)


def build_user_text(question: str, instruction: str = "") -> str:
    """R1 takes no system prompt: a non-empty instruction goes in front of the question."""
    question, instruction = question.strip(), (instruction or "").strip()
    return f"{instruction}\n\n{question}" if instruction else question


def format_output(reasoning: str, answer: str) -> str:
    """The SFT ``output``: ``<think>\\n{reasoning}\\n</think>\\n\\n{answer}``."""
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{answer.strip()}"


@dataclass(frozen=True)
class ParsedOutput:
    reasoning: str
    answer: str  # "" when the think block never closed (generation cut off)
    think_closed: bool


def parse_output(text: str) -> ParsedOutput:
    """Split model output or an SFT ``output`` into reasoning and answer.

    Accepts text with or without the opening ``<think>`` (generated text starts inside the think
    block). An unclosed think block -- including text with no tags at all, which never left the
    implicit think block -- means reasoning and no answer.
    """
    body = text.lstrip()
    if body.startswith(THINK_OPEN):
        body = body[len(THINK_OPEN):]
    if THINK_CLOSE in body:
        reasoning, _, answer = body.partition(THINK_CLOSE)
        return ParsedOutput(reasoning.strip(), answer.strip(), True)
    return ParsedOutput(body.strip(), "", False)


class ThinkSplitter:
    """Cut a text stream at ``</think>``: ``feed`` returns ``[("reasoning"|"answer", text), ...]``.

    A chunk ending in a prefix of ``</think>`` (e.g. ``"</thi"``) is held back until the next chunk
    decides, so the tag is found even when split across chunks and never shown as reasoning.
    """

    def __init__(self) -> None:
        self.in_answer = False
        self._held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.in_answer:
            return [("answer", text)] if text else []
        buf = self._held + text
        cut = buf.find(THINK_CLOSE)
        if cut >= 0:
            self.in_answer, self._held = True, ""
            parts = [("reasoning", buf[:cut]), ("answer", buf[cut + len(THINK_CLOSE):])]
            return [(kind, part) for kind, part in parts if part]
        keep = next((k for k in range(min(len(THINK_CLOSE) - 1, len(buf)), 0, -1)
                     if THINK_CLOSE.startswith(buf[-k:])), 0)
        self._held = buf[len(buf) - keep:] if keep else ""
        emit = buf[:len(buf) - keep]
        return [("reasoning", emit)] if emit else []

    def flush(self) -> list[tuple[str, str]]:
        held, self._held = self._held, ""
        return [("answer" if self.in_answer else "reasoning", held)] if held else []


def chat_messages(history: Sequence[dict], user_text: str) -> list[dict]:
    """Messages for the next prompt: earlier assistant turns carry only their answers (R1 advice).

    An assistant turn is either a full output (its reasoning is cut here) or already just an answer
    (what the chat keeps in its history), which passes unchanged.
    """
    messages = []
    for turn in history:
        content = turn["content"]
        if turn["role"] == "assistant":
            content = parse_output(content).answer if THINK_CLOSE in content else content
        messages.append({"role": turn["role"], "content": content})
    messages.append({"role": "user", "content": user_text})
    return messages


def build_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The generation prompt text from the model's own chat template, ending in ``<think>\\n``."""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if not text.endswith(GENERATION_PREFIX):
        text += GENERATION_PREFIX
    return text


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Prompt token ids with exactly one BOS: the template writes it, so the tokenizer must not."""
    return tokenizer(build_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def target_text(output: str) -> str:
    """The trained continuation of the prompt: the SFT output without its opening ``<think>\\n``."""
    body = output.lstrip()
    if body.startswith(GENERATION_PREFIX):
        return body[len(GENERATION_PREFIX):]
    if body.startswith(THINK_OPEN):
        return body[len(THINK_OPEN):].lstrip("\n")
    return body


def encode_example(tokenizer, user_text: str, output: str, max_length: int | None = None,
                   truncate: bool = False) -> dict | None:
    """Token ids and labels for one SFT example, exactly as inference will see it.

    ``input_ids`` = template prompt (one BOS, ends in ``<think>\\n``) + target + EOS.
    ``labels`` = -100 over the prompt, the token ids over target and EOS. Nothing is padded here.
    Returns None when the example is longer than ``max_length`` and ``truncate`` is False (a target
    whose EOS was cut off would teach the model never to stop).
    """
    prompt_ids = encode_prompt(tokenizer, [{"role": "user", "content": user_text}])
    target_ids = tokenizer(target_text(output), add_special_tokens=False)["input_ids"]
    target_ids = target_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + target_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + target_ids
    if max_length is not None and len(input_ids) > max_length:
        if not truncate or len(prompt_ids) >= max_length:
            return None
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}
