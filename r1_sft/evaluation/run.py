"""Evaluation, defined once: load questions, generate with each model, score, write the report.

Used by scripts/evaluate_model.py and scripts/compare/compare_str_r1.py (thin callers) and, for a
single question, scripts/compare.py. Output folder ``OUTPUT_DIR/RUN_NAME/``:

  predictions.jsonl  one line per output (question x sample x model): model, sample, id, question,
                     reference, prediction, reasoning, answer, outcome, new_tokens, stopped_by_eos,
                     metrics (mcq: also choice, correct, multi, group)
  summary.json       {"models": {NAME: {"answer", "full", "format", "repetition", "tokens_per_s", "n", "outcome",
                      "over_answered", "n_samples", "spread", "stats"}}, "lengths": {NAME: mean lengths}, "paired",
                      "decoding": {...}, "data": {"file", "split", "questions", "of", "seed", "drawn"}}  (mcq: "accuracy", "accuracy_single", "accuracy_multi", "groups"
                      instead of "answer"/"full"); "n" counts questions, every score is a mean over all n x n_samples
                      outputs, "spread" the SD across sample runs; "stats" / "paired": r1_sft/evaluation/statistics.py;
                      "split" is "test" / "val" / "train" as the file name declares it ("" otherwise)
  report.md / report.csv / scores.png   side-by-side table, per-group accuracy, example answers, chart
  run_info.json      resolved config, library versions, git commit

Decoding (r1_sft/inference/decoding.py): DeepSeek's protocol by default -- sampling at T=0.6, top_p=0.95,
a fixed seed, ``n_samples`` samples per question, up to 4,096 new tokens; greedy with
``--no_do_sample``. Generation is r1_sft/inference/generation.py's, the same as the chat's and the server's.

Several processes: ``torchrun --nproc_per_node N scripts/evaluate_model.py ...`` deals the batches
(formed over all questions, each seeded by its global index) to the processes and gathers them;
rank 0 writes the one report, identical to a one-process run's in float32 (tokens/s aside), and the
other ranks write and print nothing. The vLLM backend runs as one process and spans several GPUs
with its own tensor parallelism (``--tensor_parallel_size``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from r1_sft.answer_reader import normalize_gold
from r1_sft.cli import UserError, path_field
from r1_sft.evaluation.metrics import (
    mcq_sample_metrics,
    mean_lengths,
    sample_metrics,
    split_reference,
    spread,
    summarize,
)
from r1_sft.evaluation.questions import DEFAULT_DATA, EvalItem, data_record, load_items, select_items
from r1_sft.evaluation.report import (
    data_phrase,
    describe_data,
    render_report,
    render_stats,
    render_table,
    report_header,
    write_chart,
    write_csv,
)
from r1_sft.evaluation.statistics import group_stats, model_stats, paired_stats, per_question
from r1_sft.inference.decoding import (
    DO_SAMPLE,
    MAX_NEW_TOKENS,
    N_SAMPLES,
    SEED,
    TEMPERATURE,
    TOP_P,
    Decoding,
    check_decoding,
    describe,
)
from r1_sft.inference.generation import Generation, GenerationStats, generate_with_stats
from r1_sft.jsonl_io import atomic_write_text, read_jsonl, write_jsonl
from r1_sft.model.plan import RunPlan, make_plan
from r1_sft.model.precision import RunsOn, check_run_settings
from r1_sft.paths import display_path, repo_path
from r1_sft.r1_format import parse_output
from r1_sft.run_info import save_run_info

MODEL_NAMES = ("base", "tuned")
DEFAULT_BASE = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"
DEFAULT_ADAPTER = "model/deepseek_r1_1.5b_lora/best_model"  # where training puts its best adapter
TRAIN_HINT = "train first (scripts/train_stf_r1_train_val.py)"
BACKENDS = ("hf", "vllm")


@dataclass
class EvalConfig(RunsOn):
    base_model: str = DEFAULT_BASE  # base model folder ("base")
    adapter: str = DEFAULT_ADAPTER  # fine-tuned adapter or merged folder ("tuned"); "" = base only (also when the default is absent)
    adapter2: str = path_field("")  # a second fine-tuned folder ("tuned2"), e.g. GRPO after the SFT adapter: base vs SFT vs GRPO in one report
    task: str = "sft"  # sft: open questions {"input","output"}; mcq: CMB-Exam / CMExam CSV / MedQA-MCMLE / {"question","options","answer"}
    data: str = DEFAULT_DATA  # evaluation file (JSONL; mcq also JSON array or CMExam CSV); default: the held-out test split
    num_samples: int = 100  # N questions of DATA, a seeded random draw (stratified by subject/department when the file has one); 0 = all
    first_questions: bool = False  # take the first N questions of DATA instead of the random draw
    n_samples: int = N_SAMPLES  # samples per question; every score is their mean (spread in the report)
    batch_size: int = 16  # prompts per generate call (greedy outputs batch-invariant in fp32 only)
    max_new_tokens: int = MAX_NEW_TOKENS  # generation limit per answer, in tokens; outputs cut here count as cut_off
    do_sample: bool = DO_SAMPLE  # sample with temperature/top_p (R1 protocol); --no_do_sample = greedy
    temperature: float = TEMPERATURE  # sampling temperature (DeepSeek's advice for R1: 0.6)
    top_p: float = TOP_P  # nucleus sampling mass (DeepSeek's advice for R1: 0.95)
    seed: int = SEED  # random seed (sampling; also the vLLM engine's)
    use_4bit: bool = False  # load the models in 4-bit NF4 (less memory, slower; the adapter then stays unmerged); scores a QLoRA adapter on the 4-bit base it was trained on
    backend: str = "hf"  # hf: transformers generate (several processes: torchrun); vllm: vLLM engine (GPU, if installed; one process)
    tensor_parallel_size: int = 1  # vllm backend: GPUs one engine shards the model over (vLLM's own tensor parallelism)
    output_dir: str = "scripts/compare/evaluation_results"  # results go to OUTPUT_DIR/RUN_NAME/
    run_name: str = ""  # "" = UTC timestamp, e.g. 20260101-120000
    num_examples: int = 3  # example answers shown in report.md
    score: str = ""  # FILE: score a JSONL without a model (sft: {"prediction","reference"}; mcq: {"prediction","answer"}); writes FILE_STEM.summary.json


# ---- models ----------------------------------------------------------------------------------

def choose_models(base_model: str, adapter: str, default_adapter: str = DEFAULT_ADAPTER,
                  adapter2: str = "") -> dict[str, str]:
    """``{"base": ..., "tuned": ..., "tuned2": ...}`` with every folder checked now, before any model loads.

    No adapter (``""``), or the default adapter folder absent: the base alone, said in one line.
    An adapter the user named that does not exist is an error whose hint is to train first.
    ``adapter2`` (optional): a second fine-tuned folder, e.g. the GRPO adapter beside the SFT one.
    """
    from r1_sft.model.folders import resolve_model_folder

    models = {"base": base_model}
    if adapter:
        path = repo_path(adapter)
        if path.exists():
            models["tuned"] = adapter
        elif adapter == default_adapter:
            print(f"[note] no adapter at {display_path(path)}: evaluating the base model alone ({TRAIN_HINT}, "
                  f"or pass --adapter DIR; --adapter \"\" says base-only explicitly)", flush=True)
        else:
            raise UserError(f"--adapter {path}: adapter folder not found ({TRAIN_HINT}, or pass "
                            f"--adapter \"\" to evaluate the base model alone)")
    else:
        print("[note] --adapter \"\": evaluating the base model alone", flush=True)
    if adapter2:
        if not repo_path(adapter2).exists():
            raise UserError(f"--adapter2 {repo_path(adapter2)}: folder not found (train it first, e.g. "
                            f"scripts/train_grpo.py, or leave --adapter2 out)")
        models["tuned2"] = adapter2
    folders = {name: resolve_model_folder(str(repo_path(path))) for name, path in models.items()}
    for name in ("tuned", "tuned2"):
        tuned = folders.get(name)
        if tuned is not None and tuned.kind == "adapter" and \
                Path(tuned.base_path).resolve() != Path(folders["base"].base_path).resolve():
            print(f"[warn] the adapter was trained on {display_path(tuned.base_path)}, not on --base_model "
                  f"{display_path(folders['base'].base_path)}: '{name}' uses its own base, so the rows differ in "
                  f"more than the fine-tuning", flush=True)
    return models


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: unknown backend (use {' or '.join(BACKENDS)})")
    if backend == "vllm":
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("--backend vllm under torchrun: vLLM runs as one process and spans GPUs itself "
                            "(--tensor_parallel_size N); run it with plain python, or use --backend hf under torchrun")
        from r1_sft.inference.generation import vllm_available

        if not vllm_available():
            raise UserError("--backend vllm: vllm is not installed here; it lives in its own environment "
                            "(python -m venv .venv-vllm && .venv-vllm/bin/pip install -r requirements-vllm.txt, "
                            "see docs/gpus.md), or use --backend hf")


# ---- generation ------------------------------------------------------------------------------

def generate_all(model_paths: dict[str, str | RunPlan], user_texts: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                 batch_size: int = 16, do_sample: bool = DO_SAMPLE, temperature: float = TEMPERATURE,
                 top_p: float = TOP_P, seed: int = SEED, n_samples: int = N_SAMPLES, use_4bit: bool = False,
                 backend: str = "hf", tensor_parallel_size: int = 1, precision: str = "auto", device: str = "auto"
                 ) -> dict[str, tuple[list[list[Generation]], GenerationStats]]:
    """Answer every user text ``n_samples`` times with every named model: same prompts and decoding,
    one model in memory at a time. Returns per name the sample runs (one Generation per text each).
    ``model_paths``: name -> folder, or name -> the run's RunPlan for it (then use_4bit, precision and
    device are the plan's)."""
    check_backend(backend)
    conversations = [[{"role": "user", "content": text}] for text in user_texts]
    decoding = Decoding(max_new_tokens, do_sample, temperature, top_p, seed)
    if backend == "vllm":
        from r1_sft.inference.generation import generate_with_vllm

        return generate_with_vllm(model_paths, conversations, decoding, n_samples=n_samples,
                                  tensor_parallel_size=tensor_parallel_size, precision=precision)

    import torch

    from r1_sft.inference.generation import load_for_generation

    results = {}
    for name, path in model_paths.items():
        plan = path if isinstance(path, RunPlan) else make_plan(repo_path(path), device=device, precision=precision,
                                                               use_4bit=use_4bit)
        print(f"[{name}] loading {display_path(plan.folder.model_path)}", flush=True)
        model, tokenizer = load_for_generation(plan, label=name)
        gens, stats = generate_with_stats(model, tokenizer, conversations * n_samples, decoding,
                                          batch_size=batch_size, progress=True, label=f"[{name}]")
        n = len(conversations)
        results[name] = ([gens[j * n:(j + 1) * n] for j in range(n_samples)], stats)
        print(f"[{name}] {stats.new_tokens} new tokens in {stats.seconds:.1f} s = {stats.tokens_per_s:.1f} tokens/s",
              flush=True)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results


