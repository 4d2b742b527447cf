"""What a training run shows a person: metrics, figures and report.html.

`metrics` (pure numpy: per-class scores, confusion matrix, the console table),
`figures` (matplotlib PNGs), `page` (the self-contained HTML page), `writer`
(gathers example clips and one prediction and writes the files of a run) and
`detection` (keyword detection measured on generated streams, and its figures).
Importing this package imports neither TensorFlow nor matplotlib.
"""
