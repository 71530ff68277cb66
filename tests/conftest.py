"""Shared fixtures: the repository root, a runner for stage scripts, and the tiny R1 model.

The tiny model is built once per test session (offline, deterministic) through the real
`download_model/download_model.py --tiny` command, into a temporary folder.
"""
from __future__ import annotations

import atexit
import fcntl
import functools
import importlib.util
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from warm_python import MALLOC_VARIABLE, WarmPython, keep_freed_memory

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Tiny models are overhead-bound: one thread per process is faster than two fighting over 2 cores,
# and it keeps results identical from run to run. Set before any test imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if os.environ.get(MALLOC_VARIABLE) == "keep":
    keep_freed_memory()  # the tests that run in this process, as in the stage scripts' runs


def run_script(script: str, *args: str, cwd: str | Path | None = None, input: str | None = None,
               timeout: int = 600, env: dict | None = None, check: bool = False, fresh: bool = False):
    """Run a stage script as a user would (``python path/to/script.py ...``); returns CompletedProcess.

    The script runs in a fork of this worker's warm Python (tests/warm_python.py: the libraries already
    imported) unless ``fresh`` is set, its environment differs from the warm one's, or
    R1_SFT_TEST_FRESH_PYTHON=1 asks for a new interpreter every time.
    """
    full_env, argv = _script_env(env), _script_argv(script, args)
    warm = None if fresh else _warm_python(full_env)
    if warm is not None:
        proc = warm.run(argv, cwd=str(cwd or REPO), input=input, timeout=timeout, env=full_env)
    else:
        proc = subprocess.run([sys.executable, *argv], cwd=cwd or REPO, input=input, capture_output=True,
                              text=True, timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def _script_env(env: dict | None = None) -> dict:
    """A stage script's environment: this process's, unbuffered output, then ``env`` (a None value removes)."""
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


# glibc's allocator as users run it, without `make test`'s R1_SFT_TEST_MALLOC=keep (warm_python.MALLOC_VARIABLE:
# freed blocks kept for the next step). For the tests that measure a run's memory.
GLIBC_MALLOC = {MALLOC_VARIABLE: None}


def _script_argv(script, args) -> list[str]:
    return [str(REPO / script), *map(str, args)]


class ScriptRun:
    """A stage script started by :func:`start_script`: ``pid``, ``running()``, ``kill()``, ``wait()``."""

    def __init__(self, script: str, *args, cwd=None, env: dict | None = None):
        full_env, argv = _script_env(env), _script_argv(script, args)
        self.warm = _warm_python(full_env)
        if self.warm is not None:
            self.pid = self.warm.start(argv, cwd=str(cwd or REPO), input=None, env=full_env)
        else:
            self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd or REPO, env=full_env, text=True,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.pid = self.proc.pid

    def running(self) -> bool:
        return self.warm.running() if self.warm is not None else self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash or an out-of-memory kill would end it (nothing if it has ended)."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float = 600) -> subprocess.CompletedProcess:
        if self.warm is not None:
            return self.warm.finish(timeout)
        stdout, stderr = self.proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, stderr)


def start_script(script: str, *args, cwd=None, env: dict | None = None) -> ScriptRun:
    """Start a stage script and return at once (as ``subprocess.Popen``), through the warm Python where it can."""
    return ScriptRun(script, *args, cwd=cwd, env=env)


WARM_CLIENT = REPO / "tests" / "warm_client.py"


def warm_python_command() -> Path:
    """A program that runs ``SCRIPT ARGS`` as this Python would, through tests/warm_client.py (for a shell
    script's ``$PYTHON``): this interpreter itself, not one a ``python3`` on PATH would find."""
    warm = _warm_python(_script_env())
    if warm is None:
        return Path(sys.executable)
    path = warm.folder / "python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{WARM_CLIENT}" "$@"\n', encoding="utf-8")
    path.chmod(0o755)
    return path


def warm_client_env() -> dict:
    """The variables that let tests/warm_client.py (``python tests/warm_client.py SCRIPT ARGS``, or the file run
    as a program) reach this worker's warm Python; without them it runs a fresh interpreter."""
    warm = _warm_python(_script_env())
    return {"R1_SFT_WARM_EXE": sys.executable, **({"R1_SFT_WARM_SOCKET": str(warm.socket)} if warm else {})}


def popen_script(script: str, *args, env: dict | None = None, **popen_kwargs) -> subprocess.Popen:
    """``subprocess.Popen`` of ``python SCRIPT ARGS`` for a test that talks to the running script (a server, the
    interactive chat): through tests/warm_client.py, so the script runs in a fork of the warm Python on this
    Popen's own stdin, stdout and stderr, and gets the signals sent to it (SIGKILL excepted: it ends the client
    alone). ``env`` as in :func:`run_script`."""
    full_env = {**_script_env(env), **warm_client_env()}
    _warm_python(full_env)  # warns where the client will start a new interpreter
    return subprocess.Popen([sys.executable, str(WARM_CLIENT), *_script_argv(script, args)], env=full_env,
                            **popen_kwargs)


_WARM: list[WarmPython] = []  # this worker's, once started


def _start_warm_python() -> None:
    if not _WARM and os.environ.get("R1_SFT_TEST_FRESH_PYTHON") != "1":
        _WARM.append(WarmPython(_script_env()))
        atexit.register(_WARM[0].close)


