"""A run's decisions are made once (r1_sft/model/plan.py): one training run through the real script resolves
its model folder and decides its device and precision exactly once, prints the plan once, and
run_info.json's plan is what ran (the dry run's one plan line: tests/training/test_training.py)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import REPO, run_script

TRAIN = REPO / "tests/fixtures/sft_tiny_train.jsonl"
VAL = REPO / "tests/fixtures/sft_tiny_val.jsonl"

# Runs the stage script (through run_script, as any other run) with every decision function wrapped, wherever it
# was imported (module attribute or `from` import), and reports the calls and what the loader really loaded.
SPIED_RUN = """
import json, runpy, sys
sys.path.insert(0, sys.argv[1])
import r1_sft.training.run, r1_sft.training.checks, r1_sft.model.loading  # the run's modules, before the spies
from r1_sft.model import folders, loading, precision

calls = {"resolve_model_folder": 0, "decide_precision": 0, "pick_device": 0}
loaded = []

def wrap(module, name, after=None):
    original = getattr(module, name)
    def spy(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        result = original(*args, **kwargs)
        if after:
            after(result)
        return result
    for mod in list(sys.modules.values()):
        if getattr(mod, "__dict__", {}).get(name) is original:
            setattr(mod, name, spy)

def record(result):
    model = result[0]
    frozen = next(p for n, p in model.named_parameters() if "embed_tokens" in n)
    loaded.append({"dtype": str(frozen.dtype).removeprefix("torch."), "device": frozen.device.type})

for name in ("resolve_model_folder",):
    wrap(folders, name)
for name in ("decide_precision", "pick_device"):
    wrap(precision, name)
wrap(loading, "load_model", record)
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("SPIED " + json.dumps({"calls": calls, "loaded": loaded}), flush=True)
"""


def spied_run(folder: Path, *args, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    spy = folder / "spied_run.py"
    spy.write_text(SPIED_RUN, encoding="utf-8")
    proc = run_script(spy, REPO, *args, cwd=REPO, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SPIED ")]
    return proc, json.loads(lines[-1][6:]) if lines else {}


def test_one_training_run_decides_once_and_records_what_ran(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc, spied = spied_run(tmp_path, REPO / "scripts/train_stf_r1_train_val.py",
                      "--model_path", tiny_model_dir, "--train_file", TRAIN, "--val_file", VAL, "--output_dir", out,
                      "--max_steps", "2", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
                      "--max_length", "256", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                      "--no_gradient_checkpointing", "--lora_target_modules", "q_proj,v_proj", "--use_4bit",
                      "--device", "cpu", "--precision", "bf16", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert spied["calls"]["resolve_model_folder"] == 1, spied
    assert spied["calls"]["decide_precision"] == 1, spied
    assert spied["calls"]["pick_device"] == 1, spied
    assert len(spied["loaded"]) == 1, spied  # one model load: the frozen base under LoRA
    assert sum(line.startswith("[plan] ") for line in proc.stdout.splitlines()) == 1, proc.stdout
    plan = json.loads((out / "training_logs/run_info.json").read_text(encoding="utf-8"))["plan"]
    assert (plan["dtype"], plan["device"]) == (spied["loaded"][0]["dtype"], spied["loaded"][0]["device"]) \
        == ("bfloat16", "cpu")
    assert plan["precision"] == "bf16" and plan["use_4bit"] is True and plan["engine"] == "one process"
    assert plan["model"]["kind"] == "base" and plan["world_size"] == 1
    # the adapters carry the same record
    assert json.loads((out / "best_model/run_info.json").read_text(encoding="utf-8"))["plan"] == plan


def test_the_spy_counts_a_second_decision(tiny_model_dir, tmp_path):
    """The check above can fail: a script that decides twice is caught."""
    twice = tmp_path / "twice.py"
    twice.write_text("import sys\nsys.path.insert(0, %r)\nfrom r1_sft.model.plan import make_plan\n"
                     "make_plan(%r)\nmake_plan(%r)\n" % (str(REPO), str(tiny_model_dir), str(tiny_model_dir)))
    proc, spied = spied_run(tmp_path, twice)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert spied["calls"]["resolve_model_folder"] == 2 and spied["calls"]["decide_precision"] == 2, spied
