"""The one place that loads models and tokenizers: base, LoRA adapter, or merged folders.

Every stage calls ``load_model(path)`` / ``load_tokenizer(path)``; device, dtype, 4-bit NF4,
attention implementation and the tokenizer fixes (pad token, padding side) are decided here once.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import UserError
from .paths import REPO_ROOT, display_path, repo_path, tried_path

ADAPTER_CONFIG = "adapter_config.json"
MERGE_INFO = "merge_info.json"  # written by merge_adapter(); marks a folder as a merged adapter
DOWNLOAD_HINT = ("run `python download_model/download_model.py` (real model) or "
                 "`python download_model/download_model.py --tiny` (offline tiny model), or pass the right path")


def local_model_dir(model_id: str) -> Path:
    """Where download_model.py puts a hub model: deepseek-ai/X -> <repo>/model/deepseek_ai/X."""
    org, _, name = model_id.strip("/").rpartition("/")
    return REPO_ROOT / "model" / org.replace("-", "_").replace(".", "_") / name if org else REPO_ROOT / "model" / name


@dataclass(frozen=True)
class ModelFolder:
    kind: str                  # "base" | "adapter" | "merged"
    model_path: Path           # the folder the user named
    base_path: Path            # the folder holding full weights (== model_path unless an adapter)
    adapter_path: Path | None  # the LoRA adapter folder, or None


def resolve_model_folder(path: str | Path) -> ModelFolder:
    """Classify a model folder and find the full-weights folder behind an adapter.

    Raises UserError naming the folder and the fix when it is missing or incomplete.
    """
    folder = repo_path(path).resolve()
    if not folder.is_dir():
        raise UserError(f"{tried_path(folder)}: model folder not found ({DOWNLOAD_HINT})")
    if (folder / ADAPTER_CONFIG).is_file():
        if not any(folder.glob("adapter_model*.safetensors")):
            raise UserError(f"{display_path(folder)}: adapter folder has no adapter_model.safetensors "
                            f"(re-run training; this project loads safetensors only)")
        base = _adapter_base(folder)
        _check_full_weights(base, f"base model of adapter {display_path(folder)}")
        return ModelFolder("adapter", folder, base, folder)
    _check_full_weights(folder, "model folder")
    kind = "merged" if (folder / MERGE_INFO).is_file() else "base"
    return ModelFolder(kind, folder, folder, None)


def _adapter_base(adapter: Path) -> Path:
    config_file = adapter / ADAPTER_CONFIG
    try:
        base_name = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{display_path(config_file)}: unreadable ({exc})") from None
    if not base_name:
        raise UserError(f"{display_path(config_file)}: no base_model_name_or_path (write the base model folder there)")
    candidates = [repo_path(base_name)]
    if base_name.count("/") == 1 and not Path(base_name).is_absolute():  # a hub id
        candidates.append(local_model_dir(base_name))
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise UserError(f"{display_path(config_file)}: base model {base_name!r} not found on disk "
                    f"({DOWNLOAD_HINT}; or edit base_model_name_or_path to the local base folder)")


def _check_full_weights(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise UserError(f"{tried_path(folder)}: {what} not found ({DOWNLOAD_HINT})")
    if not (folder / "config.json").is_file():
        raise UserError(f"{tried_path(folder)}: {what} has no config.json ({DOWNLOAD_HINT})")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{tried_path(folder)}: {what} has no *.safetensors weights (this project loads "
                        f"safetensors only; {DOWNLOAD_HINT})")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_tokenizer(path: str | Path, padding_side: str = "left", trust_remote_code: bool = False):
    """The folder's tokenizer (an adapter's own if it saved one, else its base's), pad token = eos if unset.

    ``padding_side``: "left" for generation (every prompt ends where generation starts), "right" for training.
    """
    from transformers import AutoTokenizer

    folder = resolve_model_folder(path)
    source = folder.adapter_path if folder.adapter_path and _has_tokenizer(folder.adapter_path) else folder.base_path
    if not _has_tokenizer(source):
        raise UserError(f"{display_path(source)}: no tokenizer files ({DOWNLOAD_HINT})")
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class RunsOn:
    """The two loading settings every inference script shares (evaluation, chat, server, test_model)."""

    precision: str = "auto"  # auto (bf16 on compute capability >= 8.0; T4/V100: fp32 when it fits, fp16 R1 distills can emit only '!'; CPU: fp32), bf16, fp16 or fp32: the weights' dtype
    device: str = "auto"  # auto (the GPU when usable, else the CPU), cuda, or cpu (run on the CPU even when a GPU is present)


def pick_device(requested: str = "auto") -> str:
    """The device a stage runs on: ``cuda`` (``cuda:<LOCAL_RANK>`` under torchrun) or ``cpu``.

    ``auto``: the GPU when torch can use it, the CPU when the machine has none; a GPU that the
    machine shows but torch cannot use (driver too old for the torch build, no kernels for its
    compute capability) is a one-line UserError (``hardware.usable_cuda``), never a silent fall
    back to days of fp32 on the CPU. ``cpu``: the CPU, GPU or not (the user's explicit choice).
    ``cuda``: the GPU, or a one-line error saying why not.
    """
    if requested not in DEVICES:
        raise UserError(f"--device {requested!r}: use one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu"
    from .hardware import usable_cuda

    local_rank = os.environ.get("LOCAL_RANK")
    if usable_cuda(int(local_rank) if local_rank is not None else 0):
        return f"cuda:{int(local_rank)}" if local_rank is not None else "cuda"
    if requested == "cuda":
        raise UserError("--device cuda: this machine shows no NVIDIA GPU (no nvidia-smi, no /proc/driver/nvidia); "
                        "use --device auto or --device cpu")
    return "cpu"


@dataclass(frozen=True)
class Precision:
    """The one precision decision: weights, 4-bit compute, Trainer mixed precision and inference agree."""

    train_weights: torch.dtype  # frozen base weights while training, and the 4-bit compute dtype then
    trainer_bf16: bool  # TrainingArguments(bf16=...): bf16 autocast
    trainer_fp16: bool  # TrainingArguments(fp16=...): fp16 autocast with loss scaling, over fp32 LoRA weights
    inference: torch.dtype  # evaluation, chat, serving, vLLM, merging for serving
    reason: str  # one line for logs: which rule applied

    @property
    def name(self) -> str:
        """bf16 / fp16 / fp32: the training mode, as ``--precision`` spells it."""
        return "bf16" if self.trainer_bf16 else "fp16" if self.trainer_fp16 else "fp32"


BF16 = Precision(torch.bfloat16, True, False, torch.bfloat16, "")
FP16 = Precision(torch.float16, False, True, torch.float16, "")
FP32 = Precision(torch.float32, False, False, torch.float32, "")


def check_precision_name(requested: str) -> None:
    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested!r}: use one of {', '.join(PRECISIONS)}")


def decide_precision(device: str | torch.device = "cpu", weight_bytes: int | None = None,
                     requested: str = "auto") -> Precision:
    """``requested`` (``--precision``) when given, else ``auto``: the rule below.

    auto: bf16 only where the GPU has it natively (compute capability >= 8.0: A100, L4, RTX 30/40,
    H100). ``torch.cuda.is_bf16_supported()`` is not asked: by default it counts emulation and says
    True on T4 and V100. On those older GPUs training uses fp16 base weights with fp16 mixed
    precision and loss scaling (peft keeps the LoRA weights in fp32), and inference uses fp32
    weights when they fit in 70% of the card (``weight_bytes``: the bf16 weights' size on disk),
    because LoRA-tuned R1 distills served in fp16 can emit only ``!`` (shared FACTS); a model too
    large for fp32 falls back to fp16 and says so. CPU: fp32 throughout.

    bf16 / fp16 / fp32: that dtype for weights and inference, with the Trainer's autocast of the
    same dtype (none for fp32), on any device: on a CPU, bf16 and fp16 run the GPU's numerics
    (slowly), which is how the suite exercises them. bf16 on a GPU without native bf16 is refused.
    """
    check_precision_name(requested)
    device = torch.device(device)
    capability = None
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        capability = torch.cuda.get_device_capability(index)
    if requested != "auto":
        if requested == "bf16" and capability is not None and capability[0] < 8:
            raise UserError(f"--precision bf16: this GPU (compute capability {capability[0]}.{capability[1]}) has no "
                            f"native bfloat16; use --precision fp16 (or auto)")
        plan = {"bf16": BF16, "fp16": FP16, "fp32": FP32}[requested]
        return dataclasses.replace(plan, reason=f"--precision {requested} on {device.type}")
    if capability is None:
        return dataclasses.replace(FP32, reason="cpu: float32")
    major, minor = capability
    if major >= 8:
        return dataclasses.replace(BF16, reason=f"compute capability {major}.{minor}: bfloat16")
    total = torch.cuda.get_device_properties(index).total_memory
    fits_fp32 = weight_bytes is None or 2 * weight_bytes <= 0.7 * total
    inference = torch.float32 if fits_fp32 else torch.float16
    note = "float32 inference" if fits_fp32 else \
        "float16 inference (float32 weights would not fit; R1 distills may emit only '!' in fp16: try --use_4bit)"
    return Precision(torch.float16, False, True, inference,
                     f"compute capability {major}.{minor} (no native bf16): float16 training with loss scaling, {note}")


def pick_dtype(device: str | torch.device, for_training: bool = False, weight_bytes: int | None = None,
               precision: str = "auto") -> torch.dtype:
    """Weights dtype for loading: from :func:`decide_precision`, for training or for inference."""
    plan = decide_precision(device, weight_bytes, precision)
    return plan.train_weights if for_training else plan.inference


def weights_size(folder: Path) -> int:
    """Bytes of a model folder's safetensors weights."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


HALF_DTYPES = (torch.bfloat16, torch.float16)


def pick_attn_implementation(device: str | torch.device, dtype: torch.dtype | None = None) -> str:
    """``flash_attention_2`` where FlashAttention 2 can run, else PyTorch SDPA.

    FA2 runs only on CUDA GPUs of compute capability >= 8.0 (A100, L4, RTX 30/40, H100: not T4 or
    V100), only on bf16/fp16 tensors, and only with the flash-attn 2 package installed (PyPI has it
    as a source package only). ``dtype`` None (not known yet) counts as not half precision.
    """
    device = torch.device(device)
    if device.type != "cuda" or dtype not in HALF_DTYPES:
        return "sdpa"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index)[0] < 8 or not _flash_attn_2_installed():
        return "sdpa"
    return "flash_attention_2"


def _flash_attn_2_installed() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flash-attn").split(".")[0] == "2"  # flash-attn 3 is another package (flash_attn_interface)
    except PackageNotFoundError:
        return False


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"dtype {dtype!r} not understood (use bfloat16, float16 or float32)")
    return value


