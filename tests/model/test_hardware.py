"""Start-up that fits the machine (r1_sft.model.hardware, precision.pick_device) and the attention choice, by simulation.

Simulated: what ``nvidia-smi`` prints (a fake executable on PATH), the ``/proc/driver/nvidia/version``
file, and torch's answers (``cuda.is_available``, the GPU's capability and name, the build's
``get_arch_list`` and ``version.cuda``). The PyPI torch 2.13.0 build is CUDA 13.0, driver R580+,
kernels sm_75..sm_121 (shared FACTS).
"""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from r1_sft.cli import UserError
from r1_sft.model import hardware, precision

from conftest import REPO

CU130_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_103", "sm_120", "sm_121"]
CU126_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
PROC_550 = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
            "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n")
PROC_OPEN_535 = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.183.01  Release Build  "
                 "(dvs-builder@U16-I3-B03-4-3)  Sun May 12 19:39:15 UTC 2024\n")


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Simulate a machine: ``machine(smi=..., proc=..., cuda=..., capability=..., archs=..., torch_cuda=...)``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no real nvidia-smi on this machine either way
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    proc_file = tmp_path / "nvidia_version"
    monkeypatch.setattr(hardware, "NVIDIA_PROC_VERSION", proc_file)

    def simulate(smi: str | None = None, proc: str | None = None, cuda: bool = False, capability=(9, 0),
                 archs=CU130_ARCHS, torch_cuda: str | None = "13.0", name: str = "NVIDIA H100 80GB HBM3"):
        if smi is not None:
            script = bin_dir / "nvidia-smi"
            lines = "".join(f"echo '{line}'\n" for line in smi.splitlines())  # shell builtins only: PATH is bare
            script.write_text(f"#!/bin/sh\n{lines}", encoding="utf-8")
            script.chmod(0o755)
        if proc is not None:
            proc_file.write_text(proc, encoding="utf-8")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.version, "cuda", torch_cuda)
        monkeypatch.setattr(torch.version, "hip", None)
    return simulate


def test_driver_too_old_for_the_cu130_build_is_one_line_naming_driver_build_and_fix(machine):
    machine(smi="550.54.15, Tesla T4\n550.54.15, Tesla T4")
    with pytest.raises(UserError) as err:
        precision.pick_device()
    message = str(err.value)
    assert "\n" not in message
    assert "driver 550.54.15" in message and "Tesla T4" in message
    assert "CUDA 13.0 build needs driver R580" in message
    assert "--index-url https://download.pytorch.org/whl/cu126" in message and "--device cpu" in message
    # the same command the README and docs/gpus.md document for an older driver, word for word
    assert hardware.CUDA12_INSTALL in message
    for doc in ("README.md", "docs/gpus.md", "docs/faq.md"):
        assert hardware.CUDA12_INSTALL in (REPO / doc).read_text(encoding="utf-8"), doc


def test_driver_known_only_from_proc_when_nvidia_smi_is_absent(machine):
    machine(proc=PROC_OPEN_535)
    with pytest.raises(UserError, match=r"driver 535\.183\.01, but torch .* needs driver R580"):
        precision.pick_device("auto")
    assert hardware.visible_nvidia_driver().version == "535.183.01"


def test_proc_file_of_the_proprietary_module_gives_its_version(machine):
    machine(proc=PROC_550)
    assert hardware.visible_nvidia_driver() == hardware.NvidiaDriver("550.54.15", ())


def test_driver_older_than_any_cuda_12_says_upgrade_the_driver(machine):
    machine(smi="470.256.02, Tesla V100-SXM2-32GB")
    with pytest.raises(UserError, match="upgrade the NVIDIA driver") as err:
        precision.pick_device()
    assert "cu126" not in str(err.value)  # a CUDA 12 build would not run on R470 either


def test_cpu_only_torch_beside_a_gpu_says_install_the_cuda_build(machine):
    machine(smi="580.65.06, NVIDIA H100 80GB HBM3", torch_cuda=None)
    with pytest.raises(UserError, match=r"CPU-only build.*pip install torch==2\.13\.0 \(PyPI's Linux wheel is CUDA 13\.0"):
        precision.pick_device()


def test_v100_under_the_cu130_build_has_no_kernels(machine):
    machine(cuda=True, capability=(7, 0), name="Tesla V100-SXM2-32GB")  # torch says available, warns, then fails
    with pytest.raises(UserError) as err:
        precision.pick_device()
    message = str(err.value)
    assert "\n" not in message
    assert "Tesla V100-SXM2-32GB" in message and "compute capability 7.0" in message and "sm_75" in message
    assert hardware.CUDA12_INSTALL in message and "--device cpu" in message
    # the explicit CPU opt-in still works on that machine
    assert precision.pick_device("cpu") == "cpu"


def test_v100_under_a_cu126_build_and_h100_under_cu130_are_used(machine, monkeypatch):
    machine(cuda=True, capability=(7, 0), archs=CU126_ARCHS, torch_cuda="12.6")
    assert precision.pick_device() == "cuda"
    machine(cuda=True, capability=(9, 0))
    assert precision.pick_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun: each process its own GPU
    assert precision.pick_device() == "cuda:1"


