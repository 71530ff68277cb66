"""Ask one question to the base and the fine-tuned model with the same decoding; show both answers.

Reads:  BASE_MODEL and ADAPTER (LoRA adapter folder or merged model).
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
from r1_sft.evaluation import generate_all  # noqa: E402
from r1_sft.generation import R1_TEMPERATURE, R1_TOP_P  # noqa: E402
from r1_sft.r1_format import build_user_text, parse_output  # noqa: E402


@dataclass
class Config:
    question: str = ""  # the question (also accepted as the first positional argument)
    base_model: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # base model folder
    adapter: str = "model/deepseek_r1_1.5b_lora/best_model"  # fine-tuned adapter or merged folder; "" = base only
    max_new_tokens: int = 1024  # generation limit, in tokens
    do_sample: bool = False  # greedy by default (same decoding for both models); --do_sample: R1's settings
    temperature: float = R1_TEMPERATURE  # sampling temperature (only with --do_sample)
    top_p: float = R1_TOP_P  # nucleus sampling mass (only with --do_sample)
    seed: int = 0  # random seed (sampling only)
    use_4bit: bool = False  # load the models in 4-bit NF4
    backend: str = "hf"  # hf or vllm


@cli_main
def main(cfg: Config):
    if not cfg.question.strip():
        raise UserError('no question: pass it as the first argument, e.g. python scripts/compare.py "头痛怎么办？"')
    models = {"base": cfg.base_model, **({"tuned": cfg.adapter} if cfg.adapter else {})}
    generated = generate_all(models, [build_user_text(cfg.question)], max_new_tokens=cfg.max_new_tokens,
                             batch_size=1, do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p,
                             seed=cfg.seed, use_4bit=cfg.use_4bit, backend=cfg.backend)
    print(f"\n问题: {cfg.question}")
    rows = []
    for name, (gens, _stats) in generated.items():
        gen = gens[0]
        parsed = parse_output(gen.text)
        print(f"\n==================== {name} ====================")
        print(f"[思考]\n{parsed.reasoning or '(空)'}")
        missing = "(无：模型未写 </think> 就停止了)" if gen.stopped_by_eos else "(无：思考未结束，已达到 max_new_tokens)"
        print(f"[回答]\n{parsed.answer if parsed.think_closed else missing}")
        rows.append((name, parsed.think_closed, gen.stopped_by_eos, gen.new_tokens, len(parsed.answer)))
    print("\n| model | think closed | EOS | new tokens | answer chars |\n|---|---|---|---|---|")
    for name, closed, eos, tokens, chars in rows:
        print(f"| {name} | {'yes' if closed else 'no'} | {'yes' if eos else 'no'} | {tokens} | {chars} |")


def _positional_question(argv: list[str]) -> list[str]:
    """The seed's usage ``compare.py "问题"``: a leading bare argument is the question."""
    return ["--question", argv[0], *argv[1:]] if argv and not argv[0].startswith("-") else argv


if __name__ == "__main__":
    main(parse_config(Config, _positional_question(sys.argv[1:])))
