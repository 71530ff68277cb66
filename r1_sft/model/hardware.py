"""Is the GPU usable: an NVIDIA GPU that the installed torch can run on, or a one-line error saying why not.

PyPI's ``torch==2.13.0`` for Linux is the CUDA 13.0 build: it needs an NVIDIA driver of the R580
series or newer and carries kernels for sm_75 to sm_121, none for sm_70 (V100). With an older
driver ``torch.cuda.is_available()`` is simply False, and a stage that falls back to the CPU
would train for days in fp32 without saying why. So a GPU that the machine shows (``nvidia-smi``,
``/proc/driver/nvidia/version``) but torch cannot use is a :class:`~r1_sft.cli.UserError` naming
the driver, the torch CUDA build and the way out (docs/gpus.md); so is a GPU whose compute
capability has no kernels in the installed torch (``torch.cuda.get_arch_list()``). Training on the
CPU beside a GPU happens only when asked (``precision.pick_device("cpu")``).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from r1_sft.cli import UserError

NVIDIA_PROC_VERSION = Path("/proc/driver/nvidia/version")  # present whenever the NVIDIA kernel module is loaded
# Oldest driver branch each CUDA major version runs on (NVIDIA's minor-version compatibility table, Linux).
MIN_DRIVER_FOR_CUDA = {13: 580, 12: 525, 11: 450}
GUIDE = "docs/gpus.md"
# The documented way out for a driver older than R580 (and for V100): the pinned torch from PyTorch's CUDA 12.6
# index, replacing PyPI's CUDA 13.0 build after `pip install -r requirements.txt` (README, docs/gpus.md).
CUDA12_INSTALL = ("pip install --force-reinstall --no-deps torch==2.13.0 "
                  "--index-url https://download.pytorch.org/whl/cu126")
CPU_OPT_IN = "or pass --device cpu to run on the CPU on purpose"


@dataclass(frozen=True)
class NvidiaDriver:
    """What the machine shows of its NVIDIA GPUs, without asking torch."""

    version: str | None  # "550.54.15"; None when only the kernel module's presence is known
    gpus: tuple[str, ...]  # GPU names from nvidia-smi (empty when it did not answer)


def visible_nvidia_driver(proc_version: Path | None = None) -> NvidiaDriver | None:
    """The NVIDIA driver the machine shows (``nvidia-smi``, else ``/proc/driver/nvidia/version``), or None.

    ``CUDA_VISIBLE_DEVICES`` set to "" or "-1" hides the GPUs on purpose: then None.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return None
    smi = _nvidia_smi()
    if smi is not None:
        return smi
    try:
        text = (proc_version or NVIDIA_PROC_VERSION).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)*)\s", text)
    return NvidiaDriver(match.group(1) if match else None, ())


def _nvidia_smi() -> NvidiaDriver | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    rows = [line.split(",", 1) for line in proc.stdout.splitlines() if "," in line]
    if proc.returncode != 0 or not rows:
        return None  # e.g. "driver/library version mismatch": the /proc file still tells the driver
    return NvidiaDriver(rows[0][0].strip(), tuple(name.strip() for _, name in rows))


def driver_branch(version: str | None) -> int | None:
    """``"550.54.15"`` -> 550."""
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def torch_build() -> str:
    """``torch 2.13.0 (CUDA 13.0 build)`` / ``torch 2.13.0+cpu (CPU-only build)``, for messages."""
    cuda = torch.version.cuda
    return f"torch {torch.__version__} ({f'CUDA {cuda} build' if cuda else 'CPU-only build'})"


def install_hint(branch: int | None) -> str:
    """How to get a torch that runs on a driver of this branch (checked facts only; details in docs/gpus.md)."""
    cuda = torch.version.cuda
    cuda_major = int(cuda.split(".")[0]) if cuda else None
    if branch is not None and branch < MIN_DRIVER_FOR_CUDA[12]:
        return f"upgrade the NVIDIA driver (R{MIN_DRIVER_FOR_CUDA[13]}+ for the pinned CUDA 13.0 build; see {GUIDE})"
    if cuda_major is None or (branch is not None and branch >= MIN_DRIVER_FOR_CUDA[13]):
        return "install the CUDA build: pip install torch==2.13.0 (PyPI's Linux wheel is CUDA 13.0, driver R580+)"
    return (f"upgrade the driver to R{MIN_DRIVER_FOR_CUDA[13]}+, or install the CUDA 12.6 build of the pinned torch, "
            f"which runs on R{MIN_DRIVER_FOR_CUDA[12]}+: {CUDA12_INSTALL} (see {GUIDE})")


