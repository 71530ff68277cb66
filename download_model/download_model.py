"""Download DeepSeek-R1-Distill-Qwen-1.5B (or build the offline tiny stand-in) into model/.

Real model: ``modelscope.snapshot_download`` (or ``huggingface_hub.snapshot_download`` with
``--source hf``) straight into ``--local_dir``; a re-run skips finished files and resumes partial
ones. At the end it checks that config, tokenizer and safetensors weights are all there and prints
the folder and its size. With no network: one line naming the host, exit code 2.

``--tiny``: builds, offline and deterministically, a tiny ``Qwen2ForCausalLM`` with R1's tokens,
chat template and traps (``r1_sft/model/tiny_model.py``), pre-trained on the sample corpus
(modelscope_r1_data/r1_data_example.jsonl, r1_generated/001-003.jsonl) until it knows it nearly
by heart. Tests and ``make demo`` use it.

Reads:  the hub (real model) or the sample corpus (--tiny)
Writes: LOCAL_DIR/{config.json, generation_config.json, model*.safetensors, tokenizer*.json, ...}, run_info.json

    python download_model/download_model.py
    python download_model/download_model.py --model_id deepseek-ai/DeepSeek-R1-Distill-Qwen-7B
    python download_model/download_model.py --tiny --local_dir model/tiny_r1
"""
from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1_sft.cli import UserError, cli_main, parse_config  # noqa: E402
from r1_sft.model.folders import local_model_dir  # noqa: E402
from r1_sft.paths import display_path, repo_path  # noqa: E402
from r1_sft.run_info import save_run_info  # noqa: E402

TINY_DIR = "model/tiny_r1"


@dataclass
class Config:
    model_id: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # hub repo id; the 7B/14B/32B R1 distills work too
    source: str = "modelscope"  # where to download from: modelscope | hf (huggingface_hub)
    local_dir: str = ""  # target folder (repo-relative); "" = model/<org>/<name>, or model/tiny_r1 with --tiny
    revision: str = ""  # branch, tag or commit; "" = the hub's default branch
    tiny: bool = False  # build the offline tiny R1 stand-in instead of downloading (no network needed)


@cli_main
def main(cfg: Config) -> Path:
    if cfg.tiny:
        return build_tiny(cfg)
    if cfg.source not in ("modelscope", "hf"):
        raise UserError(f"--source {cfg.source!r}: use modelscope or hf")
    out = repo_path(cfg.local_dir) if cfg.local_dir else local_model_dir(cfg.model_id)
    host = hub_endpoint(cfg.source)
    print(f"[download] {cfg.model_id} (revision {cfg.revision or 'default'}) from {host} -> {display_path(out)}",
          flush=True)
    made = first_missing_folder(out)  # what this run creates; removed again if the download fails at once
    try:
        download(cfg, out, host)
    except UserError:
        remove_if_empty(made)
        raise
    files = verify_model_folder(out)
    size = sum(f.stat().st_size for f in files)
    save_run_info(cfg, out / "run_info.json")
    print(f"[download] wrote {display_path(out)}: {len(files)} files, {size / 2**30:.2f} GiB", flush=True)
    return out


def build_tiny(cfg: Config) -> Path:
    from r1_sft.model.tiny_model import build_tiny_model, default_corpus_files

    out = repo_path(cfg.local_dir or TINY_DIR)
    files = default_corpus_files()
    if not files:
        raise UserError("modelscope_r1_data/r1_data_example.jsonl: sample corpus not found (the tiny model "
                        "trains its tokenizer on it; restore the committed sample data)")
    print(f"[tiny] read {', '.join(display_path(f) for f in files)}", flush=True)
    report = build_tiny_model(out, corpus_files=files)
    save_run_info(cfg, out / "run_info.json")
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"[tiny] corpus: {report.documents} documents, {report.corpus_tokens} tokens; tokenizer "
          f"{report.tokenizer_size} tokens; model {report.parameters:,} parameters", flush=True)
    print(f"[tiny] lm_loss {report.first_loss:.3f} -> {report.final_loss:.3f}; greedy sample: "
          f"{report.sample[:60]!r}", flush=True)
    print(f"[tiny] wrote {display_path(out)} ({size / 2**20:.1f} MiB)", flush=True)
    return out


