"""Evaluate the base model and the fine-tuned one side by side on the validation set.

Generates an answer per question with each model (same chat-template prompts as training, batched,
greedy by default), parses reasoning and answer, and scores them for Chinese: ROUGE-1/2/L on jieba
words, BLEU-4 on characters, think-format rates, repetition, lengths and tokens/s.

Reads:  DATA (default dataset/sft_r1_val.jsonl, {"input","output"}; --task mcq: {"question","options","answer"}),
        BASE_MODEL and ADAPTER (a LoRA adapter folder or a merged model; "" = base only).
Writes: OUTPUT_DIR/RUN_NAME/ predictions.jsonl, summary.json, report.md, report.csv, scores.png, run_info.json
        (--score FILE: FILE_STEM.summary.json beside FILE, no model loaded).

Example:
    python scripts/evaluate_model.py --num_samples 50 --batch_size 16
    python scripts/evaluate_model.py --base_model model/tiny_r1 --adapter model/tiny_r1_lora/best_model \
        --num_samples 8 --max_new_tokens 64 --run_name demo
    python scripts/evaluate_model.py --score my_outputs.jsonl
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.evaluation import EvalConfig, run_evaluation  # noqa: E402


@dataclass
class Config(EvalConfig):
    base_model: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # base model folder ("base")
    adapter: str = "model/deepseek_r1_1.5b_lora/best_model"  # fine-tuned adapter or merged folder ("tuned"); "" = base only
    data: str = "dataset/sft_r1_val.jsonl"  # evaluation JSONL
    num_samples: int = 100  # first N records of DATA; 0 = all
    batch_size: int = 16  # prompts per generate call (does not change greedy outputs)
    max_new_tokens: int = 1024  # generation limit per answer, in tokens (R1 reasons at length)
    output_dir: str = "scripts/compare/evaluation_results"  # results go to OUTPUT_DIR/RUN_NAME/
    run_name: str = ""  # "" = UTC timestamp


@cli_main
def main(cfg: Config):
    run_evaluation(cfg)


if __name__ == "__main__":
    main(parse_config(Config))
