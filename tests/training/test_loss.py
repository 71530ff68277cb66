"""The training loss (r1_sft/training/loss.py through training.trainer.SFTTrainer) on the 151,936-row stand-in.

* eval_loss is the mean over every trained token of the validation set, whatever the batching;
* one training step's memory: the chunked loss (default) against the stock full-logits loss,
  measured as the peak RSS of the real training script in a subprocess.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import TrainingArguments

from r1_sft.model.loading import load_model
from r1_sft.training.batching import make_collator
from r1_sft.training.encoding import encode_dataset, load_sft_records
from r1_sft.training.trainer import SFTTrainer

from conftest import GLIBC_MALLOC, REPO, run_script

VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"


@pytest.fixture(scope="module")
def student(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="sdpa")
    tokenizer.padding_side = "right"
    return model, tokenizer


def test_eval_loss_is_the_token_weighted_mean_whatever_the_batching(student, tmp_path):
    model, tokenizer = student
    data = encode_dataset(load_sft_records(VAL), tokenizer, max_length=256).dataset
    # Reference: summed cross-entropy over every trained token, divided by their number.
    ce_sum, tokens = 0.0, 0
    with torch.no_grad():
        for row in data:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor([row["labels"]])
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = labels[0, 1:]
            ce_sum += torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            tokens += int((targets != -100).sum())
    expected = ce_sum / tokens

    results = {}
    for strategy in ("padding_free", "length_grouped"):
        for chunk in (0, 64):  # the stock loss and the chunked one
            args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                     per_device_eval_batch_size=3, prediction_loss_only=True,
                                     remove_unused_columns=False)
            trainer = SFTTrainer(model=model, args=args, loss_chunk_tokens=chunk, eval_dataset=data,
                                 data_collator=make_collator(tokenizer, model, strategy=strategy)[0])
            results[strategy, chunk] = trainer.evaluate()["eval_loss"]
    # 10 examples in batches of 3, 3, 3, 1 of unequal lengths: a batch-weighted mean would differ.
    for key, value in results.items():
        assert value == pytest.approx(expected, rel=1e-4), (key, results, expected)


# ----------------------------------------------------------------------------- memory of one step

def _long_records(path, n: int, chars: int) -> None:
    """n SFT records of about ``chars`` characters of reasoning (about 0.7 tokens per character)."""
    sentence = "患者出现持续头痛伴恶心，需要排查颅内压增高、偏头痛和高血压等原因，并结合体格检查与影像学结果综合判断。"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            reasoning = (sentence * math.ceil(chars / len(sentence)))[:chars]
            fh.write(json.dumps({"input": f"第{i}例：头痛一周怎么办？",
                                 "output": f"<think>\n{reasoning}\n</think>\n\n建议尽快就医，完善头颅影像检查。"},
                                ensure_ascii=False) + "\n")


def _peak_mb(tiny_model_dir, tmp_path, name: str, train_file, *extra: str) -> float:
    # Each run is a fork of the same warm Python (conftest.run_script): the libraries' memory is the same
    # in all three, and the differences below are the steps' own. glibc's default allocator, as users run it.
    proc = run_script("bench/peak_rss.py", REPO / "scripts/train_stf_r1_train_val.py",
                      "--model_path", tiny_model_dir, "--train_file", train_file, "--val_file", train_file,
                      "--output_dir", tmp_path / name, "--max_steps", "1", "--eval_steps", "1", "--save_steps", "1",
                      "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1",
                      "--gradient_accumulation_steps", "1", "--max_length", "1100", "--no_use_4bit",
                      "--lora_target_modules", "q_proj,v_proj", *extra, cwd=tmp_path,
                      env={"OMP_NUM_THREADS": "1", **GLIBC_MALLOC})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kb = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KB")]
    return kb[-1] / 1024


def test_chunked_loss_cuts_the_memory_of_a_training_step_by_over_3x(tiny_model_dir, tmp_path):
    """Batch 2 x ~1,000 tokens on 151,936 output rows: the step's memory (peak RSS minus the peak of the
    same run on one short example) with the chunked loss is under a third of the stock loss's."""
    short, long = tmp_path / "short.jsonl", tmp_path / "long.jsonl"
    _long_records(short, 2, 8)
    _long_records(long, 2, 1350)
    base = _peak_mb(tiny_model_dir, tmp_path, "base", short)
    stock = _peak_mb(tiny_model_dir, tmp_path, "stock", long, "--loss_chunk_tokens", "0")
    chunked = _peak_mb(tiny_model_dir, tmp_path, "chunked", long)
    print(f"peak RSS MB: fixed {base:.0f}, stock {stock:.0f} (+{stock - base:.0f}), "
          f"chunked {chunked:.0f} (+{chunked - base:.0f})")
    assert stock - base > 1000  # the measurement sees the full-vocabulary logits
    assert chunked - base < (stock - base) / 3
