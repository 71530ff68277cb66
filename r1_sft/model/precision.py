"""Where a run computes and in which precision: ``--device`` and ``--precision`` decided once per run
(``r1_sft.model.plan`` calls these), and the attention implementation that fits them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass

import torch

from r1_sft.cli import UserError

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
    from r1_sft.model.hardware import usable_cuda

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
    def trainer_flags(self) -> dict[str, bool]:
        """TrainingArguments' mixed-precision switches (DeepSpeed's "auto" fills from the same)."""
        return {"bf16": self.trainer_bf16, "fp16": self.trainer_fp16}

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


def check_run_settings(device: str, precision: str) -> None:
    """``--device`` and ``--precision`` are names this project knows (the plan decides what they mean here)."""
    if device not in DEVICES:
        raise UserError(f"--device {device!r}: use one of {', '.join(DEVICES)}")
    check_precision_name(precision)


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
