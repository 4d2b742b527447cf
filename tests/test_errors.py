"""How the command-line tools end: `pipelines.errors.run_cli` started as a script."""

import os
import subprocess
import sys

import pytest

from tests import wavs

# A command that a signal stops while a C++ thread goes on printing to file descriptor 2
# (as TensorFlow's collectives do when their peers go away).
STOPPED = """
import os, signal, sys, threading, time
from pipelines.errors import run_cli

def noisy():
    time.sleep(0.5)
    os.write(2, b"E0000 RingReduce aborted: Socket closed\\n")

def command(argv):
    threading.Thread(target=noisy, daemon=True).start()
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(5)

code = run_cli(command, [])
time.sleep(1)  # the thread prints while the process ends
sys.exit(code)
"""


@pytest.mark.parametrize("name, line, code", [("SIGTERM", "terminated (SIGTERM)", 143),
                                               ("SIGINT", "interrupted", 130)])
def test_the_signal_line_stays_the_last_line(name, line, code):
    env = {k: v for k, v in os.environ.items() if k != "KWS_TF_STARTUP_LOGS"}
    done = subprocess.run([sys.executable, "-c", STOPPED, name], cwd=wavs.REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [line]
    kept = subprocess.run([sys.executable, "-c", STOPPED, name], cwd=wavs.REPO,
                          env={**env, "KWS_TF_STARTUP_LOGS": "1"}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert kept.stderr.strip().splitlines() == [line, "E0000 RingReduce aborted: Socket closed"]
