"""A training run's output folder: complete checkpoints, adapter copies (tokenizer files copied), clearing old runs."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.jsonl_io import atomic_write_text
from r1_sft.model.folders import save_tokenizer
from r1_sft.paths import display_path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """checkpoint-N folders whose save finished (trainer_state.json is written last), oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and child.is_dir() and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def holds_earlier_run(output_dir: Path) -> bool:
    return bool(complete_checkpoints(output_dir)) or (output_dir / "best_model").exists()


def check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    """An earlier run's folder is continued (--resume) or cleared (--overwrite_output_dir), never mixed into."""
    if not resume and not overwrite and holds_earlier_run(output_dir):
        raise UserError(f"{display_path(output_dir)}: holds an earlier run (pass --resume to continue it, "
                        f"--overwrite_output_dir to start over, or another --output_dir)")


def clear_output_dir(output_dir: Path) -> None:
    """Remove what an earlier run left (checkpoints, results, logs); other files stay."""
    for child in output_dir.iterdir() if output_dir.is_dir() else []:
        if child.is_dir() and (CHECKPOINT_RE.match(child.name) or child.name in
                               ("best_model", "final_model", "training_logs")):
            shutil.rmtree(child)



def portable_adapter_config(folder: Path) -> None:
    """Name the base in ``folder/adapter_config.json`` relative to the repository when it lies inside it."""
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path")
    if base and Path(base).is_absolute():
        config["base_model_name_or_path"] = display_path(base)
        atomic_write_text(config_file, json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def copy_adapter(checkpoint: Path, dest: Path, tokenizer) -> None:
    """Copy a checkpoint's adapter (config + safetensors) into ``dest`` with the tokenizer, atomically."""
    if not (checkpoint / "adapter_model.safetensors").is_file():
        raise UserError(f"{display_path(checkpoint)}: the last checkpoint is gone (--save_total_limit deleted it?); "
                        f"keep at least 2 checkpoints so final_model/ can be the last step's adapter")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(checkpoint / name, tmp / name)
    save_tokenizer(tokenizer, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


class CopiedTokenizerSave:
    """Mixin for a Hugging Face Trainer (SFT's and GRPO's): its ``_save`` (checkpoints, save_model) writes the
    tokenizer as :func:`r1_sft.model.folders.save_tokenizer`'s byte copy, not transformers' re-serialization.

    The Trainer's own ``_save`` writes its processing class, else its collator's tokenizer: both are set aside
    while it runs.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        tokenizer, collator = self.processing_class, self.data_collator
        collator_tokenizer = getattr(collator, "tokenizer", None)
        self.processing_class = None
        if collator_tokenizer is not None:
            collator.tokenizer = None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.processing_class = tokenizer
            if collator_tokenizer is not None:
                collator.tokenizer = collator_tokenizer
        if (tokenizer or collator_tokenizer) is not None and self.args.should_save:
            save_tokenizer(tokenizer or collator_tokenizer,
                           output_dir if output_dir is not None else self.args.output_dir)
