"""Every evaluation metric, defined once, for Chinese text.

Definitions (all scores in [0, 1]):

* ROUGE-1/2/L F1 on jieba **words only**: whitespace, punctuation and symbol tokens (every
  character of the token in a Unicode P* or S* category: ，。、！？：；（）《》“”…, +, %, ℃, ≥ ...)
  are dropped before counting, so two answers that share only punctuation score 0 and a score says
  how much content two texts share, not how alike their punctuation style is. This differs from
  LLaMA-Factory's convention (jieba tokens, punctuation kept, scored with rouge-chinese), which gives
  ``今天天晴，适合去公园散步。`` vs ``高血压患者应低盐饮食。`` ROUGE-1 0.14 on the shared ``。``; our
  figures are therefore a little lower and not directly comparable with theirs. N-gram overlap is
  clipped (multiset) counting, ROUGE-L is the sentence-level longest common subsequence;
  F1 = 2 * overlap / (hyp_count + ref_count). On the same word lists these are exactly what the
  `rouge` package (pltrdy, 1.0.1) returns with ``exclusive=False`` on one sentence -- the tests pin
  that -- but computed with Counters and a bit-parallel LCS, because that package's ROUGE-L builds
  an O(n*m) dict and recurses once per word (RecursionError past ~1,000 words: a full R1 output is
  longer) and it splits "sentences" on every ASCII "." (numbered lists, decimals).
  rouge_score's default tokenizer must not be used: it deletes Chinese characters (shared FACTS).
* BLEU-4: sacrebleu sentence BLEU with ``tokenize="zh"`` (every CJK character is a token), the
  default "exp" smoothing (= NLTK method3) and effective order, divided by 100. (BLEU keeps
  sacrebleu's standard tokenization, punctuation included, so it stays comparable with others'.)
* Empty text: when the hypothesis or the reference has no tokens, every score is 0 -- also when
  both are empty. An empty prediction never earns credit, and the reference is never empty on
  real data (this matches LLaMA-Factory's convention).
* Repetition: share of repeated character 4-grams (whitespace removed) =
  1 - distinct 4-grams / all 4-grams; 0 for texts under 4 characters. Characters, not words, so it
  does not depend on the segmenter and catches loops in any script. Lower is better.
* Outcome of one output, three cases kept apart (they sum to 1):
  ``answered`` (the think block closed and an answer follows), ``cut_off`` (no answer, generation
  hit max_new_tokens), ``stopped_without_answer`` (no answer, the model stopped by itself).
  Scores are reported over all outputs (a missing answer scores 0) and, in ``over_answered``, over
  the answered ones only: the first says how useful the model is at this token budget, the second
  how good its answers are when it gives one.
"""
from __future__ import annotations

import logging
import statistics
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "bleu4")


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" chatter goes to stderr otherwise
    return jieba


def is_word(token: str) -> bool:
    """False for whitespace, punctuation and symbol tokens (every character in a Unicode Z*, P* or S* category)."""
    return any(not unicodedata.category(ch).startswith(("Z", "P", "S")) and not ch.isspace() for ch in token)


def words(text: str) -> list[str]:
    """jieba words of ``text``: whitespace, punctuation and symbol tokens dropped (see the module docstring)."""
    return [w for w in _jieba().lcut(text) if is_word(w)]


