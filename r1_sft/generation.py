"""Generation shared by evaluation, chat and the model smoke test.

Prompts come from r1_format (the model's own chat template, ending in ``<think>\\n``), so the
generated text starts inside the think block.

Decoding defaults are the project's one protocol (r1_sft/decoding.py): sampling with DeepSeek's
T=0.6 / top_p=0.95 (top_k off, as in vLLM and DeepSeek's protocol; transformers would otherwise add
its default top_k=50). Greedy is ``do_sample=False``.

Batching: prompts are sorted by length so each batch pads little, left-padded (every prompt ends
where generation starts; position ids follow the attention mask), and results are returned in the
caller's order. Batch invariance holds only in float32: greedy outputs are then identical whatever
the batch size (pinned by a test on the tiny model, fp32 on CPU). In bf16/fp16 on a GPU the
batched kernels round differently with the batch shape and padding, so greedy outputs can change
with the batch size; sampled outputs depend on the batch anyway (one random stream per batch).
``backend="vllm"`` lives in ``generate_with_vllm`` and is imported only when asked for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from .decoding import DO_SAMPLE, TEMPERATURE, TOP_P
from .r1_format import encode_prompt


@dataclass
class Generation:
    text: str             # decoded new tokens; special tokens (EOS, pad) skipped
    new_tokens: int       # generated tokens, EOS included, padding excluded
    stopped_by_eos: bool  # False when cut by max_new_tokens


@dataclass
class GenerationStats:
    new_tokens: int   # generated tokens over all prompts (EOS included, padding excluded)
    seconds: float    # wall time of the generate calls (tokenization and decoding excluded)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


@torch.inference_mode()
def generate_with_stats(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
                        batch_size: int = 8, do_sample: bool = DO_SAMPLE, temperature: float = TEMPERATURE,
                        top_p: float = TOP_P, progress: bool = False, label: str = ""
                        ) -> tuple[list[Generation], GenerationStats]:
    """Answer each conversation (chat messages ending with the user turn); also return throughput.

    ``progress``: one line per batch with outputs done, new tokens/s, elapsed time and an ETA
    (batches go longest prompt first, so the ETA errs on the long side).
    """
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, conv) for conv in conversations]
    # Longest first: similar lengths share a batch (less padding) and an out-of-memory shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    results: list[Generation | None] = [None] * len(prompts)
    stats = GenerationStats(0, 0.0)
    batches = (len(order) + batch_size - 1) // batch_size
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(order), batch_size), 1):
        idx = order[start:start + batch_size]
        chunk = [prompts[i] for i in idx]
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             eos_token_id=eos_id, pad_token_id=pad_id, **sampling)
        _sync(device)
        stats.seconds += time.perf_counter() - t0
        for i, row in zip(idx, out[:, width:].tolist()):
            n = len(row)
            stopped = eos_id in row
            if stopped:
                n = row.index(eos_id) + 1
            results[i] = Generation(tokenizer.decode(row[:n], skip_special_tokens=True), n, stopped)
            stats.new_tokens += n
        if progress:
            done = start + len(idx)
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (len(order) - done)
            print(f"  {label + ' ' if label else ''}batch {number}/{batches}: {done}/{len(order)} outputs, "
                  f"{stats.tokens_per_s:.1f} new tokens/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}", flush=True)
    return results, stats


def generate_responses(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
                       batch_size: int = 8, do_sample: bool = DO_SAMPLE, temperature: float = TEMPERATURE,
                       top_p: float = TOP_P) -> list[Generation]:
    """Answer each conversation, batched and left-padded; caller's order kept."""
    return generate_with_stats(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                               top_p=top_p)[0]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# vLLM accepts only these LoRA ranks for max_lora_rank (vllm/config LoRAConfig).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def generate_with_vllm(model_paths: dict[str, str], conversations: Sequence[Sequence[dict]], *,
                       max_new_tokens: int, do_sample: bool = DO_SAMPLE, temperature: float = TEMPERATURE,
                       top_p: float = TOP_P, seed: int = 0, n_samples: int = 1
                       ) -> dict[str, tuple[list[list[Generation]], GenerationStats]]:
    """The same prompts through vLLM for each named model folder (base, adapter or merged).

    Returns, per name, ``n_samples`` runs (each one Generation per conversation) and the throughput.
    Models on the same full-weights folder share one engine: the base is the engine itself, an
    adapter goes through vLLM's LoRA support (``LoRARequest``). A merged folder gets its own
    engine, after the first one is released. The engine gets ``max_model_len`` = longest prompt +
    ``max_new_tokens`` (otherwise vLLM reserves KV cache for the config's 131,072 positions), the
    dtype from the project's one precision decision (``modeling.pick_dtype``: bf16 where the GPU has
    it, else fp16) and ``seed``. Prompts are the same token ids as the Hugging Face path.
    """
    import gc
    import json

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from . import modeling
    from .cli import UserError

    folders = {name: modeling.resolve_model_folder(path) for name, path in model_paths.items()}
    engines: dict[str, list[str]] = {}  # full-weights folder -> names served by it
    for name, f in folders.items():
        engines.setdefault(str(f.base_path), []).append(name)
    tokenizer = modeling.load_tokenizer(next(iter(folders.values())).model_path)
    prompts = [{"prompt_token_ids": encode_prompt(tokenizer, conv)} for conv in conversations]
    max_model_len = max(len(p["prompt_token_ids"]) for p in prompts) + max_new_tokens
    dtype = str(modeling.pick_dtype("cuda")).removeprefix("torch.")
    params = SamplingParams(n=n_samples, max_tokens=max_new_tokens, seed=seed,
                            temperature=temperature if do_sample else 0.0, top_p=top_p if do_sample else 1.0,
                            top_k=-1, stop_token_ids=[tokenizer.eos_token_id], skip_special_tokens=True)
    results: dict[str, tuple[list[list[Generation]], GenerationStats]] = {}
    lora_id = 0
    for base_path, names in engines.items():
        ranks = []
        for name in names:
            f = folders[name]
            if f.kind == "adapter":
                config = json.loads((f.adapter_path / modeling.ADAPTER_CONFIG).read_text(encoding="utf-8"))
                modules = [config.get("target_modules") or [], config.get("modules_to_save") or []]
                modules = [m for group in modules for m in ([group] if isinstance(group, str) else group)]
                if any(m in ("lm_head", "embed_tokens") for m in modules):
                    raise UserError(f"{f.adapter_path}: the adapter trains lm_head/embed_tokens, which vLLM's LoRA "
                                    f"does not load; merge it (python scripts/merge_lora.py) and pass the merged "
                                    f"folder, or use --backend hf")
                ranks.append(int(config.get("r", 16)))
        engine = dict(model=base_path, tokenizer=base_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                      trust_remote_code=False)
        if ranks:
            engine.update(enable_lora=True, max_loras=len(ranks),
                          max_lora_rank=next((r for r in _VLLM_LORA_RANKS if r >= max(ranks)), max(ranks)))
        llm = LLM(**engine)
        for name in names:
            f = folders[name]
            lora = None
            if f.kind == "adapter":
                lora_id += 1
                lora = LoRARequest(name, lora_id, str(f.adapter_path))
            t0 = time.perf_counter()
            outputs = llm.generate(prompts, params, lora_request=lora)
            seconds = time.perf_counter() - t0
            runs = [[Generation(o.outputs[j].text, len(o.outputs[j].token_ids), o.outputs[j].finish_reason == "stop")
                     for o in outputs] for j in range(n_samples)]
            results[name] = (runs, GenerationStats(sum(g.new_tokens for run in runs for g in run), seconds))
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return results
