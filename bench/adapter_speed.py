"""Benchmark: the price of serving base and tuned from one model -- a LoRA adapter kept apart vs merged.

The server keeps an adapter apart from its base so that `"model": "base"` can switch its layers off
(r1_sft/inference/model_variants.py); `--merge_adapter` merges it instead. This times batch-1 streamed
replies (the server's generation, generation.stream_reply) of exactly MAX_NEW_TOKENS tokens three ways:
merged, kept apart with the adapter on (tuned), kept apart with it off (base). Run it on the machine
and model that will serve: the ratio depends on the GPU, the model size and the adapter's rank.

Reads  MODEL (a LoRA adapter folder). Writes bench/results/adapter_speed.json.

    python bench/adapter_speed.py --model model/tiny_r1_lora/best_model
    python bench/adapter_speed.py --model model/deepseek_r1_1.5b_lora/best_model --max_new_tokens 256
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config, path_field  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    model: str = path_field("model/tiny_r1_lora/best_model")  # a LoRA adapter folder
    question: str = "高血压患者平时饮食要注意什么？"  # the prompt of every reply
    max_new_tokens: int = 128  # every reply is exactly this long (min_tokens = max_tokens)
    repeats: int = 3  # replies per way; the best (fastest) is reported
    device: str = "auto"  # auto | cpu | cuda
    output: str = "bench/results/adapter_speed.json"  # where the figures go


@cli_main
def main(cfg: Config) -> None:
    from r1_sft.inference.decoding import Decoding
    from r1_sft.inference.generation import load_for_generation, stream_reply
    from r1_sft.inference.model_variants import BASE_ID, ModelVariants
    from r1_sft.model.plan import make_plan
    from r1_sft.r1_format import encode_prompt

    plan = make_plan(repo_path(cfg.model), device=cfg.device, precision="auto", use_4bit=False)
    if plan.folder.kind != "adapter":
        raise UserError(f"--model {cfg.model}: not a LoRA adapter folder (nothing to merge or switch)")
    print(plan.describe(), flush=True)
    decoding = Decoding(max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.max_new_tokens, do_sample=False)

    def best_speed(model, tokenizer) -> float:
        prompt = encode_prompt(tokenizer, [{"role": "user", "content": cfg.question}])
        stream_reply(model, tokenizer, prompt, Decoding(max_new_tokens=4, do_sample=False))  # warm-up
        speeds = []
        for _ in range(cfg.repeats):
            reply = stream_reply(model, tokenizer, prompt, decoding)
            speeds.append(reply.new_tokens / reply.seconds)
        return max(speeds)

    results = {}
    model, tokenizer = load_for_generation(plan, merge=False)
    variants = ModelVariants(model, "tuned")
    for name in ("tuned", BASE_ID):
        with variants.use(name) as m:
            results[f"apart, {name}"] = round(best_speed(m, tokenizer), 2)
    del model, variants
    model, tokenizer = load_for_generation(plan, merge=True)
    results["merged"] = round(best_speed(model, tokenizer), 2)
    ratio = results["apart, tuned"] / results["merged"]
    for name, speed in results.items():
        print(f"  {name:>13}: {speed:8.2f} tokens/s", flush=True)
    print(f"  kept apart (tuned) runs at {ratio:.2f}x the merged speed", flush=True)
    out = repo_path(cfg.output)
    report = {"tokens_per_s": results, "apart_tuned_over_merged": round(ratio, 3), "device": str(plan.device),
              "dtype": str(plan.dtype), "max_new_tokens": cfg.max_new_tokens, "model": display_path(repo_path(cfg.model)),
              "run_info": run_info(cfg, plan)}
    atomic_write_text(out, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    print(f"[write] {display_path(out)}")


if __name__ == "__main__":
    main(parse_config(Config))
