"""Smoke-test a model folder: answer three medical questions, printing reasoning and answer apart.

Works on the real DeepSeek-R1-Distill-Qwen-1.5B, the offline tiny stand-in, a LoRA adapter folder
(its base is loaded automatically) or a merged folder. Prompts come from the model's own chat
template (ending in ``<think>\\n``), so the output starts inside the think block. Decoding is the
project's protocol (r1_sft/inference/decoding.py, shared with the evaluation): sampling at T=0.6, top_p=0.95
with a fixed seed, up to 4,096 new tokens; --no_do_sample for greedy.

Reads:  MODEL_PATH
Writes: nothing, unless --output_file (JSONL: question, reasoning, answer, think_closed, new_tokens)

    python scripts/test_model.py
    python scripts/test_model.py --model_path model/tiny_r1 --max_new_tokens 64
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.inference.decoding import (  # noqa: E402
    DO_SAMPLE,
    MAX_NEW_TOKENS,
    SEED,
    TEMPERATURE,
    TOP_P,
    Decoding,
    check_decoding,
    describe,
)
from r1_sft.inference.generation import generate_responses, load_for_generation  # noqa: E402
from r1_sft.jsonl_io import write_jsonl  # noqa: E402
from r1_sft.model.plan import make_plan  # noqa: E402
from r1_sft.model.precision import RunsOn  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.r1_format import build_prompt, parse_output  # noqa: E402

QUESTIONS = (
    "我最近经常头痛，尤其是下午，休息后能缓解，可能是什么原因？",
    "高血压患者平时饮食要注意什么？",
    "孩子发烧到39度，在家应该怎么处理？什么情况下需要去医院？",
)


@dataclass
class Config(RunsOn):
    model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # model, merged or LoRA adapter folder
    max_new_tokens: int = MAX_NEW_TOKENS  # generation budget per question (tokens); R1 reasoning is long
    do_sample: bool = DO_SAMPLE  # R1 protocol sampling (greedy R1 tends to loop); --no_do_sample = greedy
    temperature: float = TEMPERATURE  # sampling temperature (DeepSeek's advice for R1: 0.6)
    top_p: float = TOP_P  # nucleus sampling mass (DeepSeek's advice for R1: 0.95)
    seed: int = SEED  # random seed for sampling
    use_4bit: bool = False  # load the weights in 4-bit NF4 (bitsandbytes) to save memory
    output_file: str = ""  # optional JSONL of the results (repo-relative); "" = print only


@cli_main
def main(cfg: Config) -> list[dict]:
    check_decoding(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)
    plan = make_plan(cfg.model_path, device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit)
    print(plan.describe(), flush=True)
    model, tokenizer = load_for_generation(plan)
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    print(f"[test_model] prompt of question 1: {build_prompt(tokenizer, conversations[0])!r}", flush=True)
    decoding = describe(cfg.do_sample, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed)
    print(f"[test_model] answering {len(QUESTIONS)} questions ({decoding})", flush=True)
    generations = generate_responses(model, tokenizer, conversations, Decoding(
        cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed))
    results = []
    for i, (question, gen) in enumerate(zip(QUESTIONS, generations), 1):
        parsed = parse_output(gen.text)
        stop = "EOS" if gen.stopped_by_eos else "max_new_tokens"
        print(f"\n=== 问题 {i}: {question}", flush=True)
        print(f"--- 推理过程:\n{parsed.reasoning or '（空）'}", flush=True)
        answer = parsed.answer if parsed.think_closed else "（无：思考未以 </think> 结束）"
        print(f"--- 最终回答:\n{answer or '（空）'}", flush=True)
        print(f"--- {gen.new_tokens} tokens, stopped by {stop}", flush=True)
        results.append({"question": question, "reasoning": parsed.reasoning, "answer": parsed.answer,
                        "think_closed": parsed.think_closed, "new_tokens": gen.new_tokens,
                        "stopped_by_eos": gen.stopped_by_eos})
    closed = sum(r["think_closed"] for r in results)
    print(f"\n[test_model] {closed}/{len(results)} answers closed their think block", flush=True)
    if cfg.output_file:
        out = repo_path(cfg.output_file)
        n = write_jsonl(out, results)
        print(f"[test_model] wrote {n} results to {display_path(out)}", flush=True)
    return results


if __name__ == "__main__":
    main(parse_config(Config))
