"""Benchmark: real (non-pad) training tokens/s and padding, the original batching against ours.

One run, one model setup (the training script's: QLoRA on all linear layers, gradient
checkpointing), the same examples for every way of batching, one full epoch each:

* ``original``: random batches padded to the longest example, loss on every token (the seed's way);
* ``ours``: what the training script does with this model's attention implementation
  (``r1_sft.training.batching.make_collator``: length-grouped right padding on SDPA/eager,
  padding-free on FlashAttention);
* ``padding_free``: flattened batches forced on this attention implementation, for comparison.

Two data sets: the sample SFT data (encoded exactly as in training), and synthetic examples whose
lengths spread evenly over SYNTHETIC_MIN_TOKENS..SYNTHETIC_MAX_TOKENS like real R1 answers
(content does not change the compute). Throughput is measured by ``r1_sft.training.batching.TokenStatsCallback``,
the same counter the training logs use. CPU figures on a tiny model are not GPU figures: they
show the padding waste and the relative speed, not the real model's tokens/s.

Reads  MODEL_PATH (default the tiny model that `make demo` builds), TRAIN_FILE.
Writes bench/results/train_throughput.json.

    python bench/train_throughput.py
    python bench/train_throughput.py --model_path model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B --synthetic_examples 2000
"""
from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import cli_main, parse_config  # noqa: E402
from r1_sft.jsonl_io import atomic_write_text  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import run_info  # noqa: E402

# The LoRA of the training scripts' default recipe (scripts/train_stf_r1_train_val.py, TrainConfig).
LORA = dict(lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules="all-linear")


@dataclass
class Config:
    model_path: str = "model/tiny_r1"  # base model folder (the tiny offline model by default)
    train_file: str = "dataset/sft_r1_train.jsonl"  # sample SFT records {"input", "output"}
    max_length: int = 2048  # longest example kept, in tokens (as in training)
    synthetic_examples: int = 256  # synthetic examples (0 = sample data only)
    synthetic_min_tokens: int = 100  # shortest synthetic example, tokens
    synthetic_max_tokens: int = 1500  # longest synthetic example, tokens (lengths uniform in between)
    length_scale: float = 0.5  # multiply synthetic lengths (0.5 keeps a CPU run to minutes)
    per_device_train_batch_size: int = 4  # examples per micro-batch (as in training)
    use_4bit: bool = False  # 4-bit base weights; off on CPU: bitsandbytes' CPU 4-bit kernels cost far more than batching
    gradient_checkpointing: bool = True  # as the training default
    torch_threads: int = 1  # CPU threads; 1 keeps figures stable on a busy machine (0 = torch's default)
    repeats: int = 2  # epochs per way of batching, interleaved; the best is kept (the machine is shared)
    seed: int = 0  # LoRA init, data order, synthetic lengths
    output: str = "bench/results/train_throughput.json"  # where the figures go


def original_collator(pad_token_id: int):
    """The seed's batching: pad to the longest, labels = every token (prompt and padding included)."""
    import torch

    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, f in enumerate(features):
            ids[row, :len(f["input_ids"])] = torch.tensor(f["input_ids"])
            mask[row, :len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}

    return collate


def synthetic_examples(cfg: Config, vocab_size: int, eos_id: int) -> list[dict]:
    """Random token ids with R1-like lengths: a short prompt (labels -100), then the trained part and EOS."""
    rng = random.Random(cfg.seed)
    lo, hi = (max(8, round(n * cfg.length_scale)) for n in (cfg.synthetic_min_tokens, cfg.synthetic_max_tokens))
    examples = []
    for _ in range(cfg.synthetic_examples):
        length = rng.randint(lo, hi)
        prompt = max(4, length // 8)
        ids = [rng.randrange(10, vocab_size) for _ in range(length - 1)] + [eos_id]
        examples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:], "length": length})
    return examples


