"""Preprocessing and batch prediction on gs://, on a Cloud Storage emulator on loopback.

Stages 3 labels x 6 real clips with `pipelines.stage`, runs `pipelines.preprocess.run`
with `--data-dir gs://BUCKET/in --output-dir gs://BUCKET/out` on the DirectRunner, reads
the shards back through Beam's FileSystems and parses them with the contract's parser.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import audio, contract, errors, preprocess, stage
from tests.gcs import gcs_server  # noqa: F401  (fixture)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
LABELS = ("down", "go", "yes")
CLIPS_PER_LABEL = 6


def read_records(pattern: str, scratch: Path) -> list[bytes]:
    """Every record of the TFRecord shards matching `pattern`.

    The shards are read through Beam's FileSystems (TensorFlow's own gs:// client is not
    pointed at the emulator) and copied to `scratch`, where TFRecordDataset checks each
    record's framing and CRCs.
    """
    import tensorflow as tf
    records = []
    for meta in FileSystems.match([pattern])[0].metadata_list:
        local = scratch / meta.path.rsplit("/", 1)[-1]
        with FileSystems.open(meta.path) as handle:
            local.write_bytes(handle.read())
        records += [record.numpy() for record in tf.data.TFRecordDataset(str(local))]
    return records


@pytest.fixture
def staged(gcs_server, tmp_path: Path) -> str:
    """gs://BUCKET/in holding 3 label folders of 6 real clips each."""
    local = tmp_path / "speech"
    for label in LABELS:
        (local / label).mkdir(parents=True)
        for wav in sorted((SAMPLE / label).glob("*.wav"))[:CLIPS_PER_LABEL]:
            shutil.copy(wav, local / label / wav.name)
    result = stage.run([str(local), f"gs://{gcs_server}/in"])
    assert len(result.uploaded) == len(LABELS) * CLIPS_PER_LABEL
    return f"gs://{gcs_server}"


def test_preprocess_reads_and_writes_gcs(staged, tmp_path):
    import tensorflow as tf
    out = f"{staged}/out"
    metadata = preprocess.run(["--data-dir", f"{staged}/in", "--output-dir", out,
                               "--num-shards", "1"])
    assert metadata["labels"] == list(LABELS)
    assert metadata["examples_written"] == len(LABELS) * CLIPS_PER_LABEL

    with FileSystems.open(f"{out}/{contract.METADATA_FILE}") as handle:
        stored = json.loads(handle.read())
    assert stored["counts"] == metadata["counts"]
    with FileSystems.open(f"{out}/{contract.LABELS_FILE}") as handle:
        assert contract.parse_labels(handle.read().decode()) == list(LABELS)

    per_label = {label: 0 for label in LABELS}
    total = 0
    for split in contract.SPLITS:
        records = read_records(contract.shard_pattern(out, split), tmp_path)
        assert len(records) == metadata["counts"][split]["total"]
        for record in records:
            example = contract.parse_example(tf.constant(record))
            name = example[contract.LABEL_NAME].numpy().decode()
            assert int(example[contract.LABEL]) == LABELS.index(name)
            assert example[contract.PATH].numpy().decode().startswith(f"{staged}/in/{name}/")
            assert example[contract.SPECTROGRAM].shape == contract.SPECTROGRAM_SHAPE
            per_label[name] += 1
        total += len(records)
    assert total == len(LABELS) * CLIPS_PER_LABEL
    assert per_label == {label: CLIPS_PER_LABEL for label in LABELS}
    # No temporary files of the sinks are left behind next to the shards.
    listed = [meta.path for meta in FileSystems.match([f"{out}/**"])[0].metadata_list]
    assert not [path for path in listed if "beam-temp" in path]

    # A second run into the same folder is refused, as it is locally.
    with pytest.raises(preprocess.errors.UserError, match="already holds a preprocessing run"):
        preprocess.run(["--data-dir", f"{staged}/in", "--output-dir", out])


def test_preprocess_missing_gcs_folder_is_a_user_error(gcs_server):
    with pytest.raises(preprocess.errors.UserError, match="no files found"):
        preprocess.run(["--data-dir", f"gs://{gcs_server}/nothing-here",
                        "--output-dir", f"gs://{gcs_server}/out"])


def test_batch_prediction_reads_and_writes_gcs(staged, tmp_path):
    """pipelines.predict over gs:// clips equals trainer.predict over local copies."""
    from pipelines import predict as batch_predict
    from trainer import export, predict
    from trainer.models import tutorial

    # An untrained tutorial network is enough to compare the two prediction paths.
    job = tmp_path / "job"
    export.export_model(tutorial.build(len(LABELS)), list(LABELS),
                        str(job / contract.EXPORT_DIR))
    (job / contract.LABELS_FILE).write_text(contract.format_labels(list(LABELS)))
    out = f"{staged}/predictions"
    counts = batch_predict.run(["--input", f"{staged}/in/**/*.wav", "--model-dir", str(job),
                                "--output", out])
    clips = len(LABELS) * CLIPS_PER_LABEL
    assert counts == {"files": clips, "predicted": clips, "rejected": 0}
    # A second run into the same prefix is refused, then replaces the first with --overwrite.
    with pytest.raises(errors.UserError, match="--overwrite"):
        batch_predict.run(["--input", f"{staged}/in/**/*.wav", "--model-dir", str(job),
                           "--output", out])
    again = batch_predict.run(["--input", f"{staged}/in/**/*.wav", "--model-dir", str(job),
                               "--output", out, "--overwrite"])
    assert again == counts

    rows = []
    for meta in FileSystems.match([f"{out}/predictions-*.jsonl"])[0].metadata_list:
        with FileSystems.open(meta.path) as handle:
            rows += [json.loads(line) for line in handle.read().decode().splitlines()]
    assert len(rows) == len(LABELS) * CLIPS_PER_LABEL
    local = {f"{staged}/in/{label}/{wav.name}": str(wav) for label in LABELS
             for wav in sorted((SAMPLE / label).glob("*.wav"))[:CLIPS_PER_LABEL]}
    assert sorted(row["path"] for row in rows) == sorted(local)
    single = {r["path"]: r for r in predict.run(["--model-dir", str(job)] + list(local.values()))}
    for row in rows:
        expected = single[local[row["path"]]]
        assert row["label"] == expected["label"]
        for label in LABELS:
            assert row["probabilities"][label] == pytest.approx(
                expected["probabilities"][label], abs=1e-5)


def test_long_recordings_are_read_in_blocks_from_gcs(gcs_server):
    import numpy as np
    import soundfile
    from google.cloud import storage
    rate = 44100
    rng = np.random.default_rng(3)
    samples = rng.uniform(-0.5, 0.5, (rate * 25, 2)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    data = buffer.getvalue()
    storage.Client().bucket(gcs_server).blob("long/take.wav").upload_from_string(data)
    path = f"gs://{gcs_server}/long/take.wav"
    assert audio.probe(path) == audio.AudioInfo(rate, 2, rate * 25)
    blocks = list(audio.read_blocks(path))
    assert [b.shape[0] for b in blocks] == [160000, 160000, 80000]
    np.testing.assert_array_equal(np.concatenate(blocks), audio.decode_wav(data))
    clip = audio.featurize(path)
    np.testing.assert_array_equal(clip.waveform, blocks[0][:16000])
