"""An offline, deterministic, tiny stand-in for DeepSeek-R1-Distill-Qwen-1.5B.

It carries the real model's traps (shared FACTS) so that code passing the tests here works on the
real model:
  * byte-level BPE tokenizer (Qwen's pre-tokenizer regex) with R1's exact token strings;
    BOS and EOS are special, the role and think tokens are added but NOT special;
  * the tokenizer prepends BOS itself (``add_bos_token``) AND the chat template writes it: two BOS
    unless ``add_special_tokens=False``;
  * pad == eos;
  * the chat template cuts assistant turns to the text after ``</think>`` and its generation
    prompt ends in ``<｜Assistant｜><think>\\n``;
  * ``Qwen2ForCausalLM`` with grouped-query attention, untied embeddings, bfloat16 safetensors,
    an embedding matrix larger than the tokenizer (like the real 151,936 vs 151,665), and the real
    ``generation_config.json`` sampling defaults.
The model is pre-trained briefly on the sample corpus as PLAIN text (never in the chat/think
format), so it writes Chinese-looking text and fine-tuning has a measurable effect.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .paths import display_path, repo_path

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
USER_TOKEN = "<｜User｜>"
ASSISTANT_TOKEN = "<｜Assistant｜>"
THINK_OPEN_TOKEN = "<think>"
THINK_CLOSE_TOKEN = "</think>"

# The project's own sample corpus (committed sample data), relative to the repository root.
DEFAULT_CORPUS_GLOBS = ("modelscope_r1_data/r1_data_example.jsonl", "r1_generated/0*.jsonl")

# Qwen2's pre-tokenizer split (letters runs, single digits, punctuation runs, newlines, spaces).
QWEN_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# R1's chat template semantics (the real one also handles tools): system text pasted raw after BOS,
# assistant turns cut to the text after </think>, generation prompt ends in <think>\n.
R1_CHAT_TEMPLATE = (
    "{%- set ns = namespace(system_prompt='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system_prompt = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '" + USER_TOKEN + "' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set content = message['content'] -%}"
    "{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1] -%}{%- endif -%}"
    "{{ '" + ASSISTANT_TOKEN + "' + content + '" + EOS_TOKEN + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '" + ASSISTANT_TOKEN + "<think>\\n' }}{%- endif -%}"
)

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
    from .cli import UserError
    from .jsonl_io import read_jsonl

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


def train_tokenizer(documents: Iterable[str], vocab_size: int = 2000):
    """A Qwen-style byte-level BPE tokenizer with R1's token strings, as a transformers fast tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(documents), trainer=trainer)
    # Same relative order as the real ids 151643..151649 (EOS, User, Assistant, BOS, ..., think tags).
    tok.add_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (USER_TOKEN, ASSISTANT_TOKEN)])
    tok.add_tokens([AddedToken(BOS_TOKEN, special=True, normalized=False)])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in (THINK_OPEN_TOKEN, THINK_CLOSE_TOKEN)])
    # add_bos_token=True installs the TemplateProcessing post-processor that prepends BOS (the trap).
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN,
        add_bos_token=True, add_eos_token=False, clean_up_tokenization_spaces=False,
        model_max_length=16384, padding_side="left", chat_template=R1_CHAT_TEMPLATE,
    )


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                     num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 256,
                     vocab_size: int = 2000, pretrain_steps: int = 500, batch_size: int = 8,
                     block_size: int = 128, learning_rate: float = 5e-3,
                     corpus_files: Sequence[str | Path] | None = None, verbose: bool = True) -> TinyModelReport:
    """Build the tiny R1 stand-in into ``out_dir`` (tokenizer, config, bf16 safetensors, generation config).

    Deterministic: the same arguments and corpus give byte-identical weight files (one CPU thread,
    fixed seeds). The same corpus always gives a byte-identical tokenizer, so two tiny models of
    different sizes (e.g. teacher and student for distillation) share it.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    files = [repo_path(f) for f in corpus_files] if corpus_files is not None else default_corpus_files()
    docs = corpus_documents(files)
    tokenizer = train_tokenizer(docs, vocab_size=vocab_size)

    # Plain language modelling: BOS doc EOS, packed; never the chat or think format.
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]

    # Like the real model (151,936 rows for 151,665 tokens): more embedding rows than tokens.
    model_vocab = int(math.ceil(len(tokenizer) / 64) * 64)
    config = Qwen2Config(
        vocab_size=model_vocab, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_sliding_window=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.02, use_cache=True,
    )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same floating-point reduction order on every machine
    try:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        model.train()
        data = torch.tensor(stream, dtype=torch.long)
        block = min(block_size, max(8, len(stream) - 1))
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
        first_loss = final_loss = float("nan")
        for step in range(pretrain_steps):
            # cosine decay to 10% so the last steps settle instead of bouncing
            lr = learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / max(1, pretrain_steps))))
            for group in opt.param_groups:
                group["lr"] = lr
            starts = torch.randint(0, len(stream) - block, (batch_size,), generator=gen)
            batch = torch.stack([data[s:s + block] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step == 0:
                first_loss = loss.item()
            final_loss = loss.item()
            if verbose and (step % 50 == 0 or step == pretrain_steps - 1):
                print(f"[tiny] step {step + 1}/{pretrain_steps} lm_loss {loss.item():.3f}", flush=True)
        model.eval()
        prompt = tokenizer(docs[0][:12], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        sample = tokenizer.decode(out[0], skip_special_tokens=True)
    finally:
        torch.set_num_threads(threads)

    out_dir = repo_path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        do_sample=True, temperature=0.6, top_p=0.95,
    )
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _match_real_tokenizer_config(staging / "tokenizer_config.json")
        n_params = sum(p.numel() for p in model.parameters())
        (staging / "README.md").write_text(_model_card(n_params, pretrain_steps), encoding="utf-8")
        _move_into(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TinyModelReport(out_dir, list(files), len(docs), len(stream), len(tokenizer), n_params,
                           first_loss, final_loss, sample)


def _model_card(n_params: int, pretrain_steps: int) -> str:
    return (
        "# tiny_r1\n\nOffline stand-in for DeepSeek-R1-Distill-Qwen-1.5B built by "
        "`download_model/download_model.py --tiny`: same tokens, chat template and traps, "
        f"{n_params:,} parameters, pre-trained for {pretrain_steps} steps on the sample corpus. "
        "For tests and the demo only; it knows no medicine.\n")


def _match_real_tokenizer_config(path: Path) -> None:
    """Write the fields the real R1 tokenizer_config.json has, so both load through the same code path."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True, add_eos_token=False)
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _move_into(staging: Path, out_dir: Path) -> None:
    """Move the finished files into ``out_dir``, config.json last: a killed build leaves no config.json
    (so ``make demo`` rebuilds) rather than a folder that looks complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        os.chmod(staging / name, 0o644)  # tempfile-made files are 0600
        os.replace(staging / name, out_dir / name)
