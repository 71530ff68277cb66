"""notebooks/quickstart_t4.ipynb runs end to end: every cell, as a user runs it, through nbclient.

The parameters cell (tagged ``parameters``, papermill's convention) is replaced: no install, no download,
the offline tiny stand-in instead of the 1.5B, the repository's 130 sample rows, outputs in a temporary
folder, and a few short steps. Everything else (data, training, evaluation, one chat turn) is the
notebook's own code calling the real scripts.
"""
from __future__ import annotations

import json
import os

import nbformat
from nbclient import NotebookClient

from r1_sft.model.hardware import CUDA12_INSTALL

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "quickstart_t4.ipynb"


def test_the_t4_notebook_runs_the_quick_start_on_the_stand_in(tiny_model_dir, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(params) == 1
    # the driver check installs the same CUDA 12.6 build the README and the start-up check name
    assert CUDA12_INSTALL.removeprefix("pip ") in "".join(cell.source for cell in nb.cells)
    params[0].source = "\n".join([
        'REPO_URL = ""', "INSTALL = False", "FULL_DATA = False", "DOWNLOAD_MODEL = False",
        f"MODEL_PATH = {str(tiny_model_dir)!r}", f"DATA_DIR = {str(tmp_path / 'data')!r}",
        f"OUT_DIR = {str(tmp_path / 'out')!r}",
        'TRAIN_FLAGS = "--max_steps 2 --max_length 128 --truncate_long --per_device_train_batch_size 2 '
        '--gradient_accumulation_steps 1 --no_gradient_checkpointing --no_use_4bit"',
        'EVAL_FLAGS = "--num_samples 2 --n_samples 1 --batch_size 2 --max_new_tokens 16"',
        "DRY_RUN = False",  # the dry run is tested in tests/training/test_first_run.py
        "CHAT_MAX_NEW_TOKENS = 16", 'QUESTION = "孩子发烧到39度怎么办？"'])
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()  # raises on a failed cell

    text = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "[schedule]" in text and "[plan]" in text
    out = tmp_path / "out"
    assert (out / "lora/best_model/adapter_model.safetensors").is_file()
    summary = json.loads((out / "evaluation/notebook/summary.json").read_text(encoding="utf-8"))
    assert summary["data"]["split"] == "test"
    # the loss curve is shown as a picture in the notebook
    assert any("image/png" in o.get("data", {}) for cell in nb.cells for o in cell.get("outputs", []))
    # nothing was written into the repository's own dataset/ or model/ folders
    assert not (REPO / "model/notebook_run").exists()
