"""Training, evaluation, export and prediction of keyword models.

Importing the package imports no TensorFlow: its pure-numpy modules (`trainer.report.metrics`
and the detection maths) load without it. The command-line modules import TensorFlow with
its start-up chatter muted (`pipelines.errors.import_tensorflow_quietly`).
"""
