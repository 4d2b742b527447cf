"""How the command-line tools end on errors a user can cause: one line, no traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional

EXIT_USER_ERROR = 2
EXIT_DATA_ERROR = 1


class UserError(Exception):
    """Bad input from the user (missing folder, wrong model dir, ...): exit code 2."""
    exit_code = EXIT_USER_ERROR


class TooManyRejected(UserError):
    """The run finished and wrote its output, but rejected more than allowed: exit 1."""
    exit_code = EXIT_DATA_ERROR


class PartialFailure(UserError):
    """Some inputs failed, the others were processed: exit 1."""
    exit_code = EXIT_DATA_ERROR


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a preempted machine, a job cancelled): exit 143."""


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Interrupts:
    """Ctrl-C and SIGTERM as the command-line tools see them.

    The signal is raised as usual (KeyboardInterrupt, or Terminated), and remembered:
    Beam catches an exception raised inside a step, logs its traceback and raises a
    RuntimeError of its own in its place, so the tool tells an interrupted run by the
    flag rather than by the exception's type, and mutes the log handlers once it is set.
    """

    def __init__(self):
        self.signal: Optional[int] = None

    def __call__(self, signum, frame):  # pylint: disable=unused-argument
        if self.signal is None:
            self.signal = signum
            for handler in logging.getLogger().handlers:
                handler.addFilter(lambda record: False)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def install(self) -> None:
        self.signal = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self)
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGTERM, self)


    def check(self) -> None:
        """Raises again if a signal arrived: for code after a call that may have swallowed
        it (libsndfile reads through a Python callback, and an exception raised inside a
        callback is printed and dropped, the read cut short)."""
        if self.signal is not None:
            raise Terminated() if self.signal == signal.SIGTERM else KeyboardInterrupt()


INTERRUPTS = _Interrupts()


def honour_sigterm() -> None:
    """SIGTERM ends the command at the next Python step, as Ctrl-C does (exit 143).

    For code after a library took SIGTERM over (TensorFlow's multi-worker strategy
    installs a preemption handler that keeps the process running). Main thread only.
    """
    signal.signal(signal.SIGTERM, INTERRUPTS)


def run_cli(function: Callable, argv: Optional[list[str]] = None) -> int:
    """Calls `function(argv)`; turns UserError into one line on stderr and an exit code.

    Ctrl-C ends in "interrupted" and exit code 130, SIGTERM in "terminated" and 143,
    whatever the library the signal interrupted did with it.
    """
    logging.getLogger().setLevel(logging.WARNING)
    INTERRUPTS.install()
    try:
        function(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (Exception, KeyboardInterrupt) as error:  # pylint: disable=broad-except
        received = INTERRUPTS.signal or (signal.SIGTERM if isinstance(error, Terminated)
                                         else signal.SIGINT if isinstance(
                                             error, KeyboardInterrupt) else None)
        if received is None:
            raise
        if received == signal.SIGTERM:
            last_line("terminated (SIGTERM)")
            return 143
        last_line("interrupted")
        return 130
    return 0


def last_line(text: str) -> None:
    """Prints `text` on stderr as the process's last line: file descriptor 2 is muted
    after it, so that what C++ threads print while the process ends (TensorFlow's
    collectives aborting as their peers go, say) does not bury it.
    KWS_TF_STARTUP_LOGS=1 keeps it open."""
    print(text, file=sys.stderr)
    _mute_stderr()


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Mutes file descriptor 2 (what C++ libraries print) for the block; Python
    exceptions still propagate. KWS_TF_STARTUP_LOGS=1 keeps it open."""
    saved = os.dup(2)
    try:
        _mute_stderr()
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _mute_stderr() -> None:
    """Flushes sys.stderr and points file descriptor 2 at the null device, unless
    KWS_TF_STARTUP_LOGS=1."""
    if os.environ.get("KWS_TF_STARTUP_LOGS"):
        return
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notes) muted.

    Those lines are written to file descriptor 2 before TensorFlow's own log settings
    apply, and would bury the one-line errors the command-line tools promise. Python
    exceptions are unaffected; set KWS_TF_STARTUP_LOGS=1 to see the chatter.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with quiet_stderr():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        tf.config.list_physical_devices("GPU")  # probes CUDA once, while muted
    tf.get_logger().setLevel(logging.ERROR)