def from_pretrained_kwargs(folder: ModelFolder, *, use_4bit: bool, for_training: bool, device: str, dtype=None,
                           attn_implementation: str | None = None, trust_remote_code: bool = False,
                           precision: str = "auto", shard_4bit: bool = False) -> dict:
    """``from_pretrained`` arguments: dtype (and 4-bit compute dtype) from the one precision decision.

    ``shard_4bit``: store the NF4 weights in the compute dtype instead of uint8, so that FSDP can
    shard them (FSDP-QLoRA; the 4-bit values are the same).
    """
    dtype = _as_dtype(dtype) or pick_dtype(device, for_training, weights_size(folder.base_path), precision)
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation or pick_attn_implementation(device, dtype),
                  use_safetensors=True, trust_remote_code=trust_remote_code, device_map={"": device})
    if use_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, **({"bnb_4bit_quant_storage": dtype} if shard_4bit else {}))
    return kwargs


def load_model(path: str | Path, *, use_4bit: bool = False, for_training: bool = False, device=None,
               dtype=None, attn_implementation: str | None = None, trust_remote_code: bool = False,
               precision: str = "auto", shard_4bit: bool = False):
    """Load a base, merged or adapter folder; returns ``(model, tokenizer)``.

    An adapter folder loads its base, then the adapter on top (a PeftModel, trainable only when
    ``for_training``). ``use_4bit``: NF4 with double quantization through bitsandbytes (``shard_4bit``:
    stored in the compute dtype, for FSDP), computing in
    the chosen dtype. ``precision``: ``--precision`` (auto, bf16, fp16, fp32; see
    :func:`decide_precision`); ``dtype`` overrides it. Weights load from safetensors only. The tokenizer is padded left for
    generation, right when ``for_training``; the model is in eval mode unless ``for_training``.
    """
    from transformers import AutoModelForCausalLM

    folder = resolve_model_folder(path)
    device = str(device or pick_device())
    kwargs = from_pretrained_kwargs(folder, use_4bit=use_4bit, for_training=for_training, device=device,
                                    dtype=dtype, attn_implementation=attn_implementation,
                                    trust_remote_code=trust_remote_code, precision=precision, shard_4bit=shard_4bit)
    dtype, attn = kwargs["dtype"], kwargs["attn_implementation"]
    model = AutoModelForCausalLM.from_pretrained(str(folder.base_path), **kwargs)
    if use_4bit and for_training:
        keep_training_4bit_kernel(model)
    if folder.adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder.adapter_path), is_trainable=for_training)
    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and clashes with checkpointing
        model.train()
    else:
        model.eval()
    tokenizer = load_tokenizer(folder.model_path, padding_side="right" if for_training else "left",
                               trust_remote_code=trust_remote_code)
    quant = ", 4-bit NF4" if use_4bit else ""
    what = (f"LoRA adapter {display_path(folder.adapter_path)} on base {display_path(folder.base_path)}"
            if folder.adapter_path else f"{folder.kind} model {display_path(folder.base_path)}")
    print(f"[model] loaded {what} ({device}, {str(dtype).removeprefix('torch.')}{quant}, attn={attn})", flush=True)
    return model, tokenizer


