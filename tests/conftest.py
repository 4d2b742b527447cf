"""Test-wide settings: quiet TensorFlow, and the repo importable by worker processes."""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The multi-process DirectRunner starts fresh Python workers that unpickle our DoFns:
# they must be able to import the project even when it is not pip-installed.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
