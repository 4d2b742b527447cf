"""What the DirectRunner's worker modes do with large elements and with deferred work.

These pin down the behaviour docs/design.md ("Element size on the multi-process
DirectRunner") describes, and why preprocessing counts what it wrote instead of trusting
the runner: multi-megabyte elements arrive whole, but with more than one worker the
runner drops the remainder a splittable DoFn defers, and its data channel's timed flush
clears what is written while it sends (which the commands turn off).
"""

import threading

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.core import RestrictionProvider

from pipelines import batch

TWO_PROCESSES = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
ONE_PROCESS = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "1"]
ELEMENTS, CHUNKS, PER_CALL = 4, 10, 3


def big_array(index: int) -> tuple[int, np.ndarray]:
    """8 MB of float32, every value its index."""
    return index, np.full(2 * 1024 * 1024, index, np.float32)


def summary(element, everything):
    index, array = element
    return (index, array.shape[0], float(array.min()), float(array.max()),
            sorted(i for i, _ in everything))


def test_multi_megabyte_elements_cross_steps_whole_on_two_processes():
    """8 MB arrays through a Reshuffle and as a side input: none lost, none altered."""
    with beam.Pipeline(options=PipelineOptions(TWO_PROCESSES)) as pipeline:
        arrays = (pipeline
                  | beam.Create(list(range(4)))
                  | "Spread" >> beam.Reshuffle()
                  | "Make" >> beam.Map(big_array)
                  | "Shuffle" >> beam.Reshuffle())
        results = arrays | "Summary" >> beam.Map(summary, beam.pvalue.AsList(arrays))
        assert_that(results, equal_to([
            (i, 2 * 1024 * 1024, float(i), float(i), list(range(4))) for i in range(4)]))


class _Chunks(RestrictionProvider):
    def initial_restriction(self, element):
        return OffsetRange(0, CHUNKS)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element, restriction):
        return restriction.size()


class ReadInChunks(beam.DoFn):
    """Emits CHUNKS chunks per element, PER_CALL at a time, deferring the rest.

    The shape of a resumable read of a long recording: each call returns after a few
    chunks and the runner calls again for the remainder.
    """

    def process(self, element, tracker=beam.DoFn.RestrictionParam(_Chunks())):
        position = tracker.current_restriction().start
        for _ in range(PER_CALL):
            if not tracker.try_claim(position):
                return
            yield element, position
            position += 1
        tracker.defer_remainder()


@pytest.mark.parametrize("options,expected", [
    (ONE_PROCESS, ELEMENTS * CHUNKS),
    # Each element's first call only: the deferred remainder is gone, without an error.
    (TWO_PROCESSES, ELEMENTS * PER_CALL),
], ids=["one_worker", "two_workers"])
def test_deferred_work_is_dropped_with_more_than_one_worker(options, expected):
    with beam.Pipeline(options=PipelineOptions(options)) as pipeline:
        count = (pipeline
                 | beam.Create(list(range(ELEMENTS)))
                 | beam.ParDo(ReadInChunks())
                 | beam.combiners.Count.Globally())
        assert_that(count, equal_to([expected]))


def test_timed_flush_clears_what_is_written_while_it_sends():
    """Beam's timed buffer: the timer thread takes the bytes, waits on the send queue,
    then clears the buffer; bytes written meanwhile are never sent."""
    sent, sending, queue_free = [], threading.Event(), threading.Event()

    def send(data):  # the flush's hand-over to the send queue, here a full one
        if data:
            sent.append(data)
            sending.set()
            queue_free.wait(10)

    stream = data_plane.TimeBasedBufferingClosableOutputStream(
        close_callback=sent.append, flush_callback=send, time_flush_threshold_ms=20)
    stream.write(b"first chunk;")
    assert sending.wait(10)
    stream.write(b"second chunk;")  # the runner's thread goes on writing
    queue_free.set()
    stream.close()  # waits for the flush in progress
    assert b"".join(sent) == b"first chunk;"


def test_commands_flush_the_local_data_channel_from_the_writer_only():
    """After `pipeline_options` (every Beam command calls it) the runner's data
    channel buffers flush by size, from the writing thread, with no timer."""
    batch.pipeline_options(TWO_PROCESSES)
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
    servicer = data_plane.BeamFnDataServicer(worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)
    stream = servicer.get_conn_by_worker_id("worker").output_stream("bundle", "read")
    assert isinstance(stream, data_plane.SizeBasedBufferingClosableOutputStream)
    assert not isinstance(stream, data_plane.TimeBasedBufferingClosableOutputStream)
    stream.write(b"whole;")
    stream.write(b"kept;")
    assert stream.get() == b"whole;kept;"
