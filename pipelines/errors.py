"""How the command-line tools end on errors a user can cause: one line, no traceback."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Optional

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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_cli(function: Callable, argv: Optional[list[str]] = None) -> int:
    """Calls `function(argv)`; turns UserError into one line on stderr and an exit code."""
    logging.getLogger().setLevel(logging.WARNING)
    try:
        function(argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notes) muted.

    Those lines are written to file descriptor 2 before TensorFlow's own log settings
    apply, and would bury the one-line errors the command-line tools promise. Python
    exceptions are unaffected; set KWS_TF_STARTUP_LOGS=1 to see the chatter.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("KWS_TF_STARTUP_LOGS") or "tensorflow" in sys.modules:
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        tf.config.list_physical_devices("GPU")  # probes CUDA once, while muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    tf.get_logger().setLevel(logging.ERROR)
