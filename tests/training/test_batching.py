"""Batching: padding-free and length-grouped batches compute exactly what one-at-a-time examples do.

Proved on the tiny R1 stand-in for the attention implementations that run on CPU (sdpa, eager);
FlashAttention needs a GPU and is chosen only for its own varlen kernels.
"""
from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

from r1_sft.model.loading import load_model
from r1_sft.r1_format import encode_example
from r1_sft.training.batching import (
    LENGTH_GROUPED,
    PADDING_FREE,
    PaddingFreeCollator,
    RightPaddingCollator,
    TokenStatsCallback,
    batch_token_counts,
    batching_strategy,
    make_collator,
)

# Lengths differ a lot on purpose: padding, and cross-example attention, would show.
RECORDS = [
    ("高血压患者平时要注意什么？", "<think>\n高血压的日常管理。\n</think>\n\n低盐饮食，规律服药。"),
    ("糖尿病患者平时要注意什么？", "<think>\n" + "糖尿病需要控制血糖，注意饮食和运动。" * 6
     + "\n</think>\n\n控制饮食，适量运动，按医嘱用药并监测血糖。"),
    ("感冒了怎么办？", "<think>\n普通感冒。\n</think>\n\n多休息。"),
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, for_training=True, attention="sdpa")
    return model, tokenizer


@pytest.fixture(scope="module")
def examples(tiny):
    _, tokenizer = tiny
    encoded = [encode_example(tokenizer, q, out) for q, out in RECORDS]
    assert len({len(e["input_ids"]) for e in encoded}) == 3
    # The training dataset carries a "length" column; the collators must not pass it to the model.
    return [{**e, "length": len(e["input_ids"])} for e in encoded]


def one_at_a_time(model, examples):
    """Logits of each example alone (no padding, no neighbours) and the token-weighted mean loss."""
    logits, loss_sum, n_trained = [], 0.0, 0
    for e in examples:
        out = model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]), use_cache=False)
        n = sum(1 for label in e["labels"][1:] if label != -100)
        logits.append(out.logits[0])
        loss_sum += out.loss.item() * n
        n_trained += n
    return logits, loss_sum / n_trained


@pytest.fixture(params=["sdpa", "eager"])
def model_with_cache_default(request, tiny):
    """The tiny model on one attention implementation, with use_cache=True as real checkpoints ship."""
    model, _ = tiny
    model.set_attn_implementation(request.param)
    model.config.use_cache = True
    model.eval()  # dropout off; the masks are the same in train mode
    yield model
    model.config.use_cache = False
    model.set_attn_implementation("sdpa")


@torch.no_grad()
def test_padding_free_batch_equals_examples_one_at_a_time(model_with_cache_default, examples):
    model = model_with_cache_default
    batch = PaddingFreeCollator()(examples)
    assert set(batch) == {"input_ids", "labels", "position_ids", "use_cache"}
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))  # no padding at all
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]

    out = model(**batch)
    single_logits, single_loss = one_at_a_time(model, examples)
    torch.testing.assert_close(out.logits[0], torch.cat(single_logits), atol=1e-4, rtol=1e-4)
    assert out.loss.item() == pytest.approx(single_loss, rel=1e-5)


