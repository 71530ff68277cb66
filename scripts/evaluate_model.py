"""Evaluate the base model and the fine-tuned one side by side (or the base alone) on a question file.

Generates answers with each model (same chat-template prompts as training, batched), parses
reasoning and answer, and scores them for Chinese: ROUGE-1/2/L on jieba words (punctuation
dropped), BLEU-4 on characters, the three outcome rates (answered / cut off at max_new_tokens /
stopped without an answer), think-format rates, repetition, lengths and tokens/s; --task mcq:
option-letter accuracy (single- and multi-answer apart, per exam class where the file has one).

Decoding follows DeepSeek's protocol for R1 models by default: sampling at T=0.6, top_p=0.95 with
a fixed seed, up to 4,096 new tokens, --n_samples K samples per question with every score averaged
(mean and spread in the report); --no_do_sample for greedy. Generation is the chat's and the
server's (r1_sft/inference/generation.py): batch i is seeded SEED + i, so with --batch_size 1 the first answer
is what `chat_with_model.py --once` and the server say for the same seed and values.

A QLoRA adapter (trained with use_4bit, as its run_info.json records) is scored on the unquantized
base unless --use_4bit, which scores it on the 4-bit NF4 base as trained; one line says which.
Several processes: `torchrun --nproc_per_node N scripts/evaluate_model.py ...` splits the batches
over them and writes the same report as one process (float32); rank 0 alone prints and writes.
--backend vllm runs as one process and spans GPUs itself (--tensor_parallel_size).

Reads:  DATA (default dataset/sft_r1_test.jsonl, the held-out test split, {"input","output"}; the report names
        the split it scored; --task mcq: a CMB-Exam JSON/JSONL,
        CMExam CSV, MedQA-MCMLE JSONL or {"question","options","answer"} file),
        BASE_MODEL and ADAPTER (a LoRA adapter folder or a merged model; "" or absent default = base only),
        ADAPTER2 (optional third row "tuned2", e.g. GRPO after SFT: base vs SFT vs GRPO in one report).
Writes: OUTPUT_DIR/RUN_NAME/ predictions.jsonl, summary.json, report.md, report.csv, scores.png, run_info.json,
        report.html (one self-contained page: headline with intervals, charts, samples; open it offline)
        (--score FILE: FILE_STEM.summary.json beside FILE, no model loaded).

Example:
    python scripts/evaluate_model.py --num_samples 50 --n_samples 4
    python scripts/evaluate_model.py --base_model model/tiny_r1 --adapter model/tiny_r1_lora/best_model \
        --num_samples 8 --max_new_tokens 64 --run_name demo
    python scripts/evaluate_model.py --task mcq --data CMB/data/CMB-Exam/CMB-val/CMB-val-merge.json --num_samples 0
    python scripts/evaluate_model.py --task mcq --data dataset/mcq_test.jsonl --num_samples 0 --n_samples 4 \
        --adapter model/deepseek_r1_1.5b_lora/best_model --adapter2 model/deepseek_r1_1.5b_grpo/best_model
    python scripts/evaluate_model.py --score my_outputs.jsonl
    torchrun --nproc_per_node 4 scripts/evaluate_model.py --num_samples 0 --n_samples 4
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.evaluation.report_html import write_report_html  # noqa: E402
from r1_sft.evaluation.run import DEFAULT_ADAPTER, DEFAULT_BASE, DEFAULT_DATA, EvalConfig, run_evaluation  # noqa: E402
from r1_sft.inference.decoding import DO_SAMPLE, MAX_NEW_TOKENS, N_SAMPLES  # noqa: E402
from r1_sft.paths import display_path  # noqa: E402


@dataclass
class Config(EvalConfig):
    base_model: str = DEFAULT_BASE  # base model folder ("base")
    adapter: str = DEFAULT_ADAPTER  # fine-tuned adapter or merged folder ("tuned"); "" = base only (also when this default is absent)
    data: str = DEFAULT_DATA  # evaluation file: the held-out test split (the validation split chose the checkpoint)
    num_samples: int = 100  # N questions of DATA, a seeded random draw (stratified by subject/department when the file has one); 0 = all
    n_samples: int = N_SAMPLES  # samples per question; scores are their mean (spread in the report)
    max_new_tokens: int = MAX_NEW_TOKENS  # generation limit per answer, in tokens (R1 reasons at length)
    do_sample: bool = DO_SAMPLE  # R1 protocol sampling (T 0.6, top_p 0.95, fixed seed); --no_do_sample = greedy
    output_dir: str = "scripts/compare/evaluation_results"  # results go to OUTPUT_DIR/RUN_NAME/
    run_name: str = ""  # "" = UTC timestamp


@cli_main
def main(cfg: Config):
    out_dir = run_evaluation(cfg)
    if out_dir is not None:  # rank 0 (or the one process): the same run as one self-contained page
        print(f"[report] {display_path(write_report_html(out_dir))} (open it in a browser)")


if __name__ == "__main__":
    main(parse_config(Config))