def ngram_counts(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyro 2004): O(len(a) * len(b) / 64)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    match: dict = {}
    for i, token in enumerate(b):
        match[token] = match.get(token, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for token in a:
        u = v & match.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    return 2.0 * overlap / (hyp_count + ref_count) if overlap else 0.0


def rouge_f1(hyp_words: Sequence[str], ref_words: Sequence[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of two word lists (see the module docstring)."""
    if not hyp_words or not ref_words:
        return {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    scores = {}
    for n in (1, 2):
        hyp, ref = ngram_counts(hyp_words, n), ngram_counts(ref_words, n)
        overlap = sum((hyp & ref).values())
        scores[f"rouge{n}"] = _f1(overlap, sum(hyp.values()), sum(ref.values()))
    scores["rougeL"] = _f1(lcs_length(hyp_words, ref_words), len(hyp_words), len(ref_words))
    return scores


@lru_cache(maxsize=1)
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="zh", smooth_method="exp", effective_order=True)


def bleu4(hypothesis: str, reference: str) -> float:
    """Sentence BLEU-4 on characters (sacrebleu ``zh``), smoothed, in [0, 1]."""
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    score = _bleu().sentence_score(hypothesis, [reference]).score / 100.0
    return min(1.0, max(0.0, score))  # sacrebleu returns 100.00000000000004 for identical strings


def text_scores(hypothesis: str, reference: str) -> dict[str, float]:
    """``{"rouge1", "rouge2", "rougeL", "bleu4"}`` of one hypothesis against one reference."""
    scores = rouge_f1(words(hypothesis), words(reference))
    scores["bleu4"] = bleu4(hypothesis, reference)
    return scores


def repetition(text: str, n: int = 4) -> float:
    """Share of repeated character n-grams: 1 - distinct / total (0 when the text is shorter than n)."""
    chars = "".join(text.split())
    grams = [chars[i:i + n] for i in range(len(chars) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the non-None values; None when there are none."""
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ---- one sample, and a model's block in summary.json ----------------------------------------

def split_reference(reference: str) -> tuple[str, str]:
    """(reasoning, answer) of a reference: an SFT output is split at ``</think>``; plain text is all answer."""
    from r1_sft.r1_format import THINK_CLOSE, parse_output

    if THINK_CLOSE in reference:
        parsed = parse_output(reference)
        return parsed.reasoning, parsed.answer
    return "", reference.strip()


def full_text(reasoning: str, answer: str) -> str:
    """Reasoning and answer without the think tags, so tags earn no overlap credit."""
    return "\n".join(part for part in (reasoning, answer) if part)


def sample_metrics(prediction: str, reference: str, stopped_by_eos: bool | None = None,
                   new_tokens: int | None = None) -> dict:
    """Metrics of one raw model output (starting inside the think block) against its reference.

    ``stopped_by_eos`` is None when unknown (scoring a file without that field).
    """
    from r1_sft.r1_format import parse_output

    parsed = parse_output(prediction)
    ref_reasoning, ref_answer = split_reference(reference)
    return {
        "answer": text_scores(parsed.answer, ref_answer),
        "full": text_scores(full_text(parsed.reasoning, parsed.answer), full_text(ref_reasoning, ref_answer)),
        **_output_shape(prediction, parsed, stopped_by_eos, new_tokens),
    }


OUTCOMES = ("answered", "cut_off", "stopped_without_answer")


def outcome(parsed, stopped_by_eos: bool | None) -> str | None:
    """``answered`` / ``cut_off`` / ``stopped_without_answer`` (None: no answer and the stop reason is unknown)."""
    if parsed.think_closed and parsed.answer:
        return "answered"
    if stopped_by_eos is None:
        return None
    return "stopped_without_answer" if stopped_by_eos else "cut_off"


def _output_shape(prediction: str, parsed, stopped_by_eos: bool | None, new_tokens: int | None) -> dict:
    """Format rates, outcome, repetition and lengths of one output: the same for open and multiple-choice tasks."""
    return {
        "format": {"think_closed": float(parsed.think_closed),
                   "answer_nonempty": float(bool(parsed.answer)),
                   "eos": None if stopped_by_eos is None else float(stopped_by_eos)},
        "outcome": outcome(parsed, stopped_by_eos),
        "repetition": repetition(prediction),
        "lengths": {"reasoning_chars": len(parsed.reasoning), "answer_chars": len(parsed.answer),
                    "new_tokens": new_tokens},
    }


def _scores(samples: Sequence[dict]) -> dict:
    """The quality scores of some samples: answer/full (open) or accuracy (multiple choice)."""
    block: dict = {}
    if samples and "answer" in samples[0]:
        for part in ("answer", "full"):
            block[part] = {k: mean(s[part][k] for s in samples) for k in SCORE_KEYS}
    if samples and "correct" in samples[0]:
        block["accuracy"] = mean(s["correct"] for s in samples)
    return block


def summarize(samples: Sequence[dict], tokens_per_s: float | None = None) -> dict:
    """A model's block: means of the per-sample metrics, with the keys of summary.json.

    Open-ended samples give ``answer``/``full`` scores; multiple-choice samples give ``accuracy``,
    ``accuracy_single``/``accuracy_multi`` (one correct letter or several) and, when samples carry a
    ``group`` (exam class / subject), ``groups``. ``outcome`` holds the three rates (None where the
    stop reason is unknown); ``over_answered`` the scores over answered outputs only.
    """
    block: dict = _scores(samples)
    if samples and "correct" in samples[0]:
        single = [s for s in samples if not s["multi"]]
        multi = [s for s in samples if s["multi"]]
        block["accuracy_single"], block["n_single"] = mean(s["correct"] for s in single), len(single)
        block["accuracy_multi"], block["n_multi"] = mean(s["correct"] for s in multi), len(multi)
        if any(s.get("group") for s in samples):
            groups: dict[str, list[dict]] = {}
            for s in samples:
                groups.setdefault(s.get("group") or "-", []).append(s)
            block["groups"] = {name: {"accuracy": mean(s["correct"] for s in members), "n": len(members)}
                               for name, members in sorted(groups.items())}
    block["format"] = {k: mean(s["format"][k] for s in samples) for k in ("think_closed", "answer_nonempty", "eos")}
    known = all(s["outcome"] is not None for s in samples)
    block["outcome"] = {k: mean(float(s["outcome"] == k) for s in samples) if known or k == "answered" else None
                        for k in OUTCOMES}
    answered = [s for s in samples if s["outcome"] == "answered"]
    block["over_answered"] = {**(_scores(answered) or _empty_scores(samples)), "n": len(answered)}
    block["repetition"] = mean(s["repetition"] for s in samples)
    block["tokens_per_s"] = tokens_per_s
    block["n"] = len(samples)
    return block


def _empty_scores(samples: Sequence[dict]) -> dict:
    if samples and "answer" in samples[0]:
        return {part: {k: None for k in SCORE_KEYS} for part in ("answer", "full")}
    return {"accuracy": None}


SPREAD_KEYS = ("answer", "full", "accuracy", "accuracy_single", "accuracy_multi", "format", "outcome", "repetition")


def spread(blocks: Sequence[dict]) -> dict | None:
    """Standard deviation across sample runs (one block per run) of each score; None for a single run."""
    if len(blocks) < 2:
        return None

    def sd(values):
        vals = [float(v) for v in values if v is not None]
        return statistics.stdev(vals) if len(vals) >= 2 else None

    out: dict = {}
    for key in SPREAD_KEYS:
        if key not in blocks[0]:
            continue
        first = blocks[0][key]
        if isinstance(first, dict):
            out[key] = {}
            for sub in first:
                if isinstance(first[sub], dict):
                    out[key][sub] = {k: sd(b[key][sub][k] for b in blocks) for k in first[sub]}
                else:
                    out[key][sub] = sd(b[key][sub] for b in blocks)
        else:
            out[key] = sd(b[key] for b in blocks)
    return out


def mean_lengths(samples: Sequence[dict]) -> dict:
    """Mean reasoning/answer length in characters and mean generated tokens (None when unknown)."""
    keys = ("reasoning_chars", "answer_chars", "new_tokens")
    return {k: mean(s["lengths"][k] for s in samples) for k in keys}


# ---- multiple choice ------------------------------------------------------------------------

def mcq_sample_metrics(prediction: str, gold: str, stopped_by_eos: bool | None = None,
                       new_tokens: int | None = None, options=None, multi: bool | None = None) -> dict:
    """Format/outcome metrics of one output plus ``choice``, ``correct`` (exact letter-set match) and ``multi``.

    ``options``: the question's ``{"A": text, ...}`` (or its letters; default A-E) for the reader
    (r1_sft.answer_reader.extract_choice). ``multi``: a multiple-answer question; default: gold has several letters.
    """
    from r1_sft.answer_reader import completion_choice, normalize_gold
    from r1_sft.r1_format import parse_output

    parsed = parse_output(prediction)
    gold = normalize_gold(gold)
    choice = completion_choice(prediction, options or "ABCDE")
    return {"choice": choice, "correct": float(choice == gold), "multi": len(gold) > 1 if multi is None else multi,
            **_output_shape(prediction, parsed, stopped_by_eos, new_tokens)}
