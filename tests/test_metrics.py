"""trainer.report.metrics on hand-made arrays, against values worked out by hand and a plain loop."""

import json

import numpy as np
import pytest

from trainer.report import metrics


def test_hand_worked_example_with_a_class_never_predicted():
    # rows true / columns predicted:  a: [1, 1, 0]   b: [0, 2, 0]   c: [2, 0, 0]
    result = metrics.classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 0],
                                            ["a", "b", "c"])
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert result["accuracy"] == pytest.approx(0.5)
    a, b, c = (result["per_class"][label] for label in "abc")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    # "c" is never predicted: precision is 0/0, reported as 0.0 rather than NaN.
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)
    assert [result["per_class"][label]["support"] for label in "abc"] == [2, 2, 2]
    assert result["macro_f1"] == pytest.approx((0.4 + 0.8 + 0.0) / 3)


def test_perfect_predictions():
    result = metrics.classification_metrics([2, 0, 1, 2], [2, 0, 1, 2], ["x", "y", "z"])
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert all(scores["f1"] == 1.0 for scores in result["per_class"].values())


def test_label_absent_from_both_arrays_is_left_out_of_macro_f1():
    # "unused" is neither in y_true nor predicted; "ghost" is predicted but never true.
    result = metrics.classification_metrics([0, 0, 1], [0, 3, 1],
                                            ["yes", "no", "unused", "ghost"])
    unused, ghost = result["per_class"]["unused"], result["per_class"]["ghost"]
    assert unused == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert ghost["support"] == 0 and ghost["precision"] == 0.0
    yes_f1 = result["per_class"]["yes"]["f1"]  # precision 1, recall 1/2
    assert yes_f1 == pytest.approx(2 / 3)
    # Mean over yes, no and ghost (which was wrongly predicted), not over unused.
    assert result["macro_f1"] == pytest.approx((yes_f1 + 1.0 + 0.0) / 3)


def test_scores_are_reduced_with_argmax():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    from_scores = metrics.classification_metrics([1, 0, 0], scores, ["a", "b"])
    from_indices = metrics.classification_metrics([1, 0, 0], [1, 0, 1], ["a", "b"])
    assert from_scores == from_indices


def test_empty_input_gives_zeros_not_nan():
    result = metrics.classification_metrics([], [], ["a", "b"])
    assert result["accuracy"] == 0.0 and result["macro_f1"] == 0.0
    assert result["confusion_matrix"] == [[0, 0], [0, 0]]
    assert not np.isnan(json.loads(json.dumps(result))["per_class"]["a"]["f1"])


def test_agrees_with_a_plain_loop_and_is_json_ready():
    rng = np.random.default_rng(7)
    labels = [f"w{i}" for i in range(6)]
    y_true = rng.integers(0, 6, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 5, 500))  # w5 rarely
    result = metrics.classification_metrics(y_true, y_pred.astype(np.float32), labels)
    assert json.loads(json.dumps(result)) == result  # plain ints, floats, lists, dicts
    f1s = []
    for k, label in enumerate(labels):
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == k and p == k)
        predicted, actual = sum(1 for p in y_pred if p == k), sum(1 for t in y_true if t == k)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        assert result["per_class"][label] == pytest.approx(
            {"precision": precision, "recall": recall, "f1": f1, "support": actual})
        assert result["confusion_matrix"][k] == [
            sum(1 for t, p in zip(y_true, y_pred) if t == k and p == j) for j in range(6)]
    assert result["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert result["macro_f1"] == pytest.approx(np.mean(f1s))


@pytest.mark.parametrize("y_true, y_pred, labels, message", [
    ([0, 1], [0], ["a", "b"], "2 items but y_pred has 1"),
    ([0, 2], [0, 1], ["a", "b"], "y_true has index 2 outside"),
    ([0, 1], [0, -1], ["a", "b"], "y_pred has index -1 outside"),
    ([0, 1], [0, 1], ["a", "a"], "duplicates"),
    ([0, 1], [0, 1], [], "labels is empty"),
    ([0.5, 1], [0, 1], ["a", "b"], "integer label indices"),
    ([0, 1], [[0.2, 0.3, 0.5]] * 2, ["a", "b"], "3 scores per row"),
])
def test_bad_input_is_rejected_with_the_reason(y_true, y_pred, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.classification_metrics(y_true, y_pred, labels)
