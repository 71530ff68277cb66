"""The decoding protocol for R1 models, defined once for evaluation, test_model.py and compare.py.

DeepSeek's protocol for R1 models (shared FACTS): sample with temperature 0.6 and top_p 0.95, give
the reasoning room (they allow 32,768 tokens; 4,096 is enough for most of this dataset's questions
on the 1.5B), draw several samples per question and average the scores. Greedy decoding makes R1
models loop, so it is an explicit choice (``--no_do_sample``), not the default.

``check_decoding`` checks the user's values before any model loads: one-line errors that name the
flag, the value and the allowed range.
"""
from __future__ import annotations

from .cli import UserError

TEMPERATURE = 0.6      # DeepSeek's advice for R1 (0.5-0.7)
TOP_P = 0.95           # DeepSeek's advice for R1
DO_SAMPLE = True       # sampling; greedy R1 tends to repeat itself
MAX_NEW_TOKENS = 4096  # room for R1 reasoning on the real model; outputs cut here are counted apart
N_SAMPLES = 1          # samples per question (DeepSeek averaged 64; 4-8 already steadies small sets)
SEED = 42              # fixed, so a sampled run is reproducible on the same machine and settings

MAX_TEMPERATURE = 2.0  # beyond this the distribution is close to uniform noise


def check_decoding(*, temperature: float | None = None, top_p: float | None = None,
                   max_new_tokens: int | None = None, batch_size: int | None = None,
                   n_samples: int | None = None, num_samples: int | None = None,
                   do_sample: bool | None = None) -> None:
    """Raise UserError for the first value out of range (None = not a flag of this script)."""
    if temperature is not None and not 0 < temperature <= MAX_TEMPERATURE:
        raise UserError(f"--temperature {temperature}: must be in (0, {MAX_TEMPERATURE}] "
                        f"(R1 advice {TEMPERATURE}; use --no_do_sample for greedy decoding)")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top_p {top_p}: must be in (0, 1] (R1 advice {TOP_P})")
    for flag, value, least in (("max_new_tokens", max_new_tokens, 1), ("batch_size", batch_size, 1),
                               ("n_samples", n_samples, 1), ("num_samples", num_samples, 0)):
        if value is not None and value < least:
            raise UserError(f"--{flag} {value}: must be at least {least}" + (" (0 = all)" if least == 0 else ""))
    if do_sample is False and n_samples is not None and n_samples > 1:
        raise UserError(f"--n_samples {n_samples}: greedy decoding (--no_do_sample) gives the same answer every "
                        f"time; use --n_samples 1, or sample (drop --no_do_sample)")


def describe(do_sample: bool, temperature: float, top_p: float, max_new_tokens: int, seed: int,
             n_samples: int = 1) -> str:
    """One line for logs and reports, e.g. ``sampling T=0.6 top_p=0.95 seed=42, 4 samples/question, ...``."""
    way = f"sampling T={temperature} top_p={top_p} seed={seed}" if do_sample else "greedy"
    samples = f", {n_samples} samples/question" if n_samples > 1 else ""
    return f"{way}{samples}, max_new_tokens={max_new_tokens}"
