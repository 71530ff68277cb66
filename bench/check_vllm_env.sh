#!/usr/bin/env bash
# Check that requirements-vllm.txt resolves, without installing anything: pip's resolver with --dry-run
# and --ignore-installed (as into an empty environment). Writes bench/results/vllm_env.json (what resolved,
# which versions differ from requirements.txt) beside pip's own report and log. Run by hand: pip 23
# downloads the wheels it reads metadata from (vllm and the CUDA torch: about 1 GB; minutes).
#
#   bash bench/check_vllm_env.sh
#   PYTHON=python3.12 bash bench/check_vllm_env.sh requirements-vllm.txt
#
# pip resolves against the indexes it is configured with. A CPU-only torch from a local folder or mirror
# (a "+cpu" version) would hide the CUDA build's own pins (triton, nvidia-*): the summary says so, and
# `PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= bash bench/check_vllm_env.sh` asks PyPI alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
REQUIREMENTS=${1:-requirements-vllm.txt}
OUT_DIR=bench/results
mkdir -p "$OUT_DIR"
report="$OUT_DIR/vllm_env.pip_report.json"
log="$OUT_DIR/vllm_env.pip.log"
rm -f "$report"
echo "[vllm-env] pip's resolver on $REQUIREMENTS (dry run, nothing installed); log: $log"
status=0
"$PYTHON" -m pip install --dry-run --ignore-installed --report "$report" -r "$REQUIREMENTS" > "$log" 2>&1 || status=$?

"$PYTHON" - "$REQUIREMENTS" "$report" "$log" "$status" "$OUT_DIR/vllm_env.json" <<'PY'
import datetime
import json
import os
import platform
import re
import sys

requirements, report_path, log_path, status, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()


def pins(path):
    found = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if m:
            found[norm(m.group(1))] = m.group(2)
    return found


resolved = {}
if status == 0 and os.path.exists(report_path):
    report = json.load(open(report_path, encoding="utf-8"))
    resolved = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}
project = pins("requirements.txt")
log = open(log_path, encoding="utf-8", errors="replace").read()
conflict = [line.strip() for line in log.splitlines()
            if "depends on" in line or "requested" in line or line.startswith("ERROR")]
key = ("vllm", "torch", "transformers", "triton", "numpy", "tokenizers", "peft", "accelerate", "huggingface-hub")
summary = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": f"{platform.node()} {platform.machine()}, Python {platform.python_version()}",
    "requirements": requirements, "resolved": status == 0, "pip_exit_code": status,
    "packages": len(resolved), "key_versions": {k: resolved.get(k) for k in key if k in resolved},
    "differs_from_requirements_txt": {k: {"project": v, "vllm_env": resolved[k]} for k, v in sorted(project.items())
                                      if k in resolved and resolved[k] != v},
    "cpu_torch_note": ("the resolved torch is a CPU-only build (a local folder or mirror): the CUDA build's own "
                       "pins were not checked; rerun with PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=")
    if "+cpu" in resolved.get("torch", "") else None,
    "conflict": conflict[-20:] if status else None,
}
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8") as fh:
    json.dump(summary, fh, indent=2)
    fh.write("\n")
os.replace(tmp, out)
if status == 0:
    print(f"[vllm-env] resolves: {summary['packages']} packages; " +
          ", ".join(f"{k} {v}" for k, v in summary["key_versions"].items()))
    print("[vllm-env] differs from requirements.txt: " + (", ".join(
        f"{k} {d['project']} -> {d['vllm_env']}" for k, d in summary["differs_from_requirements_txt"].items()) or "nothing"))
    if summary["cpu_torch_note"]:
        print(f"[vllm-env] note: {summary['cpu_torch_note']}")
else:
    print(f"[vllm-env] does NOT resolve (pip exit {status}):", *conflict[-8:], sep="\n  ")
print(f"[write] {out}")
PY
exit "$status"
