"""The detector that comes with the repository: it loads with every engine, finds a word,
and the figures the README prints beside it are its own."""

import json
import pathlib
import re

from tests import wavs
from trainer import predict, scoring
from trainer.litert import runtime

SHIPPED = pathlib.Path(scoring.SHIPPED_MODEL_DIR)


def test_it_loads_with_every_engine_and_labels_a_clip():
    for engine in runtime.ENGINES:
        scorer = scoring.Scorer(str(SHIPPED), engine)
        assert scorer.labels == (SHIPPED / "labels.txt").read_text().split()
    clip = str(wavs.sample_clips("yes", 1)[0])
    for engine in runtime.ENGINES:  # the default --model-dir is the shipped detector
        (result,) = predict.run(["--engine", engine, clip])
        assert result["label"] == "yes", (engine, result)


def test_the_figures_printed_beside_it_in_the_readme_are_its_own():
    metrics = json.loads((SHIPPED / "metrics.json").read_text())
    streaming = metrics["streaming"]
    readme = (wavs.REPO / "README.md").read_text()
    found = re.search(r"its own figures \(`models/speech-commands/metrics\.json`\): clip test "
                      r"accuracy \*\*([0-9.]+)\*\*; on its test recordings recall "
                      r"\*\*([0-9.]+)\*\* at \*\*([0-9.]+)\*\* false accepts per hour; on an "
                      r"hour of keyword-free test audio \*\*([0-9.]+)\*\* per hour", readme)
    assert found, "the README's sentence on the shipped detector's figures is missing"
    accuracy, recall, false_accepts, keyword_free = map(float, found.groups())
    assert accuracy == round(metrics["test_accuracy"], 3)
    assert recall == round(streaming["test"]["recall"], 3)
    assert false_accepts == round(streaming["test"]["false_accepts_per_hour"], 1)
    assert keyword_free == round(streaming["keyword_free"]["false_accepts_per_hour"], 1)
