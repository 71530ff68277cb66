"""Multi-turn chat with an R1 model: session state, context trimming, streaming, commands, save/load.

The chat script stays thin; everything it does lives here so it can be tested in memory.

* Context: earlier assistant turns go back to the model as their answers only (DeepSeek's advice
  for R1); the transcript (``history``, saved files) keeps the reasoning beside each answer.
* Trimming: when the prompt would exceed the context limit minus ``max_new_tokens``, the oldest
  turns leave the context (not the transcript) and the user is told.
* Streaming: a ``TextStreamer`` subclass hands decoded text to ``ThinkSplitter``, which cuts the
  stream at ``</think>`` into reasoning (labelled, dimmed on a terminal, hideable) and answer.
* Ctrl-C during generation sets a flag that a ``StoppingCriteria`` reads, so ``generate`` returns
  cleanly with what it has; the answer is dropped and the session goes on.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, TextIO

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from .decoding import TEMPERATURE, TOP_P
from .jsonl_io import atomic_write_text
from .paths import display_path
from .r1_format import THINK_CLOSE, chat_messages, encode_prompt, parse_output

NOTICE = "注意：模型回答仅供参考，不构成医疗建议；身体不适请及时就医。(Answers are not medical advice.)"
REASONING_LABEL = "[思考 reasoning]"
ANSWER_LABEL = "[回答 answer]"
HIDDEN_LABEL = "[思考中… 推理已隐藏 reasoning hidden; `think on` shows it]"
STOPPED_NOTE = "[已停止 stopped: 本次回答已丢弃，输入 retry 可重新生成]"
DIM, RESET = "\x1b[2m", "\x1b[0m"

# Canonical command -> the words that call it (Chinese and English, as in the seed).
COMMANDS = {
    "quit": ("退出", "quit", "exit"),
    "clear": ("清除", "clear"),
    "save": ("保存", "save"),
    "load": ("加载", "load"),
    "stats": ("统计", "stats"),
    "help": ("帮助", "help"),
    "retry": ("重试", "retry"),
    "think": ("思考", "think"),
    "set": ("设置", "set"),
}
_COMMAND_OF_WORD = {word: name for name, words in COMMANDS.items() for word in words}

HELP = """命令 (commands):
  退出 / quit / exit            结束对话 (end the session)
  清除 / clear                  清空对话历史 (forget the conversation)
  保存 / save [名称]            保存到 conversations/ (save; default name conversation_YYYYmmdd_HHMMSS.json)
  加载 / load [文件或编号]      加载保存的对话 (load; no argument lists the saved ones)
  统计 / stats                  轮数、上下文长度、设置 (turns, context size, settings)
  重试 / retry                  重新生成上一个回答 (regenerate the last answer)
  思考 / think on|off           显示或隐藏推理过程 (show or hide the reasoning)
  设置 / set temperature|top_p|max_new_tokens 值   (change a generation setting)
  帮助 / help                   显示本帮助
生成时按 Ctrl-C 停止当前回答；在提示符处按 Ctrl-C 或 Ctrl-D 结束对话。
(Ctrl-C while generating stops that answer; Ctrl-C or Ctrl-D at the prompt ends the session.)"""


# Commands that take no argument: "help me read my report" is a question, not a command.
_NO_ARGUMENT = {"quit", "clear", "stats", "help", "retry"}
THINK_SWITCH = {"on": True, "开": True, "off": False, "关": False}


def parse_command(line: str) -> tuple[str, str] | None:
    """``("save", "name")`` when the line's first word is a command word, else None (a message)."""
    word, _, arg = line.strip().partition(" ")
    name = _COMMAND_OF_WORD.get(word.lower().lstrip("/"))
    if not name or (name in _NO_ARGUMENT and arg.strip()):
        return None
    if name == "think" and arg.strip() and arg.strip().lower() not in THINK_SWITCH:
        return None  # "think about ..." is a message
    return name, arg.strip()


# ---------------------------------------------------------------- settings and context limit

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


# ---------------------------------------------------------------- streaming

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


