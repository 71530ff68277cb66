"""Evaluation, defined once: load questions, generate with each model, score, write the report.

Used by scripts/evaluate_model.py and scripts/compare/compare_str_r1.py (thin callers) and, for a
single question, scripts/compare.py. Output folder ``OUTPUT_DIR/RUN_NAME/``:

  predictions.jsonl  one line per sample and model: model, id, question, reference, prediction,
                     reasoning, answer, metrics (same shape as a model block, per sample)
  summary.json       {"models": {NAME: {"answer", "full", "format", "repetition", "tokens_per_s", "n"}},
                      "lengths": {NAME: mean lengths}}  (mcq: "accuracy" instead of "answer"/"full")
  report.md / report.csv / scores.png   side-by-side table, a few example answers, bar chart
  run_info.json      resolved config, library versions, git commit
"""
from __future__ import annotations

import csv
import gc
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from .cli import UserError
from .generation import R1_TEMPERATURE, R1_TOP_P, Generation, GenerationStats, generate_with_stats
from .jsonl_io import atomic_open, atomic_write_text, read_jsonl, write_jsonl
from .metrics import SCORE_KEYS, mcq_sample_metrics, mean_lengths, sample_metrics, split_reference, summarize
from .paths import display_path, repo_path
from .r1_format import build_user_text, parse_output
from .run_info import save_run_info

MODEL_NAMES = ("base", "tuned")
MCQ_INSTRUCTION = "以下是一道医学选择题（可能有一个或多个正确选项）。请先思考，最后给出正确选项的字母，例如：答案：B。"


@dataclass
class EvalConfig:
    base_model: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # base model folder ("base")
    adapter: str = "model/deepseek_r1_1.5b_lora/best_model"  # fine-tuned adapter or merged folder ("tuned"); "" = base only
    task: str = "sft"  # sft: open questions {"input","output"}; mcq: {"id","question","options","answer"}
    data: str = "dataset/sft_r1_val.jsonl"  # evaluation JSONL
    num_samples: int = 100  # first N records of DATA; 0 = all
    batch_size: int = 16  # prompts per generate call (does not change greedy outputs)
    max_new_tokens: int = 1024  # generation limit per answer, in tokens (R1 reasons at length)
    do_sample: bool = False  # greedy (reproducible) by default; --do_sample uses R1's temperature/top_p
    temperature: float = R1_TEMPERATURE  # sampling temperature (only with --do_sample)
    top_p: float = R1_TOP_P  # nucleus sampling mass (only with --do_sample)
    seed: int = 0  # random seed (sampling only)
    use_4bit: bool = False  # load the models in 4-bit NF4 (less memory, slower)
    backend: str = "hf"  # hf: transformers generate; vllm: vLLM engine (GPU, if installed)
    output_dir: str = "scripts/compare/evaluation_results"  # results go to OUTPUT_DIR/RUN_NAME/
    run_name: str = ""  # "" = UTC timestamp, e.g. 20260101-120000
    num_examples: int = 3  # example answers shown in report.md
    score: str = ""  # FILE: score a JSONL of {"prediction","reference"} without a model; writes FILE_STEM.summary.json


@dataclass
class EvalItem:
    id: str
    question: str    # shown in reports
    user_text: str   # the user turn sent to the model
    reference: str   # sft: the full SFT output; mcq: the gold letters


# ---- data ------------------------------------------------------------------------------------