class NewInterpreterWarning(UserWarning):
    """A stage script ran in a new interpreter though the test did not ask for one (``fresh``): its environment
    differs from the warm Python's in a variable a preloaded library might read at import, so it paid the
    libraries' imports again (about 8 s of CPU). Leave such variables out of a run's ``env``, or name the
    suite's own R1_SFT_TEST_* (tests/warm_python.PER_RUN_PREFIXES)."""


def _warm_python(env: dict) -> WarmPython | None:
    """This worker's warm Python (started on first use); None where a fresh interpreter must run the script
    (with a :class:`NewInterpreterWarning` when the environment is why)."""
    _start_warm_python()
    if not _WARM:
        return None
    keys = _WARM[0].differing(env)
    if keys:
        warnings.warn(f"a new interpreter: the environment differs from the warm Python's in {', '.join(keys)}",
                      NewInterpreterWarning, stacklevel=3)
        return None
    return _WARM[0] if _WARM[0].alive() else None


def pytest_sessionstart(session):
    """Start the warm Python while the first tests collect and run (it takes a few seconds to import); not in
    pytest-xdist's controller, which runs no test."""
    config = session.config
    if not config.option.collectonly and (config.getoption("dist", "no") == "no" or hasattr(config, "workerinput")):
        _start_warm_python()


@functools.cache
def script_config(script: str) -> type:
    """The ``Config`` dataclass of a stage script: its constants are the defaults users run with."""
    spec = importlib.util.spec_from_file_location(f"_stage_{Path(script).stem}", REPO / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)  # defines Config and main; runs nothing (__name__ is not "__main__")
    return module.Config


def sft_config(**overrides):
    """scripts/train_stf_r1_train_val.py's settings with ``overrides``, as its command line would give them."""
    return script_config("scripts/train_stf_r1_train_val.py")(**overrides)


def save_random_adapter(base_dir: Path, out: Path, *, r: int = 4, alpha: int = 8, targets=("q_proj", "v_proj"),
                        seed: int = 0) -> Path:
    """A LoRA adapter with random (non-zero) A and B on ``base_dir``, so that "tuned" answers differently from
    "base" (peft's default B = 0 would be a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets if isinstance(targets, str) else list(targets),
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def random_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """One random rank-4 LoRA adapter on q/v of the stand-in, shared by the tests of a worker."""
    return save_random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter") / "best_model")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the same float summation order in every run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """The offline tiny R1 stand-in, built once for the whole session.

    ``make test`` builds it first through the real command (``download_model/download_model.py --tiny``,
    into model/tiny_r1, as ``make demo`` does) and passes it in R1_SFT_TINY_MODEL, so that neither test
    worker waits while the other builds; without that variable (plain ``pytest``) the first worker
    builds it here, through the same command.
    """
    prebuilt = os.environ.get("R1_SFT_TINY_MODEL")
    if prebuilt and (Path(prebuilt) / "config.json").is_file():
        return Path(prebuilt)
    # pytest-xdist workers share the parent of their base temp folders: the first worker builds the
    # stand-in there (under a file lock) and the others wait for it instead of building their own.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "tiny_r1_shared" / "tiny_r1"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "config.json").is_file():
            run_script("download_model/download_model.py", "--tiny", "--local_dir", out, check=True)
    return out


# The slowest files first (seconds of CPU on 2 cores, from `pytest --durations=0`): pytest-xdist's
# loadfile mode with --no-loadscope-reorder (as `make test` runs it; by default it orders files by their
# number of tests) hands whole files to the two workers in collection order, so the long end-to-end
# files start early and the short ones fill in, and both workers finish together.
SLOW_FILES = (
    "training/test_precision_runs.py", "evaluation/test_evaluate.py", "training/test_fsdp.py",
    "rl/test_grpo_learning.py", "shared/test_notebook.py", "training/test_distill.py", "model/test_models.py",
    "training/test_ddp.py", "training/test_memory_estimate.py", "training/test_training.py", "training/test_loss.py",
    "rl/test_grpo.py", "training/test_plan.py", "inference/test_web_page.py", "evaluation/test_evaluate_ddp.py",
    "training/test_first_run.py", "inference/test_qlora_base.py", "training/test_training_checks.py",
    "inference/test_serve.py", "inference/test_generation.py", "training/test_lm_head_lora.py",
    "inference/test_chat.py", "evaluation/test_report_html.py", "data/test_generate_teacher.py",
    "training/test_guard.py", "training/test_batching.py", "evaluation/test_statistics.py",
    "training/test_fp16_loss.py", "training/test_no_full_logits.py", "model/test_merge.py",
    "training/test_parallel.py", "model/test_precision.py", "model/test_hardware.py",
)


def pytest_addoption(parser):
    parser.addoption("--stand-in", choices=("any", "none", "only"), default="any",
                     help="none: only the tests that need no stand-in model (they run while `make test` builds it); "
                          "only: only the tests that need it; any: all (default)")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        path = Path(str(item.fspath)).relative_to(REPO / "tests").as_posix()
        return SLOW_FILES.index(path) if path in SLOW_FILES else len(SLOW_FILES)

    which = config.getoption("--stand-in")
    if which != "any":
        keep = [item for item in items if ("tiny_model_dir" in getattr(item, "fixturenames", ())) == (which == "only")]
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep
    items.sort(key=rank)  # stable: tests keep their order inside a file
