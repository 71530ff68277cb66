"""Merge a trained LoRA adapter into its base model and save a standalone model folder.

The base is loaded unquantized (full precision on CPU, never the 4-bit weights used in QLoRA
training; for a QLoRA adapter one line says so: the merged model is not bit-for-bit the 4-bit one
that was trained), the adapter is folded in with peft's ``merge_and_unload``, and the result is saved as
safetensors in bfloat16 (float32 on machines without a GPU) with the tokenizer, chat template and
generation config: a folder that transformers, vLLM and this project's stages load directly.

Reads:  ADAPTER (an adapter folder: adapter_config.json + adapter_model.safetensors; its base folder
        is named in adapter_config.json).
Writes: OUTPUT_DIR (config.json, model*.safetensors, tokenizer files, generation_config.json,
        merge_info.json, run_info.json), replaced atomically.

Example:
    python scripts/merge_lora.py --adapter model/deepseek_r1_1.5b_lora/best_model \\
        --output_dir model/deepseek_r1_1.5b_merged
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.model.folders import MERGE_INFO, resolve_model_folder
from r1_sft.model.loading import merge_adapter  # noqa: E402
from r1_sft.paths import display_path, repo_path, tried_path  # noqa: E402
from r1_sft.run_info import adapter_base_note, save_run_info  # noqa: E402


@dataclass
class Config:
    adapter: str = "model/deepseek_r1_1.5b_lora/best_model"  # LoRA adapter folder written by training
    output_dir: str = "model/deepseek_r1_1.5b_merged"  # merged model folder (replaced if it is an earlier merge)
    dtype: str = "auto"  # saved weight dtype: auto (bfloat16 with a GPU, float32 without), bfloat16, float16, float32


def saved_dtype(name: str) -> torch.dtype:
    if name == "auto":
        # bf16 halves the size and is what R1 distills are served in (fp16 can emit only "!"); a
        # CPU-only machine computes in float32 anyway, so keep the exact merge there.
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    choices = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in choices:
        raise UserError(f"--dtype {name!r}: use auto, bfloat16, float16 or float32")
    return choices[name]


@cli_main
def main(cfg: Config) -> None:
    dtype = saved_dtype(cfg.dtype)
    if not repo_path(cfg.adapter).is_dir():
        raise UserError(f"{tried_path(repo_path(cfg.adapter))}: adapter folder not found (train first: "
                        f"`python scripts/train_stf_r1_train_val.py` writes OUTPUT_DIR/best_model; or pass "
                        f"--adapter OUTPUT_DIR/best_model of your run)")
    folder = resolve_model_folder(cfg.adapter)
    if folder.kind != "adapter":
        raise UserError(f"{display_path(folder.model_path)}: not a LoRA adapter folder (no adapter_config.json; "
                        f"pass OUTPUT_DIR/best_model or OUTPUT_DIR/final_model of a training run)")
    out = repo_path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not (out / MERGE_INFO).is_file():
        raise UserError(f"{display_path(out)}: exists and is not an earlier merge (choose another --output_dir)")
    print(f"[read] adapter {display_path(folder.adapter_path)} on base {display_path(folder.base_path)}", flush=True)
    note = adapter_base_note(folder, False, dtype, "is merged into", hint=" (merging needs unquantized weights)")
    if note:
        print(note, flush=True)

    # Merge into a hidden sibling folder, then swap it in: a killed merge never leaves half a model.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merge_adapter(folder.adapter_path, staging, dtype=dtype)
        save_run_info(cfg, staging / "run_info.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    files = sorted(p for p in out.iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"[write] {display_path(out)}: merged model in {str(dtype).removeprefix('torch.')}, {len(files)} files, "
          f"{size / 2**20:.1f} MiB ({', '.join(p.name for p in files)})", flush=True)


if __name__ == "__main__":
    main(parse_config(Config))
