"""Generation shared by evaluation, chat and the model smoke test.

Prompts come from r1_format (the model's own chat template, ending in ``<think>\\n``), so the
generated text starts inside the think block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .r1_format import encode_prompt

# DeepSeek's advice for R1 models when sampling (see shared FACTS).
R1_TEMPERATURE = 0.6
R1_TOP_P = 0.95


@dataclass
class Generation:
    text: str             # decoded new tokens; special tokens (EOS, pad) skipped
    new_tokens: int       # generated tokens, EOS included, padding excluded
    stopped_by_eos: bool  # False when cut by max_new_tokens


@torch.inference_mode()
def generate_responses(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
                       batch_size: int = 8, do_sample: bool = False, temperature: float = R1_TEMPERATURE,
                       top_p: float = R1_TOP_P) -> list[Generation]:
    """Answer each conversation (a list of chat messages ending with the user turn), batched.

    Left padding (so every prompt ends where generation starts); greedy unless do_sample.
    """
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, conv) for conv in conversations]
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_id, pad_token_id=pad_id, **sampling)
        for row in out[:, width:].tolist():
            n = len(row)
            stopped = eos_id in row
            if stopped:
                n = row.index(eos_id) + 1
            results.append(Generation(tokenizer.decode(row[:n], skip_special_tokens=True), n, stopped))
    return results
