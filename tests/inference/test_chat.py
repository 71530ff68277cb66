"""Interactive chat (issue 7): streaming, reasoning kept out of the context, trimming, commands, save/load.

Unit tests run in memory; the rest drive scripts/chat_with_model.py through stdin on the tiny model.
"""
from __future__ import annotations

import io
import json
import os
import select
import signal
import subprocess
import time

import pytest

from r1_sft.inference.chat import HIDDEN_LABEL, REASONING_LABEL, STOPPED_NOTE, ChatSession, parse_command
from r1_sft.inference.chat_store import ConversationFileError, load_conversation, safe_conversation_path
from r1_sft.inference.conversation import NOTICE, ChatSettings, context_limit, set_setting
from r1_sft.r1_format import ThinkSplitter

from conftest import popen_script, run_script

SCRIPT = "scripts/chat_with_model.py"
REASONING_MARK = "REASONINGMARK秘密推理"


def long_conversation(turns: int) -> dict:
    conversation = []
    for i in range(turns):
        conversation += [
            {"role": "user", "content": f"第{i}个问题QUESTION{i}：头痛发热怎么办？", "reasoning": ""},
            {"role": "assistant", "content": f"ANSWER{i}：多休息，多喝水，高热不退请就医。",
             "reasoning": f"{REASONING_MARK}{i}：考虑上呼吸道感染，需要排除其他原因。"},
        ]
    return {"model_path": "model/tiny_r1", "timestamp": "2026-01-01T00:00:00",
            "settings": {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 64, "think": True},
            "conversation": conversation}


# ---------------------------------------------------------------- unit tests (no model)

def split_all(chunks):
    splitter, parts = ThinkSplitter(), []
    for chunk in chunks:
        parts += splitter.feed(chunk)
    parts += splitter.flush()
    reasoning = "".join(t for kind, t in parts if kind == "reasoning")
    answer = "".join(t for kind, t in parts if kind == "answer")
    return reasoning, answer


def test_think_splitter_finds_the_tag_wherever_the_stream_is_cut():
    text = "先考虑感染</t。\n</think>\n\n建议多喝水。"
    for cut in range(len(text) + 1):
        for cut2 in range(cut, len(text) + 1):
            assert split_all([text[:cut], text[cut:cut2], text[cut2:]]) == ("先考虑感染</t。\n", "\n\n建议多喝水。")


def test_think_splitter_unclosed_think_is_all_reasoning():
    assert split_all(["推理到一半", "</thi"]) == ("推理到一半</thi", "")


def test_commands_in_chinese_and_english():
    assert parse_command("退出") == ("quit", "") and parse_command("exit") == ("quit", "")
    assert parse_command("保存 我的 对话") == ("save", "我的 对话")
    assert parse_command("LOAD x.json") == ("load", "x.json")
    assert parse_command("set temperature 0.3") == ("set", "temperature 0.3")
    assert parse_command("思考 关") == ("think", "关")
    assert parse_command("高血压患者平时饮食要注意什么？") is None
    assert parse_command("helpful advice please") is None
    # A question that starts with a command word stays a question.
    assert parse_command("help me read my blood test") is None
    assert parse_command("clear 的鼻涕是感冒吗") is None
    assert parse_command("think about my headache") is None
    assert parse_command("think off") == ("think", "off")


@pytest.mark.parametrize("name, expected", [
    ("../../x", "x.json"), ("..\\..\\x", "x.json"), ("/etc/passwd", "passwd.json"), ("a/b/../c.json", "c.json"),
    (".bashrc", "bashrc.json"), ("我的 对话", "我的_对话.json"), ("..", None), ("", None),
])
def test_save_names_stay_inside_the_conversations_folder(tmp_path, name, expected):
    path = safe_conversation_path(tmp_path / "conversations", name)
    assert path.parent == tmp_path / "conversations"
    if expected:
        assert path.name == expected
    else:
        assert path.name.startswith("conversation_") and path.name.endswith(".json")


def test_set_rejects_bad_values():
    settings = ChatSettings()
    assert set_setting(settings, "temperature", "0.3", 4096) == "temperature = 0.3"
    for name, value in [("temperature", "-1"), ("top_p", "0"), ("top_p", "x"), ("max_new_tokens", "4096"),
                        ("max_new_tokens", "1.5"), ("beam", "2")]:
        with pytest.raises(ValueError):
            set_setting(settings, name, value, 4096)
    assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0.3, ChatSettings().top_p, 2048)


