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
interpreter instead, and so do launchers (torchrun, bash) and runs that a test kills or signals.

Protocol, one JSON object per line: the server says ``{"started", "env"}`` (its environment before and
after its imports) once they are done; the client
writes ``{"argv", "cwd", "env", "stdin", "stdout", "stderr"}`` (the last three are file paths), the
server answers ``{"pid"}`` once the child exists and ``{"returncode"}`` when it has ended (negative:
killed by that signal, as subprocess reports it).
"""
from __future__ import annotations

import json
import os
import sys

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


def _child(request: dict) -> None:
    """In the forked child: become ``python argv[0] argv[1:]`` and never return."""
    import atexit
    import runpy
    import threading

    code = 1
    try:
        os.setpgid(0, 0)  # its own process group: a timeout kills the script and whatever it started
        for fd, path, mode in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY),
                               (2, request["stderr"], os.O_WRONLY)):
            new = os.open(path, mode)
            os.dup2(new, fd)
            os.close(new)
        # A fresh stdin reader: the server's one may hold what it read ahead from the request pipe.
        sys.stdin = os.fdopen(0, "r", encoding=sys.stdin.encoding, errors=sys.stdin.errors, closefd=False)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        script = os.path.abspath(request["argv"][0])
        sys.argv = list(request["argv"])
        sys.path[0] = os.path.dirname(script)
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


def serve() -> None:
    started = dict(os.environ)
    _preload()
    requests, answers = sys.stdin, sys.stdout
    print(json.dumps({"started": started, "env": dict(os.environ)}), file=answers, flush=True)
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), file=answers, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=answers, flush=True)


if __name__ == "__main__":
    serve()
