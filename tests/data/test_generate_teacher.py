"""data/generate_teacher_data.py against a fake OpenAI-compatible server on 127.0.0.1.

Faults injected per question (tests/fake_openai.py): 429 with Retry-After, 500, a reply slower than
--timeout, a dropped connection, a non-JSON body, finish_reason length, reasoning only in the
content ("reasoning</think>answer"), no reasoning, an empty answer, a think tag; plain and
streaming. A run is SIGKILLed half-way and re-run. Backoff is shrunk through the flags.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from r1_sft.cli import UserError
from r1_sft.data.records import question_key
from r1_sft.data.teacher_api import Completion, backoff_delay, judge, reasoning_steps, retry_after_seconds
from r1_sft.data.teacher_store import AppendLog, answered_keys, compact_rejects, load_questions

from conftest import REPO, run_script
from fake_openai import FakeOpenAI, answer_for, reasoning_for

SCRIPT = "data/generate_teacher_data.py"
KEY = "sk-test-7f3a9c1e5b"  # the fake server's key; must appear in no file and no output
ENV = {"R1_SFT_TEST_TEACHER_KEY": KEY, "OMP_NUM_THREADS": "1"}
QUESTIONS = [json.loads(line)["question"] for line in (REPO / "r1_generated/questions.jsonl").open(encoding="utf-8")]
FAST = ["--api_key_env", "R1_SFT_TEST_TEACHER_KEY", "--model", "fake-r1", "--timeout", "0.5", "--backoff_base", "0.01",
        "--backoff_max", "0.05", "--max_retries", "2", "--concurrency", "4"]


@pytest.fixture
def fake():
    server = FakeOpenAI(KEY, retry_after="1", slow_s=1.0).start()
    yield server
    server.stop()


def generate(fake: FakeOpenAI, out: Path, *extra, env=ENV, **kw):
    return run_script(SCRIPT, "--base_url", fake.base_url, "--output", out, *FAST, *extra, env=env,
                      timeout=120, **kw)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_key_nowhere(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in texts:
        assert KEY not in text


# ----------------------------------------------------------------------------- in memory

@pytest.mark.parametrize("reasoning_content, content, finish, reason", [
    ("想一想。\n\n再想一想。", "回答", "stop", None),
    (None, "想一想。\n\n再想一想。\n</think>\n\n回答", "stop", None),          # vLLM without a reasoning parser
    (None, "<think>\n想一想。\n\n再想一想。\n</think>\n\n回答", "stop", None),  # ... with the opening tag
    ("想一想。", "回", "length", "truncated"),
    ("想一想。", "回答", "insufficient_system_resource", "truncated"),
    (None, "回答", "stop", "no_reasoning"),
    ("   ", "回答", "stop", "no_reasoning"),
    ("想一想。", "  ", "stop", "empty_answer"),
    (None, "想一想。</think>", "stop", "empty_answer"),
    ("<think>想一想。", "回答", "stop", "think_tag"),
    ("想一想。", "想过了</think>\n回答", "stop", "think_tag"),
])
def test_judge_keeps_reasoning_apart_and_names_bad_replies(reasoning_content, content, finish, reason):
    judged = judge(Completion(reasoning_content, content, finish, "m", {"completion_tokens": 9}))
    assert judged.reason == reason
    if reason is None:
        assert reasoning_steps(judged.reasoning) == ["想一想。", "再想一想。"] and judged.answer == "回答"


def test_backoff_doubles_with_jitter_and_never_beats_retry_after():
    rng = random.Random(0)
    for retry in range(5):
        step = 2.0 * 2 ** retry
        assert all(step / 2 <= backoff_delay(retry, 2.0, 100.0, None, rng) <= step for _ in range(50))
    assert backoff_delay(9, 2.0, 10.0, None, rng) <= 10.0  # capped
    assert backoff_delay(0, 0.01, 1.0, 3.0, rng) == 3.0    # Retry-After wins over a shorter step
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "7"}) == 0.25
    assert 28 <= retry_after_seconds({"retry-after": formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert retry_after_seconds({"retry-after": "soon"}) is None and retry_after_seconds({}) is None


def test_questions_from_txt_modelscope_and_jsonl(tmp_path):
    txt = tmp_path / "q.txt"
    txt.write_text("\ufeff头痛三天了怎么办？\n\n头痛三天了，怎么办\n孩子发烧38.5℃要去医院吗？\n", encoding="utf-8")
    qs, repeats = load_questions(txt)
    assert [q.question for q in qs] == ["头痛三天了怎么办？", "孩子发烧38.5℃要去医院吗？"] and repeats == 1
    ms = tmp_path / "ms.jsonl"
    ms.write_text(json.dumps({"instruction": "请以全科医生的身份回答。", "question": "失眠怎么办？", "think": "t",
                              "answer": "a", "metrics": {"quality_f1": 1.0}}, ensure_ascii=False) + "\n")
    (q,), _ = load_questions(ms)
    assert (q.question, q.instruction) == ("失眠怎么办？", "请以全科医生的身份回答。")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "胃痛怎么办？"}\n{"question": ""}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.jsonl:2: 'question' must be a non-empty string"):
        load_questions(bad)
    qs, _ = load_questions(REPO / "r1_generated/questions.jsonl")  # the committed sample
    assert len(qs) >= 20 and len({q.id.split("-", 1)[1] for q in qs}) >= 20  # many departments


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    first = AppendLog(tmp_path / "004.jsonl", lock=True)
    with pytest.raises(UserError, match="another run is writing to this file"):
        AppendLog(tmp_path / "004.jsonl", lock=True)
    first.close()
    AppendLog(tmp_path / "004.jsonl", lock=True).close()


def test_torn_last_line_is_cut_and_rejects_keep_only_the_unanswered(tmp_path):
    out = tmp_path / "004.jsonl"
    good = json.dumps({"question": "问题一？", "reasoning": ["r"], "answer": "a"}, ensure_ascii=False) + "\n"
    out.write_text(good + '{"question": "问题二？", "reas', encoding="utf-8")
    keys, unreadable, torn = answered_keys(out, repair=False)
    assert keys == {question_key("问题一")} and torn > 0 and out.read_text(encoding="utf-8").endswith("reas")
    keys, unreadable, torn = answered_keys(out, repair=True)
    assert out.read_text(encoding="utf-8") == good and unreadable == 0
    rejects = tmp_path / "004.rejects.jsonl"
    rejects.write_text("".join(json.dumps({"question": q, "reason": r, "detail": ""}, ensure_ascii=False) + "\n"
                               for q, r in [("问题一？", "truncated"), ("问题三？", "request_failed"),
                                            ("问题三", "truncated")]) + '{"quest', encoding="utf-8")
    assert compact_rejects(rejects, keys) == 1
    assert [(e["question"], e["reason"]) for e in lines(rejects)] == [("问题三", "truncated")]  # the latest


# ----------------------------------------------------------------------------- the script

FAULTS = {0: ["429", "ok"], 1: ["500", "ok"], 2: ["slow", "ok"], 3: ["drop", "ok"], 4: ["non_json", "ok"],
          5: ["think_in_content"], 6: ["length", "ok"], 7: ["no_reasoning"], 8: ["empty_answer"],
          9: ["think_tag"], 10: ["500"]}
REJECTED = {6: "truncated", 7: "no_reasoning", 8: "empty_answer", 9: "think_tag", 10: "request_failed"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_faults_are_retried_or_rejected_and_a_rerun_asks_only_the_rejected(fake, tmp_path, stream):
    for i, script in FAULTS.items():
        fake.scripts[QUESTIONS[i]] = script
    out = tmp_path / "gen" / "004.jsonl"
    flag = "--stream" if stream else "--no_stream"
    proc = generate(fake, out, flag, "--progress_every", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(r["stream"] is stream for r in fake.requests)

    answers, rejects = lines(out), lines(out.with_name("004.rejects.jsonl"))
    good = [q for i, q in enumerate(QUESTIONS) if i not in REJECTED]
    assert sorted(a["question"] for a in answers) == sorted(good)  # each once
    assert {r["question"]: r["reason"] for r in rejects} == {QUESTIONS[i]: r for i, r in REJECTED.items()}
    failed = next(r for r in rejects if r["reason"] == "request_failed")
    assert "HTTP 500" in failed["detail"] and "after 3 attempts" in failed["detail"] and "***" in failed["detail"]
    by_q = {a["question"]: a for a in answers}
    for i in (0, 5):  # plain reasoning_content, and "reasoning</think>answer" in the content
        a = by_q[QUESTIONS[i]]
        assert a["reasoning"] == reasoning_steps(reasoning_for(QUESTIONS[i])) and len(a["reasoning"]) == 3
        assert a["answer"] == answer_for(QUESTIONS[i])
        assert a["meta"]["model"] == "fake-r1" and a["meta"]["finish_reason"] == "stop"
        assert a["meta"]["usage"]["completion_tokens"] == 100
    assert fake.requests[0]["body"]["messages"] == [{"role": "user", "content": fake.requests[0]["question"]}]
    # Each fault that heals took exactly one retry; Retry-After's 1 s was waited, not the 0.01 s backoff.
    asked = fake.questions_asked()
    assert [asked.count(QUESTIONS[i]) for i in range(5)] == [2] * 5 and asked.count(QUESTIONS[10]) == 3
    assert "(Retry-After honoured); retry 1/2 in 1.00 s" in proc.stdout
    assert "[retries] 7 (HTTP 429=1, HTTP 500=3, bad_response=1, connection=1, timeout=1)" in proc.stdout
    assert ("[rejected] 5 this run (empty_answer=1, no_reasoning=1, request_failed=1, think_tag=1, "
            "truncated=1)") in proc.stdout
    assert "[progress] 5/26" in proc.stdout and "[tokens] 25 responses" in proc.stdout

    # The merge stage takes the file unchanged and does not read the rejects file beside it.
    merged = tmp_path / "tf.jsonl"
    run_script("data/generated_teacher_filtered.py", "--input_dir", out.parent, "--output", merged, check=True)
    assert len(lines(merged)) == len(good) and not lines(tmp_path / "tf.rejects.jsonl")

    # Re-run: only the rejected questions are asked; the truncated one now succeeds and leaves the rejects.
    fake.requests.clear()
    again = generate(fake, out, flag)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(fake.questions_asked()) == sorted([QUESTIONS[i] for i in REJECTED] + [QUESTIONS[10]] * 2)
    assert sorted(a["question"] for a in lines(out)) == sorted(good + [QUESTIONS[6]])
    assert {r["question"] for r in lines(out.with_name("004.rejects.jsonl"))} == {
        QUESTIONS[i] for i in REJECTED if i != 6}
    assert_key_nowhere(tmp_path, proc.stdout, proc.stderr, again.stdout, again.stderr)


def test_a_sigkilled_run_resumes_with_every_question_once(fake, tmp_path):
    fake.delay_s = 0.1
    fake.scripts[QUESTIONS[3]] = ["length"]
    fake.scripts[QUESTIONS[20]] = ["500"]
    out = tmp_path / "004.jsonl"
    cmd = [sys.executable, str(REPO / SCRIPT), "--base_url", fake.base_url, "--output", str(out), *FAST,
           "--concurrency", "2"]
    proc = subprocess.Popen(cmd, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while (not out.exists() or out.read_bytes().count(b"\n") < 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    first_out = proc.communicate()[0].decode()
    first = lines(out)
    assert 5 <= len(first) < 24, first_out  # killed half-way
    # A kill inside a write would leave a torn line: the re-run must cut it off.
    with out.open("ab") as fh:
        fh.write('{"question": "半行'.encode())

    fake.requests.clear()
    rerun = generate(fake, out, "--concurrency", "2")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "[repaired]" in rerun.stdout
    assert not {a["question"] for a in first} & set(fake.questions_asked())  # no request for those
    answers = lines(out)  # every line parses
    good = [q for i, q in enumerate(QUESTIONS) if i not in (3, 20)]
    assert sorted(a["question"] for a in answers) == sorted(good)  # every good question exactly once
    assert {r["question"]: r["reason"] for r in lines(out.with_name("004.rejects.jsonl"))} == {
        QUESTIONS[3]: "truncated", QUESTIONS[20]: "request_failed"}
    assert_key_nowhere(tmp_path, first_out, rerun.stdout, rerun.stderr)


def test_key_errors_and_dry_run_send_nothing(fake, tmp_path):
    out = tmp_path / "004.jsonl"
    missing = generate(fake, out, env={"R1_SFT_TEST_TEACHER_KEY": ""})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "R1_SFT_TEST_TEACHER_KEY is not set" in missing.stderr and not fake.requests and not out.exists()

    refused = generate(fake, out, env={"R1_SFT_TEST_TEACHER_KEY": "sk-wrong-key"})
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "HTTP 401" in refused.stderr and "the API key was refused" in refused.stderr
    assert "sk-wrong-key" not in refused.stdout + refused.stderr and not lines(out)

    fake.requests.clear()
    dry = generate(fake, out, "--dry_run", "--limit", "3")
    assert dry.returncode == 0 and not fake.requests
    assert "[skipped] 0 already answered" in dry.stdout and "3 to ask" in dry.stdout
    assert f'"content": "{QUESTIONS[0]}"' in dry.stdout and "Bearer *** (from $R1_SFT_TEST_TEACHER_KEY)" in dry.stdout
    assert_key_nowhere(tmp_path, dry.stdout, dry.stderr, refused.stdout, refused.stderr)

    bad = generate(fake, out, "--concurrency", "0")
    assert bad.returncode == 2 and "--concurrency 0: must be at least 1" in bad.stderr


def test_teacher_branch_from_generation_to_distillation(fake, tmp_path, tiny_model_dir):
    """generate -> merge -> SFT records -> split -> scripts/train_distill.py, on the generated file."""
    gen, tf, sft, ds, model = (tmp_path / n for n in ("gen", "tf.jsonl", "sft.jsonl", "ds", "distill"))
    steps = [
        (SCRIPT, "--base_url", fake.base_url, "--output", gen / "004.jsonl", *FAST),
        ("data/generated_teacher_filtered.py", "--input_dir", gen, "--output", tf),
        ("data/build_sft_dataset.py", "--input", tf, "--output", sft),
        ("data/split_sft_train.py", "--input", sft, "--output_dir", ds),
        ("scripts/train_distill.py", "--model_path", tiny_model_dir, "--train_file", ds / "train.jsonl",
         "--val_file", ds / "val.jsonl", "--output_dir", model, "--max_steps", 1, "--eval_steps", 1,
         "--save_steps", 1, "--logging_steps", 1, "--max_length", 512, "--per_device_train_batch_size", 4,
         "--gradient_accumulation_steps", 1, "--no_use_4bit", "--no_gradient_checkpointing"),
    ]
    for script, *args in steps:
        run_script(script, *args, env=ENV, check=True)
    assert len(lines(gen / "004.jsonl")) == len(QUESTIONS)
    assert sum(len(lines(ds / f"{split}.jsonl")) for split in ("train", "val", "test")) == len(QUESTIONS)
    assert all(r["output"].startswith("<think>\n") for r in lines(ds / "train.jsonl"))
    assert (model / "final_model" / "adapter_model.safetensors").is_file()
    assert any("eval_loss" in row for row in lines(model / "training_logs" / "log_history.jsonl"))
