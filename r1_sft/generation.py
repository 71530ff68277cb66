"""Generation shared by evaluation, chat and the model smoke test.

Prompts come from r1_format (the model's own chat template, ending in ``<think>\\n``), so the
generated text starts inside the think block.

Batching: prompts are sorted by length so each batch pads little, left-padded (every prompt ends
where generation starts; position ids follow the attention mask), and results are returned in the
caller's order. Greedy decoding is the default, so a result does not depend on the batch size
(pinned by a test on the tiny model in float32). ``backend="vllm"`` lives in ``generate_with_vllm``
and is imported only when asked for.
"""
from __future__ import annotations

import time
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


@torch.inference_mode()
def generate_with_stats(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
                        batch_size: int = 8, do_sample: bool = False, temperature: float = R1_TEMPERATURE,
                        top_p: float = R1_TOP_P, progress: bool = False
                        ) -> tuple[list[Generation], GenerationStats]:
    """Answer each conversation (chat messages ending with the user turn); also return throughput."""
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, conv) for conv in conversations]
    # Longest first: similar lengths share a batch (less padding) and an out-of-memory shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else \
        dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    results: list[Generation | None] = [None] * len(prompts)
    stats = GenerationStats(0, 0.0)
    for start in range(0, len(order), batch_size):
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
            done = min(start + batch_size, len(order))
            print(f"  generated {done}/{len(order)} ({stats.tokens_per_s:.1f} new tokens/s)", flush=True)
    return results, stats


def generate_responses(model, tokenizer, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int,
                       batch_size: int = 8, do_sample: bool = False, temperature: float = R1_TEMPERATURE,
                       top_p: float = R1_TOP_P) -> list[Generation]:
    """Answer each conversation, batched and left-padded; greedy unless do_sample. Caller's order kept."""
    return generate_with_stats(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, do_sample=do_sample, temperature=temperature,
                               top_p=top_p)[0]


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def generate_with_vllm(model_paths: dict[str, str], conversations: Sequence[Sequence[dict]], *,
                       max_new_tokens: int, do_sample: bool = False, temperature: float = R1_TEMPERATURE,
                       top_p: float = R1_TOP_P) -> dict[str, tuple[list[Generation], GenerationStats]]:
    """The same prompts through vLLM for each named model folder (base, adapter or merged).

    Adapters on the same base share one engine (base = no LoRA request), so the base is loaded once.
    Prompts are the same token ids as the Hugging Face path (``encode_prompt``).
    """
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from .cli import UserError
    from .modeling import load_tokenizer, resolve_model_folder

    folders = {name: resolve_model_folder(path) for name, path in model_paths.items()}
    bases = {str(f.base_path if f.kind == "adapter" else f.model_path) for f in folders.values()}
    if len(bases) != 1:
        raise UserError("--backend vllm compares models on one base: pass a base and an adapter trained on it "
                        "(or merge nothing and use the default backend)")
    base_path = bases.pop()
    lora_ranks = []
    for f in folders.values():
        if f.kind == "adapter":
            import json
            lora_ranks.append(json.loads((f.adapter_path / "adapter_config.json").read_text())["r"])
    tokenizer = load_tokenizer(base_path)
    llm = LLM(model=base_path, tokenizer=base_path, enable_lora=bool(lora_ranks),
              max_lora_rank=max(lora_ranks or [16]), trust_remote_code=False, seed=0)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                            top_p=top_p if do_sample else 1.0, stop_token_ids=[tokenizer.eos_token_id],
                            skip_special_tokens=True)
    prompts = [{"prompt_token_ids": encode_prompt(tokenizer, conv)} for conv in conversations]
    results = {}
    for lora_id, (name, folder) in enumerate(folders.items(), 1):
        lora = LoRARequest(name, lora_id, str(folder.adapter_path)) if folder.kind == "adapter" else None
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=lora)
        seconds = time.perf_counter() - t0
        gens = [Generation(o.outputs[0].text, len(o.outputs[0].token_ids), o.outputs[0].finish_reason == "stop")
                for o in outputs]
        results[name] = (gens, GenerationStats(sum(g.new_tokens for g in gens), seconds))
    return results
