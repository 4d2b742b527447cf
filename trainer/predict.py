"""Predicts the word spoken in WAV files with an exported model.

    python -m trainer.predict --model-dir runs/sample/job data/sample/yes/*.wav
    python -m trainer.predict --model-dir JOB clip.wav --top-k 3 --json --plot clip.png

Files are decoded by the same code as preprocessing (any WAV it accepts: 8-32 bit,
float, stereo, any rate) and fed to the model's raw-audio signature, or with
`--engine tflite` / `tflite-int8` to export/model.tflite / model_int8.tflite through the
LiteRT interpreter (same decoding; the clip padded or cut to one second). One line per file;
a file that cannot be read gets a line on stderr, the others are still predicted, and
the exit code is 1 when any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from pipelines.errors import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import audio, contract, inputs, scoring  # noqa: E402
from pipelines.errors import PartialFailure, UserError, run_cli  # noqa: E402
from trainer.scoring import SHIPPED_MODEL_DIR, open_recording  # noqa: E402
from trainer.litert import runtime  # noqa: E402


class Predictor:
    """An exported model, loaded once, that maps WAV bytes to class probabilities."""

    def __init__(self, model_dir: str, engine: str = runtime.SAVEDMODEL):
        if engine == runtime.SAVEDMODEL:
            export_dir = contract.find_export(model_dir)
            self.model = scoring.load_saved_model(export_dir)
            self._serve = self.model.signatures[contract.SIGNATURE_WAVEFORM]
            self.labels = contract.read_export_labels(export_dir)
        else:  # a LiteRT file: one clip at a time, padded or cut to one second
            self.model, self.labels = runtime.load_engine(model_dir, engine)
        outputs = len(self._probabilities(np.zeros(contract.CLIP_SAMPLES, np.float32)))
        if outputs != len(self.labels):
            raise UserError(f"{model_dir}: labels.txt has {len(self.labels)} labels but the "
                            f"model has {outputs} outputs (labels.txt of another model?)")

    def probabilities(self, source) -> np.ndarray:
        """A WAV (bytes, path or open file) -> probabilities over `labels` (raises
        AudioError); only the first second is decoded."""
        return self.classify(source)[0]

    def classify(self, source) -> tuple[np.ndarray, float]:
        """(probabilities of the first second, the whole recording's length in seconds)."""
        waveform, num_samples = audio.decode_clip(source)
        return self._probabilities(waveform), num_samples / contract.SAMPLE_RATE

    def _probabilities(self, waveform: np.ndarray) -> np.ndarray:
        if isinstance(self.model, runtime.LiteRTModel):
            return self.model.probabilities(waveform)
        outputs = self._serve(waveform=tf.constant(waveform[None, :]))
        return outputs["probabilities"][0].numpy()


def top_k(probabilities: np.ndarray, labels: list[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(labels[i], float(probabilities[i])) for i in order]


LONG_RECORDING_SECONDS = 1.5


def note_if_long(name: str, seconds: float) -> None:
    """Says on stderr that a recording longer than a clip had only its start classified."""
    if seconds > LONG_RECORDING_SECONDS:
        print(f"note: {name}: {seconds:.1f} s long, only its first second was classified "
              "(python -m trainer.detect finds keywords anywhere in a recording)",
              file=sys.stderr)


def top_k_arg(text: str) -> int:
    """A --top-k value: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE.wav", help="local or gs:// paths")
    parser.add_argument("--model-dir", default=SHIPPED_MODEL_DIR,
                        help="a training job directory (or its export/ SavedModel); "
                             "default: the detector that comes with the repository, "
                             "models/speech-commands")
    parser.add_argument("--engine", default=runtime.SAVEDMODEL, choices=runtime.ENGINES,
                        help="which exported file runs: the SavedModel, export/model.tflite "
                             "or export/model_int8.tflite (LiteRT; default savedmodel)")
    parser.add_argument("--top-k", type=top_k_arg, default=1,
                        help="labels shown per file (1 to the model's labels; default 1)")
    parser.add_argument("--json", action="store_true", help="JSON Lines instead of text")
    parser.add_argument("--plot", default=None,
                        help="PNG bar chart of the first file's probabilities")
    return parser


def run(argv: Optional[list[str]] = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    predictor = Predictor(args.model_dir, args.engine)
    results, failed = [], []
    for path in args.files:
        name = inputs.printable(path)
        try:
            with open_recording(path) as handle:  # only its header and first second are read
                probabilities, seconds = predictor.classify(handle)
        except audio.AudioError as error:
            failed.append(path)
            print(f"error: {name}: {error}", file=sys.stderr)
            continue
        except tf.errors.OpError as error:
            failed.append(path)
            print(f"error: {name}: cannot read ({error.message.splitlines()[0]})",
                  file=sys.stderr)
            continue
        note_if_long(name, seconds)
        best = top_k(probabilities, predictor.labels, args.top_k)
        result = {"path": name, "label": best[0][0], "probability": best[0][1],
                  "top_k": [{"label": label, "probability": p} for label, p in best],
                  "probabilities": dict(zip(predictor.labels, map(float, probabilities)))}
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{name}\t" + "\t".join(f"{label} {p:.3f}" for label, p in best), flush=True)
    if args.plot and results:
        from trainer.report import figures  # pylint: disable=import-outside-toplevel
        first = results[0]
        figures.plot_prediction([first["probabilities"][label] for label in predictor.labels],
                               predictor.labels, first["path"], args.plot)
    if failed:
        raise PartialFailure(f"{len(failed)} of {len(args.files)} files could not be "
                             "predicted (see above)")
    return results


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
