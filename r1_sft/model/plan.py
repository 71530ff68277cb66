"""A run's decisions, made once: which folder, on which device, in which precision, 4-bit or not,
which attention, which engine over how many processes.

Training, distillation, GRPO, evaluation, chat and serving each build one :class:`RunPlan` right
after their checks (:func:`make_plan`), print it, save it in ``run_info.json`` and pass it down;
nothing later asks again. (Hugging Face's ``TrainingArguments`` does the same for its device.)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from r1_sft.cli import UserError
from r1_sft.model.folders import ModelFolder, resolve_model_folder, weights_size
from r1_sft.model.precision import Precision, decide_precision, pick_attn_implementation, pick_device
from r1_sft.paths import display_path

ONE_PROCESS = "one process"


@dataclass(frozen=True)
class RunPlan:
    folder: ModelFolder     # the folder the user named, resolved: base / adapter (and its base) / merged
    device: str             # "cpu", "cuda" or "cuda:<LOCAL_RANK>"
    precision: Precision    # the one precision decision (weights, autocast, inference dtype, and why)
    for_training: bool      # training weights (precision.train_weights) or inference weights
    use_4bit: bool          # the base in 4-bit NF4
    attention: str          # "sdpa" or "flash_attention_2"
    engine: str = ONE_PROCESS  # one process, DDP, FSDP2 or DeepSpeed ZeRO-N
    world_size: int = 1
    quantization: str = ""  # why 4-bit or 16-bit, when it was decided (training's --use_4bit auto)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the weights load in (the 4-bit compute dtype with ``use_4bit``)."""
        return self.precision.train_weights if self.for_training else self.precision.inference

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def describe(self) -> str:
        """The plan as one start-up line."""
        quant = ", 4-bit NF4" if self.use_4bit else ""
        engine = f", {self.engine} x {self.world_size}" if self.world_size > 1 or self.engine != ONE_PROCESS else ""
        what = (f"adapter {display_path(self.folder.adapter_path)} on {display_path(self.folder.base_path)}"
                if self.folder.adapter_path else f"{self.folder.kind} {display_path(self.folder.base_path)}")
        why = f"; {self.quantization}" if self.quantization else ""
        return (f"[plan] {what}: {self.device}, {self.dtype_name}{quant}, attn={self.attention}{engine} "
                f"({self.precision.reason}{why})")

    def record(self) -> dict:
        """The plan as run_info.json keeps it."""
        return {
            "model": {"kind": self.folder.kind, "path": display_path(self.folder.model_path),
                      "base": display_path(self.folder.base_path),
                      "adapter": display_path(self.folder.adapter_path) if self.folder.adapter_path else None},
            "device": self.device, "precision": self.precision.name, "dtype": self.dtype_name,
            "use_4bit": self.use_4bit, "attention": self.attention, "engine": self.engine,
            "world_size": self.world_size, "reason": self.precision.reason,
            "quantization": self.quantization or None,
        }


def as_dtype(dtype) -> torch.dtype | None:
    """torch.bfloat16 / "bfloat16" / "bf16" / ... -> torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise UserError(f"dtype {dtype!r} not understood (use bfloat16, float16 or float32)")
    return value


def make_plan(model: str | Path | ModelFolder, *, device: str = "auto", precision: str = "auto",
              use_4bit: bool = False, for_training: bool = False, engine: str = ONE_PROCESS, world_size: int = 1,
              dtype=None, attention: str | None = None, require_weights: bool = True,
              quantization: str = "") -> RunPlan:
    """Decide everything once. ``device``: ``--device`` (auto, cuda, cpu) or a device already chosen
    (``cuda:1``); ``precision``: ``--precision``. ``dtype`` / ``attention`` override the decision
    (tests, merging in float32). ``require_weights`` False: a dry run, which reads only config.json
    and the tokenizer. ``quantization``: why ``use_4bit`` is what it is, when the caller decided it
    (printed in the plan line). Raises UserError (one line) when the machine cannot do what was asked.
    """
    folder = model if isinstance(model, ModelFolder) else resolve_model_folder(model, require_weights)
    chosen = device if device.startswith("cuda:") else pick_device(device)
    decision = decide_precision(chosen, weights_size(folder.base_path) or None, precision)
    if (forced := as_dtype(dtype)) is not None:
        decision = dataclasses.replace(decision, train_weights=forced, inference=forced,
                                       reason=f"{str(forced).removeprefix('torch.')} as asked")
    weights = decision.train_weights if for_training else decision.inference
    return RunPlan(folder=folder, device=chosen, precision=decision, for_training=for_training, use_4bit=use_4bit,
                   attention=attention or pick_attn_implementation(chosen, weights), engine=engine,
                   world_size=world_size, quantization=quantization)


def gpu_memory_gb(device: str) -> float | None:
    """Total memory of the run's GPU in GB (1e9 bytes), or None on a CPU."""
    if not device.startswith("cuda"):
        return None
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_properties(index).total_memory / 1e9