@pytest.mark.parametrize("capability, archs, usable", [
    ((8, 9), ["sm_80", "sm_86"], True),  # sm_86 cubin runs on an 8.9 card (same major, higher minor)
    ((8, 0), ["sm_86"], False),  # not on a lower minor
    ((9, 0), ["sm_90a"], True), ((10, 0), ["sm_90a", "sm_90"], False),  # "a" cubins: that exact GPU only
    ((12, 1), ["sm_90", "compute_90"], True),  # PTX is compiled at load time for newer GPUs
    ((7, 0), ["compute_75"], False),
])
def test_kernel_compatibility_rules(capability, archs, usable):
    assert hardware.has_kernels_for(capability, archs) is usable


def test_no_gpu_at_all_is_the_cpu(machine):
    machine()
    assert hardware.visible_nvidia_driver() is None
    assert precision.pick_device() == "cpu" and precision.pick_device("cpu") == "cpu"
    with pytest.raises(UserError, match="--device cuda: this machine shows no NVIDIA GPU"):
        precision.pick_device("cuda")


def test_explicit_cpu_on_a_gpu_machine_whatever_its_driver(machine):
    machine(smi="550.54.15, Tesla T4")
    assert precision.pick_device("cpu") == "cpu"


def test_gpus_hidden_on_purpose_are_no_gpu(machine, monkeypatch):
    machine(smi="550.54.15, Tesla T4", proc=PROC_550)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert precision.pick_device() == "cpu"


def test_failing_nvidia_smi_falls_back_to_the_proc_file(machine, tmp_path):
    machine(proc=PROC_550)
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'Failed to initialize NVML: Driver/library version mismatch'\nexit 18\n")
    smi.chmod(0o755)
    assert hardware.visible_nvidia_driver() == hardware.NvidiaDriver("550.54.15", ())


def test_unknown_device_word_is_one_line():
    with pytest.raises(UserError, match=r"--device 'gpu': use one of auto, cuda, cpu"):
        precision.pick_device("gpu")


def test_the_error_reaches_the_user_as_one_line_through_a_script(tmp_path):
    """A stage run on a machine with an old driver: ``error: ...`` on stderr, exit 2, no traceback."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho '550.54.15, Tesla T4'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    code = ("import torch; torch.version.cuda = '13.0'; torch.cuda.is_available = lambda: False\n"
            "from r1_sft.cli import cli_main\nfrom r1_sft.model.precision import pick_device\n"
            "cli_main(pick_device)()\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: an NVIDIA GPU is visible (Tesla T4), driver 550.54.15")


# ---- attention ---------------------------------------------------------------------------------

@pytest.fixture
def flash_attn(monkeypatch):
    """Simulate the flash-attn package: ``flash_attn(None)`` absent, ``flash_attn("2.8.3")`` installed."""
    import importlib.metadata
    import importlib.util

    real_find_spec, real_version = importlib.util.find_spec, importlib.metadata.version

    def install(version: str | None):
        def find_spec(name, *args, **kwargs):
            if name == "flash_attn":
                return types.SimpleNamespace(name=name) if version else None
            return real_find_spec(name, *args, **kwargs)

        def dist_version(name):
            if name.replace("_", "-") == "flash-attn":
                if version is None:
                    raise importlib.metadata.PackageNotFoundError(name)
                return version
            return real_version(name)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        monkeypatch.setattr(importlib.metadata, "version", dist_version)
    return install


@pytest.mark.parametrize("device, capability, dtype, package, expected", [
    ("cuda", (9, 0), torch.bfloat16, "2.8.3", "flash_attention_2"),  # H100, bf16, FA2
    ("cuda:1", (8, 0), torch.float16, "2.8.3", "flash_attention_2"),  # A100, fp16
    ("cuda", (7, 5), torch.float16, "2.8.3", "sdpa"),  # T4: FA2 refuses capability < 8.0
    ("cuda", (7, 0), torch.float16, "2.8.3", "sdpa"),  # V100
    ("cuda", (9, 0), torch.float32, "2.8.3", "sdpa"),  # fp32 inference: FA2 runs on half precision only
    ("cuda", (9, 0), None, "2.8.3", "sdpa"),  # dtype unknown
    ("cuda", (9, 0), torch.bfloat16, None, "sdpa"),  # package absent
    ("cuda", (9, 0), torch.bfloat16, "1.0.9", "sdpa"),  # not flash-attn 2
    ("cpu", (9, 0), torch.bfloat16, "2.8.3", "sdpa"),
])
def test_flash_attention_only_where_it_can_run(machine, flash_attn, device, capability, dtype, package, expected):
    machine(cuda=True, capability=capability)
    flash_attn(package)
    assert precision.pick_attn_implementation(device, dtype) == expected


def test_from_pretrained_kwargs_passes_the_chosen_dtype_to_the_attention_choice(machine, flash_attn,
                                                                                 tiny_model_dir):
    machine(cuda=True, capability=(9, 0))
    flash_attn("2.8.3")
    from r1_sft.model.loading import from_pretrained_kwargs
    from r1_sft.model.plan import make_plan

    bf16 = from_pretrained_kwargs(make_plan(tiny_model_dir, device="cuda", for_training=True))
    assert bf16["dtype"] == torch.bfloat16 and bf16["attn_implementation"] == "flash_attention_2"
    fp32 = from_pretrained_kwargs(make_plan(tiny_model_dir, device="cuda", dtype=torch.float32))
    assert fp32["attn_implementation"] == "sdpa"
