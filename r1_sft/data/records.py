"""Raw records -> one unified record -> SFT record, with every rejected line kept and explained.

Both raw sources become the same unified record (``converted_data.jsonl``, ``teacher_filtered.jsonl``)::

    {"id": "<file stem>-<line>", "source": "modelscope" | "r1_generated", "instruction": str,
     "question": str, "reasoning": str, "answer": str, "quality_f1": float | None,
     "origin": {"file": str, "line": int}}

* ModelScope ``{"instruction", "question", "think", "answer", "metrics": {"quality_f1"}}``
* teacher ``{"question", "reasoning": [step, ...], "answer"}`` (steps joined with "\\n")

and the unified record becomes the SFT record ``{"input", "output"}`` through ``r1_format``.

Files are streamed line by line as bytes: each line is decoded on its own, so one bad line is
rejected (with its 1-based physical line number and a reason code) and the rest is kept.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from r1_sft.paths import display_path
from r1_sft.r1_format import THINK_CLOSE, THINK_OPEN, build_user_text, format_output

SOURCE_MODELSCOPE = "modelscope"
SOURCE_TEACHER = "r1_generated"

# Reject reason codes (stable: tests and users grep for them).
UNDECODABLE = "undecodable"            # bytes that are not UTF-8
INVALID_JSON = "invalid_json"          # not JSON, or NaN/Infinity
NOT_OBJECT = "not_object"              # JSON, but not an object
MISSING_FIELD = "missing_field"        # required key absent or null
EMPTY_FIELD = "empty_field"            # ""
WHITESPACE_ONLY = "whitespace_only"    # only spaces / newlines (after normalisation)
WRONG_TYPE = "wrong_type"              # e.g. reasoning not a non-empty list of strings
TOO_LONG = "too_long"                  # over the stage's max_chars
THINK_TAG = "think_tag"                # <think> / </think> inside reasoning or answer
DUPLICATE_QUESTION = "duplicate_question"  # same normalised question seen earlier (splits)
BAD_SFT_OUTPUT = "bad_sft_output"      # SFT output not "<think>\n...\n</think>\n\n<answer>"

# Normalisation kinds (counted, never silent).
NORM_BOM = "bom"
NORM_CRLF = "crlf"
NORM_LITERAL_NEWLINE = "literal_newline"  # the two characters backslash + n meant as a newline
NORM_WHITESPACE = "surrounding_whitespace"
NORM_BLANK_STEP = "blank_step_dropped"    # empty teacher reasoning step

# What to do about a reject reason that usually means the whole file is in the wrong form.
FIX_HINTS = {
    UNDECODABLE: "lines that are not UTF-8 are usually GBK: convert the file with "
                 "`iconv -f GBK -t UTF-8 in.jsonl > out.jsonl`",
    NOT_OBJECT: "write one JSON object per line (JSONL), not a JSON array; convert an array file with "
                "`jq -c '.[]' in.json > out.jsonl`",
}

_THINK_TAG_RE = re.compile(r"</?\s*think\s*>", re.IGNORECASE)
WRITE_BUFFER = 1 << 20  # bytes: streaming outputs are written in large blocks


class RecordError(ValueError):
    """One input line cannot be used: ``reason`` is a stable code, ``detail`` human text."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Origin(NamedTuple):
    file: str   # display path of the input file
    stem: str   # file name without extension, for ids
    line: int   # 1-based physical line number


@dataclass
class Tally:
    """What a stage did with its input lines. Invariant: kept + sum(rejected) == read."""

    read: int = 0                                         # non-blank lines
    blank: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)    # reason code -> lines
    normalised: Counter = field(default_factory=Counter)  # normalisation kind -> occurrences

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict:
        return {"read": self.read, "blank": self.blank, "kept": self.kept,
                "rejected": self.n_rejected, "rejected_by_reason": dict(sorted(self.rejected.items())),
                "normalised": dict(sorted(self.normalised.items()))}


def counts_text(counter: Counter) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "none"


def fix_hints(tally: Tally) -> list[str]:
    """The fixes that the reject reasons call for (a GBK file, a JSON array), in a fixed order."""
    return [hint for reason, hint in FIX_HINTS.items() if tally.rejected.get(reason)]


def print_tally(tally: Tally, inputs: Iterable[Path | str], kept_to: str, rejects: Path) -> None:
    """The stage's one-screen summary: read / kept / rejected / normalised, and the paths."""
    names = ", ".join(display_path(p) for p in inputs)
    print(f"[read] {tally.read} non-blank lines ({tally.blank} blank skipped) from {names}")
    print(f"[kept] {tally.kept} -> {kept_to}")
    print(f"[rejected] {tally.n_rejected} -> {display_path(rejects)} ({counts_text(tally.rejected)})")
    for hint in fix_hints(tally):
        print(f"[hint] {hint}")
    print(f"[normalised] {counts_text(tally.normalised)}", flush=True)


