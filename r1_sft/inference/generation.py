"""Generation, defined once: evaluation, test_model, compare, the terminal chat and the server call it.

* Decoding is a ``decoding.Decoding``: the protocol's values, top-k off, greedy when asked. Stop
  tokens (``stop_token_ids``: the end-of-sentence) are the same for the Hugging Face and vLLM paths.
* Seeding: batch ``i`` of a run is seeded with ``seed + i`` right before its ``generate``; a chat
  reply or a server request is a batch of one (the chat's n-th reply is batch n). So with the same
  model, prompt, values and batch size 1, evaluation's first sample, the chat's first reply and a
  server request are the same text (tests/inference/test_generation.py runs the three scripts).
* Batching: prompts are sorted longest first (similar lengths share a batch, an out-of-memory shows
  at once), left-padded (every prompt ends where generation starts) and returned in the caller's
  order. Under torchrun the batches, formed over all prompts, are dealt round-robin to the
  processes and gathered: each keeps its global index, hence its seed, so the outputs equal a
  one-process run exactly in float32.
* Streaming: transformers' ``TextStreamer`` (whole words / CJK characters) feeds ``ReplyParts``:
  reasoning apart from the answer, cut at ``</think>`` even across pieces.
* Stopping on request: a ``StopFlag`` (Ctrl-C in the chat, a client that left the server) ends
  ``generate`` at the next token.
* ``load_for_generation``: ``r1_sft.model.loading.load_model`` with the adapter folded in (unless 4-bit or
  the server keeps it apart to answer base and tuned) and one
  line saying when a QLoRA adapter runs on another base precision than the one it was trained on.

Batch invariance holds only in float32: greedy outputs are then identical whatever the batch size
(pinned on the tiny model, fp32 on CPU). In bf16/fp16 on a GPU the batched kernels round
differently with the batch shape and padding; sampled outputs depend on the batch anyway (one
random stream per batch). ``backend="vllm"`` lives in ``generate_with_vllm``, imported only when asked for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from r1_sft.inference.decoding import Decoding
from r1_sft.r1_format import ThinkSplitter, encode_prompt


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


@dataclass
class StreamedReply:
    text: str              # generated text (special tokens skipped), reasoning and answer
    new_tokens: int
    seconds: float
    stopped_by_user: bool  # ended by its StopFlag before the end-of-sentence (Ctrl-C, a client that left)
    stopped_by_eos: bool   # False when cut by max_new_tokens (or stopped on request)
    token_ids: list[int] = field(default_factory=list)  # the new tokens, EOS included


class StopFlag(StoppingCriteria):
    """Stops ``generate`` at the next token once ``set()`` was called (from a signal handler or another thread)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)


class ReplyParts:
    """Decoded text pieces -> ``on_part("reasoning" | "answer", text)``, reasoning first.

    The cut at ``</think>`` is found even when the tag is split across pieces (``ThinkSplitter``);
    the tag itself is in neither part, and each part's leading blank text is dropped.
    """

    def __init__(self, on_part: Callable[[str, str], None]) -> None:
        self.on_part = on_part
        self._splitter = ThinkSplitter()
        self._started: set[str] = set()

    def feed(self, text: str) -> None:
        self._emit(self._splitter.feed(text))

    def flush(self) -> None:
        self._emit(self._splitter.flush())

    def _emit(self, parts: list[tuple[str, str]]) -> None:
        for kind, text in parts:
            if kind not in self._started:
                text = text.lstrip()
                if not text:
                    continue
                self._started.add(kind)
            self.on_part(kind, text)


class _PieceStreamer(TextStreamer):
    """transformers' TextStreamer (whole words / CJK characters, prompt skipped) -> a callback."""

    def __init__(self, tokenizer, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def stop_token_ids(tokenizer) -> list[int]:
    """The tokens that end an answer: the end-of-sentence (R1's eos, also its pad)."""
    return [tokenizer.eos_token_id]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _generate(model, tokenizer, prompts: Sequence[Sequence[int]], decoding: Decoding, batch_index: int, *,
              streamer=None, stop: StopFlag | None = None) -> tuple[list[list[int]], float]:
    """One ``generate`` call on a left-padded batch seeded for its index: each row's new ids (cut after
    the first stop token, padding dropped) and the seconds it took."""
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    seed = decoding.batch_seed(batch_index)
    if seed is not None:
        torch.manual_seed(seed)  # the global generator (all devices): sampling draws from it
    _sync(device)
    t0 = time.perf_counter()
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=decoding.max_new_tokens,
                         min_new_tokens=decoding.min_new_tokens or None, eos_token_id=stops, pad_token_id=pad_id,
                         streamer=streamer, stopping_criteria=StoppingCriteriaList([stop or StopFlag()]),
                         **decoding.generate_kwargs())
    _sync(device)
    seconds = time.perf_counter() - t0
    rows = []
    for row in out[:, width:].tolist():
        end = next((k + 1 for k, token in enumerate(row) if token in stops), len(row))
        rows.append(row[:end])
    return rows, seconds


