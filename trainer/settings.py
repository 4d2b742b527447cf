"""The settings of one training run: every flag of `trainer.task`, typed, in one object.

`add_flags` declares the flags beside the fields they fill, and `from_flags` turns the
parsed flags into a `RunSettings` once, at the command's edge (`trainer.task`). Below
it, the recipe, the distribution set-up, the run's fingerprint and the callbacks take
the `RunSettings`, never the parsed flags. Adding a flag the recipe reads is a field and
its flag here, and the line in the recipe that reads it.

Vertex AI defaults: --job-dir is $AIP_MODEL_DIR, --tensorboard-dir
$AIP_TENSORBOARD_LOG_DIR, --checkpoint-dir $AIP_CHECKPOINT_DIR.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Mapping, Optional

AUTO, NONE, MIRRORED, MULTIWORKER = "auto", "none", "mirrored", "multiworker"
STRATEGIES = (AUTO, NONE, MIRRORED, MULTIWORKER)
SQRT, LINEAR = "sqrt", "linear"
LR_SCALING = (SQRT, LINEAR, NONE)
TUNING_METRIC = "val_accuracy"  # the metric id of deploy/vertex/tune.py's study


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What one training run was asked to do (see `add_flags` for each field's flag)."""
    data_dir: str
    job_dir: Optional[str]
    model: str
    epochs: Optional[int] = None  # None: the recipe's
    batch_size: Optional[int] = None
    learning_rate: Optional[float] = None
    weight_decay: Optional[float] = None
    seed: int = 42
    shuffle_buffer: int = 4096
    negative_weight: float = 1.0  # loss weight of _unknown_ and _silence_ examples
    max_shift_ms: Optional[float] = None  # None: the recipe's time shift
    word_classes: bool = False  # other words as classes of their own while training
    calibration_minutes: float = 30.0  # val recordings the operating point is chosen on
    tensorboard_dir: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    restart: bool = False
    report: bool = True
    verbose: int = 1
    strategy: str = AUTO
    lr_scaling: str = LINEAR
    peer_timeout: float = 300.0
    hypertune: bool = False


def add_flags(parser: argparse.ArgumentParser, model_names: list[str], default_model: str,
              environ: Mapping[str, str] = os.environ) -> None:
    """The flags of `trainer.task`, one per field of RunSettings."""
    parser.add_argument("--data-dir", required=True, help="a preprocessing run (local or gs://)")
    parser.add_argument("--job-dir", default=environ.get("AIP_MODEL_DIR"),
                        help="where the model, metrics and report go (default: $AIP_MODEL_DIR)")
    parser.add_argument("--model", default=default_model, choices=model_names,
                        help=f"architecture and its recipe (default {default_model})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the model's recipe)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples per batch (default: the model's recipe)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate (default: the model's recipe)")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="decoupled weight decay of AdamW recipes (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=42,
                        help="seeds initialisation, shuffling and augmentation (default 42)")
    parser.add_argument("--shuffle-buffer", type=int, default=4096,
                        help="examples held in memory for shuffling (default 4096)")
    parser.add_argument("--negative-weight", type=float, default=1.0, metavar="W",
                        help="weight in the loss of the _unknown_ and _silence_ examples, "
                             "keyword examples weighing 1 (default 1)")
    parser.add_argument("--max-shift-ms", type=float, default=None, metavar="MS",
                        help="largest training time shift either way (default: the "
                             "recipe's, 100 ms for kws)")
    parser.add_argument("--word-classes", action="store_true",
                        help="train each other word (a folder that is not a label, or a "
                             "name under _unknown_) as a class of its own, summed into "
                             "_unknown_ afterwards: embeddings that keep words apart, for "
                             "trainer.enroll")
    parser.add_argument("--calibration-minutes", type=float, default=30.0, metavar="MIN",
                        help="minutes of val recordings the detection operating point is "
                             "chosen on, for a model with _unknown_ (default 30)")
    parser.add_argument("--tensorboard-dir", default=environ.get("AIP_TENSORBOARD_LOG_DIR"),
                        help="default: JOB/logs or $AIP_TENSORBOARD_LOG_DIR")
    parser.add_argument("--checkpoint-dir", default=environ.get("AIP_CHECKPOINT_DIR"),
                        help="backup for resuming (default: JOB/checkpoints or "
                             "$AIP_CHECKPOINT_DIR)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the backups of an earlier run in the checkpoint folder "
                             "and train from the start (default: resume, if they are of "
                             "the same run)")
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="skip plots and report.html")
    parser.add_argument("--verbose", type=int, default=1, choices=[0, 1, 2],
                        help="Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch")
    parser.add_argument("--strategy", default=AUTO, choices=STRATEGIES,
                        help="auto: multiworker when TF_CONFIG names several workers, "
                             "mirrored with several local GPUs, else none (one device)")
    parser.add_argument("--lr-scaling", default=LINEAR, choices=LR_SCALING,
                        help="how the learning rate follows the global batch "
                             "(batch per replica x replicas): linear (default), sqrt or none")
    parser.add_argument("--peer-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="how long a worker of a multi-worker run waits for the others "
                             "of TF_CONFIG before giving up (default 300)")
    parser.add_argument("--hypertune", action="store_true",
                        help=f"report {TUNING_METRIC} after each epoch to Vertex AI "
                             "hyperparameter tuning (deploy/vertex/tune.py sets it)")


def from_flags(flags: argparse.Namespace) -> RunSettings:
    """The RunSettings of parsed `add_flags` flags (ValueError for an impossible value)."""
    names = {field.name for field in dataclasses.fields(RunSettings)}
    settings = RunSettings(**{name: value for name, value in vars(flags).items()
                              if name in names})
    if not settings.negative_weight > 0:
        raise ValueError(f"--negative-weight must be positive, got {settings.negative_weight}")
    if settings.max_shift_ms is not None and not 0 <= settings.max_shift_ms <= 1000:
        raise ValueError(f"--max-shift-ms must be in [0, 1000], got {settings.max_shift_ms}")
    if not 1 <= settings.calibration_minutes <= 24 * 60:
        raise ValueError(f"--calibration-minutes must be in [1, 1440], got "
                         f"{settings.calibration_minutes}")
    return settings