# ---------------------------------------------------------------------------------------------
# Lines and text

def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def decode_line(raw: bytes, normalised: Counter) -> str | None:
    """One physical line (bytes) -> its text without BOM or line ending; None for a blank line."""
    crlf = raw.endswith(b"\r\n")
    raw = raw[:-2] if crlf else raw[:-1] if raw.endswith(b"\n") else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(UNDECODABLE, f"not UTF-8 at byte {exc.start} ({exc.reason})") from None
    bom = text.startswith("\ufeff")
    if bom:
        text = text[1:]
    if not text.strip():
        return None
    if crlf:
        normalised[NORM_CRLF] += 1
    if bom:
        normalised[NORM_BOM] += 1
    return text


# Built once: json.loads / json.dumps with non-default options build a new coder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def to_json_line(obj: dict) -> str:
    """One JSONL line (UTF-8 text kept readable), with its newline."""
    return _ENCODER.encode(obj) + "\n"


def parse_object(text: str) -> dict:
    """Strict JSON object (NaN / Infinity rejected: other tools cannot read them back)."""
    if text.lstrip().startswith("["):  # a JSON array on one line, or a line of a pretty-printed one
        raise RecordError(NOT_OBJECT, "a JSON array (or part of one), not an object: write one object per line")
    try:
        obj = _DECODER.decode(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise RecordError(INVALID_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise RecordError(NOT_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def clean_text(value, name: str, normalised: Counter, *, literal_newlines: bool = False,
               required: bool = True) -> str:
    """Validate one text field and apply the safe normalisations, counting each.

    CRLF -> LF; with ``literal_newlines`` the two characters backslash+n -> a newline (the real
    data has a few answers written that way); surrounding whitespace stripped. ``required=False``
    lets a missing or empty value through as "".
    """
    if value is None:
        if required:
            raise RecordError(MISSING_FIELD, f"'{name}' is missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(WRONG_TYPE, f"'{name}' must be a string, got {type(value).__name__}")
    if value == "":
        if required:
            raise RecordError(EMPTY_FIELD, f"'{name}' is empty")
        return ""
    if "\r\n" in value:
        normalised[NORM_CRLF] += 1
        value = value.replace("\r\n", "\n")
    if literal_newlines and "\\n" in value:
        normalised[NORM_LITERAL_NEWLINE] += 1
        value = value.replace("\\n", "\n")
    stripped = value.strip()
    if stripped != value:
        normalised[NORM_WHITESPACE] += 1
    if not stripped and required:
        raise RecordError(WHITESPACE_ONLY, f"'{name}' is only whitespace")
    return stripped


def find_think_tag(text: str) -> str | None:
    """The first ``<think>`` / ``</think>`` tag in ``text`` (any case or spacing), or None."""
    match = _THINK_TAG_RE.search(text)
    return match.group(0) if match else None


def _no_think_tags(text: str, name: str) -> None:
    # The SFT output must open and close its think block exactly once.
    match = _THINK_TAG_RE.search(text)
    if match:
        raise RecordError(THINK_TAG, f"'{name}' contains the tag {match.group(0)!r}")


def _check_length(user_text: str, reasoning: str, answer: str, max_chars: int) -> None:
    n = len(user_text) + len(reasoning) + len(answer)
    if n > max_chars:
        raise RecordError(TOO_LONG, f"{n} characters > max_chars={max_chars}")


def _unified(source: str, origin: Origin, instruction: str, question: str, reasoning: str,
             answer: str, quality_f1: float | None, max_chars: int) -> dict:
    _no_think_tags(reasoning, "reasoning")
    _no_think_tags(answer, "answer")
    _check_length(build_user_text(question, instruction), reasoning, answer, max_chars)
    return {"id": f"{origin.stem}-{origin.line}", "source": source, "instruction": instruction,
            "question": question, "reasoning": reasoning, "answer": answer,
            "quality_f1": quality_f1, "origin": {"file": origin.file, "line": origin.line}}


# ---------------------------------------------------------------------------------------------
# The two raw schemas and the unified one

def _quality_f1(obj: dict) -> float | None:
    metrics = obj.get("metrics")
    if metrics is None:
        return None
    if not isinstance(metrics, dict):
        raise RecordError(WRONG_TYPE, f"'metrics' must be an object, got {type(metrics).__name__}")
    value = metrics.get("quality_f1")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordError(WRONG_TYPE, f"'metrics.quality_f1' must be a number, got {value!r}")
    return float(value)


def modelscope_record(obj: dict, origin: Origin, normalised: Counter, max_chars: int) -> dict:
    """ModelScope ``{"instruction", "question", "think", "answer", "metrics"}`` -> unified record."""
    instruction = clean_text(obj.get("instruction"), "instruction", normalised, required=False)
    question = clean_text(obj.get("question"), "question", normalised)
    reasoning = clean_text(obj.get("think"), "think", normalised, literal_newlines=True)
    answer = clean_text(obj.get("answer"), "answer", normalised, literal_newlines=True)
    return _unified(SOURCE_MODELSCOPE, origin, instruction, question, reasoning, answer,
                    _quality_f1(obj), max_chars)


def teacher_record(obj: dict, origin: Origin, normalised: Counter, max_chars: int) -> dict:
    """Teacher ``{"question", "reasoning": [step, ...], "answer"}`` -> unified record."""
    instruction = clean_text(obj.get("instruction"), "instruction", normalised, required=False)
    question = clean_text(obj.get("question"), "question", normalised)
    steps = obj.get("reasoning")
    if steps is None:
        raise RecordError(MISSING_FIELD, "'reasoning' is missing")
    if not isinstance(steps, list) or not steps:
        got = "an empty list" if isinstance(steps, list) else type(steps).__name__
        raise RecordError(WRONG_TYPE, f"'reasoning' must be a non-empty list of strings, got {got}")
    cleaned = []
    for i, step in enumerate(steps):
        if not isinstance(step, str):
            raise RecordError(WRONG_TYPE, f"'reasoning[{i}]' must be a string, got {type(step).__name__}")
        text = clean_text(step, f"reasoning[{i}]", normalised, literal_newlines=True, required=False)
        if text:
            cleaned.append(text)
        else:
            normalised[NORM_BLANK_STEP] += 1
    if not cleaned:
        raise RecordError(WHITESPACE_ONLY, "every 'reasoning' step is empty or whitespace")
    answer = clean_text(obj.get("answer"), "answer", normalised, literal_newlines=True)
    return _unified(SOURCE_TEACHER, origin, instruction, question, "\n".join(cleaned), answer,
                    None, max_chars)


def unified_to_sft(obj: dict, origin: Origin, normalised: Counter, max_chars: int) -> dict:
    """A unified record (read back from disk, so validated again) -> ``{"input", "output"}``."""
    instruction = clean_text(obj.get("instruction"), "instruction", normalised, required=False)
    question = clean_text(obj.get("question"), "question", normalised)
    reasoning = clean_text(obj.get("reasoning"), "reasoning", normalised, literal_newlines=True)
    answer = clean_text(obj.get("answer"), "answer", normalised, literal_newlines=True)
    _no_think_tags(reasoning, "reasoning")
    _no_think_tags(answer, "answer")
    user_text = build_user_text(question, instruction)
    _check_length(user_text, reasoning, answer, max_chars)
    return sft_record(user_text, reasoning, answer)


def sft_record(user_text: str, reasoning: str, answer: str) -> dict:
    """The SFT record, exactly ``{"input", "output"}`` in the R1 think format."""
    return {"input": user_text, "output": format_output(reasoning, answer)}


def validate_sft(obj: dict) -> dict:
    """Check an SFT record read back from disk; returns exactly ``{"input", "output"}``."""
    for name in ("input", "output"):
        value = obj.get(name)
        if value is None:
            raise RecordError(MISSING_FIELD, f"'{name}' is missing")
        if not isinstance(value, str):
            raise RecordError(WRONG_TYPE, f"'{name}' must be a string, got {type(value).__name__}")
        if not value.strip():
            raise RecordError(EMPTY_FIELD if not value else WHITESPACE_ONLY, f"'{name}' is empty")
    output = obj["output"]
    if not output.startswith(THINK_OPEN + "\n") or output.count(THINK_OPEN) != 1 \
            or output.count(THINK_CLOSE) != 1:
        raise RecordError(BAD_SFT_OUTPUT, "'output' must open and close one think block: "
                                          "'<think>\\n{reasoning}\\n</think>\\n\\n{answer}'")
    reasoning, _, answer = output[len(THINK_OPEN):].partition(THINK_CLOSE)
    if not reasoning.strip() or not answer.strip():
        raise RecordError(BAD_SFT_OUTPUT, "'output' needs non-empty reasoning and answer")
    return {"input": obj["input"], "output": output}


# ---------------------------------------------------------------------------------------------
# Duplicate questions

# Everything that is not a letter or digit of some script: whitespace, punctuation, symbols.
_NOT_WORD = re.compile(r"[\W_]+")


def dedup_key(text: str) -> str:
    """The question as compared for duplicates: NFKC (full-width -> half-width), case-folded,
    with whitespace, punctuation and symbols removed (letters and digits of every script kept)."""
    return _NOT_WORD.sub("", unicodedata.normalize("NFKC", text).casefold())


def question_key(text: str) -> int:
    """An 8-byte digest of :func:`dedup_key` (a collision among 10^6 questions: probability ~3e-8)."""
    return int.from_bytes(hashlib.blake2b(dedup_key(text).encode("utf-8"), digest_size=8).digest(), "big")