def hub_endpoint(source: str) -> str:
    """The base URL the client will talk to, with the same environment overrides the clients honour."""
    if source == "hf":
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    endpoint = os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN", "").strip()
    if not endpoint:
        return "https://modelscope.cn"
    return endpoint if endpoint.startswith(("http://", "https://")) else f"https://{endpoint}"


def first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_if_empty(folder: Path | None) -> None:
    """Delete a folder this run made if no byte landed in it (client bookkeeping only); a partial
    download is kept, so that the next run resumes it."""
    if folder is None or not folder.is_dir():
        return
    if any(f.is_file() and f.stat().st_size > 0 and not f.name.endswith((".lock", ".json"))
           for f in folder.rglob("*")):
        return
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    print(f"[download] removed {display_path(folder)} (created by this run, nothing was downloaded)", flush=True)


def mirror_hint(source: str) -> str:
    """Where to point the client when the default hub is unreachable or slow from here."""
    if source == "hf":
        return "a mirror: set HF_ENDPOINT (e.g. HF_ENDPOINT=https://hf-mirror.com), or try --source modelscope"
    return "a mirror: set MODELSCOPE_ENDPOINT to its URL, or try --source hf (with HF_ENDPOINT for an HF mirror)"


def download(cfg: Config, out: Path, host: str) -> None:
    """The documented snapshot call of each hub client, straight into ``out`` (resumable)."""
    revision = cfg.revision or None
    try:
        if cfg.source == "modelscope":
            from modelscope import snapshot_download

            snapshot_download(cfg.model_id, revision=revision, local_dir=str(out))
        else:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=cfg.model_id, revision=revision, local_dir=str(out))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 -- every client failure becomes one line for the user
        netloc = urlparse(host).netloc or host
        local_copy = (f"to use a local copy instead, put the model folder (config.json, tokenizer files, "
                      f"*.safetensors) in {display_path(out)}, or pass its path as --local_dir here / "
                      f"--model_path to later stages")
        if _is_network_error(exc):
            if _complete_copy(out):  # offline, but an earlier download (or a copied folder) is whole
                print(f"[download] cannot reach {netloc} ({_first_line(exc)}); using the complete local copy in "
                      f"{display_path(out)}", flush=True)
                return
            raise UserError(f"cannot reach {netloc} to download {cfg.model_id} ({_first_line(exc)}); "
                            f"{mirror_hint(cfg.source)}; {local_copy}") from None
        raise UserError(f"download of {cfg.model_id} from {netloc} failed: {type(exc).__name__}: "
                        f"{_first_line(exc)} (check --model_id / --revision; {mirror_hint(cfg.source)}; "
                        f"{local_copy})") from None


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and all(exc is not e for e in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _is_network_error(exc: BaseException) -> bool:
    # requests' ConnectionError is not the builtin one; match the client libraries' names too.
    return any(isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)) or type(e).__name__ in (
        "NetworkError", "ConnectError", "ConnectTimeout", "ConnectionError", "MaxRetryError",
        "NameResolutionError", "LocalEntryNotFoundError") for e in _exception_chain(exc))


def _complete_copy(folder: Path) -> bool:
    try:
        verify_model_folder(folder)
        return True
    except UserError:
        return False


def _first_line(exc: BaseException) -> str:
    """The root cause in a few words (clients wrap it in several layers of long messages)."""
    chain = _exception_chain(exc)
    for e in reversed(chain):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    lines = str(chain[-1]).strip().splitlines()
    return (lines[0] if lines else type(chain[-1]).__name__)[:160]


def verify_model_folder(folder: Path) -> list[Path]:
    """Config, tokenizer and every safetensors shard present and non-empty; returns the folder's files."""
    def need(name: str) -> Path:
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            raise UserError(f"{display_path(path)}: missing or empty after download (re-run this script to resume)")
        return path

    need("config.json")
    need("tokenizer_config.json")
    if not (folder / "tokenizer.json").is_file():
        need("vocab.json"), need("merges.txt")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        for shard in shards:
            need(shard)
    elif not any(folder.glob("*.safetensors")):
        raise UserError(f"{display_path(folder)}: no *.safetensors weights after download (re-run this script; "
                        f"this project loads safetensors only)")
    return sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)


if __name__ == "__main__":
    main(parse_config(Config))
