"""Training on several GPUs or machines: the tf.distribute strategy and what follows from it.

`--strategy auto` (the default) reads the cluster from `TF_CONFIG`, which Vertex AI sets
on every replica of a multi-replica job (and which a local run may set by hand):

- more than one worker in TF_CONFIG -> `MultiWorkerMirroredStrategy` (synchronous
  data parallelism, gradients all-reduced between machines);
- else more than one local GPU -> `MirroredStrategy` over those GPUs;
- else TensorFlow's default strategy (one device).

The recipe's batch size is per replica: the global batch is that times the replicas,
and the learning rate is scaled with the rule of `--lr-scaling`: by default linearly
with the batch growth, so that an epoch of fewer, larger steps moves the weights as far
(`sqrt` is the gentler rule for many replicas). Each worker reads its own share of the
training shards, whole files dealt out in turn, so a run needs at least as many training
shards as workers. Only the chief writes the job directory,
TensorBoard logs and epoch backups; every other worker writes the same files to a
temporary folder of its own, which it removes at the end. All workers restore from the
chief's backups, so a preempted job started again resumes where the chief left off.

Two workers on one machine, as Vertex AI starts them::

    TF_CONFIG='{"cluster": {"chief": ["localhost:12345"], "worker": ["localhost:12346"]},
                "task": {"type": "chief", "index": 0}}' python -m trainer.task ...
    TF_CONFIG='{... "task": {"type": "worker", "index": 0}}' python -m trainer.task ...
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Mapping, Optional

import keras
import tensorflow as tf

from pipelines import contract
from pipelines.errors import UserError, honour_sigterm
from trainer import backup, peers
from trainer.settings import (AUTO, LINEAR, MIRRORED, MULTIWORKER, NONE, SQRT,
                              TUNING_METRIC, RunSettings)

CHIEF, WORKER = "chief", "worker"


# --- the cluster --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place among the workers of TF_CONFIG (one worker without it)."""
    workers: int = 1
    rank: int = 0  # the chief is 0, worker i is i + 1 (i without a chief)
    addresses: tuple[str, ...] = ()  # "host:port" of each, in rank order
    names: tuple[str, ...] = ()  # "chief 0", "worker 0", ... in rank order

    @property
    def is_chief(self) -> bool:
        return self.rank == 0


def read_cluster(environ: Mapping[str, str] = os.environ) -> Cluster:
    """The Cluster of TF_CONFIG; UserError when it is not one this trainer can run in."""
    text = environ.get("TF_CONFIG", "").strip()
    if not text:
        return Cluster()
    try:
        config = json.loads(text)
        spec = config.get("cluster") or {}
        chiefs, workers = spec.get(CHIEF, []), spec.get(WORKER, [])
        task = config.get("task") or {}
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as error:
        raise UserError(f"TF_CONFIG: not a cluster description ({error})") from None
    for name, members in ((CHIEF, chiefs), (WORKER, workers)):
        if not isinstance(members, list) or not all(
                isinstance(member, str) and member for member in members):
            raise UserError(f"TF_CONFIG: cluster.{name} must be a list of \"host:port\" "
                            f"strings, got {json.dumps(members)}")
    if not chiefs and not workers:
        return Cluster()
    if len(chiefs) > 1:
        raise UserError(f"TF_CONFIG: {len(chiefs)} chiefs; a cluster has at most one")
    if kind not in (CHIEF, WORKER):
        raise UserError(f"TF_CONFIG: task type {kind!r}; this trainer runs as {CHIEF} or "
                        f"{WORKER} (no parameter servers or evaluators)")
    members = chiefs if kind == CHIEF else workers
    if not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG: {kind} {index} is not in the cluster's "
                        f"{len(members)} {kind}(s)")
    return Cluster(len(chiefs) + len(workers),
                   index if kind == CHIEF else len(chiefs) + index,
                   tuple(chiefs) + tuple(workers),
                   tuple(f"{CHIEF} {i}" for i in range(len(chiefs)))
                   + tuple(f"{WORKER} {i}" for i in range(len(workers))))


def resolve(name: str, cluster: Cluster, gpus: int) -> str:
    """The strategy that `--strategy name` means here (auto decided, the rest as given)."""
    if name != AUTO:
        return name
    if cluster.workers > 1:
        return MULTIWORKER
    return MIRRORED if gpus > 1 else NONE