def run_arm(cfg: Config, name: str, examples: list[dict], strategy: str | None) -> dict:
    """One epoch over ``examples`` with a fresh LoRA model; throughput from TokenStatsCallback."""
    from transformers import Trainer, TrainingArguments, set_seed

    from r1_sft.model.lora import setup_lora_model
    from r1_sft.model.plan import make_plan
    from r1_sft.training.batching import TokenStatsCallback, attn_implementation_of, make_collator

    set_seed(cfg.seed)
    plan = make_plan(cfg.model_path, use_4bit=cfg.use_4bit, for_training=True)
    model, tokenizer = setup_lora_model(SimpleNamespace(gradient_checkpointing=cfg.gradient_checkpointing, **LORA), plan)
    if strategy == "original":
        collator, sampling = original_collator(tokenizer.pad_token_id), "random"
    else:
        collator, sampling = make_collator(tokenizer, model, strategy=strategy)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=cfg.per_device_train_batch_size,
                                 num_train_epochs=1, logging_steps=10, save_strategy="no", report_to="none",
                                 train_sampling_strategy=sampling, remove_unused_columns=False, seed=cfg.seed,
                                 learning_rate=1e-4, disable_tqdm=True, **plan.precision.trainer_flags)
        trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=examples,
                          callbacks=[TokenStatsCallback()])
        trainer.train()
    summary = trainer.state.log_history[-1]
    result = {"arm": name, "collator": type(collator).__name__ if strategy != "original" else "pad-to-longest",
              "sampling": sampling, "attn_implementation": attn_implementation_of(model),
              "real_tokens": summary["train_real_tokens"],
              "padding_fraction": summary["train_padding_fraction"],
              "tokens_per_s": summary["train_tokens_per_s"]}
    print(f"[bench] {name:>12}: {result['tokens_per_s']:>9.1f} real tokens/s, "
          f"padding {100 * result['padding_fraction']:.1f}% ({result['collator']}, sampling={sampling})", flush=True)
    return result


def bench_dataset(cfg: Config, label: str, examples: list[dict]) -> dict:
    from r1_sft.training.batching import PADDING_FREE

    lengths = sorted(e["length"] for e in examples)
    print(f"[bench] {label}: {len(examples)} examples, {sum(lengths)} tokens, "
          f"length {lengths[0]}..{lengths[-1]} (median {lengths[len(lengths) // 2]})", flush=True)
    ways = [("original", "original"), ("ours", None), ("padding_free", PADDING_FREE)]
    runs = {name: [] for name, _ in ways}
    for _ in range(cfg.repeats):  # interleaved, so a burst of load elsewhere hits every way alike
        for name, strategy in ways:
            runs[name].append(run_arm(cfg, name, examples, strategy))
    arms = []
    for name, _ in ways:
        best = max(runs[name], key=lambda r: r["tokens_per_s"])
        arms.append({**best, "tokens_per_s_runs": [r["tokens_per_s"] for r in runs[name]]})
    base = arms[0]["tokens_per_s"]
    for arm in arms:
        arm["speedup_vs_original"] = round(arm["tokens_per_s"] / base, 2)
    ours = arms[1]
    print(f"[bench] {label}: ours is {ours['speedup_vs_original']}x the original's real tokens/s, "
          f"padding {100 * arms[0]['padding_fraction']:.1f}% -> {100 * ours['padding_fraction']:.1f}%", flush=True)
    return {"examples": len(examples), "tokens": sum(lengths), "min_length": lengths[0],
            "median_length": lengths[len(lengths) // 2], "max_length": lengths[-1], "arms": arms}


@cli_main
def main(cfg: Config):
    import torch

    from r1_sft.model.folders import load_tokenizer
    from r1_sft.training.encoding import load_split

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    tokenizer = load_tokenizer(cfg.model_path, padding_side="right")
    sample = load_split(cfg.train_file, tokenizer, SimpleNamespace(max_length=cfg.max_length, truncate_long=False), "train").dataset
    print(f"[read] {display_path(repo_path(cfg.train_file))}: {len(sample)} examples kept "
          f"(max_length={cfg.max_length})", flush=True)
    datasets = {"sample_sft_data": [dict(row) for row in sample]}
    if cfg.synthetic_examples > 0:
        label = (f"synthetic_{cfg.synthetic_min_tokens}_{cfg.synthetic_max_tokens}"
                 f"_x{cfg.length_scale:g}")
        datasets[label] = synthetic_examples(cfg, len(tokenizer), tokenizer.eos_token_id)

    # Warm-up (not recorded): the first training run in a process pays one-time costs.
    run_arm(cfg, "warm-up", datasets["sample_sft_data"][:2 * cfg.per_device_train_batch_size], None)
    results = {label: bench_dataset(cfg, label, examples) for label, examples in datasets.items()}
    record = {"note": "CPU figures on a small model: relative speed and padding, not the real model's tokens/s"
              if not torch.cuda.is_available() else "GPU figures",
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch_threads": torch.get_num_threads(), "results": results, "run": run_info(cfg)}
    out = repo_path(cfg.output)
    atomic_write_text(out, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    print(f"[write] {display_path(out)}", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
