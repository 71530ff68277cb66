"""Benchmark: evaluation generation throughput (new tokens/s) at several batch sizes on one model.

Loads MODEL_PATH once, warms it up, then answers the same NUM_PROMPTS questions greedily at each
batch size through r1_sft.inference.generation (the code the evaluation uses) and reports new tokens/s, the
speed-up over batch 1, and whether the outputs are identical to batch 1's. They must be in float32
(greedy, left padding: the CPU default); in bf16/fp16 on a GPU the batched kernels round
differently with the batch shape, so some greedy outputs can differ -- a figure, not a failure.
The default model is the tiny offline one; pass the real model on a GPU.

Reads  MODEL_PATH, DATA (questions from {"input"} records). Writes bench/results/eval_throughput.json.

    python bench/eval_throughput.py
    python bench/eval_throughput.py --model_path model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B \
        --batch_sizes 1,8,32 --max_new_tokens 256
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text, read_jsonl  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # model folder (base, merged or adapter)
    data: str = "tests/fixtures/eval_sft_val.jsonl"  # questions ({"input"} records), cycled to NUM_PROMPTS
    num_prompts: int = 16  # questions answered at every batch size
    batch_sizes: str = "1,8"  # comma-separated batch sizes; the first is the baseline
    max_new_tokens: int = 64  # generation limit per answer, in tokens
    use_4bit: bool = False  # load in 4-bit NF4
    output: str = "bench/results/eval_throughput.json"  # where the figures go


@cli_main
def main(cfg: Config):
    import torch

    from r1_sft.inference.generation import generate_with_stats
    from r1_sft.model.loading import load_model

    questions = [rec["input"] for rec in read_jsonl(repo_path(cfg.data)) if isinstance(rec.get("input"), str)]
    if not questions:
        raise UserError(f"{display_path(repo_path(cfg.data))}: no {{\"input\"}} records")
    conversations = [[{"role": "user", "content": questions[i % len(questions)]}] for i in range(cfg.num_prompts)]
    print(f"[read] {display_path(repo_path(cfg.data))}: {len(questions)} questions -> {cfg.num_prompts} prompts")
    model, tokenizer = load_model(repo_path(cfg.model_path), use_4bit=cfg.use_4bit)
    generate_with_stats(model, tokenizer, conversations[:2], max_new_tokens=8, batch_size=2, do_sample=False)  # warm-up

    sizes = [int(s) for s in cfg.batch_sizes.split(",") if s.strip()]
    results, baseline = [], None
    for size in sizes:
        gens, stats = generate_with_stats(model, tokenizer, conversations, max_new_tokens=cfg.max_new_tokens,
                                          batch_size=size, do_sample=False)
        texts = [g.text for g in gens]
        baseline = baseline or (stats.tokens_per_s, texts)
        row = {"batch_size": size, "new_tokens": stats.new_tokens, "seconds": round(stats.seconds, 3),
               "tokens_per_s": round(stats.tokens_per_s, 1),
               "speedup_vs_first": round(stats.tokens_per_s / baseline[0], 2),
               "same_outputs_as_first": texts == baseline[1]}
        results.append(row)
        print(f"[bench] batch {size:>3}: {row['new_tokens']} new tokens in {row['seconds']} s = "
              f"{row['tokens_per_s']} tokens/s (x{row['speedup_vs_first']}, same outputs: "
              f"{row['same_outputs_as_first']})", flush=True)

    device = next(model.parameters()).device
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != "float32" and not all(r["same_outputs_as_first"] for r in results):
        print(f"[bench] {dtype}: outputs differ between batch sizes; expected outside float32 (batch invariance "
              f"holds in fp32 only)", flush=True)
    report = {"model": cfg.model_path, "device": str(device), "dtype": dtype,
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch_threads": torch.get_num_threads(), "num_prompts": cfg.num_prompts,
              "max_new_tokens": cfg.max_new_tokens, "results": results, "run": run_info(cfg)}
    out = repo_path(cfg.output)
    atomic_write_text(out, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    print(f"[write] {display_path(out)}")


if __name__ == "__main__":
    main(parse_config(Config))
