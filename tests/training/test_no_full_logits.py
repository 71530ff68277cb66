"""The default loss never allocates a [batch, seq, vocab] logits tensor, forward or backward.

Every tensor torch creates during one training step's loss and backward is seen through a dispatch mode
(each new storage, not a view, and not a guess from peak memory); the largest must be a chunk of logits (chunk x vocab),
not the batch's. The stock loss, measured the same way, does allocate them: the test can fail.
The same code runs under FSDP2 (tests/training/test_fsdp.py), where the head is unsharded around it.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from r1_sft.model.loading import load_model
from r1_sft.training.loss import model_loss

BATCH, SEQ, CHUNK = 2, 256, 32


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # new memory only: a view or an expand (e.g. of lm_head's weight) allocates nothing
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.numel = max(self.numel, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(tiny_model_dir, device="cpu", dtype="float32", attention="sdpa")
    return get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))


@pytest.mark.parametrize("chunk", [CHUNK, 0], ids=["default", "stock"])
def test_no_batch_by_vocab_logits(lora_model, chunk):
    vocab = lora_model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, 1000, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    seen = LargestTensor()
    with seen:
        if chunk:
            loss = model_loss(lora_model, batch, chunk_tokens=chunk, head_model=lora_model.get_base_model()).loss
        else:
            loss = lora_model(**batch).loss
        loss.backward()
    full = BATCH * SEQ * vocab
    if chunk:
        assert seen.numel <= CHUNK * vocab < full / 10, (seen.numel, full)
    else:
        assert seen.numel >= BATCH * (SEQ - 1) * vocab  # the stock loss: full logits (and their gradient)