class StreamPrinter:
    """Writes reasoning and answer apart as they stream: labels, dim reasoning on a terminal."""

    def __init__(self, out: TextIO, show_think: bool, color: bool) -> None:
        self.out, self.show_think, self.color = out, show_think, color
        self.splitter = ThinkSplitter()
        self.reasoning_started = False
        self.answer_started = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def start(self) -> None:
        self._write((REASONING_LABEL if self.show_think else HIDDEN_LABEL) + "\n")

    def text(self, text: str) -> None:
        for kind, part in self.splitter.feed(text):
            self._part(kind, part)

    def _part(self, kind: str, part: str) -> None:
        if kind == "reasoning":
            if not self.reasoning_started:
                part = part.lstrip("\n")
                self.reasoning_started = bool(part)
            if self.show_think and part:
                self._write(f"{DIM}{part}{RESET}" if self.color else part)
            return
        if not self.answer_started:
            part = part.lstrip()
            if not part:
                return
            self.answer_started = True
            self._write(("\n" if self.show_think else "") + ANSWER_LABEL + "\n")
        self._write(part)

    def end(self) -> None:
        for kind, part in self.splitter.flush():
            self._part(kind, part)
        self._write("\n")


class _CallbackStreamer(TextStreamer):
    """transformers' TextStreamer (whole words / CJK characters, prompt skipped) -> a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


class StopFlag(StoppingCriteria):
    """Stops ``generate`` at the next token once ``set()`` was called (from a signal handler)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)


@contextlib.contextmanager
def ctrl_c_sets(flag: StopFlag) -> Iterator[None]:
    """While generating, Ctrl-C sets ``flag`` instead of raising KeyboardInterrupt mid-computation."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class StreamedReply:
    text: str              # generated text (special tokens skipped), reasoning and answer
    new_tokens: int
    seconds: float
    stopped_by_user: bool  # Ctrl-C
    stopped_by_eos: bool   # False when cut by max_new_tokens (or the user)


@torch.inference_mode()
def stream_reply(model, tokenizer, prompt_ids: list[int], settings: ChatSettings,
                 on_text: Callable[[str], None]) -> StreamedReply:
    """Generate one reply for ``prompt_ids`` (batch of one), passing decoded text to ``on_text`` as it comes."""
    device = next(model.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    input_ids = torch.tensor([prompt_ids], device=device)
    sampling = (dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
                if settings.temperature > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    stop = StopFlag()
    t0 = time.perf_counter()
    with ctrl_c_sets(stop):
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             max_new_tokens=settings.max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                             streamer=_CallbackStreamer(tokenizer, on_text),
                             stopping_criteria=StoppingCriteriaList([stop]), **sampling)
    seconds = time.perf_counter() - t0
    new = out[0, len(prompt_ids):].tolist()
    stopped_by_eos = eos_id in new
    if stopped_by_eos:
        new = new[:new.index(eos_id) + 1]
    return StreamedReply(tokenizer.decode(new, skip_special_tokens=True), len(new), seconds,
                         stop.requested, stopped_by_eos and not stop.requested)


# ---------------------------------------------------------------- conversation files

class ConversationFileError(ValueError):
    """A conversation file that cannot be loaded; the message says why."""


def default_conversation_name(now: datetime | None = None) -> str:
    return f"conversation_{(now or datetime.now()).strftime('%Y%m%d_%H%M%S')}.json"


def safe_conversation_path(conversations_dir: Path, name: str = "") -> Path:
    """The file a save name may create: always directly inside ``conversations_dir``.

    Only the last path component survives (``../../x`` -> ``x.json``); characters other than
    letters, digits, CJK, ``-``, ``_`` and ``.`` become ``_``; leading dots go (no hidden files).
    """
    base = name.replace("\\", "/").strip().rstrip("/").rpartition("/")[2]
    base = re.sub(r"[^\w.\-]", "_", base).lstrip(".")
    if base.lower().endswith(".json"):
        base = base[:-5]
    return Path(conversations_dir) / (f"{base}.json" if base.strip("_") else default_conversation_name())


def conversation_record(model_path: str, settings: ChatSettings, history: list[dict],
                        now: datetime | None = None) -> dict:
    return {"model_path": model_path, "timestamp": (now or datetime.now()).isoformat(timespec="seconds"),
            "settings": dataclasses.asdict(settings),
            "conversation": [{"role": t["role"], "content": t["content"], "reasoning": t.get("reasoning", "")}
                             for t in history]}


def save_conversation(path: Path, record: dict) -> Path:
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return path


def load_conversation(path: Path) -> dict:
    """Read and check a saved conversation; ConversationFileError says what is wrong with it."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConversationFileError("file not found / 文件不存在") from None
    except UnicodeDecodeError:
        raise ConversationFileError("not UTF-8 text / 不是 UTF-8 文本") from None
    except OSError as exc:
        raise ConversationFileError(f"cannot read ({exc.strerror})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConversationFileError(f"line {exc.lineno}: not valid JSON ({exc.msg}) / 不是有效的 JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("conversation"), list):
        raise ConversationFileError('no "conversation" list / 缺少 conversation 列表')
    turns = []
    for i, turn in enumerate(record["conversation"], 1):
        expected = "user" if i % 2 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            raise ConversationFileError(f"turn {i}: expected an object with role {expected!r} "
                                        f"(turns alternate user/assistant)")
        content, reasoning = turn.get("content"), turn.get("reasoning", "")
        if not isinstance(content, str) or not isinstance(reasoning, (str, type(None))):
            raise ConversationFileError(f"turn {i}: content and reasoning must be strings")
        turns.append({"role": expected, "content": content, "reasoning": reasoning or ""})
    if len(turns) % 2:
        raise ConversationFileError(f"turn {len(turns)}: the last user turn has no answer")
    return {**record, "conversation": turns}


