"""A conversation with an R1 model: its settings, its history and the context window it is answered in.

Used by the terminal chat (``chat.py``; saved by ``chat_store.py``); the server's context limit too.

* Context: earlier assistant turns go back to the model as their answers only (DeepSeek's advice
  for R1); the transcript (``history``, saved files) keeps the reasoning beside each answer.
* Trimming: when the prompt would exceed the context limit minus ``max_new_tokens``, the oldest
  turns leave the context (not the transcript); ``fit_prompt`` says how many, and the caller tells
  the user. A question too long on its own costs the conversation nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from r1_sft.inference.decoding import TEMPERATURE, TOP_P
from r1_sft.r1_format import ParsedOutput, chat_messages, encode_prompt

NOTICE = "注意：模型回答仅供参考，不构成医疗建议；身体不适请及时就医。(Answers are not medical advice.)"


@dataclass
class ChatSettings:
    temperature: float = TEMPERATURE  # 0 = greedy decoding
    top_p: float = TOP_P
    max_new_tokens: int = 2048
    think: bool = True  # show the reasoning while it streams


def set_setting(settings: ChatSettings, name: str, value: str, context_limit: int) -> str:
    """Apply ``set NAME VALUE``; returns the confirmation, raises ValueError with the reason."""
    try:
        if name == "temperature":
            number = float(value)
            if not 0 <= number <= 2:
                raise ValueError
            settings.temperature = number
        elif name == "top_p":
            number = float(value)
            if not 0 < number <= 1:
                raise ValueError
            settings.top_p = number
        elif name == "max_new_tokens":
            number = int(value)
            if not 0 < number < context_limit:
                raise ValueError
            settings.max_new_tokens = number
        else:
            raise KeyError(name)
    except KeyError:
        raise ValueError(f"unknown setting {name!r} (use temperature, top_p or max_new_tokens)") from None
    except ValueError:
        ranges = {"temperature": "0..2 (0 = greedy)", "top_p": "0 < top_p <= 1",
                  "max_new_tokens": f"1..{context_limit - 1}"}
        raise ValueError(f"bad value {value!r} for {name} (range {ranges[name]})") from None
    return f"{name} = {getattr(settings, name)}"


def context_limit(model, tokenizer, max_context: int = 0) -> int:
    """Tokens the model can attend to: the smaller of max_position_embeddings and the tokenizer's
    model_max_length (whichever are known), further capped by ``max_context`` when > 0."""
    limits = []
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**9:  # transformers uses ~1e30 for "unknown"
        limits.append(tok_max)
    if max_context > 0:
        limits.append(max_context)
    return min(limits) if limits else 4096


@dataclass
class PromptFit:
    ids: list[int] | None  # the prompt, or None when the question alone does not fit
    tokens: int            # the prompt's length (the shortest tried, when it does not fit)
    budget: int            # context limit - max_new_tokens
    dropped: int           # user+assistant turns that left the context to make it fit


@dataclass
class Conversation:
    """The transcript and the part of it still in the model's context."""

    tokenizer: object
    context_limit: int
    history: list[dict] = field(default_factory=list)  # transcript: {"role", "content", "reasoning"}
    context_start: int = 0        # index of the first history turn still in the model's context
    pending_user: str | None = None  # a question whose answer was stopped (for retry)
    unsaved_turns: int = 0

    def context(self) -> list[dict]:
        return [{"role": t["role"], "content": t["content"]} for t in self.history[self.context_start:]]

    def fit_prompt(self, user_text: str, max_new_tokens: int) -> PromptFit:
        """Prompt ids for ``user_text`` after the context turns, dropping the oldest turns until
        prompt + max_new_tokens fits the context limit."""
        budget = self.context_limit - max_new_tokens
        dropped, start = 0, self.context_start
        while True:
            ids = encode_prompt(self.tokenizer, chat_messages(self.context(), user_text))
            if len(ids) <= budget:
                return PromptFit(ids, len(ids), budget, dropped)
            if self.context_start >= len(self.history):
                self.context_start = start  # a refused question must not cost the conversation its context
                return PromptFit(None, len(ids), budget, 0)
            self.context_start = min(self.context_start + 2, len(self.history))  # one user+assistant turn
            dropped += 1

    def context_tokens(self) -> int:
        context = self.context()
        return len(encode_prompt(self.tokenizer, chat_messages(context, ""))) if context else 0

    def add_turn(self, user_text: str, parsed: ParsedOutput) -> None:
        self.history += [{"role": "user", "content": user_text, "reasoning": ""},
                         {"role": "assistant", "content": parsed.answer, "reasoning": parsed.reasoning}]
        self.pending_user = None
        self.unsaved_turns += 1

    def take_retry(self) -> str | None:
        """The question to answer again: the stopped one, else the last one (its answer leaves the history)."""
        if self.pending_user is not None:
            return self.pending_user
        if not self.history:
            return None
        user_text = self.history[-2]["content"]
        del self.history[-2:]
        self.context_start = min(self.context_start, len(self.history))
        return user_text

    def replace(self, history: list[dict]) -> None:
        """Start over from ``history`` (a cleared or loaded conversation), all of it in the context."""
        self.history, self.context_start, self.pending_user, self.unsaved_turns = history, 0, None, 0