def load_items(path: str | Path, task: str, num_samples: int = 0) -> list[EvalItem]:
    """The first ``num_samples`` records of an evaluation file (0 = all) as prompts and references."""
    path = repo_path(path)
    items = []
    for index, rec in enumerate(read_jsonl(path), 1):
        where = f"{display_path(path)}: record {index}"
        rec_id = str(rec.get("id", index))
        if task == "sft":
            if not isinstance(rec.get("input"), str) or not isinstance(rec.get("output"), str):
                raise UserError(f"{where}: needs string fields \"input\" and \"output\" (an SFT file such as "
                                f"dataset/sft_r1_val.jsonl; multiple choice needs --task mcq)")
            items.append(EvalItem(rec_id, rec["input"], build_user_text(rec["input"], rec.get("instruction", "")),
                                  rec["output"]))
        elif task == "mcq":
            options, answer = rec.get("options"), rec.get("answer")
            if not isinstance(rec.get("question"), str) or not isinstance(options, dict) or not options \
                    or not isinstance(answer, str) or not answer.strip() \
                    or not set(answer.strip().upper()) <= set(options):
                raise UserError(f"{where}: needs \"question\", \"options\" {{\"A\": ...}} and \"answer\" made of "
                                f"option letters (CMB/CMExam shape)")
            question = rec["question"].strip() + "\n" + "\n".join(f"{k}. {v}" for k, v in sorted(options.items()))
            items.append(EvalItem(rec_id, question, build_user_text(question, MCQ_INSTRUCTION),
                                  "".join(sorted(set(answer.strip().upper())))))
        if num_samples and len(items) >= num_samples:
            break
    if not items:
        raise UserError(f"{display_path(path)}: no records to evaluate")
    return items


# ---- generation ------------------------------------------------------------------------------

def generate_all(model_paths: dict[str, str], user_texts: Sequence[str], *, max_new_tokens: int,
                 batch_size: int = 16, do_sample: bool = False, temperature: float = R1_TEMPERATURE,
                 top_p: float = R1_TOP_P, seed: int = 0, use_4bit: bool = False, backend: str = "hf"
                 ) -> dict[str, tuple[list[Generation], GenerationStats]]:
    """Answer every user text with every named model: same prompts and decoding, one model in memory at a time."""
    conversations = [[{"role": "user", "content": text}] for text in user_texts]
    decoding = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p)
    if backend == "vllm":
        from .generation import generate_with_vllm, vllm_available

        if not vllm_available():
            raise UserError("--backend vllm: vllm is not installed (pip install vllm on a CUDA machine, "
                            "or use --backend hf)")
        return generate_with_vllm(model_paths, conversations, **decoding)
    if backend != "hf":
        raise UserError(f"--backend {backend}: unknown backend (use hf or vllm)")

    import torch
    from transformers import set_seed

    from .modeling import load_model

    results = {}
    for name, path in model_paths.items():
        print(f"[{name}] loading {display_path(repo_path(path))}", flush=True)
        model, tokenizer = load_model(str(repo_path(path)), use_4bit=use_4bit)
        set_seed(seed)
        results[name] = generate_with_stats(model, tokenizer, conversations, batch_size=batch_size,
                                            progress=len(conversations) > batch_size, **decoding)
        print(f"[{name}] {results[name][1].new_tokens} new tokens in {results[name][1].seconds:.1f} s "
              f"= {results[name][1].tokens_per_s:.1f} tokens/s", flush=True)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


# ---- scoring ---------------------------------------------------------------------------------

def score_sample(task: str, item: EvalItem, gen: Generation) -> dict:
    if task == "mcq":
        return mcq_sample_metrics(gen.text, item.reference, gen.stopped_by_eos, gen.new_tokens)
    return sample_metrics(gen.text, item.reference, gen.stopped_by_eos, gen.new_tokens)


def prediction_record(name: str, task: str, item: EvalItem, gen: Generation, metrics: dict) -> dict:
    parsed = parse_output(gen.text)
    reference = item.reference if task == "mcq" else split_reference(item.reference)[1]
    rec = {"model": name, "id": item.id, "question": item.question, "reference": reference,
           "prediction": gen.text, "reasoning": parsed.reasoning, "answer": parsed.answer}
    if task == "mcq":
        rec["choice"] = metrics["choice"]
        rec["correct"] = bool(metrics["correct"])
    rec["metrics"] = metrics
    return rec


