"""Hints that fit the case (issue 14): train first, set the mirror variable, convert GBK, one object per line."""
from __future__ import annotations

import json
import socket
import sys

import pytest

from r1_sft.cli import UserError
from r1_sft.jsonl_io import read_jsonl

from conftest import run_script


def test_merge_without_an_adapter_says_train_first(tmp_path):
    proc = run_script("scripts/merge_lora.py", "--adapter", "lora/best_model", "--output_dir", "merged", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"error: {tmp_path / 'lora' / 'best_model'}: adapter folder not found"), err
    assert "train first" in err and "scripts/train_stf_r1_train_val.py" in err and "download_model" not in err
    assert not (tmp_path / "merged").exists()


def test_a_failed_download_removes_the_folder_it_made_and_names_the_mirror_variable(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MODELSCOPE_ENDPOINT": f"http://127.0.0.1:{port}", "MODELSCOPE_CACHE": str(tmp_path / "ms_cache"),
           "MODELSCOPE_DOMAIN": "", "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1"}  # not the client's 7 s of retries
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    proc = run_script("download_model/download_model.py", "--local_dir", "kept/new/model", cwd=tmp_path, env=env,
                      timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach 127.0.0.1:{port} ") and "MODELSCOPE_ENDPOINT" in last
    assert "HF_ENDPOINT" in last
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "new").exists()


def test_a_partial_download_is_kept_for_the_resume(tmp_path):
    from importlib import util

    from conftest import REPO

    spec = util.spec_from_file_location("download_model_script", REPO / "download_model" / "download_model.py")
    dm = util.module_from_spec(spec)
    sys.modules[spec.name] = dm  # dataclasses look their module up while the class is made
    spec.loader.exec_module(dm)
    made = tmp_path / "model"
    (made / "._____temp").mkdir(parents=True)
    (made / "._____temp" / "model.safetensors").write_bytes(b"x" * 10)
    dm.remove_if_empty(made)
    assert made.is_dir()  # 10 bytes landed: the next run resumes them
    (made / "._____temp" / "model.safetensors").write_bytes(b"")
    dm.remove_if_empty(made)
    assert not made.exists()
    assert dm.first_missing_folder(tmp_path / "a" / "b") == tmp_path / "a"
    assert dm.first_missing_folder(tmp_path) is None


@pytest.mark.parametrize("content, fragment", [
    ("胸痛".encode("gbk") + b"\n", "iconv -f GBK -t UTF-8 in.jsonl > out.jsonl"),
    (json.dumps([{"input": "q", "output": "a"}]).encode() + b"\n", "write one object per line"),
])
def test_project_files_that_are_gbk_or_a_json_array_say_how_to_fix_them(tmp_path, content, fragment):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match="train.jsonl:1: ") as exc:
        list(read_jsonl(path))
    assert fragment in str(exc.value)


def test_a_missing_project_file_names_the_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"^{tmp_path / 'nope.jsonl'}: file not found"):
        list(read_jsonl("nope.jsonl"))