# ---- scoring ---------------------------------------------------------------------------------

def score_sample(task: str, item: EvalItem, gen: Generation) -> dict:
    if task == "mcq":
        metrics = mcq_sample_metrics(gen.text, item.reference, gen.stopped_by_eos, gen.new_tokens,
                                     item.options or None, item.multi)
        if item.group:
            metrics["group"] = item.group
        return metrics
    return sample_metrics(gen.text, item.reference, gen.stopped_by_eos, gen.new_tokens)


def prediction_record(name: str, task: str, item: EvalItem, gen: Generation, metrics: dict, sample: int = 0) -> dict:
    parsed = parse_output(gen.text)
    reference = item.reference if task == "mcq" else split_reference(item.reference)[1]
    rec = {"model": name, "sample": sample, "id": item.id, "question": item.question, "reference": reference,
           "prediction": gen.text, "reasoning": parsed.reasoning, "answer": parsed.answer,
           "outcome": metrics["outcome"], "new_tokens": gen.new_tokens, "stopped_by_eos": gen.stopped_by_eos}
    if task == "mcq":
        rec.update(choice=metrics["choice"], correct=bool(metrics["correct"]), multi=metrics["multi"],
                   group=item.group)
    rec["metrics"] = metrics
    return rec


def model_block(runs: list[list[dict]], n_questions: int, tokens_per_s: float | None,
                per_q: dict | None = None, groups: list[str] | None = None) -> dict:
    """summary.json's block for one model: means over every output of every run, spread across runs, and
    (given the per-question values) each headline metric's standard error and 95% interval over questions."""
    block = summarize([s for run in runs for s in run], tokens_per_s)
    block["n"] = n_questions
    block["n_samples"] = len(runs)
    block["spread"] = spread([summarize(run) for run in runs])
    if per_q is not None:
        block["stats"] = model_stats(per_q)
    for group, extra in group_stats(runs, groups or []).items():
        if group in block.get("groups", {}):
            block["groups"][group].update(extra)  # "n" becomes the group's questions (the unit)
    return block