@pytest.mark.parametrize("content, why", [
    ("{not json", "not valid JSON"), ('["a"]', "no \"conversation\" list"),
    ('{"conversation": [{"role": "assistant", "content": "x"}]}', "turn 1"),
    ('{"conversation": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]}', "turn 1"),
    ('{"conversation": [{"role": "user", "content": "q"}]}', "no answer"),
])
def test_damaged_conversation_files_say_why(tmp_path, content, why):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConversationFileError, match=why):
        load_conversation(path)


def test_model_menu_lists_loadable_folders_only(tmp_path):
    from r1_sft.inference.chat import find_model_folders

    base = tmp_path / "model" / "deepseek_ai" / "R1"
    base.mkdir(parents=True)
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"")
    adapter = tmp_path / "model" / "lora" / "best_model"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "model" / "empty").mkdir()
    folders = find_model_folders(tmp_path / "model")
    assert [f.model_path for f in folders] == [base.resolve(), adapter.resolve()]
    # The menu says what each folder is, and which base an adapter belongs to.
    from r1_sft.inference.chat import model_menu_label

    assert model_menu_label(folders[0]).endswith("(base model)")
    assert model_menu_label(folders[1]).endswith(f"(LoRA adapter on {base.resolve()})")


def bare_session(tmp_path, **kwargs) -> ChatSession:
    """A session without a model: enough for the commands that never generate."""
    return ChatSession(None, None, "model/tiny_r1", ChatSettings(), 4096, tmp_path / "conversations",
                       out=kwargs.pop("out", io.StringIO()), **kwargs)


def test_save_with_no_turns_writes_nothing(tmp_path):
    session = bare_session(tmp_path)
    assert session.save("empty") is None
    assert "nothing to save" in session.out.getvalue()
    assert not (tmp_path / "conversations").exists()


def test_load_of_a_number_that_does_not_exist_says_so_and_lists_the_saved(tmp_path):
    conv = tmp_path / "conversations"
    conv.mkdir()
    for name in ("a", "b"):
        (conv / f"{name}.json").write_text(json.dumps(long_conversation(1)), encoding="utf-8")
    session = bare_session(tmp_path)
    assert session.load("9") is False
    out = session.out.getvalue()
    assert "no conversation 9" in out and "a.json" in out and "b.json" in out
    assert "file not found" not in out
    assert session.load("nope") is False and "no conversation 'nope'" in session.out.getvalue()
    assert session.load("2") is True and len(session.history) == 2


# ---------------------------------------------------------------- in memory, tiny model

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from r1_sft.model.loading import load_model

    return load_model(tiny_model_dir, device="cpu")


def session_for(tiny, tmp_path, **kwargs) -> ChatSession:
    model, tokenizer = tiny
    settings = kwargs.pop("settings", ChatSettings(temperature=0, max_new_tokens=16))
    limit = context_limit(model, tokenizer, kwargs.pop("max_context", 0))
    return ChatSession(model, tokenizer, "tiny", settings, limit, tmp_path / "conversations",
                       out=kwargs.pop("out", io.StringIO()), **kwargs)


def test_context_limit_is_the_smaller_known_limit(tiny):
    model, tokenizer = tiny
    expected = min(model.config.max_position_embeddings, tokenizer.model_max_length)
    assert context_limit(model, tokenizer) == expected
    assert context_limit(model, tokenizer, 100) == 100


def test_prompt_carries_earlier_answers_without_their_reasoning(tiny, tmp_path):
    session = session_for(tiny, tmp_path)
    session.history = long_conversation(2)["conversation"]
    prompt = session.tokenizer.decode(session.build_prompt_ids("新问题"))
    assert "ANSWER0" in prompt and "ANSWER1" in prompt and "QUESTION0" in prompt
    assert REASONING_MARK not in prompt
    assert prompt.endswith("<｜User｜>新问题<｜Assistant｜><think>\n")


