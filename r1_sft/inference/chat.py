"""The terminal chat with an R1 model: command dispatch and streaming output.

The chat script stays thin; what it does lives here (and in ``conversation.py``, the history and
its context window, and ``chat_store.py``, saved conversations), so it can be tested in memory.

* Streaming: ``generation.stream_reply`` hands reasoning and answer apart as they come;
  ``StreamPrinter`` labels them and dims the reasoning on a terminal (hideable: ``think off``).
* Ctrl-C during generation sets the reply's ``StopFlag``, so ``generate`` returns cleanly with what
  it has; the answer is dropped and the session goes on (``retry`` asks again).
* Seeding: with ``--seed S`` the n-th reply of a session is generated as batch n of a run seeded S
  (``decoding.Decoding.batch_seed``): the first reply equals the evaluation's first sample.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

from r1_sft.inference.chat_store import (
    ConversationFileError,
    conversation_record,
    find_conversation,
    load_conversation,
    safe_conversation_path,
    save_conversation,
    saved_conversations,
)
from r1_sft.inference.conversation import ChatSettings, Conversation, set_setting
from r1_sft.inference.decoding import Decoding
from r1_sft.inference.generation import StopFlag, StreamedReply, stream_reply
from r1_sft.paths import display_path
from r1_sft.r1_format import parse_output

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


# ---------------------------------------------------------------- streaming output

class StreamPrinter:
    """Writes reasoning and answer apart as they stream: labels, dim reasoning on a terminal."""

    def __init__(self, out: TextIO, show_think: bool, color: bool) -> None:
        self.out, self.show_think, self.color = out, show_think, color
        self.answer_started = False

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def start(self) -> None:
        self._write((REASONING_LABEL if self.show_think else HIDDEN_LABEL) + "\n")

    def part(self, kind: str, text: str) -> None:
        """One piece of ``kind`` "reasoning" or "answer" (``generation.ReplyParts``: leading blanks dropped)."""
        if kind == "reasoning":
            if self.show_think:
                self._write(f"{DIM}{text}{RESET}" if self.color else text)
            return
        if not self.answer_started:
            self.answer_started = True
            self._write(("\n" if self.show_think else "") + ANSWER_LABEL + "\n")
        self._write(text)

    def end(self) -> None:
        self._write("\n")


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


# ---------------------------------------------------------------- model menu

def find_model_folders(root: Path, depth: int = 3) -> list:
    """``ModelFolder``s under ``root`` (down to ``depth`` levels) that load as a base, adapter or merged model."""
    from r1_sft.cli import UserError
    from r1_sft.model.folders import resolve_model_folder

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
    """One conversation with one model in the terminal. ``handle_line`` is the whole read-eval-print step."""

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
    seed: int | None = None       # None: sampling not seeded; else reply n is seeded seed + n
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    replies: int = 0              # generations so far (the next one's batch index)
    conversation: Conversation = field(init=False)

    def __post_init__(self) -> None:
        self.conversation = Conversation(self.tokenizer, self.context_limit)

    @property
    def history(self) -> list[dict]:
        return self.conversation.history

    @history.setter
    def history(self, turns: list[dict]) -> None:
        self.conversation.history = turns

    @property
    def context_start(self) -> int:
        return self.conversation.context_start

    def _context(self) -> list[dict]:
        return self.conversation.context()

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    # --- turns

    def build_prompt_ids(self, user_text: str) -> list[int] | None:
        """Prompt ids for ``user_text``, telling the user when the oldest turns left the context;
        None (said why) when the question alone is too long."""
        limit, budget_tokens = self.context_limit, self.settings.max_new_tokens
        fit = self.conversation.fit_prompt(user_text, budget_tokens)
        if fit.ids is None:
            self.say(f"[上下文 context] 问题太长：提示 {fit.tokens} tokens > {fit.budget} "
                     f"(= context {limit} - max_new_tokens {budget_tokens})；"
                     f"请缩短问题或 set max_new_tokens 更小 (question too long)")
        elif fit.dropped:
            self.say(f"[上下文 context] 已丢弃最早的 {fit.dropped} 轮对话以适应上下文长度 "
                     f"(dropped {fit.dropped} oldest turn(s): prompt + max_new_tokens must fit {limit} "
                     f"tokens; now {fit.tokens} + {budget_tokens})；保存的记录仍包含它们")
        return fit.ids

    def reply(self, user_text: str) -> bool:
        """Answer ``user_text`` with streaming output; True when an answer was added to the history."""
        prompt_ids = self.build_prompt_ids(user_text)
        if prompt_ids is None:
            return False
        if self.debug_prompt:
            self.say(f"[prompt {len(prompt_ids)} tokens] {self.tokenizer.decode(prompt_ids)!r}")
        s = self.settings
        decoding = Decoding.from_temperature(s.temperature, s.top_p, s.max_new_tokens, self.seed)
        printer, stop = StreamPrinter(self.out, s.think, self.color), StopFlag()
        printer.start()
        with ctrl_c_sets(stop):
            result: StreamedReply = stream_reply(self.model, self.tokenizer, prompt_ids, decoding, printer.part, stop=stop,
                                  reply_index=self.replies)
        printer.end()
        self.replies += 1
        self.generated_tokens += result.new_tokens
        self.generation_seconds += result.seconds
        if result.stopped_by_user:
            self.conversation.pending_user = user_text
            self.say(STOPPED_NOTE)
            return False
        parsed = parse_output(result.text)
        speed = result.new_tokens / result.seconds if result.seconds > 0 else 0.0
        if parsed.think_closed:
            note = ""
        elif result.stopped_by_eos:
            note = "; 模型在推理中途停止，没有回答 (the model stopped before closing its reasoning: no answer)"
        else:
            note = (f"; 推理未结束，没有回答 (reasoning cut off at max_new_tokens={s.max_new_tokens}: "
                    f"set max_new_tokens N)")
        self.say(f"[{result.new_tokens} tokens, {speed:.1f} tokens/s{note}]")
        self.conversation.add_turn(user_text, parsed)
        return True

    def retry(self) -> None:
        """Regenerate the last answer (or the one Ctrl-C stopped) for the same question."""
        user_text = self.conversation.take_retry()
        if user_text is None:
            self.say("没有可重新生成的回答 (nothing to retry)")
            return
        self.say(f"[重试 retry] {user_text}")
        self.reply(user_text)

    def clear(self) -> None:
        self.conversation.replace([])
        self.say("对话历史已清除 (history cleared)")

    # --- files

    def save(self, name: str = "") -> Path | None:
        if not self.history:
            self.say("没有可保存的对话 nothing to save: no turns yet (ask something first; `load` reads a saved one)")
            return None
        path = safe_conversation_path(self.conversations_dir, name)
        save_conversation(path, conversation_record(self.model_path, self.settings, self.history))
        self.conversation.unsaved_turns = 0
        self.say(f"已保存 saved {len(self.history) // 2} turn(s) -> {display_path(path)}")
        return path

    def _list_saved(self, files: list[Path]) -> None:
        if not files:
            self.say(f"{display_path(self.conversations_dir)} 中没有保存的对话 (no saved conversations)")
        for i, path in enumerate(files, 1):
            self.say(f"  {i}. {path.name}")

    def _load_target(self, arg: str) -> Path | None:
        """The file ``load ARG`` means (a number from the list, a name, or a path); None after saying why."""
        files = saved_conversations(self.conversations_dir)
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
        path = find_conversation(self.conversations_dir, arg, files)
        if path is None:
            what = f"第 {arg} 个对话 (no conversation {arg})" if arg.isdigit() else f"对话 {arg} (no conversation {arg!r})"
            self.say(f"没有{what} in {display_path(self.conversations_dir)}" + ("; 已保存 saved:" if files else ""))
            self._list_saved(files)
        return path

    def load(self, arg: str = "") -> bool:
        path = self._load_target(arg)
        if path is None:
            return False
        try:
            record = load_conversation(path)
        except ConversationFileError as exc:
            self.say(f"无法加载 cannot load {display_path(path)}: {exc}；当前对话不变 (session unchanged)")
            return False
        self.conversation.replace(record["conversation"])
        self.say(f"已加载 loaded {len(self.history) // 2} turn(s) <- {display_path(path)} "
                 f"(saved with model {record.get('model_path', '?')})")
        return True

    # --- info

    def stats_text(self) -> str:
        context = self._context()
        speed = self.generated_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        s = self.settings
        return "\n".join([
            f"模型 model: {self.model_path}",
            f"轮数 turns: {len(self.history) // 2} in transcript, {len(context) // 2} in context "
            f"({self.context_start // 2} dropped from context)",
            f"上下文 context: ~{self.conversation.context_tokens()} tokens used, limit {self.context_limit} "
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
        unsaved = self.conversation.unsaved_turns
        if not unsaved or not self.history:
            return
        if not self.interactive:
            self.say(f"[{unsaved} 轮未保存 unsaved turn(s) not saved]")
            return
        try:
            answer = self.ask("保存本次对话？save this conversation? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
            self.say("")
        if answer in ("y", "yes", "是", "好"):
            self.save()
