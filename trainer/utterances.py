"""Utterances of a word in recordings: where it is said, the second around it, and which
utterances are held back.

A recording is a one-second clip of the word, or a longer recording where it is said
several times. `cut_utterances` finds each stretch of speech by its short-time energy
against the recording's own noise floor; `second_around` is the second of audio centred
on one; `hold_back` sets about a third aside, by speaker where the file names say who
spoke (`<speaker>_nohash_<n>`), else by file, else (one file) the last ones.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pipelines import contract, dataset, inputs
from pipelines.errors import first_line

HELD_SHARE = 1 / 3
FRAME_S, HOP_S = 0.03, 0.01  # the energy envelope
MIN_SPEECH_S, MAX_GAP_S, PAD_S = 0.12, 0.25, 0.05
MIN_RANGE_DB = 10.0  # speech must rise this far above the recording's quietest tenth
WORD_RANGE_DB = 20.0  # a word: its frames within this much of its loudest


class Utterance(NamedTuple):
    path: str
    speaker: str
    start_s: float
    end_s: float
    clip: np.ndarray  # float32 [16000], the second around it


def energy_db(samples: np.ndarray, rate: int = contract.SAMPLE_RATE) -> np.ndarray:
    """Short-time energy in dB, a FRAME_S frame every HOP_S."""
    frame, hop = int(FRAME_S * rate), int(HOP_S * rate)
    if len(samples) < frame:
        samples = np.pad(samples, (0, frame - len(samples)))
    count = 1 + (len(samples) - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(samples, frame)[::hop][:count]
    return 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)


def cut_utterances(samples: np.ndarray, rate: int = contract.SAMPLE_RATE
                   ) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of speech in a recording.

    Frames louder than the recording's noise floor (its quietest tenth) by more than a
    third of its dynamic range, and at least 6 dB, are speech; stretches less than
    MAX_GAP_S apart are one utterance, trimmed to the frames within WORD_RANGE_DB of its
    loudest; shorter than MIN_SPEECH_S are dropped, and each is widened by PAD_S. A recording without MIN_RANGE_DB between its floor and its peaks
    holds no speech: [].
    """
    energy = energy_db(samples, rate)
    floor, peak = np.percentile(energy, 10), np.percentile(energy, 99)
    if peak - floor < MIN_RANGE_DB:
        return []
    active = energy > floor + max(6.0, (peak - floor) / 3)
    found, start = [], None
    for index, loud in enumerate(np.append(active, False)):
        if loud and start is None:
            start = index
        elif not loud and start is not None:
            found.append([start * HOP_S, index * HOP_S + FRAME_S])
            start = None
    merged: list[list[float]] = []
    for segment in found:
        if merged and segment[0] - merged[-1][1] < MAX_GAP_S:
            merged[-1][1] = segment[1]
        else:
            merged.append(segment)
    duration = len(samples) / rate
    cuts = []
    for begin, end in merged:
        # Within a stretch, the word is where it comes within WORD_RANGE_DB of the
        # stretch's loudest frame: breath and room noise around it fall away.
        first, last = int(round(begin / HOP_S)), int(round((end - FRAME_S) / HOP_S))
        part = energy[first:last + 1]
        loud = np.flatnonzero(part >= part.max() - WORD_RANGE_DB)
        begin, end = (first + loud[0]) * HOP_S, (first + loud[-1]) * HOP_S + FRAME_S
        if end - begin >= MIN_SPEECH_S:
            cuts.append((round(max(0.0, begin - PAD_S), 3), round(min(duration, end + PAD_S), 3)))
    return cuts


def second_around(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    """The second of the recording centred on an utterance (zeros past its ends)."""
    half = contract.CLIP_SAMPLES // 2
    centre = int((start_s + end_s) / 2 * contract.SAMPLE_RATE)
    padded = np.pad(samples, (half, half))
    return padded[centre:centre + contract.CLIP_SAMPLES].astype(np.float32)


def read_utterances(paths: list[str], decode, say) -> tuple[list[Utterance], list[dict]]:
    """Every utterance of the recordings, and what was found in each (for metrics.json).

    Args:
      paths: the recordings.
      decode: path -> float32 samples at 16 kHz, or raises with the reason it cannot.
      say: prints a line of progress.

    A recording that cannot be decoded, holds no speech or only a scrap of it gets a
    line and is left out; the others go on.
    """
    utterances, report = [], []
    for path in paths:
        name = inputs.printable(path)
        try:
            samples = decode(path)
        except Exception as error:  # pylint: disable=broad-except  # each reader its own
            message = (getattr(error, "message", None) or "").strip()
            reason = message.splitlines()[0] if message else first_line(error)
            say(f"{name}: left out ({reason})")
            report.append({"path": name, "utterances": [], "reason": reason})
            continue
        cuts = cut_utterances(samples)
        if not cuts:
            reason = "no speech found" if len(samples) >= contract.SAMPLE_RATE * MIN_SPEECH_S \
                else f"too short ({len(samples) / contract.SAMPLE_RATE:.2f} s)"
            say(f"{name}: left out ({reason})")
            report.append({"path": name, "utterances": [], "reason": reason})
            continue
        speaker = dataset.speaker_id(path)
        for start, end in cuts:
            utterances.append(Utterance(name, speaker, start, end,
                                        second_around(samples, start, end)))
        say(f"{name}: {len(cuts)} utterance(s) at "
            + ", ".join(f"{start:.2f}-{end:.2f} s" for start, end in cuts))
        report.append({"path": name, "utterances": [[start, end] for start, end in cuts]})
    return utterances, report


def hold_back(utterances: list[Utterance], share: float = HELD_SHARE
              ) -> tuple[list[Utterance], list[Utterance], str]:
    """(kept for training, held back for the threshold, how they were split)."""
    for key, how in ((lambda u: u.speaker, "speaker"), (lambda u: u.path, "file")):
        groups = sorted({key(u) for u in utterances})
        if len(groups) >= 2:
            count = min(len(groups) - 1, max(1, round(len(groups) * share)))
            held = set(groups[-count:])
            return ([u for u in utterances if key(u) not in held],
                    [u for u in utterances if key(u) in held], how)
    count = min(len(utterances) - 1, max(1, round(len(utterances) * share)))
    return utterances[:-count], utterances[-count:], "utterance"