# ---------------------------------------------------------------- model menu

def find_model_folders(root: Path, depth: int = 3) -> list:
    """``ModelFolder``s under ``root`` (down to ``depth`` levels) that load as a base, adapter or merged model."""
    from .cli import UserError
    from .modeling import resolve_model_folder

    found = []

    def walk(folder: Path, level: int) -> None:
        for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                found.append(resolve_model_folder(child))
            except UserError:
                pass
            if level < depth:
                walk(child, level + 1)

    if root.is_dir():
        walk(root, 1)
    return found


def model_menu_label(folder) -> str:
    """One menu line for a ``ModelFolder``: its path and what it is (an adapter names its base)."""
    what = {"base": "base model", "merged": "merged model"}.get(folder.kind)
    if what is None:
        what = f"LoRA adapter on {display_path(folder.base_path)}"
    return f"{display_path(folder.model_path)}  ({what})"


# ---------------------------------------------------------------- the session

@dataclass
class ChatSession:
    """One conversation with one model. ``handle_line`` is the whole read-eval-print step."""

    model: object
    tokenizer: object
    model_path: str
    settings: ChatSettings
    context_limit: int
    conversations_dir: Path
    out: TextIO = sys.stdout
    color: bool = False           # ANSI dim for reasoning (only when stdout is a terminal)
    interactive: bool = False     # may ask the user questions (stdin is a terminal)
    debug_prompt: bool = False    # print every prompt's text before generating
    ask: Callable[[str], str] = input
    history: list[dict] = field(default_factory=list)  # transcript: {"role", "content", "reasoning"}
    context_start: int = 0        # index of the first history turn still in the model's context
    pending_user: str | None = None  # a question whose answer was stopped (for retry)
    unsaved_turns: int = 0
    generated_tokens: int = 0
    generation_seconds: float = 0.0

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # --- context

    def _context(self) -> list[dict]:
        return [{"role": t["role"], "content": t["content"]} for t in self.history[self.context_start:]]

    def build_prompt_ids(self, user_text: str) -> list[int] | None:
        """Prompt ids for ``user_text`` after the context turns; drops the oldest turns (telling the
        user) until prompt + max_new_tokens fits the context limit. None if the question alone is too long."""
        budget = self.context_limit - self.settings.max_new_tokens
        dropped, start = 0, self.context_start
        while True:
            ids = encode_prompt(self.tokenizer, chat_messages(self._context(), user_text))
            if len(ids) <= budget:
                break
            if self.context_start >= len(self.history):
                self.say(f"[上下文 context] 问题太长：提示 {len(ids)} tokens > {budget} "
                         f"(= context {self.context_limit} - max_new_tokens {self.settings.max_new_tokens})；"
                         f"请缩短问题或 set max_new_tokens 更小 (question too long)")
                self.context_start = start  # a refused question must not cost the conversation its context
                return None
            self.context_start = min(self.context_start + 2, len(self.history))  # one user+assistant turn
            dropped += 1
        if dropped:
            self.say(f"[上下文 context] 已丢弃最早的 {dropped} 轮对话以适应上下文长度 "
                     f"(dropped {dropped} oldest turn(s): prompt + max_new_tokens must fit {self.context_limit} "
                     f"tokens; now {len(ids)} + {self.settings.max_new_tokens})；保存的记录仍包含它们")
        return ids

    # --- turns

    def reply(self, user_text: str) -> bool:
        """Answer ``user_text`` with streaming output; True when an answer was added to the history."""
        prompt_ids = self.build_prompt_ids(user_text)
        if prompt_ids is None:
            return False
        if self.debug_prompt:
            self.say(f"[prompt {len(prompt_ids)} tokens] {self.tokenizer.decode(prompt_ids)!r}")
        printer = StreamPrinter(self.out, self.settings.think, self.color)
        printer.start()
        result = stream_reply(self.model, self.tokenizer, prompt_ids, self.settings, printer.text)
        printer.end()
        self.generated_tokens += result.new_tokens
        self.generation_seconds += result.seconds
        if result.stopped_by_user:
            self.pending_user = user_text
            self.say(STOPPED_NOTE)
            return False
        parsed = parse_output(result.text)
        speed = result.new_tokens / result.seconds if result.seconds > 0 else 0.0
        if parsed.think_closed:
            note = ""
        elif result.stopped_by_eos:
            note = "; 模型在推理中途停止，没有回答 (the model stopped before closing its reasoning: no answer)"
        else:
            note = (f"; 推理未结束，没有回答 (reasoning cut off at max_new_tokens={self.settings.max_new_tokens}: "
                    f"set max_new_tokens N)")
        self.say(f"[{result.new_tokens} tokens, {speed:.1f} tokens/s{note}]")
        self.history += [{"role": "user", "content": user_text, "reasoning": ""},
                         {"role": "assistant", "content": parsed.answer, "reasoning": parsed.reasoning}]
        self.pending_user = None
        self.unsaved_turns += 1
        return True

    def retry(self) -> None:
        """Regenerate the last answer (or the one Ctrl-C stopped) for the same question."""
        if self.pending_user is not None:
            user_text = self.pending_user
        elif self.history:
            user_text = self.history[-2]["content"]
            del self.history[-2:]
            self.context_start = min(self.context_start, len(self.history))
        else:
            self.say("没有可重新生成的回答 (nothing to retry)")
            return
        self.say(f"[重试 retry] {user_text}")
        self.reply(user_text)

    def clear(self) -> None:
        self.history, self.context_start, self.pending_user, self.unsaved_turns = [], 0, None, 0
        self.say("对话历史已清除 (history cleared)")

    # --- files

    def save(self, name: str = "") -> Path | None:
        if not self.history:
            self.say("没有可保存的对话 nothing to save: no turns yet (ask something first; `load` reads a saved one)")
            return None
        path = safe_conversation_path(self.conversations_dir, name)
        save_conversation(path, conversation_record(self.model_path, self.settings, self.history))
        self.unsaved_turns = 0
        self.say(f"已保存 saved {len(self.history) // 2} turn(s) -> {display_path(path)}")
        return path

    def saved_files(self) -> list[Path]:
        files = self.conversations_dir.glob("*.json") if self.conversations_dir.is_dir() else []
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)

    def _list_saved(self, files: list[Path]) -> None:
        if not files:
            self.say(f"{display_path(self.conversations_dir)} 中没有保存的对话 (no saved conversations)")
        for i, path in enumerate(files, 1):
            self.say(f"  {i}. {path.name}")

    def _load_target(self, arg: str) -> Path | None:
        """The file ``load ARG`` means (a number from the list, a name, or a path); None after saying why."""
        files = self.saved_files()
        if not arg:
            self._list_saved(files)
            if not files:
                return None
            if not self.interactive:
                self.say("用 load 名称 或 load 编号 加载 (use: load NAME or load NUMBER)")
                return None
            arg = self.ask("编号 number> ").strip()
            if not arg:
                return None
        if arg.isdigit() and 1 <= int(arg) <= len(files) and not (self.conversations_dir / arg).exists():
            return files[int(arg) - 1]
        for candidate in (Path(arg).expanduser(), self.conversations_dir / arg,
                          self.conversations_dir / f"{arg}.json"):
            if candidate.is_file():
                return candidate
        what = f"第 {arg} 个对话 (no conversation {arg})" if arg.isdigit() else f"对话 {arg} (no conversation {arg!r})"
        self.say(f"没有{what} in {display_path(self.conversations_dir)}" + ("; 已保存 saved:" if files else ""))
        self._list_saved(files)
        return None

    def load(self, arg: str = "") -> bool:
        path = self._load_target(arg)
        if path is None:
            return False
        try:
            record = load_conversation(path)
        except ConversationFileError as exc:
            self.say(f"无法加载 cannot load {display_path(path)}: {exc}；当前对话不变 (session unchanged)")
            return False
        self.history, self.context_start, self.pending_user = record["conversation"], 0, None
        self.unsaved_turns = 0
        self.say(f"已加载 loaded {len(self.history) // 2} turn(s) <- {display_path(path)} "
                 f"(saved with model {record.get('model_path', '?')})")
        return True

    # --- info

    def stats_text(self) -> str:
        context = self._context()
        context_tokens = len(encode_prompt(self.tokenizer, chat_messages(context, ""))) if context else 0
        speed = self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        s = self.settings
        return "\n".join([
            f"模型 model: {self.model_path}",
            f"轮数 turns: {len(self.history) // 2} in transcript, {len(context) // 2} in context "
            f"({self.context_start // 2} dropped from context)",
            f"上下文 context: ~{context_tokens} tokens used, limit {self.context_limit} "
            f"(- max_new_tokens {s.max_new_tokens})",
            f"设置 settings: temperature={s.temperature} top_p={s.top_p} max_new_tokens={s.max_new_tokens} "
            f"think={'on' if s.think else 'off'}",
            f"生成 generated: {self.generated_tokens} tokens, {speed:.1f} tokens/s",
        ])

    # --- dispatch

    def handle_line(self, line: str) -> bool:
        """Run one message or command; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        command = parse_command(line)
        if command is None:
            self.reply(line)
            return True
        name, arg = command
        if name == "quit":
            return False
        if name == "clear":
            self.clear()
        elif name == "save":
            self.save(arg)
        elif name == "load":
            self.load(arg)
        elif name == "stats":
            self.say(self.stats_text())
        elif name == "help":
            self.say(HELP)
        elif name == "retry":
            self.retry()
        elif name == "think":
            value = THINK_SWITCH.get(arg.lower())
            if value is None:
                self.say("用法 usage: think on|off")
            else:
                self.settings.think = value
                self.say(f"推理显示 reasoning display: {'on' if value else 'off'}")
        elif name == "set":
            setting, _, value = arg.partition(" ")
            try:
                self.say(set_setting(self.settings, setting.strip(), value.strip(), self.context_limit))
            except ValueError as exc:
                self.say(f"设置失败 {exc}")
        return True

    def finish(self) -> None:
        """End of session: offer to save unsaved turns (only when we may ask)."""
        if not self.unsaved_turns or not self.history:
            return
        if not self.interactive:
            self.say(f"[{self.unsaved_turns} 轮未保存 unsaved turn(s) not saved]")
            return
        try:
            answer = self.ask("保存本次对话？save this conversation? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
            self.say("")
        if answer in ("y", "yes", "是", "好"):
            self.save()
