"""The decoding protocol for R1 models, defined once for evaluation, test_model, compare, chat and the server.

DeepSeek's protocol for R1 models (shared FACTS): sample with temperature 0.6 and top_p 0.95, give
the reasoning room (they allow 32,768 tokens; 4,096 is enough for most of this dataset's questions
on the 1.5B), draw several samples per question and average the scores. Greedy decoding makes R1
models loop, so it is an explicit choice (``--no_do_sample``), not the default.

``Decoding`` is one call's values, its seeding rule and its ``generate`` arguments (top-k off).
``check_decoding`` checks the user's values before any model loads: one-line errors that name the
flag, the value and the allowed range.
"""
from __future__ import annotations

from dataclasses import dataclass

from r1_sft.cli import UserError

TEMPERATURE = 0.6      # DeepSeek's advice for R1 (0.5-0.7)
TOP_P = 0.95           # DeepSeek's advice for R1
DO_SAMPLE = True       # sampling; greedy R1 tends to repeat itself
MAX_NEW_TOKENS = 4096  # room for R1 reasoning on the real model; outputs cut here are counted apart
N_SAMPLES = 1          # samples per question (DeepSeek averaged 64; 4-8 already steadies small sets)
SEED = 42              # fixed, so a sampled run is reproducible on the same machine and settings (batch i: SEED + i)

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


@dataclass(frozen=True)
class Decoding:
    """How one generation call decodes; the same values give the same text whoever generates.

    Evaluation, test_model, compare, the chat and the server build one of these and hand it to
    ``r1_sft.inference.generation``, so what is evaluated is what people chat with. ``seed`` None = not
    fixed; otherwise batch ``i`` of a run is seeded with ``seed + i`` (:meth:`batch_seed`), so a
    given batch is generated identically whoever runs it: a chat's first reply, a server request
    and evaluation batch 0 with batch size 1 give the same text.
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    do_sample: bool = DO_SAMPLE
    temperature: float = TEMPERATURE
    top_p: float = TOP_P
    seed: int | None = SEED
    min_new_tokens: int = 0  # the server's min_tokens: no end-of-sentence before this many tokens

    @classmethod
    def from_temperature(cls, temperature: float, top_p: float, max_new_tokens: int, seed: int | None = None,
                         min_new_tokens: int = 0) -> "Decoding":
        """The chat's and the server's convention: temperature 0 means greedy."""
        return cls(max_new_tokens, temperature > 0, temperature, top_p, seed, min_new_tokens)

    def batch_seed(self, batch_index: int) -> int | None:
        """The seed of batch ``batch_index`` (0-based) of a run; None when the seed is not fixed."""
        return None if self.seed is None else self.seed + batch_index

    def generate_kwargs(self) -> dict:
        """transformers ``generate`` sampling arguments; also what summary.json records.

        Top-k is switched off as in DeepSeek's protocol and vLLM (transformers would otherwise add
        its default of 50); greedy unsets every sampling value so the model's generation_config
        (do_sample, T 0.6, top_p 0.95) neither applies nor warns.
        """
        if self.do_sample:
            values = dict(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        else:
            values = dict(do_sample=False, temperature=None, top_p=None)
        values["top_k"] = 0 if self.do_sample else None  # the one place top-k is decided
        return values