@torch.inference_mode()
def stream_reply(model, tokenizer, prompt_ids: Sequence[int], decoding: Decoding,
                 on_part: Callable[[str, str], None] | None = None, *, stop: StopFlag | None = None,
                 reply_index: int = 0) -> StreamedReply:
    """One reply (batch of one, batch index ``reply_index``), its reasoning and answer handed to ``on_part``
    as they come; ``stop.set()`` from any thread ends it at the next token."""
    stop = stop or StopFlag()
    parts = ReplyParts(on_part) if on_part else None
    streamer = _PieceStreamer(tokenizer, parts.feed) if parts else None
    rows, seconds = _generate(model, tokenizer, [prompt_ids], decoding, reply_index, streamer=streamer, stop=stop)
    if parts:
        parts.flush()
    new = rows[0]
    by_eos = bool(new) and new[-1] in stop_token_ids(tokenizer)
    return StreamedReply(tokenizer.decode(new, skip_special_tokens=True), len(new), seconds,
                         stop.requested and not by_eos, by_eos, new)


def process_rank() -> tuple[int, int]:
    """``(rank, world_size)`` of this process under torchrun (an initialised process group), else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.inference_mode()
def generate_with_stats(model, tokenizer, conversations: Sequence[Sequence[dict]], decoding: Decoding | None = None,
                        *, batch_size: int = 8, progress: bool = False, label: str = "", **values
                        ) -> tuple[list[Generation], GenerationStats]:
    """Answer each conversation (chat messages ending with the user turn); also return throughput.

    ``decoding`` or its values as keywords (``max_new_tokens=64, do_sample=False``). Under torchrun
    every process gets the whole list back. ``progress``: one line per batch with outputs done, new
    tokens/s, elapsed time and an ETA (batches go longest prompt first, so the ETA errs on the long side).
    """
    decoding = decoding or Decoding(**values)
    prompts = [encode_prompt(tokenizer, conv) for conv in conversations]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    rank, world = process_rank()
    mine = list(range(rank, len(batches), world))
    total = sum(len(batches[b]) for b in mine)
    stops = stop_token_ids(tokenizer)
    results: dict[int, Generation] = {}
    stats = GenerationStats(0, 0.0)
    started, done = time.perf_counter(), 0
    for number in mine:
        idx = batches[number]
        rows, seconds = _generate(model, tokenizer, [prompts[i] for i in idx], decoding, number)
        stats.seconds += seconds
        for i, row in zip(idx, rows):
            results[i] = Generation(tokenizer.decode(row, skip_special_tokens=True), len(row),
                                    bool(row) and row[-1] in stops)
            stats.new_tokens += len(row)
        done += len(idx)
        if progress:
            elapsed = time.perf_counter() - started
            eta = elapsed / done * (total - done)
            print(f"  {label + ' ' if label else ''}batch {number + 1}/{len(batches)}: {done}/{total} outputs, "
                  f"{stats.tokens_per_s:.1f} new tokens/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}", flush=True)
    if world > 1:
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (results, stats.new_tokens, stats.seconds))
        results = {i: gen for part, _, _ in gathered for i, gen in part.items()}
        # The job's rate: every process's tokens over the slowest process's generation time.
        stats = GenerationStats(sum(t for _, t, _ in gathered), max(s for _, _, s in gathered))
    return [results[i] for i in range(len(prompts))], stats


def generate_responses(model, tokenizer, conversations: Sequence[Sequence[dict]], decoding: Decoding | None = None,
                       *, batch_size: int = 8, **values) -> list[Generation]:
    """Answer each conversation, batched and left-padded; caller's order kept."""
    return generate_with_stats(model, tokenizer, conversations, decoding, batch_size=batch_size, **values)[0]