def test_oldest_turns_leave_the_context_when_it_is_full(tiny, tmp_path):
    out = io.StringIO()
    session = session_for(tiny, tmp_path, max_context=150, out=out)
    session.history = long_conversation(8)["conversation"]
    ids = session.build_prompt_ids("新问题")
    assert len(ids) + session.settings.max_new_tokens <= 150
    prompt = session.tokenizer.decode(ids)
    assert "ANSWER7" in prompt and "QUESTION0" not in prompt
    assert "已丢弃最早的" in out.getvalue() and "dropped" in out.getvalue()
    assert len(session.history) == 16  # the transcript keeps every turn
    assert 0 < session.context_start < 16 and session.context_start % 2 == 0


class RecordingOut(io.StringIO):
    """Notes how many forward passes the model had run when each piece of text was written."""

    def __init__(self, counter):
        super().__init__()
        self.counter, self.writes = counter, []

    def write(self, text):
        self.writes.append((self.counter[0], text))
        return super().write(text)


def test_reply_streams_while_generating(tiny, tmp_path):
    model, _ = tiny
    forwards = [0]
    hook = model.register_forward_hook(lambda *args: forwards.__setitem__(0, forwards[0] + 1))
    try:
        out = RecordingOut(forwards)
        session = session_for(tiny, tmp_path, out=out, settings=ChatSettings(temperature=0, max_new_tokens=24))
        assert session.reply("高血压患者平时饮食要注意什么？")
    finally:
        hook.remove()
    total = forwards[0]
    assert total >= 10
    label_at = next(i for i, (_, t) in enumerate(out.writes) if REASONING_LABEL in t)
    text_writes = [(n, t) for n, t in out.writes[label_at + 1:] if t.strip() and not t.startswith("[")]
    assert text_writes, out.getvalue()
    # The first generated text reached the terminal long before the last forward pass.
    assert text_writes[0][0] < total // 2, out.writes
    turn = session.history[-1]
    assert turn["role"] == "assistant" and turn["reasoning"]
    assert turn["reasoning"][:4] in out.getvalue()


# ---------------------------------------------------------------- the script, driven through stdin

