"""Every evaluation metric, defined once, for Chinese text.

Definitions (all scores in [0, 1]):

* ROUGE-1/2/L F1 on jieba words (whitespace tokens dropped, punctuation kept, as in the usual
  Chinese convention). N-gram overlap is clipped (multiset) counting, ROUGE-L is the sentence-level
  longest common subsequence; F1 = 2 * overlap / (hyp_count + ref_count). These are exactly what
  the `rouge` package (pltrdy, 1.0.1) returns with ``exclusive=False`` on one sentence -- the tests
  pin that -- but computed with Counters and a bit-parallel LCS, because that package's ROUGE-L
  builds an O(n*m) dict and recurses once per word (RecursionError past ~1,000 words: a full R1
  output is longer) and it splits "sentences" on every ASCII "." (numbered lists, decimals).
  rouge_score's default tokenizer must not be used: it deletes Chinese characters (shared FACTS).
* BLEU-4: sacrebleu sentence BLEU with ``tokenize="zh"`` (every CJK character is a token), the
  default "exp" smoothing (= NLTK method3) and effective order, divided by 100.
* Empty text: when the hypothesis or the reference has no tokens, every score is 0 -- also when
  both are empty. An empty prediction never earns credit, and the reference is never empty on
  real data (this matches LLaMA-Factory's convention).
* Repetition: share of repeated character 4-grams (whitespace removed) =
  1 - distinct 4-grams / all 4-grams; 0 for texts under 4 characters. Characters, not words, so it
  does not depend on the segmenter and catches loops in any script.
"""
from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from typing import Iterable, Sequence

SCORE_KEYS = ("rouge1", "rouge2", "rougeL", "bleu4")


@lru_cache(maxsize=1)
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # its "Building prefix dict" chatter goes to stderr otherwise
    return jieba


def words(text: str) -> list[str]:
    """jieba words of ``text``, whitespace tokens dropped."""
    return [w for w in _jieba().lcut(text) if w.strip()]


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
    from .r1_format import THINK_CLOSE, parse_output

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
    from .r1_format import parse_output

    parsed = parse_output(prediction)
    ref_reasoning, ref_answer = split_reference(reference)
    return {
        "answer": text_scores(parsed.answer, ref_answer),
        "full": text_scores(full_text(parsed.reasoning, parsed.answer), full_text(ref_reasoning, ref_answer)),
        **_output_shape(prediction, parsed, stopped_by_eos, new_tokens),
    }


def _output_shape(prediction: str, parsed, stopped_by_eos: bool | None, new_tokens: int | None) -> dict:
    """Format rates, repetition and lengths of one output: the same for open and multiple-choice tasks."""
    return {
        "format": {"think_closed": float(parsed.think_closed),
                   "answer_nonempty": float(bool(parsed.answer)),
                   "eos": None if stopped_by_eos is None else float(stopped_by_eos)},
        "repetition": repetition(prediction),
        "lengths": {"reasoning_chars": len(parsed.reasoning), "answer_chars": len(parsed.answer),
                    "new_tokens": new_tokens},
    }


def summarize(samples: Sequence[dict], tokens_per_s: float | None = None) -> dict:
    """A model's block: means of the per-sample metrics, with the keys of summary.json.

    Open-ended samples give ``answer``/``full`` scores; multiple-choice samples give ``accuracy``.
    """
    block: dict = {}
    if samples and "answer" in samples[0]:
        for part in ("answer", "full"):
            block[part] = {k: mean(s[part][k] for s in samples) for k in SCORE_KEYS}
    if samples and "correct" in samples[0]:
        block["accuracy"] = mean(s["correct"] for s in samples)
    block["format"] = {k: mean(s["format"][k] for s in samples) for k in ("think_closed", "answer_nonempty", "eos")}
    block["repetition"] = mean(s["repetition"] for s in samples)
    block["tokens_per_s"] = tokens_per_s
    block["n"] = len(samples)
    return block


def mean_lengths(samples: Sequence[dict]) -> dict:
    """Mean reasoning/answer length in characters and mean generated tokens (None when unknown)."""
    keys = ("reasoning_chars", "answer_chars", "new_tokens")
    return {k: mean(s["lengths"][k] for s in samples) for k in keys}


# ---- multiple choice ------------------------------------------------------------------------

def extract_choice(answer: str, letters: str = "ABCDE") -> str:
    """The option letters chosen in an answer (sorted, e.g. "ABD"); "" when none is found.

    Reads the text after ``</think>`` only (the caller passes the parsed answer). A statement
    such as "答案：B" or "正确答案是 A、C" wins; otherwise the first group of stand-alone letters
    (not part of a Latin word such as "DNA") counts.
    """
    import re

    group = rf"[{letters}](?:\s*[、,，/和及与]?\s*[{letters}])*"
    # "答案：**B**", "所以选B", "最终选择 C": the last such statement wins (models revise themselves).
    statements = list(re.finditer(rf"(?:答案|选择|选)\s*(?:应该|应)?\s*(?:是|为)?\s*[:：]?[\s*]*({group})(?![A-Za-z])",
                                  answer))
    found = statements[-1] if statements else re.search(rf"(?<![A-Za-z])({group})(?![A-Za-z])", answer)
    if not found:
        return ""
    return "".join(sorted(set(re.findall(rf"[{letters}]", found.group(1)))))


def mcq_sample_metrics(prediction: str, gold: str, stopped_by_eos: bool | None = None,
                       new_tokens: int | None = None) -> dict:
    """Format/repetition metrics of one output plus ``choice`` and ``correct`` (exact letter set match)."""
    from .r1_format import parse_output

    parsed = parse_output(prediction)
    choice = extract_choice(parsed.answer)
    gold = "".join(sorted(set(gold.strip().upper())))
    return {"choice": choice, "correct": float(choice == gold),
            **_output_shape(prediction, parsed, stopped_by_eos, new_tokens)}