def score_file(path: str | Path, task: str = "sft") -> tuple[dict, Path]:
    """Score a JSONL of raw model outputs without a model and write the block to ``<stem>.summary.json``.

    sft: ``{"prediction", "reference"}``; mcq: ``{"prediction", "answer"}`` (gold letters, optional
    ``options``). Optional ``stopped_by_eos`` and ``new_tokens``. A prediction is raw model output
    (it starts inside the think block): without ``</think>`` it has no answer.
    """
    path = repo_path(path)
    ref_key = "answer" if task == "mcq" else "reference"
    samples = []
    for index, rec in enumerate(read_jsonl(path), 1):
        if not isinstance(rec.get("prediction"), str) or not isinstance(rec.get(ref_key), str):
            raise UserError(f"{display_path(path)}: record {index}: needs string fields \"prediction\" "
                            f"(raw model output) and \"{ref_key}\"" + (" (the gold letters, e.g. \"B\")"
                                                                       if task == "mcq" else ""))
        if task == "mcq":
            samples.append(mcq_sample_metrics(rec["prediction"], rec["answer"], rec.get("stopped_by_eos"),
                                              rec.get("new_tokens"), rec.get("options")))
        else:
            samples.append(sample_metrics(rec["prediction"], rec["reference"], rec.get("stopped_by_eos"),
                                          rec.get("new_tokens")))
    if not samples:
        raise UserError(f"{display_path(path)}: no records to score")
    block = summarize(samples)
    out = path.with_name(path.stem + ".summary.json")
    atomic_write_text(out, json.dumps(block, ensure_ascii=False, indent=2) + "\n")
    return block, out


