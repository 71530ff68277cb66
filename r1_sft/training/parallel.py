"""Training past one device: the engine a run uses (DDP, FSDP2, DeepSpeed ZeRO) and its checks before loading.

* **DDP** (``torchrun --nproc_per_node N``, no engine flag): every process holds the whole model.
* **FSDP2** (``--fsdp_config configs/fsdp2_lora.json`` or ``fsdp2_qlora.json``, a JSON the Trainer's
  ``fsdp_config`` takes): the frozen base, the LoRA weights, their gradients and AdamW states are
  sharded per decoder layer. With ``--use_4bit`` the NF4 weights are stored in the compute dtype
  (``bnb_4bit_quant_storage``) so that FSDP can shard them (FSDP-QLoRA). Checkpoints and the
  adapters are saved as a full state dict of the adapter by rank 0, so they load as before. The
  default chunked loss runs too: it unshards lm_head's and the final norm's groups around its chunk
  loop (``r1_sft.training.loss.unsharded_head``); no full-vocabulary logits.
* **DeepSpeed** (``--deepspeed configs/deepspeed_zero2.json``; ``pip install -r
  requirements-deepspeed.txt``): ZeRO-1 shards AdamW states, ZeRO-2 also gradients, ZeRO-3 also
  the weights. ZeRO-2 works with QLoRA; ZeRO-3 with ``--use_4bit`` is refused (:func:`check_deepspeed`),
  and so is ZeRO-3 with the chunked loss: its lm_head runs outside the forward on partitioned weights,
  and gathering them (``deepspeed.zero.GatheredParameters``) could not be tested without DeepSpeed.

Each mistake is one line before any model loads. Where a check cannot be made on this machine (a
GPU-only engine), the refusal says so rather than letting the Trainer fall back silently.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from r1_sft.cli import UserError
from r1_sft.paths import display_path, repo_path, tried_path

if TYPE_CHECKING:
    from r1_sft.training.config import TrainConfig

DEEPSPEED_INSTALL = "pip install -r requirements-deepspeed.txt"
# Keys of a DeepSpeed config the Trainer fills when they say "auto" (transformers.integrations.deepspeed).
_TRAINER_AUTO = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def read_json_config(flag: str, value: str) -> tuple[Path, dict]:
    path = repo_path(value)
    if not path.is_file():
        raise UserError(f"--{flag} {tried_path(path)}: config not found (see configs/)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--{flag} {display_path(path)}: not a JSON file ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"--{flag} {display_path(path)}: expected a JSON object")
    return path, config


def deepspeed_stage(cfg: TrainConfig) -> int | None:
    """The ZeRO stage of ``--deepspeed`` (0 when the config names none), None without DeepSpeed."""
    if not cfg.deepspeed:
        return None
    _, config = read_json_config("deepspeed", cfg.deepspeed)
    return int(config.get("zero_optimization", {}).get("stage", 0))


def engine_label(cfg: TrainConfig, processes: int) -> str:
    """The engine as the plan line says it: one process, DDP, FSDP2 or DeepSpeed ZeRO-N."""
    name = engine_name(cfg)
    if name == "fsdp":
        return "FSDP2"
    if name.startswith("zero"):
        return f"DeepSpeed ZeRO-{name[4:]}"
    return "DDP" if processes > 1 else "one process"


def engine_name(cfg: TrainConfig) -> str:
    """"ddp", "fsdp", "zero1", "zero2" or "zero3" (one process: "ddp", i.e. nothing sharded)."""
    if cfg.fsdp_config:
        return "fsdp"
    stage = deepspeed_stage(cfg)
    return f"zero{stage}" if stage else "ddp"


def _needs_gpu(flag: str, value: str, cfg: TrainConfig, why: str, device: str) -> None:
    if not cfg.dry_run and device == "cpu":  # a dry run trains nothing: it may plan for GPUs
        raise UserError(f"--{flag} {value}: {why}; on this CPU drop --{flag} (torchrun then runs DDP: every "
                        f"process a full copy)")


def check_fsdp(cfg: TrainConfig, device: str) -> None:
    """The FSDP config: version 2, an adapter that saves, several processes on GPUs."""
    path, config = read_json_config("fsdp_config", cfg.fsdp_config)
    shown = display_path(path)
    version = int(config.get("version", config.get("fsdp_version", 2)))
    if version != 2:
        raise UserError(f"--fsdp_config {shown}: \"version\": {version} is FSDP1 (deprecated in transformers 5); "
                        f"write \"version\": 2 (configs/fsdp2_lora.json)")
    state_dict = config.get("state_dict_type", config.get("fsdp_state_dict_type", "FULL_STATE_DICT"))
    if state_dict != "FULL_STATE_DICT":
        raise UserError(f"--fsdp_config {shown}: \"state_dict_type\": {state_dict!r} writes no adapter file into "
                        f"checkpoints, best_model/ or final_model/; use \"FULL_STATE_DICT\" (the adapter is small)")
    _needs_gpu("fsdp_config", shown, cfg, "accelerate 1.15 runs FSDP only on GPUs (on a CPU the Trainer "
               "silently trains plain DDP instead)", device)
    if world_size() < 2 and not cfg.dry_run:
        raise UserError(f"--fsdp_config {shown}: FSDP shards over processes; launch with `torchrun "
                        f"--nproc_per_node N scripts/...` or `accelerate launch --num_processes N scripts/...`")


def _fill_trainer_autos(config: dict, cfg: TrainConfig, precision) -> dict:
    """The config as DeepSpeed would get it from the Trainer, for its own parser.

    The Trainer replaces "auto" batch sizes, accumulation and clipping with our values (filled here,
    for one process: the parser counts one), precision flags with the run's; every other "auto"
    (bucket sizes, optimizer values) is dropped, so DeepSpeed's defaults stand in for them.
    """
    values = {"train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
              "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
              "gradient_clipping": cfg.max_grad_norm}
    flags = precision.trainer_flags

    def fill(node, key=None):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if k == "enabled" and v == "auto" and key in ("bf16", "fp16"):
                    out[k] = flags[key]
                elif v == "auto" and k in _TRAINER_AUTO:
                    out[k] = values[k]
                elif v != "auto":
                    out[k] = fill(v, k)
            return out
        return node

    filled = fill(config)
    filled.pop("train_batch_size", None)  # the Trainer checks it against the real world size itself
    return filled


def check_deepspeed(cfg: TrainConfig, device: str, precision) -> None:
    """--deepspeed: the package imports, ZeRO-3 is not asked with 4-bit, DeepSpeed's own parser accepts it."""
    path, config = read_json_config("deepspeed", cfg.deepspeed)
    shown = display_path(path)
    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"--deepspeed {shown}: the deepspeed package is not installed ({DEEPSPEED_INSTALL})")
    try:
        from deepspeed.runtime.config import DeepSpeedConfig
    except Exception as exc:  # a broken install: a CUDA toolkit mismatch shows up here
        raise UserError(f"--deepspeed {shown}: the deepspeed package does not import "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    stage = deepspeed_stage(cfg)
    if stage == 3 and cfg.use_4bit:
        raise UserError(f"--deepspeed {shown}: ZeRO-3 partitions every weight, and this project's 4-bit weights "
                        f"(bitsandbytes NF4, loaded before DeepSpeed starts) cannot be partitioned; use ZeRO-2 "
                        f"with QLoRA (configs/deepspeed_zero2.json), ZeRO-3 with --no_use_4bit, or FSDP-QLoRA "
                        f"(--fsdp_config configs/fsdp2_qlora.json)")
    try:
        DeepSpeedConfig(_fill_trainer_autos(config, cfg, precision))
    except Exception as exc:
        first = " ".join(str(exc).split())[:300]
        raise UserError(f"--deepspeed {shown}: DeepSpeed rejects the config ({type(exc).__name__}: {first})") from None
    _needs_gpu("deepspeed", shown, cfg, "the Trainer runs DeepSpeed only on GPUs (accelerate skips it on a CPU)",
               device)


def check_engine(cfg: TrainConfig, device: str, precision) -> None:
    """--fsdp_config and --deepspeed, before anything loads; ``device`` and ``precision``: the run's plan's."""
    if cfg.fsdp_config and cfg.deepspeed:
        raise UserError("--fsdp_config and --deepspeed: choose one engine (FSDP2 or DeepSpeed ZeRO)")
    if cfg.fsdp_config:
        check_fsdp(cfg, device)
    if cfg.deepspeed and deepspeed_stage(cfg) == 3 and cfg.loss_chunk_tokens > 0 and not cfg.use_liger_kernel:
        raise UserError(f"--deepspeed {display_path(repo_path(cfg.deepspeed))}: ZeRO-3 partitions lm_head, which the "
                        f"chunked loss runs outside the model's forward (untested with DeepSpeed); pass "
                        f"--loss_chunk_tokens 0 (the stock loss), or use ZeRO-2 or --fsdp_config configs/fsdp2_lora.json")
    if cfg.deepspeed:
        check_deepspeed(cfg, device, precision)
