"""On which base precision a QLoRA adapter runs (issue 20 item 5): evaluation, merge and serving say it.

A QLoRA adapter is trained on the 4-bit NF4 base; evaluation, chat and serving run it on the
unquantized base unless --use_4bit, merging always folds it into unquantized weights. The adapter
here has random LoRA weights and the run_info.json that training writes beside it (``use_4bit``
in its config); a LoRA adapter trained without 4-bit gets no line.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from r1_sft.run_info import save_run_info

from conftest import REPO, popen_script, run_script, save_random_adapter

SFT_VAL = REPO / "tests" / "fixtures" / "eval_sft_val.jsonl"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ON_16_BIT = "QLoRA adapter trained on the 4-bit NF4 base; runs on the unquantized float32 base, not the 4-bit one"


def _adapter(tiny_model_dir, out: Path, use_4bit: bool) -> Path:
    save_random_adapter(tiny_model_dir, out)
    save_run_info({"model_path": str(tiny_model_dir), "use_4bit": use_4bit}, out / "run_info.json")  # as training does
    return out


@pytest.fixture(scope="module")
def qlora_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _adapter(tiny_model_dir, tmp_path_factory.mktemp("qlora") / "best_model", use_4bit=True)


def _evaluate(tiny_model_dir, adapter, out, *flags):
    proc = run_script("scripts/evaluate_model.py", "--base_model", tiny_model_dir, "--adapter", adapter,
                      "--data", SFT_VAL, "--num_samples", 2, "--batch_size", 2, "--max_new_tokens", 12,
                      "--no_do_sample", "--output_dir", out, *flags, env=ONE_THREAD, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _tuned_texts(run_dir: Path) -> list[str]:
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r["prediction"] for r in records if r["model"] == "tuned"]


def test_evaluation_says_the_base_precision_and_scores_on_the_4bit_base_as_trained(tiny_model_dir, qlora_dir,
                                                                                   tmp_path):
    plain = _evaluate(tiny_model_dir, qlora_dir, tmp_path, "--run_name", "plain")
    lines = [line for line in plain.stdout.splitlines() if "[precision]" in line]
    assert len(lines) == 1 and lines[0].startswith("[tuned] [precision] ") and ON_16_BIT in lines[0], plain.stdout
    assert "--use_4bit runs it on the 4-bit base as trained" in lines[0]

    nf4 = _evaluate(tiny_model_dir, qlora_dir, tmp_path, "--run_name", "nf4", "--use_4bit")
    lines = [line for line in nf4.stdout.splitlines() if "[precision]" in line]
    assert len(lines) == 1 and "runs on the 4-bit NF4 base as trained" in lines[0], nf4.stdout
    assert re.search(r"\[model\] loaded LoRA adapter .*best_model on base .*4-bit NF4", nf4.stdout)
    assert "adapter merged" not in nf4.stdout  # never folded into 4-bit weights
    assert json.loads((tmp_path / "nf4" / "run_info.json").read_text(encoding="utf-8"))["config"]["use_4bit"] is True
    # the 4-bit base really is another model: greedy answers differ from the unquantized run's
    assert _tuned_texts(tmp_path / "nf4") != _tuned_texts(tmp_path / "plain")


def test_a_lora_adapter_trained_unquantized_gets_no_line(tiny_model_dir, tmp_path):
    from r1_sft.model.folders import resolve_model_folder
    from r1_sft.run_info import adapter_base_note

    folder = resolve_model_folder(_adapter(tiny_model_dir, tmp_path / "lora", use_4bit=False))
    assert adapter_base_note(folder, False, "torch.bfloat16") is None
    assert "LoRA adapter trained on the unquantized base; runs on the 4-bit NF4 base" in \
        adapter_base_note(folder, True, "torch.bfloat16")
    # a checkpoint folder reads the run's training_logs/run_info.json
    checkpoint = tmp_path / "run" / "checkpoint-3"
    _adapter(tiny_model_dir, checkpoint, use_4bit=True)
    (tmp_path / "run" / "training_logs").mkdir()
    (checkpoint / "run_info.json").rename(tmp_path / "run" / "training_logs" / "run_info.json")
    assert "on the unquantized bfloat16 base" in adapter_base_note(resolve_model_folder(checkpoint), False,
                                                                    "torch.bfloat16")


def test_merge_says_the_qlora_adapter_is_folded_into_unquantized_weights(qlora_dir, tmp_path):
    proc = run_script("scripts/merge_lora.py", "--adapter", qlora_dir, "--output_dir", tmp_path / "merged",
                      env=ONE_THREAD, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "QLoRA adapter trained on the 4-bit NF4 base; is merged into the unquantized float32 base" in proc.stdout
    assert "(merging needs unquantized weights)" in proc.stdout


def test_serving_says_on_which_base_the_qlora_adapter_runs(qlora_dir, tmp_path):
    log = tmp_path / "server.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = popen_script("scripts/serve_model.py", "--model", qlora_dir, "--port", "0", "--max_context", "512",
                            "--max_tokens", "8", cwd=tmp_path, env=ONE_THREAD, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "listening on" not in log.read_text(encoding="utf-8") and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text(encoding="utf-8")
    assert "listening on" in text and ON_16_BIT in text, text