def keep_training_4bit_kernel(model) -> int:
    """Keep a 4-bit model that trains on one bitsandbytes kernel, whatever the CPU.

    bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a ``Linear4bit``'s weights for a faster
    inference kernel the first time the layer runs in eval mode without grad (the Trainer's
    evaluation), and the repacking is permanent: training after the first evaluation then runs
    another kernel with other numerics (a resumed run no longer equals the uninterrupted one) and
    under DDP fails in ``matmul_4bit``. The switch is the module attribute
    ``support_avx512bf16_for_cpu``; turning it off keeps training and evaluation on the training
    kernel. Returns the number of layers switched. (GPUs never take this path.)
    """
    switched = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def merge_adapter(adapter_path: str | Path, out_dir: str | Path, *, dtype=torch.bfloat16) -> Path:
    """Fold a LoRA adapter into its base weights and save a standalone folder (safetensors, bf16 default).

    Merges in full precision on CPU (never into 4-bit weights) and marks the folder with merge_info.json.
    """
    from .jsonl_io import atomic_write_text

    folder = resolve_model_folder(adapter_path)
    if folder.kind != "adapter":
        raise UserError(f"{display_path(folder.model_path)}: not an adapter folder (no {ADAPTER_CONFIG})")
    model, tokenizer = load_model(folder.model_path, device="cpu", dtype=torch.float32)
    merged = model.merge_and_unload()
    merged.to(_as_dtype(dtype))
    out = repo_path(out_dir)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    atomic_write_text(out / MERGE_INFO, json.dumps({"base": str(folder.base_path), "adapter": str(folder.adapter_path),
                                                    "dtype": str(_as_dtype(dtype))}, indent=2) + "\n")
    return out