def load_for_generation(plan, *, label: str = "", merge: bool = True):
    """``(model, tokenizer)`` ready to generate from the run's plan (``r1_sft.model.plan.make_plan``): the
    one loader, an adapter folded into its base (never into 4-bit weights; ``merge=False`` keeps it apart,
    for base and tuned from one model: ``model_variants``), and one line when a QLoRA adapter runs on
    another base precision than the one it was trained on."""
    from r1_sft.model.loading import load_model
    from r1_sft.run_info import adapter_base_note

    use_4bit = plan.use_4bit
    model, tokenizer = load_model(plan)
    head = f"[{label}] " if label else ""
    note = adapter_base_note(plan.folder, use_4bit, plan.dtype)
    if note:
        print(head + note, flush=True)
    if hasattr(model, "merge_and_unload") and not use_4bit and merge:
        # LoRA layers add two small matmuls per adapted layer at every step; folded in, generation
        # runs at the base model's speed. (Never into 4-bit weights: that would requantize them.)
        model = model.merge_and_unload()
        print(f"{head}adapter merged into the base weights in memory", flush=True)
    return model, tokenizer


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# vLLM accepts only these LoRA ranks for max_lora_rank (vllm/config LoRAConfig).
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def generate_with_vllm(model_paths: dict[str, str], conversations: Sequence[Sequence[dict]], decoding: Decoding, *,
                       n_samples: int = 1, tensor_parallel_size: int = 1, precision: str = "auto"
                       ) -> dict[str, tuple[list[list[Generation]], GenerationStats]]:
    """The same prompts through vLLM for each named model folder (base, adapter or merged).

    Returns, per name, ``n_samples`` runs (each one Generation per conversation) and the throughput.
    Models on the same full-weights folder share one engine: the base is the engine itself, an
    adapter goes through vLLM's LoRA support (``LoRARequest``). A merged folder gets its own
    engine, after the first one is released. The engine gets ``max_model_len`` = longest prompt +
    ``max_new_tokens`` (otherwise vLLM reserves KV cache for the config's 131,072 positions), the
    dtype from the project's one precision decision (``r1_sft.model.precision.pick_dtype`` with ``--precision``:
    bf16 at compute capability >= 8.0; on T4/V100 float32 when it fits, else float16) and the seed. Prompts are the same token ids as the Hugging Face path, sampling
    the same values with top-k off (vLLM's default), the same stop tokens. vLLM's seeding is its
    own (one seed for the engine and the request), so its samples differ from the Hugging Face path's.

    Several GPUs: vLLM shards one engine over ``tensor_parallel_size`` GPUs of this machine (its own
    tensor parallelism, ``--tensor_parallel_size``) and batches every prompt itself; it runs as one
    process, never under torchrun. A copy of the model per GPU (data parallelism) is vLLM's server
    option (``vllm serve DIR --data-parallel-size N``), not this offline engine's; neither is run here.
    """
    import gc
    import json

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from r1_sft.cli import UserError
    from r1_sft.model.folders import ADAPTER_CONFIG, load_tokenizer, resolve_model_folder, weights_size
    from r1_sft.model.precision import pick_dtype

    folders = {name: resolve_model_folder(path) for name, path in model_paths.items()}
    engines: dict[str, list[str]] = {}  # full-weights folder -> names served by it
    for name, f in folders.items():
        engines.setdefault(str(f.base_path), []).append(name)
    tokenizer = load_tokenizer(next(iter(folders.values())).model_path)
    prompts = [{"prompt_token_ids": encode_prompt(tokenizer, conv)} for conv in conversations]
    max_model_len = max(len(p["prompt_token_ids"]) for p in prompts) + decoding.max_new_tokens
    weight_bytes = weights_size(next(iter(folders.values())).base_path)
    dtype = str(pick_dtype("cuda", weight_bytes=weight_bytes, precision=precision)).removeprefix("torch.")
    params = SamplingParams(n=n_samples, max_tokens=decoding.max_new_tokens, seed=decoding.seed,
                            temperature=decoding.temperature if decoding.do_sample else 0.0,
                            top_p=decoding.top_p if decoding.do_sample else 1.0,
                            stop_token_ids=stop_token_ids(tokenizer), skip_special_tokens=True)
    results: dict[str, tuple[list[list[Generation]], GenerationStats]] = {}
    lora_id = 0
    for base_path, names in engines.items():
        ranks = []
        for name in names:
            f = folders[name]
            if f.kind == "adapter":
                config = json.loads((f.adapter_path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
                modules = [config.get("target_modules") or [], config.get("modules_to_save") or []]
                modules = [m for group in modules for m in ([group] if isinstance(group, str) else group)]
                if any(m in ("lm_head", "embed_tokens") for m in modules):
                    raise UserError(f"{f.adapter_path}: the adapter trains lm_head/embed_tokens, which vLLM's LoRA "
                                    f"does not load; merge it (python scripts/merge_lora.py) and pass the merged "
                                    f"folder, or use --backend hf")
                ranks.append(int(config.get("r", 16)))
        engine = dict(model=base_path, tokenizer=base_path, dtype=dtype, seed=decoding.seed,
                      max_model_len=max_model_len, trust_remote_code=False)
        if tensor_parallel_size > 1:
            engine["tensor_parallel_size"] = tensor_parallel_size
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
