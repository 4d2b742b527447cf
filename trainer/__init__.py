"""Training, evaluation, export and prediction of keyword models."""

import os


def _import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up chatter (CUDA probing, oneDNN notes) muted.

    Those lines are written to file descriptor 2 before TensorFlow's own log settings
    apply, and would bury the one-line errors the command-line tools promise. Python
    exceptions are unaffected; set KWS_TF_STARTUP_LOGS=1 to see the chatter.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("KWS_TF_STARTUP_LOGS"):
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


_import_tensorflow_quietly()
