"""Training, evaluation, export and prediction of keyword models."""

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()
