"""Chat with a model in the terminal: streamed reasoning and answer, multi-turn, save/load.

The reasoning streams first (labelled, dimmed on a terminal; `think off` hides it), then the answer.
Earlier answers go back into the context without their reasoning (DeepSeek's advice for R1); the
saved transcript keeps it. When the conversation outgrows the model's context, the oldest turns
leave the context and you are told. Type `help` for the commands (Chinese or English).

When stdin is not a terminal, each line is one message or command and nothing waits for input, so
the chat can be scripted; `--once "问题"` answers one question and exits.

Reads:  a model folder (--model: base, LoRA adapter -> its base is loaded, or merged), or a menu of model/
Writes: conversations/<name>.json on `save` (atomic): {"model_path", "timestamp", "settings", "conversation"}

    python scripts/chat_with_model.py
    python scripts/chat_with_model.py --model model/tiny_r1_lora/best_model --max_new_tokens 96
    echo "高血压患者平时饮食要注意什么？" | python scripts/chat_with_model.py --model model/tiny_r1
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config, path_field  # noqa: E402
from r1_sft.inference.chat import ChatSession, find_model_folders, model_menu_label  # noqa: E402
from r1_sft.inference.conversation import NOTICE, ChatSettings, context_limit, set_setting  # noqa: E402
from r1_sft.inference.decoding import TEMPERATURE, TOP_P  # noqa: E402
from r1_sft.inference.generation import load_for_generation  # noqa: E402
from r1_sft.model.plan import make_plan  # noqa: E402
from r1_sft.model.precision import RunsOn, check_run_settings  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402


@dataclass
class Config(RunsOn):
    model: str = path_field("")  # model folder (base, LoRA adapter or merged); "" = choose from a menu of model/
    max_new_tokens: int = 2048  # generation budget per answer (tokens); R1 reasoning is long
    temperature: float = TEMPERATURE  # sampling temperature (R1 advice 0.6); 0 = greedy
    top_p: float = TOP_P  # nucleus sampling (R1 advice 0.95)
    think: bool = True  # show the reasoning as it streams (--no_think hides it; `think on|off` in the chat)
    max_context: int = 0  # cap on context tokens; 0 = the model's own limit (max_position_embeddings)
    once: str = ""  # answer this one question and exit
    conversations_dir: str = "conversations"  # where `save` writes and `load` looks
    use_4bit: bool = False  # load the weights in 4-bit NF4 (bitsandbytes) to save memory
    seed: int = -1  # random seed for sampling (reply n uses seed + n, as evaluation batch n does); -1 = not fixed
    debug_prompt: bool = False  # print each prompt's text (what the model sees) before answering


def choose_model(cfg: Config, interactive: bool) -> str:
    """The --model folder, or one picked from a numbered menu of what is under model/."""
    if cfg.model:
        return cfg.model
    folders = find_model_folders(repo_path("model"))
    if not folders:
        raise UserError("model/: no model folders found (run `python download_model/download_model.py`, "
                        "or pass --model PATH)")
    if not interactive:
        if len(folders) == 1:
            return str(folders[0].model_path)
        raise UserError("no --model given and stdin is not a terminal: pass --model, one of "
                        + ", ".join(display_path(f.model_path) for f in folders))
    print("可用模型 models:")
    for i, folder in enumerate(folders, 1):
        print(f"  {i}. {model_menu_label(folder)}")
    while True:
        try:
            choice = input(f"选择模型 choose 1-{len(folders)} [1]> ").strip() or "1"
        except (EOFError, KeyboardInterrupt):
            raise UserError("no model chosen") from None
        if choice.isdigit() and 1 <= int(choice) <= len(folders):
            return str(folders[int(choice) - 1].model_path)
        print("请输入编号 (enter a number)")


def apply_settings(cfg: Config, settings: ChatSettings, limit: int) -> None:
    for name in ("temperature", "top_p", "max_new_tokens"):
        try:
            set_setting(settings, name, str(getattr(cfg, name)), limit)
        except ValueError as exc:
            raise UserError(f"--{name}: {exc}") from None


def read_lines(session: ChatSession, interactive: bool):
    """User lines: readline-edited prompts on a terminal, plain stdin lines (echoed) otherwise."""
    while True:
        if interactive:
            line = input("\n你 you> ")
        else:
            line = sys.stdin.readline()
            if not line:
                return
            line = line.rstrip("\n")
            if line.strip():
                session.say(f"\n你 you> {line}")
        yield line


@cli_main
def main(cfg: Config) -> None:
    interactive = sys.stdin.isatty() and not cfg.once
    if interactive:
        import readline  # noqa: F401  (line editing and input history for input())
    settings = ChatSettings(think=cfg.think)
    apply_settings(cfg, settings, limit=1 << 62)  # ranges first: a bad value costs no model load
    check_run_settings(cfg.device, cfg.precision)  # names first: a typo costs no model search
    model_path = choose_model(cfg, interactive)
    plan = make_plan(model_path, device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit)
    print(plan.describe(), flush=True)
    model, tokenizer = load_for_generation(plan)
    limit = context_limit(model, tokenizer, cfg.max_context)
    apply_settings(cfg, settings, limit)  # max_new_tokens against the model's context
    session = ChatSession(model, tokenizer, display_path(repo_path(model_path)), settings, limit,
                          repo_path(cfg.conversations_dir), out=sys.stdout,
                          color=sys.stdout.isatty() and not os.environ.get("NO_COLOR"),
                          interactive=interactive, debug_prompt=cfg.debug_prompt,
                          seed=cfg.seed if cfg.seed >= 0 else None)
    print(NOTICE, flush=True)
    print(f"[chat] context limit {limit} tokens, max_new_tokens {settings.max_new_tokens}, "
          f"temperature {settings.temperature}, top_p {settings.top_p}; 输入 help 查看命令 (type help)", flush=True)
    if cfg.once:
        session.reply(cfg.once)
        return
    try:
        for line in read_lines(session, interactive):
            if not session.handle_line(line):
                break
    except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt end the session
        session.say("")
    session.finish()
    print(f"[chat] session ended: {len(session.history) // 2} turn(s)", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
