"""Ask one question to the base and the fine-tuned model with the same decoding; show both answers.

Decoding is the project's protocol (r1_sft/inference/decoding.py, the same as the evaluation's): sampling at
T=0.6, top_p=0.95 with a fixed seed, up to 4,096 new tokens; --no_do_sample for greedy.
Every folder and value is checked before the first model loads.

Reads:  BASE_MODEL and ADAPTER (LoRA adapter folder or merged model; "" or absent default = base only).
Writes: nothing (prints reasoning and answer of each model, then a short side-by-side table).

Example:
    python scripts/compare.py "高血压患者平时饮食要注意什么？"
    python scripts/compare.py --question "经常失眠怎么办？" --base_model model/tiny_r1 \
        --adapter model/tiny_r1_lora/best_model --max_new_tokens 96
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.evaluation.metrics import outcome  # noqa: E402
from r1_sft.evaluation.run import DEFAULT_ADAPTER, DEFAULT_BASE, check_backend, choose_models, generate_all  # noqa: E402
from r1_sft.inference.decoding import DO_SAMPLE, MAX_NEW_TOKENS, SEED, TEMPERATURE, TOP_P, check_decoding, describe  # noqa: E402
from r1_sft.r1_format import build_user_text, parse_output  # noqa: E402

MISSING = {"cut_off": "(无：思考未结束，已达到 max_new_tokens)", "stopped_without_answer": "(无：模型未给出回答就停止了)"}


@dataclass
class Config:
    question: str = ""  # the question (also accepted as the first positional argument)
    base_model: str = DEFAULT_BASE  # base model folder
    adapter: str = DEFAULT_ADAPTER  # fine-tuned adapter or merged folder; "" = base only (also when this default is absent)
    max_new_tokens: int = MAX_NEW_TOKENS  # generation limit, in tokens
    do_sample: bool = DO_SAMPLE  # R1 protocol sampling, same for both models; --no_do_sample = greedy
    temperature: float = TEMPERATURE  # sampling temperature (DeepSeek's advice for R1: 0.6)
    top_p: float = TOP_P  # nucleus sampling mass (DeepSeek's advice for R1: 0.95)
    seed: int = SEED  # random seed (both models start from it)
    use_4bit: bool = False  # load the models in 4-bit NF4
    backend: str = "hf"  # hf or vllm


@cli_main
def main(cfg: Config):
    if not cfg.question.strip():
        raise UserError('no question: pass it as the first argument, e.g. python scripts/compare.py "头痛怎么办？"')
    check_decoding(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    check_backend(cfg.backend)
    models = choose_models(cfg.base_model, cfg.adapter, DEFAULT_ADAPTER)  # a missing adapter fails before base runs
    print(f"[decoding] {describe(cfg.do_sample, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)}", flush=True)
    generated = generate_all(models, [build_user_text(cfg.question)], max_new_tokens=cfg.max_new_tokens,
                             batch_size=1, do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p,
                             seed=cfg.seed, use_4bit=cfg.use_4bit, backend=cfg.backend)
    print(f"\n问题: {cfg.question}")
    rows = []
    for name, (runs, _stats) in generated.items():
        gen = runs[0][0]
        parsed = parse_output(gen.text)
        result = outcome(parsed, gen.stopped_by_eos)
        print(f"\n==================== {name} ====================")
        print(f"[思考]\n{parsed.reasoning or '(空)'}")
        print(f"[回答]\n{parsed.answer if result == 'answered' else MISSING[result]}")
        rows.append((name, parsed.think_closed, gen.stopped_by_eos, gen.new_tokens, len(parsed.answer), result))
    print("\n| model | think closed | EOS | new tokens | answer chars | outcome |\n|---|---|---|---|---|---|")
    for name, closed, eos, tokens, chars, result in rows:
        print(f"| {name} | {'yes' if closed else 'no'} | {'yes' if eos else 'no'} | {tokens} | {chars} | {result} |")


def _positional_question(argv: list[str]) -> list[str]:
    """The seed's usage ``compare.py "问题"``: a leading bare argument is the question."""
    return ["--question", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv


if __name__ == "__main__":
    main(parse_config(Config, _positional_question(sys.argv[1:])))
