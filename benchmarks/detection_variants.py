"""Trains a variant of the default `kws` recipe for the detection study.

    python -m benchmarks.detection_variants --max-shift-ms 300 --data-dir OUT --job-dir JOB

The variant is the default recipe with one augmentation setting changed, registered as
a model of its own (`kws-shift300`) and trained by the plain `trainer.task` (every
other flag is passed on), so the run also chooses its detection operating point and
measures it. `python -m benchmarks.detection --job-dir JOB ...` then compares it with
default runs. Figures: docs/experiments-detection.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

from pipelines import contract  # noqa: E402
from pipelines.errors import UserError, run_cli  # noqa: E402
from trainer import models, task  # noqa: E402
from trainer.models import kws  # noqa: E402


def register_variant(max_shift_ms: int) -> str:
    """Registers `kws` with a time shift of up to `max_shift_ms` either way; its name."""
    name = f"{kws.NAME}-shift{max_shift_ms}"
    augmentation = dataclasses.replace(
        kws.RECIPE.augmentation, max_shift=max_shift_ms * contract.SAMPLE_RATE // 1000)
    models.REGISTRY[name] = models.Architecture(
        kws.build, dataclasses.replace(kws.RECIPE, augmentation=augmentation))
    return name


def run(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detection_variants",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-shift-ms", type=int, required=True,
                        help="largest training time shift either way (default recipe: 100)")
    args, rest = parser.parse_known_args(argv)
    if not 0 <= args.max_shift_ms <= 1000:
        raise UserError(f"--max-shift-ms must be in 0..1000, got {args.max_shift_ms}")
    return task.run(["--model", register_variant(args.max_shift_ms), *rest])


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