def test_chat_script_history_trimming_save_load_and_damaged_file(tiny_model_dir, tmp_path):
    conv = tmp_path / "work" / "conversations"
    conv.mkdir(parents=True)
    (conv / "long.json").write_text(json.dumps(long_conversation(8), ensure_ascii=False), encoding="utf-8")
    (conv / "bad.json").write_text('{"conversation": [', encoding="utf-8")
    lines = ["load long", "最近总是头晕怎么办？", "save ../../x", "clear", "load x", "stats", "load bad",
             "感冒了要吃抗生素吗？", "quit"]
    proc = run_script(SCRIPT, "--model", tiny_model_dir, "--max_new_tokens", "12", "--temperature", "0",
                      "--max_context", "160", "--debug_prompt", "--conversations_dir", conv,
                      input="\n".join(lines) + "\n", cwd=tmp_path, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr + out
    assert NOTICE in out

    # History after load: answers in the context, reasoning not; the oldest turns trimmed to fit.
    prompts = [line for line in out.splitlines() if line.startswith("[prompt ")]
    assert len(prompts) == 2, out
    first_prompt = prompts[0]
    assert int(first_prompt.split()[1]) + 12 <= 160
    assert "ANSWER7" in first_prompt and "最近总是头晕怎么办" in first_prompt
    assert "QUESTION0" not in first_prompt and REASONING_MARK not in first_prompt
    assert "已丢弃最早的" in out.split(prompts[0])[0]

    # Save with a hostile name: inside conversations/, nowhere else.
    saved = conv / "x.json"
    assert saved.is_file() and not (tmp_path / "x.json").exists() and not (tmp_path.parent / "x.json").exists()
    record = json.loads(saved.read_text(encoding="utf-8"))
    assert set(record) >= {"model_path", "timestamp", "settings", "conversation"}
    assert record["settings"]["max_new_tokens"] == 12 and record["settings"]["temperature"] == 0
    turns = record["conversation"]
    assert turns[:16] == long_conversation(8)["conversation"]  # the transcript keeps the trimmed turns
    assert turns[16]["content"] == "最近总是头晕怎么办？" and turns[17]["role"] == "assistant"
    assert turns[17]["reasoning"] or turns[17]["content"]

    # Round trip: clear, load x -> 9 turns back; a damaged file is refused and the chat goes on.
    after_load_x = out.split("你 you> load x")[1]
    assert "已加载 loaded 9 turn(s)" in after_load_x and "9 in transcript" in after_load_x
    after_bad = out.split("你 you> load bad")[1]
    assert "无法加载" in after_bad and "bad.json" in after_bad and "not valid JSON" in after_bad
    assert "感冒了要吃抗生素吗" in prompts[1] and REASONING_LABEL in after_bad.split("感冒了要吃抗生素吗")[-1]
    assert "session ended: 10 turn(s)" in out


def read_until(stream, predicate, deadline):
    """Read a child's stdout as it comes (no waiting for the process to end) until predicate(text)."""
    text = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                break
            text += chunk
            if predicate(text.decode("utf-8", "replace")):
                break
    return text.decode("utf-8", "replace")


def test_ctrl_c_stops_the_streaming_answer_and_the_chat_goes_on(tiny_model_dir, tmp_path):
    # max_new_tokens is far more than is generated before the signal lands: if the reasoning were
    # printed only after generation, the signal would hit the idle prompt and end the session.
    proc = popen_script(SCRIPT, "--model", tiny_model_dir, "--max_new_tokens", "2000", "--conversations_dir",
                        tmp_path / "conv", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        cwd=tmp_path)
    try:
        proc.stdin.write("孩子发烧到39度，在家应该怎么处理？\n".encode())
        proc.stdin.flush()

        def reasoning_started(text):
            after = text.split(REASONING_LABEL + "\n", 1)
            return len(after) == 2 and len(after[1].strip()) >= 2

        seen = read_until(proc.stdout, reasoning_started, time.monotonic() + 240)
        assert reasoning_started(seen), seen
        assert proc.poll() is None  # still running: the text arrived during generation
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate("stats\nset max_new_tokens 4\nretry\nquit\n".encode(), timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = seen + rest.decode("utf-8", "replace")
    assert proc.returncode == 0, err.decode() + out
    assert STOPPED_NOTE in out
    stats = out.split("你 you> stats")[1]
    assert "0 in transcript" in stats  # the stopped answer is not kept
    generated = int(stats.split("生成 generated: ")[1].split()[0])
    assert 0 < generated < 2000
    # retry answers the stopped question again, this time to the end.
    assert "[重试 retry] 孩子发烧到39度" in out and "session ended: 1 turn(s)" in out


def test_bad_sampling_values_are_refused_before_any_model_loads(tmp_path):
    proc = run_script(SCRIPT, "--model", tmp_path / "no_model_here", "--temperature", "-1", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --temperature: bad value '-1.0'") and "no_model_here" not in proc.stderr


def test_once_answers_one_question_with_reasoning_hidden(tiny_model_dir, tmp_path):
    proc = run_script(SCRIPT, "--model", tiny_model_dir, "--once", "头痛怎么办？", "--no_think",
                      "--max_new_tokens", "6", "--temperature", "0", input="这一行不该被读取\n", cwd=tmp_path,
                      timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert NOTICE in proc.stdout and HIDDEN_LABEL in proc.stdout and " tokens/s" in proc.stdout
    assert REASONING_LABEL not in proc.stdout and "这一行不该被读取" not in proc.stdout
    assert "session ended" not in proc.stdout


@pytest.mark.parametrize("stopped_by_eos, expected", [(True, "stopped before closing its reasoning"),
                                                      (False, "cut off at max_new_tokens=16")])
def test_a_reply_without_an_answer_says_why(tiny, tmp_path, monkeypatch, stopped_by_eos, expected):
    import r1_sft.inference.chat as chat

    reply = chat.StreamedReply("还在推理", 3, 0.1, stopped_by_user=False, stopped_by_eos=stopped_by_eos)
    monkeypatch.setattr(chat, "stream_reply", lambda *args, **kwargs: reply)
    out = io.StringIO()
    session = session_for(tiny, tmp_path, out=out)
    assert session.reply("头痛怎么办？")
    assert expected in out.getvalue()
    assert session.history[-1] == {"role": "assistant", "content": "", "reasoning": "还在推理"}


def test_a_refused_long_question_keeps_the_context(tiny, tmp_path):
    session = session_for(tiny, tmp_path, max_context=120)
    session.history = [{"role": "user", "content": "我头痛", "reasoning": ""},
                       {"role": "assistant", "content": "多休息，必要时就医。", "reasoning": "考虑紧张性头痛"}]
    assert session.build_prompt_ids("很长的问题" * 200) is None
    assert session.context_start == 0 and len(session._context()) == 2