def score_file(path: str | Path) -> tuple[dict, Path]:
    """Score a JSONL of raw model outputs ``{"prediction", "reference"}`` (optional ``stopped_by_eos``,
    ``new_tokens``); write the block to ``<stem>.summary.json`` beside it."""
    path = repo_path(path)
    samples = []
    for index, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec.get("prediction"), str) or not isinstance(rec.get("reference"), str):
            raise UserError(f"{display_path(path)}: record {index}: needs string fields \"prediction\" "
                            f"(raw model output) and \"reference\"")
        samples.append(sample_metrics(rec["prediction"], rec["reference"], rec.get("stopped_by_eos"),
                                      rec.get("new_tokens")))
    if not samples:
        raise UserError(f"{display_path(path)}: no records to score")
    block = summarize(samples)
    out = path.with_name(path.stem + ".summary.json")
    atomic_write_text(out, json.dumps(block, ensure_ascii=False, indent=2) + "\n")
    return block, out


# ---- report ----------------------------------------------------------------------------------

def table_rows(summary: dict) -> list[tuple[str, list[float | None]]]:
    """(metric label, one value per model) in display order."""
    models = list(summary["models"])
    blocks = [summary["models"][m] for m in models]
    rows = []
    if "accuracy" in blocks[0]:
        rows.append(("accuracy", [b["accuracy"] for b in blocks]))
    for part in ("answer", "full"):
        if part in blocks[0]:
            rows += [(f"{part} {k}", [b[part][k] for b in blocks]) for k in SCORE_KEYS]
    rows += [(f"format {k}", [b["format"][k] for b in blocks]) for k in ("think_closed", "answer_nonempty", "eos")]
    rows.append(("repetition (4-gram)", [b["repetition"] for b in blocks]))
    lengths = summary.get("lengths", {})
    for k in ("reasoning_chars", "answer_chars", "new_tokens"):
        rows.append((f"mean {k}", [lengths.get(m, {}).get(k) for m in models]))
    rows.append(("tokens_per_s", [b["tokens_per_s"] for b in blocks]))
    rows.append(("n", [b["n"] for b in blocks]))
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


