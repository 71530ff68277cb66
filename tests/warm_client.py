#!/usr/bin/env python3
"""``python SCRIPT ARGS`` through a test worker's warm Python (tests/warm_python.py), for launchers.

torchrun starts each worker as ``python -u tests/warm_client.py SCRIPT ARGS``; bench/gpu_check.sh runs its
steps with ``PYTHON=tests/warm_client.py``; the tests' servers and interactive chat start through it
(conftest.popen_script). This client imports nothing heavy: it hands its arguments,
working folder, environment and its own stdin, stdout and stderr to the server over the socket named in
R1_SFT_WARM_SOCKET (conftest.warm_client_env), forwards the signals it gets to the script's process and
exits as the script did. Anything else (``-c``, ``-m``, a run whose environment the server refuses, no
server) runs in a fresh interpreter, R1_SFT_WARM_EXE.
"""
import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def fresh(args: list[str]) -> None:
    exe = os.environ.get("R1_SFT_WARM_EXE", sys.executable)
    os.execv(exe, [exe, *args])


def main() -> None:
    args = sys.argv[1:]
    path = os.environ.get("R1_SFT_WARM_SOCKET")
    if not path or not args or not args[0].endswith(".py") or not os.path.isfile(args[0]):
        fresh(args)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        fresh(args)
    sys.stdout.flush()
    # Signals go to the script; one that comes before its pid is known waits for it (a launcher may signal at once).
    script, early = {}, []

    def forward(number, frame):
        if "pid" in script:
            os.kill(script["pid"], number)
        else:
            early.append(number)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    request = {"argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    answers = conn.makefile("rb")
    first = json.loads(answers.readline())
    if first.get("fresh"):
        conn.close()
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        for number in early:  # what the new interpreter would have got: its default action
            os.kill(os.getpid(), number)
        fresh(args)
    script["pid"] = pid = first["pid"]
    for number in early:
        os.kill(pid, number)
    line = answers.readline()
    code = json.loads(line)["returncode"] if line else 1
    if code < 0:  # killed by a signal: end the same way, as the launcher would see the script end
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
