"""A Python that imports the heavy libraries once and forks a child per stage-script run.

Importing torch, transformers, peft, datasets and bitsandbytes costs about 8 s of CPU per process, more
than a tiny training run itself. The suite starts a hundred stage scripts, so ``conftest.run_script``
hands them to this server (one per test worker): it forks, and the child runs the script exactly as
``python path/to/script.py ARGS`` would (``__name__ == "__main__"``, ``sys.argv``, ``sys.path[0]``, the
working folder, the environment, stdin, stdout and stderr as files, atexit handlers, the exit code).

The server first imports the ``r1_sft`` package alone, as every stage script does before any library
(it silences library chatter and sets the variables the libraries read at import), then the libraries;
the project's modules are imported afresh by every run. The server says its environment once ready; a
run whose environment differs from it (a variable read at import time would be stale) goes to a fresh
interpreter instead. What a library prints while it is imported goes to the server's stderr, not to the
run's, so the tests of a run's whole output (tests/model/test_models.py's chatter test, the log-file test
of tests/training/test_training_checks.py, the notebook, the plain torchrun command) start fresh
interpreters on purpose.

Protocol on the server's stdin and stdout, one JSON object per line: the server says ``{"started", "env"}``
(its environment before and after its imports) once they are done; the client writes ``{"argv", "cwd",
"env", "stdin", "stdout", "stderr"}`` (the last three are file paths), the server answers ``{"pid"}`` once
the child exists and ``{"returncode"}`` when it has ended (negative: killed by that signal, as subprocess
reports it). On the Unix socket named by the first argument, tests/warm_client.py sends ``{"argv", "cwd",
"env"}`` with its own stdin, stdout and stderr, and gets the same two answers (or ``{"fresh": true}``:
run it in a new interpreter); many such runs go at once (torchrun's workers).
"""
from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PRELOAD = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "safetensors.torch",
           "trl", "matplotlib.pyplot", "jieba", "sacrebleu", "scipy.stats")
# Submodules the stage scripts reach through lazy attributes (the Trainer alone is ~2 s of imports).
PRELOAD_NAMES = (("transformers", ("AutoModelForCausalLM", "AutoTokenizer", "Trainer", "TrainingArguments",
                                   "BitsAndBytesConfig", "TrainerCallback")),
                 ("peft", ("LoraConfig", "PeftModel", "get_peft_model", "prepare_model_for_kbit_training")),
                 ("trl", ("GRPOConfig", "GRPOTrainer")))


def _preload() -> None:
    import importlib
    import logging

    sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    importlib.import_module("r1_sft")  # what each stage script does first
    del sys.modules["r1_sft"], sys.modules["r1_sft.library_output"]  # the runs import the project afresh
    sys.path.pop(1)
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    if "jieba" in sys.modules:  # its dictionary, which the first word split of each run would load
        jieba = sys.modules["jieba"]
        level = jieba.default_logger.level
        jieba.setLogLevel(logging.ERROR)
        jieba.initialize()
        jieba.setLogLevel(level)  # as the run would find it
    for module, names in PRELOAD_NAMES:
        for name in names:
            try:
                getattr(sys.modules[module], name)
            except (KeyError, AttributeError, ImportError):
                pass


_SERVER_PYTHONPATH = os.environ.get("PYTHONPATH", "")  # as the server started (a child changes os.environ)
TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _extra_python_path(value: str, server: str) -> list[str]:
    """The folders of a run's PYTHONPATH ``value`` that the server's (``server``) lacks."""
    known = set(filter(None, server.split(os.pathsep)))
    return [os.path.abspath(p) for p in value.split(os.pathsep) if p and p not in known]


def _add_python_path(value: str, server: str) -> None:
    """What site does at start-up with PYTHONPATH: its folders after the script's, then their sitecustomize."""
    extra = _extra_python_path(value, server)
    sys.path[1:1] = [p for p in extra if p not in sys.path]
    if any(os.path.isfile(os.path.join(p, "sitecustomize.py")) for p in extra):
        import importlib

        importlib.import_module("sitecustomize")


