"""The suite's script runner: a stage script run in a fork of the warm Python (tests/warm_python.py) gives
what ``python script.py`` gives in a fresh interpreter, byte for byte."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap

import pytest

from conftest import REPO, NewInterpreterWarning, popen_script, run_script

PROBE = textwrap.dedent('''\
    import atexit, json, os, sys, threading, time
    path0 = sys.path[0]
    sys.path.insert(0, REPO_ROOT)
    import r1_sft  # what every stage script imports first

    atexit.register(lambda: print("atexit ran", flush=True))
    def late():
        time.sleep(0.2)
        print("thread finished", flush=True)
    threading.Thread(target=late).start()  # not a daemon: the interpreter waits for it before atexit
    print(json.dumps({"name": __name__, "argv": sys.argv[1:], "path0": path0, "cwd": os.getcwd(),
                      "stdin": sys.stdin.read(),
                      "verbosity": os.environ.get("TRANSFORMERS_VERBOSITY")}))
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "raise":
        raise ValueError("bad value")
    if sys.argv[1] == "message":
        sys.exit("error: one line for the user")
    sys.exit(int(sys.argv[1]))
''').replace("REPO_ROOT", repr(str(REPO)))


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "scripts" / "probe.py"
    path.parent.mkdir()
    path.write_text(PROBE, encoding="utf-8")
    return path


@pytest.mark.parametrize("how", ["0", "3", "raise", "message"])
def test_a_warm_run_equals_a_fresh_interpreter(probe, tmp_path, how):
    runs = [run_script(probe, how, "二", cwd=tmp_path, input="病人主诉\n头痛", fresh=fresh) for fresh in (False, True)]
    warm, fresh = runs
    assert warm.returncode == fresh.returncode == {"0": 0, "3": 3, "raise": 1, "message": 1}[how]
    assert warm.stdout == fresh.stdout and warm.stderr == fresh.stderr
    assert '"argv": ["%s", "\\u4e8c"]' % how in warm.stdout and f'"cwd": "{tmp_path}"' in warm.stdout
    assert f'"path0": "{probe.parent}"' in warm.stdout and '"stdin": "\\u75c5' in warm.stdout
    assert warm.stdout.endswith("thread finished\natexit ran\n")
    if how == "raise":  # the traceback starts at the script, as an interpreter prints it
        assert warm.stderr.startswith("to stderr\nTraceback (most recent call last):\n  File \"%s\"" % probe)
        assert warm.stderr.endswith("ValueError: bad value\n")


def test_a_run_whose_environment_differs_gets_a_fresh_interpreter(tmp_path):
    script = tmp_path / "modules.py"
    script.write_text("import os, sys\nprint('torch' in sys.modules, os.environ.get('PROBE_MODE'))\n", encoding="utf-8")
    with pytest.warns(NewInterpreterWarning, match="differs from the warm Python's in PROBE_MODE"):
        assert run_script(script, cwd=tmp_path, env={"PROBE_MODE": "x"}).stdout == "False x\n"  # a new interpreter
    assert run_script(script, cwd=tmp_path).stdout == "True None\n"  # the warm one: torch already imported


def test_a_started_script_talks_over_its_pipes_gets_its_signals_and_runs_warm(tmp_path):
    """popen_script (the servers and the interactive chat of the tests): the script in the warm Python, on the
    Popen's pipes; SIGTERM sent to the Popen reaches the script; its exit code is the Popen's."""
    script = tmp_path / "answer.py"
    script.write_text("import os, signal, sys\n"
                      "open('pid', 'w').write(str(os.getpid()))\n"
                      "signal.signal(signal.SIGTERM, lambda *a: (print('terminated', flush=True), sys.exit(5)))\n"
                      "print('torch' in sys.modules, os.environ['R1_SFT_TEST_PROBE'], input(), flush=True)\n"
                      "signal.pause()\n", encoding="utf-8")
    proc = popen_script(script, cwd=tmp_path, env={"R1_SFT_TEST_PROBE": "sk-x"}, stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("头痛\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "True sk-x 头痛\n"  # warm (torch imported), the suite's variable, the pipe
        proc.terminate()  # at once: the client may not have heard the script's pid yet
        out, _ = proc.communicate(timeout=30)
        assert out == "terminated\n" and proc.returncode == 5
    finally:
        proc.kill()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)  # a script the signal missed


def test_a_timeout_kills_the_run_and_the_next_run_works(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n", encoding="utf-8")
    with pytest.raises(subprocess.TimeoutExpired):
        run_script(script, cwd=tmp_path, timeout=3)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    (tmp_path / "ok.py").write_text("print('ok')\n", encoding="utf-8")
    assert run_script(tmp_path / "ok.py", cwd=tmp_path).stdout == "ok\n"
