"""Classification metrics of a test set: accuracy, per-class precision/recall/F1, confusion.

Pure numpy, no TensorFlow, so the trainer, the report and any offline evaluation of saved
predictions compute exactly the same numbers. The result is plain Python (ints, floats,
lists, dicts), ready for `json.dumps` into the job's metrics file::

    from trainer.report import metrics
    result = metrics.classification_metrics(y_true, y_pred, labels)
    result["per_class"]["yes"]["f1"], result["confusion_matrix"][true_index][predicted_index]

Conventions, those of scikit-learn's `classification_report`:
  * A ratio whose denominator is zero (precision of a class never predicted, recall of a
    class absent from the test set, accuracy of an empty set) is 0.0, never NaN.
  * `macro_f1` is the unweighted mean F1 over the classes that occur in `y_true` or in
    `y_pred`; a label seen by neither says nothing about the model and is left out.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _as_indices(values: Any, name: str, num_labels: int) -> np.ndarray:
    """Checks and returns `values` as a 1-D int64 array of label indices.

    Args:
      values: label indices, or a [n, num_labels] array of scores (argmax is taken).
      name: argument name for error messages.
      num_labels: number of labels; every index must be in [0, num_labels).

    Returns:
      A 1-D int64 array.

    Raises:
      ValueError: wrong rank, non-integer values, or an index out of range.
    """
    array = np.asarray(values)
    if array.ndim == 2:
        if array.shape[1] != num_labels:
            raise ValueError(f"{name} has {array.shape[1]} scores per row, "
                             f"expected {num_labels} (one per label)")
        array = array.argmax(axis=1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D label indices, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        # Indices that went through a float tensor (e.g. tf.cast) are still accepted.
        if not (np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))):
            raise ValueError(f"{name} must hold integer label indices, got {array.dtype}")
    array = array.astype(np.int64)
    outside = array[(array < 0) | (array >= num_labels)]
    if outside.size:
        raise ValueError(f"{name} has index {int(outside[0])} outside [0, {num_labels})")
    return array


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, with 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> np.ndarray:
    """Counts of (true, predicted) pairs.

    Args:
      y_true: 1-D int array of true label indices.
      y_pred: 1-D int array of predicted label indices, same length.
      num_labels: size of the square result.

    Returns:
      int64 array [num_labels, num_labels]; rows are true labels, columns predictions.
    """
    # bincount of the flattened (row, column) index is one pass, unlike a Python loop.
    flat = np.bincount(y_true * num_labels + y_pred, minlength=num_labels * num_labels)
    return flat.reshape(num_labels, num_labels)


def classification_metrics(y_true: Any, y_pred: Any, labels: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix.

    Args:
      y_true: true label indices, shape [n].
      y_pred: predicted label indices, shape [n], or class scores/probabilities of shape
        [n, len(labels)] (the argmax is taken).
      labels: label names; index i of y_true/y_pred is labels[i].

    Returns:
      {"accuracy": float, "macro_f1": float,
       "per_class": {label: {"precision": float, "recall": float, "f1": float,
                             "support": int}},
       "confusion_matrix": [[int]]}  (rows = true label, columns = predicted label).

    Raises:
      ValueError: no labels, duplicate labels, lengths that differ, or indices out of range.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels is empty")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels}")
    num_labels = len(labels)
    true = _as_indices(y_true, "y_true", num_labels)
    predicted = _as_indices(y_pred, "y_pred", num_labels)
    if true.shape != predicted.shape:
        raise ValueError(f"y_true has {true.size} items but y_pred has {predicted.size}")

    matrix = confusion_matrix(true, predicted, num_labels)
    hits = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = _safe_divide(hits, predicted_count)
    recall = _safe_divide(hits, support)
    f1 = _safe_divide(2.0 * precision * recall, precision + recall)
    seen = (support + predicted_count) > 0
    macro_f1 = float(f1[seen].mean()) if seen.any() else 0.0

    return {
        "accuracy": float(_safe_divide(hits.sum(), matrix.sum())),
        "macro_f1": macro_f1,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": matrix.astype(int).tolist(),
    }


def format_metrics(metrics: dict) -> str:
    """A console table: the headline figures and per-class precision/recall/F1."""
    split = metrics.get("split", "test")
    lines = [f"{split} accuracy {metrics[f'{split}_accuracy']:.4f}  "
             f"loss {metrics[f'{split}_loss']:.4f}  "
             f"({metrics[f'{split}_examples']} examples)"]
    width = max(len(label) for label in metrics["per_class"]) + 2
    lines.append(f"{'label':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    for label, scores in metrics["per_class"].items():
        lines.append(f"{label:<{width}}{scores['precision']:>10.3f}{scores['recall']:>10.3f}"
                     f"{scores['f1']:>10.3f}{scores['support']:>9d}")
    return "\n".join(lines)