def _child(request: dict, fds: list[int] | None = None) -> None:
    """In the forked child: become ``python argv[0] argv[1:]`` and never return. Its stdin, stdout and
    stderr: ``fds`` (a socket client's own), else the request's files."""
    import atexit
    import runpy
    import threading

    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: a timeout kills the script and whatever it started
        if fds is None:
            fds = [os.open(request["stdin"], os.O_RDONLY), os.open(request["stdout"], os.O_WRONLY),
                   os.open(request["stderr"], os.O_WRONLY)]
        for fd, new in enumerate(fds):
            os.dup2(new, fd)
        for new in set(fds) - {0, 1, 2}:
            os.close(new)
        # A fresh stdin reader: the server's one may hold what it read ahead from the request pipe.
        sys.stdin = os.fdopen(0, "r", encoding=sys.stdin.encoding, errors=sys.stdin.errors, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["env"].get(MALLOC_VARIABLE) == "keep":
            keep_freed_memory()
        if request["env"].get("MALLOC_MMAP_THRESHOLD_"):
            set_mmap_threshold(request["env"]["MALLOC_MMAP_THRESHOLD_"])
        script = os.path.abspath(request["argv"][0])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)
        _add_python_path(request["env"].get("PYTHONPATH", ""), _SERVER_PYTHONPATH)
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            if stop.code is None:
                code = 0
            elif isinstance(stop.code, int):
                code = stop.code
            else:
                print(stop.code, file=sys.stderr)
                code = 1
        except BaseException as error:  # noqa: BLE001 - what an interpreter does with an uncaught exception
            tb = error.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != script:
                tb = tb.tb_next  # the traceback starts at the script, as it would in its own interpreter
            sys.excepthook(type(error), error.with_traceback(tb), tb)
            code = 1
        threading._shutdown()  # an interpreter waits for its non-daemon threads, then runs atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


# Variables that may differ between the server and a run because no preloaded library reads them at import
# time: pytest's per-test name, the client's own, torchrun's per-worker ones, gpu_check.sh's, a shell's,
# modelscope's (modelscope is not preloaded: the download tests set them) and the suite's own R1_SFT_TEST_*
# (a test server's API key, the FSDP shim's switch, the allocator setting the child applies).
PER_RUN = frozenset({"PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR", "R1_SFT_WARM_SOCKET", "R1_SFT_WARM_EXE",
                     "LOCAL_RANK", "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
                     "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OUT", "WORK", "PYTHON",
                     "PWD", "OLDPWD", "SHLVL", "_",  # PWD..._: what every shell sets
                     "MALLOC_MMAP_THRESHOLD_"})  # applied in the child (mallopt), as glibc does at a process's start
PER_RUN_PREFIXES = ("TORCHELASTIC_", "TORCH_NCCL_", "NCCL_", "MODELSCOPE_", "R1_SFT_TEST_")
# `make test` sets R1_SFT_TEST_MALLOC=keep: each run's glibc allocator keeps freed memory for the next step
# instead of mapping every block over 32 MiB (the stand-in's logits) on its own and faulting it in again
# (bench/malloc_steps.py). A run without it keeps glibc's defaults: the tests that measure a run's memory.
MALLOC_VARIABLE = "R1_SFT_TEST_MALLOC"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h


def _mallopt(*settings: tuple[int, int]) -> None:
    """glibc's mallopt for each (parameter, value); nothing on another C library."""
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    for param, value in settings if mallopt is not None else ():
        mallopt(param, value)


def set_mmap_threshold(value: str) -> None:
    """What MALLOC_MMAP_THRESHOLD_ makes glibc do at a new process's start: every block over ``value`` bytes
    mapped on its own and given back when freed (a fixed threshold)."""
    _mallopt((M_MMAP_THRESHOLD, int(value)))