@torch.no_grad()
def test_plain_flattening_with_a_kv_cache_leaks_across_examples(model_with_cache_default, examples):
    """The trap PaddingFreeCollator guards: with a cache, transformers 5 skips packed-sequence masking."""
    model = model_with_cache_default
    batch = DataCollatorWithFlattening()([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    out = model(**batch)
    single_logits, _ = one_at_a_time(model, examples)
    first = len(examples[0]["input_ids"])
    torch.testing.assert_close(out.logits[0, :first], single_logits[0], atol=1e-4, rtol=1e-4)
    assert (out.logits[0, first:] - torch.cat(single_logits[1:])).abs().max() > 1e-2


@torch.no_grad()
def test_right_padded_batch_equals_examples_one_at_a_time(model_with_cache_default, tiny, examples):
    model, tokenizer = model_with_cache_default, tiny[1]
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap: padding looks like EOS
    batch = RightPaddingCollator(tokenizer, padding=True, return_tensors="pt")(examples)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    width = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == (3, width)

    out = model(**batch)
    single_logits, single_loss = one_at_a_time(model, examples)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        # -100 exactly on the padding; the real EOS keeps its label although it equals the pad id.
        assert batch["labels"][row].tolist() == e["labels"] + [-100] * (width - n)
        assert batch["labels"][row, n - 1].item() == tokenizer.eos_token_id
        torch.testing.assert_close(out.logits[row, :n], single_logits[row], atol=1e-4, rtol=1e-4)
    assert out.loss.item() == pytest.approx(single_loss, rel=1e-5)


def test_strategy_follows_the_attention_implementation(tiny):
    model, tokenizer = tiny
    assert batching_strategy("flash_attention_2") == PADDING_FREE
    assert batching_strategy("flash_attention_3") == PADDING_FREE
    assert batching_strategy("kernels-community/flash-attn2") == PADDING_FREE
    for name in ("sdpa", "eager", "flex_attention", None):
        assert batching_strategy(name) == LENGTH_GROUPED
    collator, sampling = make_collator(tokenizer, model)  # the tiny model runs sdpa on CPU
    assert isinstance(collator, RightPaddingCollator) and sampling == "group_by_length"
    collator, sampling = make_collator(tokenizer, "flash_attention_2")
    assert isinstance(collator, PaddingFreeCollator) and sampling == "random"
    collator, _ = make_collator(tokenizer, model, strategy=PADDING_FREE)
    assert isinstance(collator, PaddingFreeCollator)
    with pytest.raises(ValueError):
        make_collator(tokenizer, model, strategy="pack_everything")


def test_left_padding_is_refused(tiny_model_dir, examples):
    from r1_sft.model.folders import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="left")
    with pytest.raises(ValueError, match="right"):
        RightPaddingCollator(tokenizer, padding=True)(examples)


def test_batch_token_counts():
    ids = torch.zeros(2, 5, dtype=torch.long)
    assert batch_token_counts(ids, torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])) == (7, 10)
    assert batch_token_counts(ids[:1], None) == (5, 5)


@pytest.mark.parametrize("strategy", [LENGTH_GROUPED, PADDING_FREE])
def test_token_stats_land_in_the_trainer_logs(tiny, examples, strategy, tmp_path):
    """Per log: real tokens/s and the padding fraction of exactly the batches trained (eval not counted)."""
    model, tokenizer = tiny
    train = [examples[0], examples[1], examples[2], examples[0]]
    collator, _ = make_collator(tokenizer, model, strategy=strategy)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, per_device_eval_batch_size=2,
                             max_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=1,
                             save_strategy="no", train_sampling_strategy="sequential", learning_rate=1e-4,
                             remove_unused_columns=False, report_to="none", use_cpu=True)
    model.train()
    trainer = Trainer(model=model, args=args, data_collator=collator, train_dataset=train, eval_dataset=train,
                      callbacks=[TokenStatsCallback()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]

    def expected_padding(batch):
        lengths = [len(e["input_ids"]) for e in batch]
        return 0.0 if strategy == PADDING_FREE else round(1 - sum(lengths) / (len(lengths) * max(lengths)), 4)

    assert logs[0]["padding_fraction"] == expected_padding(train[:2])
    assert logs[1]["padding_fraction"] == expected_padding(train[2:])
    if strategy == LENGTH_GROUPED:
        assert logs[0]["padding_fraction"] > 0.2  # the fixture's first two examples differ a lot
    assert all(h["tokens_per_s"] > 0 for h in logs)
    summary = trainer.state.log_history[-1]
    assert summary["train_real_tokens"] == sum(len(e["input_ids"]) for e in train)  # eval passes not counted
    assert summary["train_tokens_per_s"] > 0
