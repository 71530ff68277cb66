"""Model folders: a base, a LoRA adapter (and the base behind it) or a merged folder, and their tokenizer.

A folder is resolved once per run (``r1_sft.model.plan``); a missing or incomplete one is one line
naming the folder and the fix. Weights load from safetensors only.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from r1_sft.cli import UserError
from r1_sft.paths import REPO_ROOT, display_path, repo_path, tried_path

ADAPTER_CONFIG = "adapter_config.json"
MERGE_INFO = "merge_info.json"  # written by merge_adapter(); marks a folder as a merged adapter
# What save_tokenizer copies: a tokenizer's files in the layouts transformers reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "vocab.json", "merges.txt")
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


def resolve_model_folder(path: str | Path, require_weights: bool = True) -> ModelFolder:
    """Classify a model folder and find the full-weights folder behind an adapter.

    Raises UserError naming the folder and the fix when it is missing or incomplete.
    ``require_weights`` False (a ``--dry_run``: the memory estimate and the encoding read only
    config.json and the tokenizer) accepts folders whose safetensors are not downloaded yet.
    """
    folder = repo_path(path).resolve()
    if not folder.is_dir():
        raise UserError(f"{tried_path(folder)}: model folder not found ({DOWNLOAD_HINT})")
    if (folder / ADAPTER_CONFIG).is_file():
        if require_weights and not any(folder.glob("adapter_model*.safetensors")):
            raise UserError(f"{display_path(folder)}: adapter folder has no adapter_model.safetensors "
                            f"(re-run training; this project loads safetensors only)")
        base = _adapter_base(folder)
        _check_full_weights(base, f"base model of adapter {display_path(folder)}", require_weights)
        return ModelFolder("adapter", folder, base, folder)
    _check_full_weights(folder, "model folder", require_weights)
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


def _check_full_weights(folder: Path, what: str, require_weights: bool = True) -> None:
    if not folder.is_dir():
        raise UserError(f"{tried_path(folder)}: {what} not found ({DOWNLOAD_HINT})")
    if not (folder / "config.json").is_file():
        raise UserError(f"{tried_path(folder)}: {what} has no config.json ({DOWNLOAD_HINT})")
    if require_weights and not any(folder.glob("*.safetensors")):
        raise UserError(f"{tried_path(folder)}: {what} has no *.safetensors weights (this project loads "
                        f"safetensors only; {DOWNLOAD_HINT})")


def _has_tokenizer(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()


def load_tokenizer(path: str | Path | ModelFolder, padding_side: str = "left"):
    """The folder's tokenizer (an adapter's own if it saved one, else its base's), pad token = eos if unset.

    ``padding_side``: "left" for generation (every prompt ends where generation starts), "right" for training.
    """
    from transformers import AutoTokenizer

    folder = path if isinstance(path, ModelFolder) else resolve_model_folder(path)
    source = folder.adapter_path if folder.adapter_path and _has_tokenizer(folder.adapter_path) else folder.base_path
    if not _has_tokenizer(source):
        raise UserError(f"{display_path(source)}: no tokenizer files ({DOWNLOAD_HINT})")
    tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def weights_size(folder: Path) -> int:
    """Bytes of a model folder's safetensors weights."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """Write ``tokenizer`` into ``out_dir`` as a byte copy of the files it was loaded from.

    transformers 5 writes a loaded Qwen2 tokenizer out again in another form (merges as pairs, indented,
    the ByteLevel decoder's flags at its class defaults): R1's 5.2 MB tokenizer.json becomes 11.4 MB and takes
    three times as long to load (bench/tokenizer_load.py). A copy loads into the same tokenizer (load_tokenizer
    sets the padding side and pad token again) and keeps an adapter's tokenizer files its base's, byte for
    byte. A tokenizer that was not loaded from a folder of such files is written by transformers.
    """
    source, out = Path(str(tokenizer.name_or_path)), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (source / "tokenizer.json").is_file():
        tokenizer.save_pretrained(str(out))
    elif source.resolve() != out.resolve():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, out / name)