def keep_freed_memory() -> None:
    """No block mapped on its own (M_MMAP_MAX 0), freed memory kept (M_TRIM_THRESHOLD 2 GiB)."""
    _mallopt((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def differing(env: dict, started: dict, set_by_import: dict) -> list[str]:
    """The variables that keep a run with ``env`` from forking a server that started with ``started`` (and whose
    import of r1_sft set ``set_by_import``: the run's own import of r1_sft sets the same); none: it may."""
    keys = []
    for key in sorted(env.keys() | started.keys()):
        if key in PER_RUN or key.startswith(PER_RUN_PREFIXES) or env.get(key) == started.get(key):
            continue
        extra = _extra_python_path(env.get(key) or "", started.get(key) or "") if key == "PYTHONPATH" else None
        if extra is not None and all(p == REPO or p.startswith(TESTS + os.sep) for p in extra):
            continue  # the repository or a test shim (tests/cpu_fsdp): added in the child as site would
        if key in set_by_import and env.get(key) == set_by_import[key]:
            continue
        keys.append(key)
    return keys


def accepts(env: dict, started: dict, set_by_import: dict) -> bool:
    """Whether a run with ``env`` may fork from the server (no :func:`differing` variable)."""
    return not differing(env, started, set_by_import)


def _say(fd: int, message: dict) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _handle_client(conn, started: dict, set_by_import: dict) -> None:
    """A socket client (tests/warm_client.py): fork its script on the client's own stdio, report, never return."""
    import socket

    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)  # the server's request pipe and answer pipe are not this handler's
    os.dup2(devnull, 1)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 22, 3)
    while not data.endswith(b"\n"):
        data += conn.recv(1 << 22)
    request = json.loads(data)
    if len(fds) != 3 or not accepts(request["env"], started, set_by_import):
        if os.environ.get("R1_SFT_WARM_DEBUG") == "1":
            env = request["env"]
            print("warm_python: fresh interpreter for", request["argv"][:1], "differing:",
                  sorted(k for k in env.keys() | started.keys() if env.get(k) != started.get(k)), file=sys.stderr)
        conn.sendall(json.dumps({"fresh": True}).encode() + b"\n")
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(request, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    conn.sendall(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
    os._exit(0)


def serve(socket_path: str | None = None) -> None:
    import select
    import socket

    started = dict(os.environ)
    _preload()
    set_by_import = {k: v for k, v in os.environ.items() if started.get(k) != v}
    listener = None
    if socket_path:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(socket_path)
        listener.listen(64)
    _say(1, {"started": started, "env": dict(os.environ)})
    pending = b""
    while True:
        ready = select.select([0] + ([listener] if listener else []), [], [])[0]
        if listener is not None and listener in ready:
            conn, _ = listener.accept()
            middle = os.fork()
            if middle == 0:  # double fork: the handler is nobody's child to wait for
                listener.close()
                if os.fork() == 0:
                    _handle_client(conn, started, set_by_import)
                os._exit(0)
            conn.close()
            os.waitpid(middle, 0)
        if 0 not in ready:
            continue
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                if listener is not None:
                    listener.close()
                _child(json.loads(line))
            _say(1, {"pid": pid})
            _, status = os.waitpid(pid, 0)
            _say(1, {"returncode": os.waitstatus_to_exitcode(status)})


class WarmPython:
    """The client of one server (started here, in a new process): one script run at a time, as ``subprocess.run``; its
    socket serves tests/warm_client.py (torchrun's workers, bench/gpu_check.sh's steps) at the same time."""

    def __init__(self, env: dict):
        self.folder = Path(tempfile.mkdtemp(prefix="warm_python_"))
        self.socket = self.folder / "socket"
        self.server = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(self.socket)],
                                       cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pending = b""
        self.env: dict | None = None  # the server's, once its imports are done
        self.set_by_import: dict = {}

    def differing(self, env: dict) -> list[str]:
        """The variables that keep a run with ``env`` from forking the server (:func:`differing`)."""
        if self.env is None:
            ready = self._answer()
            self.env = ready["started"]
            self.set_by_import = {k: v for k, v in ready["env"].items() if self.env.get(k) != v}
        return differing(env, self.env, self.set_by_import)

    def alive(self) -> bool:
        return self.server.poll() is None

    def _answer(self, timeout: float | None = None) -> dict | None:
        """The server's next line, or None when ``timeout`` seconds pass without one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.server.stdout.fileno()
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"tests/warm_python.py ended (exit {self.server.wait()})")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def start(self, argv: list[str], *, cwd: str, input: str | None, env: dict) -> int:
        """Start a run; returns its pid. :meth:`finish` must collect it before the next run starts."""
        self.paths = {name: self.folder / name for name in ("stdin", "stdout", "stderr")}
        self.paths["stdin"].write_text(input or "", encoding="utf-8")
        for name in ("stdout", "stderr"):
            self.paths[name].write_bytes(b"")
        request = {"argv": argv, "cwd": cwd, "env": env, **{k: str(v) for k, v in self.paths.items()}}
        self.server.stdin.write(json.dumps(request).encode() + b"\n")
        self.server.stdin.flush()
        self.argv, self.pid = argv, self._answer()["pid"]
        return self.pid

    def finish(self, timeout: float | None):
        """The started run's CompletedProcess; on ``timeout`` it is killed and TimeoutExpired raised."""
        answer = self._answer(timeout)
        if answer is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self._answer()
            raise subprocess.TimeoutExpired([sys.executable, *self.argv], timeout)

        def text(name: str) -> str:  # as subprocess.run(text=True) decodes and translates newlines
            return self.paths[name].read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")

        return subprocess.CompletedProcess([sys.executable, *self.argv], answer["returncode"], text("stdout"),
                                           text("stderr"))

    def run(self, argv: list[str], *, cwd: str, input: str | None, timeout: float, env: dict):
        self.start(argv, cwd=cwd, input=input, env=env)
        return self.finish(timeout)

    def running(self) -> bool:
        """Whether the started run is still going (its end is not yet reported)."""
        if b"\n" in self.pending:
            return False
        return not select.select([self.server.stdout.fileno()], [], [], 0)[0]

    def close(self) -> None:
        if self.server.poll() is None:
            self.server.stdin.close()
            self.server.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else None)
