"""The one place that loads models and tokenizers: base, LoRA adapter, or merged folders.

Every stage calls ``load_model(path)`` / ``load_tokenizer(path)``; device, dtype, 4-bit NF4,
attention implementation and the tokenizer fixes (pad token, padding side) are decided here once.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import UserError
from .paths import REPO_ROOT, display_path, repo_path

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
        raise UserError(f"{display_path(folder)}: model folder not found ({DOWNLOAD_HINT})")
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
        raise UserError(f"{display_path(folder)}: {what} not found ({DOWNLOAD_HINT})")
    if not (folder / "config.json").is_file():
        raise UserError(f"{display_path(folder)}: {what} has no config.json ({DOWNLOAD_HINT})")
    if not any(folder.glob("*.safetensors")):
        raise UserError(f"{display_path(folder)}: {what} has no *.safetensors weights (this project loads "
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


def pick_device() -> str:
    """``cuda:<LOCAL_RANK>`` under torchrun, ``cuda`` on a GPU machine, else ``cpu``."""
    if torch.cuda.is_available():
        local_rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(local_rank)}" if local_rank is not None else "cuda"
    return "cpu"


def pick_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on GPUs that support it natively, else float16 on GPU; float32 on CPU.

    bf16 matters: LoRA-trained R1 distills served in fp16 can emit only ``!`` (shared FACTS).
    """
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return torch.float32


def pick_attn_implementation(device: str | torch.device) -> str:
    """flash_attention_2 on CUDA when the flash_attn package is installed, else PyTorch SDPA."""
    if torch.device(device).type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"dtype {dtype!r} not understood (use bfloat16, float16 or float32)")
    return value


def load_model(path: str | Path, *, use_4bit: bool = False, for_training: bool = False, device=None,
               dtype=None, attn_implementation: str | None = None, trust_remote_code: bool = False):
    """Load a base, merged or adapter folder; returns ``(model, tokenizer)``.

    An adapter folder loads its base, then the adapter on top (a PeftModel, trainable only when
    ``for_training``). ``use_4bit``: NF4 with double quantization through bitsandbytes, computing in
    the chosen dtype. Weights load from safetensors only. The tokenizer is padded left for
    generation, right when ``for_training``; the model is in eval mode unless ``for_training``.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = resolve_model_folder(path)
    device = str(device or pick_device())
    dtype = _as_dtype(dtype) or pick_dtype(device)
    attn = attn_implementation or pick_attn_implementation(device)
    kwargs = dict(dtype=dtype, attn_implementation=attn, use_safetensors=True,
                  trust_remote_code=trust_remote_code, device_map={"": device})
    if use_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
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
    adapter = f" + adapter {display_path(folder.adapter_path)}" if folder.adapter_path else ""
    print(f"[model] loaded {folder.kind} {display_path(folder.base_path)}{adapter} "
          f"({device}, {str(dtype).removeprefix('torch.')}{quant}, attn={attn})", flush=True)
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