def decoding_record(cfg: EvalConfig) -> dict:
    """summary.json's "decoding": what produced the outputs (the sampling values as generate got them)."""
    sampling = Decoding(cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_p, cfg.seed).generate_kwargs()
    return {**sampling, "seed": cfg.seed, "n_samples": cfg.n_samples, "max_new_tokens": cfg.max_new_tokens,
            "backend": cfg.backend, "batch_size": cfg.batch_size}


# ---- the whole run ---------------------------------------------------------------------------

def _config_default(cfg, name: str):
    for f in dataclasses.fields(cfg):
        if f.name == name:
            return f.default
    return None


def start_processes() -> int:
    """This process's rank under torchrun (the process group started: gloo on CPU, nccl on GPUs), else 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch

    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank()


def run_evaluation(cfg: EvalConfig) -> Path | None:
    """Score a file (``--score``) or evaluate base (and tuned) on DATA; returns the results folder.

    Under torchrun every process generates its share and rank 0 alone prints and writes the report.
    """
    check_decoding(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                   batch_size=cfg.batch_size, n_samples=cfg.n_samples, num_samples=cfg.num_samples,
                   do_sample=cfg.do_sample)
    if cfg.task not in ("sft", "mcq"):
        raise UserError(f"--task {cfg.task}: unknown task (use sft or mcq)")
    if cfg.score:
        block, out = score_file(cfg.score, cfg.task)
        print(json.dumps(block, ensure_ascii=False, indent=2))
        print(f"[write] {display_path(out)}")
        return None
    check_backend(cfg.backend)
    check_run_settings(cfg.device, cfg.precision)
    if cfg.tensor_parallel_size < 1:
        raise UserError(f"--tensor_parallel_size {cfg.tensor_parallel_size}: must be at least 1")
    rank = start_processes()
    try:
        with contextlib.ExitStack() as quiet:
            if rank > 0:  # rank 0 speaks for the job; the others only generate their share
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            return _evaluate(cfg, rank)
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch

            torch.distributed.destroy_process_group()


def _evaluate(cfg: EvalConfig, rank: int) -> Path | None:
    every = load_items(cfg.data, cfg.task)
    items, drawn = select_items(every, cfg.num_samples, cfg.seed, cfg.first_questions)
    data = data_record(cfg.data, len(items), len(every), cfg.seed, drawn)
    print(f"[questions] scoring {data_phrase(data)}", flush=True)
    model_paths = choose_models(cfg.base_model, cfg.adapter, _config_default(cfg, "adapter") or DEFAULT_ADAPTER,
                                cfg.adapter2)
    plans = None
    if cfg.backend == "hf":  # decided once per model (vLLM decides its own device and dtype from --precision)
        plans = {name: make_plan(repo_path(path), device=cfg.device, precision=cfg.precision, use_4bit=cfg.use_4bit)
                 for name, path in model_paths.items()}
        for name, plan in plans.items():
            print(f"[{name}] {plan.describe()}", flush=True)
    print(f"[decoding] {describe(cfg.do_sample, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.seed, cfg.n_samples)}"
          f", backend {cfg.backend}", flush=True)

    generated = generate_all(plans or model_paths, [item.user_text for item in items], max_new_tokens=cfg.max_new_tokens,
                             batch_size=cfg.batch_size, do_sample=cfg.do_sample, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=cfg.seed, n_samples=cfg.n_samples, use_4bit=cfg.use_4bit,
                             backend=cfg.backend, tensor_parallel_size=cfg.tensor_parallel_size,
                             precision=cfg.precision, device=cfg.device)
    if rank > 0:
        return None
    predictions, summary = [], {"models": {}, "lengths": {}, "decoding": decoding_record(cfg), "data": data}
    values = {}
    for name, (runs, stats) in generated.items():
        scored = [[score_sample(cfg.task, item, gen) for item, gen in zip(items, run)] for run in runs]
        for j, (run, samples) in enumerate(zip(runs, scored)):
            predictions += [prediction_record(name, cfg.task, item, gen, m, j)
                            for item, gen, m in zip(items, run, samples)]
        gold = [normalize_gold(item.reference) for item in items] if cfg.task == "mcq" else None
        values[name] = per_question(scored, gold)
        summary["models"][name] = model_block(scored, len(items), round(stats.tokens_per_s, 2), values[name],
                                              [item.group for item in items])
        summary["lengths"][name] = mean_lengths([s for run in scored for s in run])
    summary["paired"] = paired_stats(values, cfg.seed, cfg.n_samples)

    run_name = cfg.run_name or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir = repo_path(cfg.output_dir) / run_name
    write_jsonl(out_dir / "predictions.jsonl", predictions)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", render_report(report_header(cfg, summary), summary, predictions,
                                                           cfg.num_examples))
    write_csv(out_dir / "report.csv", summary)
    write_chart(out_dir / "scores.png", summary)
    save_run_info(cfg, out_dir / "run_info.json", plans)
    print()
    print(f"[data] {describe_data(summary['data'])}")
    print(render_table(summary))
    print()
    print(render_stats(summary))
    print()
    print(f"[write] {display_path(out_dir)}/: predictions.jsonl ({len(predictions)} lines), summary.json, "
          f"report.md, report.csv, scores.png, run_info.json")
    return out_dir