def unusable_driver_message(driver: NvidiaDriver) -> str:
    """The one line for: a GPU is visible but ``torch.cuda.is_available()`` is False."""
    branch = driver_branch(driver.version)
    gpus = f" ({', '.join(sorted(set(driver.gpus)))})" if driver.gpus else ""
    cuda = torch.version.cuda
    need = MIN_DRIVER_FOR_CUDA.get(int(cuda.split(".")[0])) if cuda else None
    if cuda is None:
        why = "it is a CPU-only build"
    elif branch is not None and need is not None and branch < need:
        why = f"the CUDA {cuda} build needs driver R{need} or newer"
    else:
        why = "torch.cuda.is_available() is False (check that nvidia-smi runs and CUDA_VISIBLE_DEVICES)"
    return (f"an NVIDIA GPU is visible{gpus}, driver {driver.version or 'version unknown'}, but {torch_build()} "
            f"cannot use it: {why}; {install_hint(branch)}; {CPU_OPT_IN}")


def _arch_capability(arch: str) -> tuple[str, int, int, str] | None:
    """``"sm_90a"`` -> ("sm", 9, 0, "a"); ``"compute_120"`` -> ("compute", 12, 0, "")."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
    return (match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)) if match else None


def has_kernels_for(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of ``capability`` can run code built for ``arch_list`` (``torch.cuda.get_arch_list()``).

    A cubin ``sm_XY`` runs on the same major version with minor >= Y; ``sm_XYa`` only on X.Y itself;
    PTX ``compute_XY`` is compiled at load time for any capability >= X.Y. An empty list (a CPU
    build, or nothing to judge by) is not held against the GPU.
    """
    if not arch_list:
        return True
    major, minor = capability
    for arch in arch_list:
        parsed = _arch_capability(arch)
        if parsed is None:
            continue
        kind, a_major, a_minor, suffix = parsed
        if kind == "compute" and (major, minor) >= (a_major, a_minor):
            return True
        if kind == "sm" and major == a_major and (minor == a_minor if suffix else minor >= a_minor):
            return True
    return False


def no_kernels_message(index: int, name: str, capability: tuple[int, int], arch_list: list[str]) -> str:
    """The one line for: a GPU whose compute capability the installed torch has no kernels for."""
    major, minor = capability
    hint = (f"install the CUDA 12.6 build of the pinned torch, which carries sm_70: {CUDA12_INSTALL}"
            if (major, minor) == (7, 0) else "install a torch build whose CUDA version supports this GPU")
    return (f"GPU {index} ({name}, compute capability {major}.{minor}, sm_{major}{minor}) has no kernels in "
            f"{torch_build()}, built for {' '.join(arch_list)}: {hint} (see {GUIDE}); {CPU_OPT_IN}")


def usable_cuda(index: int = 0) -> bool:
    """True when torch can run on CUDA device ``index``; False when the machine shows no NVIDIA GPU.

    A GPU the machine shows but torch cannot use (old driver, CPU-only torch, a capability without
    kernels in this build) raises the one-line :class:`UserError` instead of answering False.
    """
    if torch.cuda.is_available():
        if torch.version.hip:  # ROCm builds name their architectures differently (gfx...): torch decides
            return True
        capability = tuple(torch.cuda.get_device_capability(index))
        arch_list = list(torch.cuda.get_arch_list())
        if not has_kernels_for(capability, arch_list):
            raise UserError(no_kernels_message(index, torch.cuda.get_device_name(index), capability, arch_list))
        return True
    driver = visible_nvidia_driver()
    if driver is not None:
        raise UserError(unusable_driver_message(driver))
    return False
