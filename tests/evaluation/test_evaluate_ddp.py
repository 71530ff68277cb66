"""Evaluation across processes (issue 22 item 4): `torchrun --nproc_per_node 2 scripts/evaluate_model.py`.

Two processes on the CPU (gloo), the stand-in in float32: the batches are formed over all questions,
dealt to the processes and gathered, each seeded by its global index, so the report equals the
one-process report (tokens/s aside: it is a measurement), greedy and sampled. 5 questions in
batches of 2 split unevenly (rank 0 runs batches 0 and 2, rank 1 batch 1). Rank 0 alone speaks
and writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, WARM_CLIENT, run_script, warm_client_env

SCRIPT = REPO / "scripts" / "evaluate_model.py"
SFT_VAL = REPO / "tests" / "fixtures" / "eval_sft_val.jsonl"
FILES = ("predictions.jsonl", "summary.json", "report.md", "report.csv")


def _evaluate(launcher: list[str], tiny_model_dir, out, decoding: list[str]) -> subprocess.CompletedProcess:
    """``launcher`` [] runs the script in one process (conftest.run_script), else under that launcher."""
    args = ["--base_model", str(tiny_model_dir), "--adapter", "", "--data", str(SFT_VAL),
            "--num_samples", "5", "--batch_size", "2", "--max_new_tokens", "16", *decoding,
            "--output_dir", str(out), "--run_name", "run"]
    env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not launcher:
        proc = run_script(SCRIPT, *args, cwd=out.parent, env=env)
    else:  # torchrun's workers are forks of the warm Python (tests/warm_client.py); tests/training/test_ddp.py
        # runs one plain torchrun command (new interpreters)
        proc = subprocess.run([*launcher, str(WARM_CLIENT), str(SCRIPT), *args], cwd=out.parent,
                              env={**os.environ, **env, **warm_client_env()}, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, f"exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _without_speed(path) -> str:
    """A report file with its tokens/s figures taken out (wall-clock measurements, never equal twice)."""
    if path.name == "summary.json":
        summary = json.loads(path.read_text(encoding="utf-8"))
        for block in summary["models"].values():
            block.pop("tokens_per_s")
        return json.dumps(summary, sort_keys=True)
    return "\n".join(line for line in path.read_text(encoding="utf-8").splitlines() if "tokens_per_s" not in line)


@pytest.mark.parametrize("decoding", [["--no_do_sample"], ["--n_samples", "2", "--seed", "7"]],
                         ids=["greedy", "sampled"])
def test_two_process_report_equals_the_one_process_report(tiny_model_dir, tmp_path, decoding):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _evaluate([], tiny_model_dir, one, decoding)
    proc = _evaluate([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                     tiny_model_dir, two, decoding)
    for name in FILES:
        assert _without_speed(two / "run" / name) == _without_speed(one / "run" / name), name
    predictions = (two / "run" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 5 * (2 if "--n_samples" in decoding else 1)
    if "--n_samples" in decoding:  # sampled: the two samples of a question really differ somewhere
        texts = [json.loads(line)["prediction"] for line in predictions]
        assert texts[:5] != texts[5:]
    # rank 0 speaks for the job: one [decoding] line, one table, one [write]; rank 1 writes nothing
    assert proc.stdout.count("[decoding]") == 1 and proc.stdout.count("[write]") == 1
    assert sorted(p.name for p in two.iterdir()) == ["run"]


def test_vllm_is_refused_under_torchrun_in_one_line(tmp_path):
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--backend", "vllm", "--data", str(SFT_VAL)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--backend vllm under torchrun" in proc.stderr and "--tensor_parallel_size" in proc.stderr