class _KerasReduce:
    """A strategy's `reduce` that takes the two calls Keras 3's fit makes.

    Keras reduces a nested (features, labels) input batch with axis=None only to learn
    the model's input shapes, which fails when the replicas' parts differ in size (a
    last, short batch), and the multi-worker strategy takes neither that structure nor
    scalar logs with axis=0 (keras-team/keras#20585). Here each leaf is reduced on its
    own: a scalar averaged across replicas, an input batch this replica's own.
    """

    def reduce(self, reduce_op, value, axis=None):
        def one(item):
            local = self.experimental_local_results(item)[0]
            if local.shape.rank == 0:
                return super(_KerasReduce, self).reduce(reduce_op, item, None)
            if axis is None:
                return local
            return super(_KerasReduce, self).reduce(reduce_op, item, axis)
        return tf.nest.map_structure(one, value)


class _MultiWorkerStrategy(_KerasReduce, tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy for Keras' fit (see _KerasReduce)."""


class _MirroredStrategy(_KerasReduce, tf.distribute.MirroredStrategy):
    """MirroredStrategy for Keras' fit (see _KerasReduce)."""


def local_devices() -> list[str]:
    """The GPUs of this machine, or its (logical) CPUs when it has none."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == MULTIWORKER:
        return _MultiWorkerStrategy()
    if kind == MIRRORED:
        return _MirroredStrategy(devices=local_devices())
    return tf.distribute.get_strategy()


# --- what a run does with it --------------------------------------------------------

def worker_files(files: list[str], cluster: Cluster, where: str) -> list[str]:
    """This worker's share of `files`: every `workers`-th one, starting at its rank."""
    if len(files) < cluster.workers:
        raise UserError(f"{where}: {len(files)} shard(s) for {cluster.workers} workers; "
                        f"each worker reads whole shards (preprocess with --num-shards "
                        f"{cluster.workers} or more)")
    return files[cluster.rank::cluster.workers]


def scaled_learning_rate(learning_rate: float, replicas: int, rule: str) -> float:
    """The learning rate for a global batch `replicas` times the recipe's."""
    if rule == LINEAR:
        return learning_rate * replicas
    if rule == SQRT:
        return learning_rate * math.sqrt(replicas)
    return learning_rate


def with_shard_policy(dataset: tf.data.Dataset, policy) -> tf.data.Dataset:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy
    return dataset.with_options(options)


@dataclasses.dataclass
class Distribution:
    """The strategy of a run and this process's part in it."""
    kind: str
    strategy: tf.distribute.Strategy
    cluster: Cluster
    scratch: Optional[str] = None  # a non-chief's temporary folder
    lr_scaling: str = LINEAR
    per_replica: dict = dataclasses.field(default_factory=dict)  # the recipe's own values
    data_dir: str = ""

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief

    def writable(self, path: str, name: str) -> str:
        """`path` for the chief; the same file or folder `name` in scratch for others."""
        return path if self.is_chief else f"{self.scratch}/{name}"

    def scale(self, recipe):
        """The recipe with the global batch and the learning rate scaled to match."""
        self.per_replica = {"batch_size_per_replica": recipe.batch_size,
                            "recipe_learning_rate": recipe.learning_rate}
        if self.replicas == 1:
            return recipe
        return recipe.with_overrides(
            batch_size=recipe.batch_size * self.replicas,
            learning_rate=scaled_learning_rate(recipe.learning_rate, self.replicas,
                                               self.lr_scaling))

    def backups(self, checkpoint_dir: str, fingerprint: dict, restart: bool
                ) -> tuple[backup.EpochBackup, backup.EpochBackup]:
        """(the backup this process writes, the one it resumes from).

        The chief writes and resumes from `checkpoint_dir`. Every worker must save too
        (reading a variable may take part in a collective), so the others write to their
        scratch folder and resume from the chief's backups: all start at the same epoch.
        With `restart` the chief discards its backups and the others resume from nothing.
        """
        if self.is_chief:
            own = backup.EpochBackup(checkpoint_dir, fingerprint)
            return own, own
        own = backup.EpochBackup(f"{self.scratch}/checkpoints", fingerprint)
        return own, (own if restart else backup.EpochBackup(checkpoint_dir, fingerprint))

    def share(self, train_files: list[str]) -> list[str]:
        """This worker's training shards."""
        return worker_files(train_files, self.cluster, f"{self.data_dir}/{contract.TRAIN}")

    def train_input(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """The training batches, already split by file: tf.data shards them no further."""
        return with_shard_policy(dataset, tf.data.experimental.AutoShardPolicy.OFF)

    def eval_input(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Validation batches: each worker reads every shard and keeps its share of the
        examples, so any shard count works and every example is counted once."""
        return with_shard_policy(dataset, tf.data.experimental.AutoShardPolicy.DATA)

    def local_model(self, net: keras.Model, path: str) -> keras.Model:
        """`net` as a model of this process alone, for evaluation and export.

        Under several workers `net.predict` would share the test set among them; the
        chief reloads the saved model outside the strategy instead.
        """
        if self.kind != MULTIWORKER:
            return net
        return keras.models.load_model(path)

    def settings(self) -> dict:
        return {"strategy": self.kind, "replicas": self.replicas,
                "workers": self.cluster.workers, "lr_scaling": self.lr_scaling,
                **self.per_replica}

    def finish(self) -> dict:
        """Removes a non-chief's scratch folder; returns the (empty) metrics of a worker."""
        if self.scratch and os.path.isdir(self.scratch):
            shutil.rmtree(self.scratch, ignore_errors=True)
        return {}


def setup(settings: RunSettings, environ: Mapping[str, str] = os.environ) -> Distribution:
    """The Distribution of `settings.strategy` for training on `settings.data_dir`.

    Call it before any TensorFlow op: a multi-worker strategy configures the
    collectives, and then waits for every worker of TF_CONFIG to start; a run that
    cannot go ahead (a bad cluster, too few shards) is refused before that.
    """
    cluster = read_cluster(environ)
    kind = resolve(settings.strategy, cluster, len(tf.config.list_physical_devices("GPU")))
    if cluster.workers > 1 and kind != MULTIWORKER:
        raise UserError(f"--strategy {settings.strategy}: TF_CONFIG names {cluster.workers} "
                        f"workers, which train together only with --strategy "
                        f"{MULTIWORKER} (or {AUTO})")
    data_dir = settings.data_dir.rstrip("/")
    if cluster.workers > 1:
        worker_files(tf.io.gfile.glob(contract.shard_pattern(data_dir, contract.TRAIN)),
                     cluster, f"{data_dir}/{contract.TRAIN}")
    if kind == MULTIWORKER:
        peers.wait_for_peers(cluster.addresses, cluster.names, cluster.rank,
                             settings.peer_timeout)
    distribution = Distribution(kind, make_strategy(kind), cluster, None, settings.lr_scaling,
                                data_dir=data_dir)
    if kind == MULTIWORKER:
        honour_sigterm()  # the strategy's preemption notifier has taken SIGTERM over
    if not cluster.is_chief:
        distribution.scratch = tempfile.mkdtemp(prefix=f"kws-worker-{cluster.rank}-")
        atexit.register(distribution.finish)  # also when the run ends in an error
    return distribution


# --- Vertex AI hyperparameter tuning ------------------------------------------------

class TuningReport(keras.callbacks.Callback):
    """Reports the validation accuracy after each epoch the way Vertex AI tuning reads it.

    cloudml-hypertune appends it as JSON to the file Vertex AI watches
    ($CLOUD_ML_HP_METRIC_FILE, by default /tmp/hypertune/output.metrics); the study's
    metric id is TUNING_METRIC.
    """

    def __init__(self):
        super().__init__()
        import hypertune  # only tuning runs need the package loaded
        self._reporter = hypertune.HyperTune()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(TUNING_METRIC)
        if value is not None:
            self._reporter.report_hyperparameter_tuning_metric(
                hyperparameter_metric_tag=TUNING_METRIC, metric_value=float(value),
                global_step=epoch + 1)


def hyphenated(argv: list[str]) -> list[str]:
    """`--learning_rate=0.01` as `--learning-rate=0.01`: Vertex AI passes each tuned
    parameter as --PARAMETER_ID, and parameter ids are written with underscores."""
    result = []
    for item in argv:
        if item.startswith("--") and "_" in item.split("=", 1)[0]:
            flag, equals, value = item.partition("=")
            item = flag.replace("_", "-") + equals + value
        result.append(item)
    return result


def tuning_callbacks(settings: RunSettings, distribution: Distribution
                     ) -> list[keras.callbacks.Callback]:
    """[TuningReport()] for the chief of a run with --hypertune, else []."""
    return [TuningReport()] if settings.hypertune and distribution.is_chief else []