def render_table(summary: dict) -> str:
    """The side-by-side table as Markdown (also printed to the terminal)."""
    models = list(summary["models"])
    with_delta = len(models) == 2
    header = ["metric", *models] + (["tuned - base"] if with_delta else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in table_rows(summary):
        cells = [label, *map(_fmt, values)]
        if with_delta:
            a, b = values
            cells.append(_fmt(b - a) if a is not None and b is not None and label != "n" else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, summary: dict) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", *summary["models"]])
    for label, values in table_rows(summary):
        writer.writerow([label, *["" if v is None else v for v in values]])
    atomic_write_text(path, buf.getvalue())


def write_chart(path: Path, summary: dict) -> None:
    """Grouped bars of the [0, 1] scores per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, vals) for label, vals in table_rows(summary)
            if label.startswith(("accuracy", "answer", "format", "repetition"))]
    models = list(summary["models"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    width = 0.8 / len(models)
    for j, name in enumerate(models):
        ax.bar([i + j * width for i in range(len(rows))], [v[j] or 0.0 for _, v in rows], width, label=name)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([label for label, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (0-1)")
    ax.legend()
    ax.set_title("base vs tuned")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)


def _clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def render_report(cfg: EvalConfig, summary: dict, predictions: Sequence[dict]) -> str:
    models = list(summary["models"])
    lines = [f"# Evaluation: {' vs '.join(models)}", "",
             f"- data: `{cfg.data}` (task {cfg.task}, n={summary['models'][models[0]]['n']})",
             f"- base: `{cfg.base_model}`" + (f"; tuned: `{cfg.adapter}`" if "tuned" in models else ""),
             f"- decoding: {'sampling T=%s top_p=%s' % (cfg.temperature, cfg.top_p) if cfg.do_sample else 'greedy'}, "
             f"max_new_tokens={cfg.max_new_tokens}, backend {cfg.backend}",
             "- scores in [0, 1]: ROUGE F1 on jieba words, BLEU-4 on characters (sacrebleu zh); `answer` = text "
             "after `</think>` (empty when the think block never closed), `full` = reasoning + answer", "",
             render_table(summary), "", "## Examples", ""]
    by_id: dict[str, dict[str, dict]] = {}
    for rec in predictions:
        by_id.setdefault(rec["id"], {})[rec["model"]] = rec
    for rec_id in list(by_id)[:cfg.num_examples]:
        recs = by_id[rec_id]
        first = next(iter(recs.values()))
        lines += [f"### {rec_id}", "", f"**问题**: {_clip(first['question'])}", "",
                  f"**参考答案**: {_clip(first['reference'])}", ""]
        for name in models:
            rec = recs.get(name)
            if rec is None:
                continue
            closed = rec["metrics"]["format"]["think_closed"]
            answer = rec["answer"] if closed else "(no answer: the think block never closed)"
            lines += [f"**{name}**: {_clip(answer)}", ""]
    return "\n".join(lines) + "\n"


# ---- the whole run ---------------------------------------------------------------------------

def run_evaluation(cfg: EvalConfig) -> Path | None:
    """Score a file (``--score``) or evaluate base (and tuned) on DATA; returns the results folder."""
    if cfg.score:
        block, out = score_file(cfg.score)
        print(json.dumps(block, ensure_ascii=False, indent=2))
        print(f"[write] {display_path(out)}")
        return None
    if cfg.task not in ("sft", "mcq"):
        raise UserError(f"--task {cfg.task}: unknown task (use sft or mcq)")
    for flag, value, least in (("batch_size", cfg.batch_size, 1), ("max_new_tokens", cfg.max_new_tokens, 1),
                               ("num_samples", cfg.num_samples, 0)):
        if value < least:
            raise UserError(f"--{flag} {value}: must be at least {least}" + (" (0 = all)" if least == 0 else ""))
    items = load_items(cfg.data, cfg.task, cfg.num_samples)
    print(f"[read] {display_path(repo_path(cfg.data))}: {len(items)} {cfg.task} samples", flush=True)
    model_paths = {"base": cfg.base_model}
    if cfg.adapter:
        model_paths["tuned"] = cfg.adapter
    from .modeling import resolve_model_folder

    folders = {name: resolve_model_folder(str(repo_path(path)))  # a missing folder fails now, not after base ran
               for name, path in model_paths.items()}
    tuned = folders.get("tuned")
    if tuned is not None and tuned.kind == "adapter" and \
            Path(tuned.base_path).resolve() != Path(folders["base"].base_path).resolve():
        print(f"[warn] the adapter was trained on {display_path(tuned.base_path)}, not on --base_model "
              f"{display_path(folders['base'].base_path)}: 'tuned' uses its own base, so the two rows differ in "
              f"more than the fine-tuning", flush=True)

    generated = generate_all(model_paths, [item.user_text for item in items], max_new_tokens=cfg.max_new_tokens,
                             batch_size=cfg.batch_size, do_sample=cfg.do_sample, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=cfg.seed, use_4bit=cfg.use_4bit, backend=cfg.backend)
    predictions, summary = [], {"models": {}, "lengths": {}}
    for name, (gens, stats) in generated.items():
        samples = [score_sample(cfg.task, item, gen) for item, gen in zip(items, gens)]
        predictions += [prediction_record(name, cfg.task, item, gen, m) for item, gen, m in zip(items, gens, samples)]
        summary["models"][name] = summarize(samples, round(stats.tokens_per_s, 2))
        summary["lengths"][name] = mean_lengths(samples)

    run_name = cfg.run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = repo_path(cfg.output_dir) / run_name
    write_jsonl(out_dir / "predictions.jsonl", predictions)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", render_report(cfg, summary, predictions))
    write_csv(out_dir / "report.csv", summary)
    write_chart(out_dir / "scores.png", summary)
    save_run_info(cfg, out_dir / "run_info.json")
    print()
    print(render_table(summary))
    print()
    print(f"[write] {display_path(out_dir)}/: predictions.jsonl ({len(predictions)} lines), summary.json, "
          f"report.md, report.csv, scores.png, run_info.json")
    return out_dir
