"""Stage 1 (teacher branch, before 1d): ask an R1 teacher (DeepSeek API or a local vLLM server) to answer medical questions.

Reads  r1_generated/questions.jsonl ({"question"} with optional "instruction" and "id"; a
       ModelScope-schema file or a .txt file with one question per line work too).
Writes r1_generated/004.jsonl, appended one whole line per answer as it arrives:
       {"question", "reasoning": [step, ...], "answer", "meta": {"model", "finish_reason", "usage"}}
       (steps split from the reasoning on blank lines; data/generated_teacher_filtered.py reads it
       as it is); 004.rejects.jsonl ({"question", "reason", "detail"}: truncated, no_reasoning,
       empty_answer, think_tag, request_failed), holding only the questions still unanswered; and
       004.run.json (config, versions, counts and tokens of the last run).

Re-running the same command resumes: questions already in the output (the data stage's normalised
question key) are skipped without a request, rejected ones are asked again. A killed run (even
SIGKILL) loses at most the requests in flight. The API key is read from the environment variable
named by --api_key_env and written nowhere.

    export DEEPSEEK_API_KEY=sk-...
    python data/generate_teacher_data.py --limit 5          # a first look: 5 questions, then read [tokens]
    python data/generate_teacher_data.py --base_url http://127.0.0.1:8000/v1 \\
        --model deepseek-ai/DeepSeek-R1-Distill-Qwen-32B --api_key_env VLLM_API_KEY
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.data.conversion import rejects_path  # noqa: E402
from r1_sft.data.teacher_api import (  # noqa: E402
    REQUEST_FAILED,
    Cancelled,
    FatalAPIError,
    RequestFailed,
    judge,
    reasoning_steps,
    request_body,
)
from r1_sft.data.teacher_store import AppendLog, Question, answered_keys, compact_rejects, load_questions  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.r1_format import build_user_text  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    questions: str = "r1_generated/questions.jsonl"  # questions: JSONL with "question" (+ "instruction", "id"), ModelScope schema, or .txt (one per line)
    output: str = "r1_generated/004.jsonl"  # answers, appended; <stem>.rejects.jsonl and <stem>.run.json beside it
    base_url: str = "https://api.deepseek.com"  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 for vLLM
    model: str = "deepseek-reasoner"  # model name sent to the server (for vLLM: the served model)
    api_key_env: str = "DEEPSEEK_API_KEY"  # NAME of the environment variable holding the API key (the key is never written anywhere)
    stream: bool = False  # stream the reply (server-sent events) instead of one JSON body
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 6  # retries per question on 429/5xx/timeouts/dropped connections/bad bodies
    timeout: float = 600.0  # seconds the server may stay silent before a request times out (reasoning takes minutes)
    backoff_base: float = 1.0  # seconds: the first retry waits 0.5-1x this, doubling each retry (never before Retry-After)
    backoff_max: float = 120.0  # seconds: the longest backoff step (a longer Retry-After is still honoured)
    max_tokens: int = 32768  # generated tokens per reply, reasoning included (deepseek-reasoner: reasoning <= 32K, answer <= 8K)
    temperature: float = 0.6  # sampling temperature (DeepSeek's advice for R1; deepseek-reasoner ignores it)
    top_p: float = 0.95  # nucleus sampling (DeepSeek's advice for R1; deepseek-reasoner ignores it)
    limit: int = 0  # use only the first N questions of the file (0 = all)
    progress_every: int = 10  # without a terminal: one progress line every N finished questions
    dry_run: bool = False  # print what remains and the first request (key masked); send nothing


def check_config(cfg: Config) -> None:
    checks = [("concurrency", cfg.concurrency >= 1, "at least 1"),
              ("max_retries", cfg.max_retries >= 0, "0 or more"),
              ("timeout", cfg.timeout > 0, "above 0 seconds"),
              ("backoff_base", cfg.backoff_base >= 0, "0 or more seconds"),
              ("backoff_max", cfg.backoff_max >= cfg.backoff_base, "at least --backoff_base"),
              ("max_tokens", cfg.max_tokens >= 1, "at least 1"),
              ("temperature", 0 <= cfg.temperature <= 2, "between 0 and 2"),
              ("top_p", 0 < cfg.top_p <= 1, "above 0 and at most 1"),
              ("limit", cfg.limit >= 0, "0 (all) or more"),
              ("progress_every", cfg.progress_every >= 1, "at least 1")]
    for name, ok, want in checks:
        if not ok:
            raise UserError(f"--{name} {getattr(cfg, name)!r}: must be {want}")
    if not cfg.base_url.startswith(("http://", "https://")):
        raise UserError(f"--base_url {cfg.base_url!r}: must start with http:// or https://")
    if not cfg.output.endswith(".jsonl"):
        raise UserError(f"--output {cfg.output!r}: must be a .jsonl file")
    if repo_path(cfg.output).resolve() == repo_path(cfg.questions).resolve():
        raise UserError(f"--output {cfg.output!r} is the questions file: pass another --output")


class Progress:
    """A bar with rate and ETA on a terminal; a compact line every N questions in a log."""

    def __init__(self, total: int, every: int):
        self.total, self.every, self.done = total, every, 0
        self.start = time.monotonic()
        self.bar = None
        if sys.stderr.isatty() and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="q", file=sys.stderr, dynamic_ncols=True)

    def say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def step(self, answered: int, rejected: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix(answered=answered, rejected=rejected, refresh=False)
            self.bar.update(1)
        elif self.done % self.every == 0 or self.done == self.total:
            elapsed = time.monotonic() - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            print(f"[progress] {self.done}/{self.total} ({answered} answered, {rejected} rejected), "
                  f"{rate * 60:.1f} questions/min, ETA {eta / 60:.1f} min", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Tokens:
    """Token usage summed over every response received (answers and rejects: both are paid)."""

    def __init__(self):
        self.responses = self.prompt = self.completion = self.reasoning = 0
        self.split_known = True  # did every response say how many completion tokens were reasoning?

    def add(self, usage: dict | None) -> None:
        if not usage:
            self.split_known = False
            return
        self.responses += 1
        self.prompt += usage.get("prompt_tokens", 0)
        self.completion += usage.get("completion_tokens", 0)
        reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        if reasoning is None:
            self.split_known = False
        else:
            self.reasoning += reasoning

    def as_dict(self) -> dict:
        d = {"responses_with_usage": self.responses, "prompt": self.prompt, "completion": self.completion}
        if self.split_known:
            d.update(reasoning=self.reasoning, answer=self.completion - self.reasoning)
        return d

    def line(self) -> str:
        if not self.responses:
            return "no usage reported"
        n = self.responses
        if self.split_known:
            answer = self.completion - self.reasoning
            return (f"{n} responses: prompt {self.prompt}, reasoning {self.reasoning}, answer {answer} "
                    f"(per response: prompt {self.prompt / n:.0f}, reasoning {self.reasoning / n:.0f}, "
                    f"answer {answer / n:.0f})")
        return (f"{n} responses: prompt {self.prompt}, completion {self.completion} (reasoning + answer; "
                f"the server does not split them) (per response: prompt {self.prompt / n:.0f}, "
                f"completion {self.completion / n:.0f})")


def answer_line(q: Question, reasoning: str, answer: str, completion, model: str) -> dict:
    line = {"question": q.question}
    if q.instruction:
        line["instruction"] = q.instruction
    line.update(reasoning=reasoning_steps(reasoning), answer=answer,
                meta={"model": completion.model or model, "finish_reason": completion.finish_reason,
                      "usage": completion.usage})
    if q.id is not None:
        line["meta"]["id"] = q.id
    return line


def reject_line(q: Question, reason: str, detail: str) -> dict:
    return {"question": q.question, "reason": reason, "detail": detail}


def print_dry_run(cfg: Config, todo: list[tuple[int, Question]], key_set: bool) -> None:
    if not todo:
        print("[dry_run] nothing to ask", flush=True)
        return
    first = todo[0][1]
    body = request_body(cfg.model, build_user_text(first.question, first.instruction),
                        cfg.max_tokens, cfg.temperature, cfg.top_p, cfg.stream)
    auth = f"Bearer *** (from ${cfg.api_key_env})" if key_set else f"(${cfg.api_key_env} is not set)"
    print(f"[dry_run] POST {cfg.base_url.rstrip('/')}/chat/completions", flush=True)
    print(f"[dry_run] Authorization: {auth}", flush=True)
    print(json.dumps(body, ensure_ascii=False, indent=2), flush=True)


@cli_main
def main(cfg: Config):
    check_config(cfg)
    started = time.monotonic()
    questions_path, output = repo_path(cfg.questions), repo_path(cfg.output)
    rejects = rejects_path(output)
    questions, repeats = load_questions(questions_path)
    n_file = len(questions)
    if cfg.limit:
        questions = questions[:cfg.limit]
    api_key = os.environ.get(cfg.api_key_env, "").strip()
    if not api_key and not cfg.dry_run:
        raise UserError(f"environment variable {cfg.api_key_env} is not set (export {cfg.api_key_env}=<key>; "
                        f"for a local server any value, or name another variable with --api_key_env)")
    log = None if cfg.dry_run else AppendLog(output, lock=True)  # lock before repairing
    done, unreadable, torn = answered_keys(output, repair=not cfg.dry_run)
    todo = [(i, q) for i, q in enumerate(questions, 1) if q.key not in done]  # (position in the file, question)
    print(f"[read] {n_file} questions from {display_path(questions_path)}"
          + (f" ({repeats} repeated questions dropped)" if repeats else "")
          + (f"; using the first {len(questions)} (--limit)" if cfg.limit else ""), flush=True)
    if torn:
        print(f"[repaired] {display_path(output)}: a torn last line ({torn} bytes, a run killed while "
              f"writing it) {'would be ' if cfg.dry_run else ''}cut off; that question is asked again", flush=True)
    if unreadable:
        print(f"[warning] {display_path(output)}: {unreadable} lines are not answers; left as they are "
              f"(the merge stage rejects them)", flush=True)
    print(f"[skipped] {len(questions) - len(todo)} already answered in {display_path(output)} "
          f"(no request sent); {len(todo)} to ask", flush=True)
    if cfg.dry_run:
        print_dry_run(cfg, todo, bool(api_key))
        return

    from r1_sft.data.teacher_api import TeacherClient  # imports openai: not needed for a dry run

    compact_rejects(rejects, done)
    rejects_log = AppendLog(rejects)
    client = TeacherClient(cfg.base_url, api_key, cfg.timeout)
    stop = threading.Event()
    progress = Progress(len(todo), cfg.progress_every)
    tokens, rejected, retry_kinds = Tokens(), Counter(), Counter()
    answered_now: set[int] = set()
    retries_lock = threading.Lock()

    def ask(number: int, q: Question):
        def on_retry(attempt: int, kind: str, detail: str, delay: float):
            with retries_lock:
                retry_kinds[kind] += 1
            progress.say(f"[retry] question {number} ({q.question[:16]}…): {detail}; "
                         f"retry {attempt}/{cfg.max_retries} in {delay:.2f} s")

        body = request_body(cfg.model, build_user_text(q.question, q.instruction), cfg.max_tokens,
                            cfg.temperature, cfg.top_p, cfg.stream)
        try:
            completion, _ = client.complete(body, cfg.max_retries, cfg.backoff_base, cfg.backoff_max,
                                            stop, on_retry)
        except RequestFailed as exc:
            return q, None, reject_line(q, REQUEST_FAILED, str(exc)), None
        judged = judge(completion)
        if judged.reason:
            return q, None, reject_line(q, judged.reason, judged.detail), completion.usage
        return q, answer_line(q, judged.reasoning, judged.answer, completion, cfg.model), None, completion.usage

    fatal = None
    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="teacher")
    futures = [pool.submit(ask, number, q) for number, q in todo]
    try:
        for future in as_completed(futures):
            try:
                q, line, reject, usage = future.result()
            except (CancelledError, Cancelled):
                continue
            except FatalAPIError as exc:
                if fatal is None:
                    fatal = exc
                    stop.set()
                    for f in futures:
                        f.cancel()
                continue
            if reject is None or reject["reason"] != REQUEST_FAILED:
                tokens.add(usage)
            if line is not None:
                log.append(line)
                answered_now.add(q.key)
            else:
                rejects_log.append(reject)
                rejected[reject["reason"]] += 1
            progress.step(len(answered_now), sum(rejected.values()))
    except KeyboardInterrupt:
        # Requests in flight cannot be interrupted politely; what was written stays written.
        progress.close()
        print(f"\n[interrupted] {len(answered_now)} answers written this run to {display_path(output)}; "
              f"re-run the same command to continue", flush=True)
        compact_rejects(rejects, done | answered_now)
        os._exit(130)
    pool.shutdown(wait=True)
    progress.close()
    log.close()
    rejects_log.close()
    client.close()
    n_rejects = compact_rejects(rejects, done | answered_now)

    wall = time.monotonic() - started
    by_reason = ", ".join(f"{k}={v}" for k, v in sorted(rejected.items())) or "none"
    print(f"[answered] {len(answered_now)} this run -> {display_path(output)} "
          f"({len(done) + len(answered_now)} answered in all)", flush=True)
    print(f"[skipped] {len(questions) - len(todo)} already answered before this run", flush=True)
    print(f"[rejected] {sum(rejected.values())} this run ({by_reason}); {n_rejects} unanswered in "
          f"{display_path(rejects)} (asked again on the next run)", flush=True)
    if retry_kinds:
        print(f"[retries] {sum(retry_kinds.values())} ("
              + ", ".join(f"{k}={v}" for k, v in sorted(retry_kinds.items())) + ")", flush=True)
    print(f"[tokens] {tokens.line()}", flush=True)
    print(f"[time] {wall:.1f} s wall", flush=True)
    info = output.with_name(f"{output.stem}.run.json")
    counts = {"questions": len(questions), "skipped": len(questions) - len(todo),
              "answered": len(answered_now), "rejected_by_reason": dict(sorted(rejected.items())),
              "unanswered_in_rejects": n_rejects, "retries": dict(sorted(retry_kinds.items())),
              "tokens": tokens.as_dict(), "wall_s": round(wall, 1)}
    atomic_write_text(info, json.dumps({**run_info(cfg), "counts": counts}, ensure_ascii=False,
                                       indent=2, default=str) + "\n")
    print(f"[wrote] {display_path(info)}", flush=True)
    if fatal is not None:
        raise UserError(str(fatal) + " (fix it and re-run the same command: finished answers are kept)")


if __name__ == "__main__":
    main(parse_config(Config))
