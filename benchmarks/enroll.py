"""Enrolment study: new words from 3 to 20 recordings, measured on other speakers.

    python -m benchmarks.enroll --base-job JOB --data-dir OUT --words WORDS --work-dir W \\
        [--counts 3 5 10 20] [--keep-keywords] [--fine-tune N] [--synthetic-voices N] \\
        [--test-data-dir OUT] [--enrol-seed 42] [--held-back-minutes 180]

WORDS holds a folder of clips per word the base job was not trained on (WORDS/<word>/,
names `<speaker>_nohash_<n>` or `<word>_<speaker>_nohash_<n>`). For each word its
speakers are split: the first ones (by a hash of the speaker) until `--test-clips` clips
are the test speakers, the others the enrolment speakers. For each count, that many
clips of enrolment speakers (one per speaker first) go to `trainer.enroll`; the job it
makes is measured on `--minutes` of test recordings: the word said by the test speakers
(a third of the words), the base run's test-split keywords and other words, over its
background noise. Recall of the word, and its false accepts per hour (its events
anywhere else); with `--keep-keywords` also the recall and false accepts per hour of
the base keywords, against the base job's on the same recordings. Prints a row per word
and count and the mean per count; writes W/results.json. Where enrolment speakers'
clips are left over (not given to `trainer.enroll`), the job is also measured on them
among the val split's words: a validation figure, for choosing how to enrol without the
test recordings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import statistics
import sys
from typing import Optional

from pipelines.errors import import_tensorflow_quietly

import_tensorflow_quietly()

from pipelines import audio, contract, dataset, events  # noqa: E402
from pipelines.errors import run_cli  # noqa: E402
from trainer import calibrate, detection, enroll, scoring, streams  # noqa: E402


def speakers_of(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    clips: dict[str, list[pathlib.Path]] = {}
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() in audio.EXTENSIONS or path.name.endswith(".wav.wav"):
            clips.setdefault(dataset.speaker_id(str(path)), []).append(path)
    return clips


def split_speakers(clips: dict[str, list], test_clips: int) -> tuple[list, dict]:
    """(test clips, enrolment clips by speaker): test speakers first in hash order."""
    order = sorted(clips, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    test, enrol = [], {}
    for speaker in order:
        if len(test) < test_clips:
            test += clips[speaker]
        else:
            enrol[speaker] = clips[speaker]
    return test, enrol


def pick(enrol: dict[str, list], count: int) -> list:
    """`count` clips, one per speaker in turn."""
    chosen, round_ = [], 0
    while len(chosen) < count:
        added = False
        for speaker in sorted(enrol):
            if round_ < len(enrol[speaker]) and len(chosen) < count:
                chosen.append(enrol[speaker][round_])
                added = True
        if not added:
            break
        round_ += 1
    return chosen


def test_streams(word: str, clips: list, data_dir: str, minutes: float, seed: int,
                 split: str = contract.TEST) -> list:
    """Recordings where the word is a third of the words said, among the base run's
    keywords and other words of `split`, over its background noise."""
    base_keywords, unknowns = calibrate.split_clips(data_dir, split)
    noises = calibrate.background_recordings(data_dir)
    word_clips = [(word, audio.pad_or_trim(audio.decode_wav(str(path)))) for path in clips]
    repeat = max(1, round(len(base_keywords) / 2 / len(word_clips)))
    said = word_clips * repeat + base_keywords
    count = max(1, round(minutes / 10))
    return [streams.build_stream(said, unknowns, noises, minutes * 60 / count, seed + i,
                                 unknown_percent=25) for i in range(count)]


def measure(scorer: scoring.Scorer, generated: list, word: str,
            base_keywords: list[str], budget: float) -> dict:
    """The word's recall and false accepts per hour, and the base keywords' recall and
    false accepts per hour (their events anywhere else, the new word included)."""
    config = scoring.read_config(scorer)
    scored = calibrate.score_streams(generated, scorer, config)
    result = {}
    if word in scorer.labels:
        metrics = detection.evaluate(scored, scorer.labels, detection.only(config, {word}))
        result.update({"recall": metrics["recall_per_keyword"].get(word, 0.0),
                       "false_accepts_per_hour": metrics["false_accepts_per_hour"]})
        # The best this job could do here: the test recordings' own DET curve at the
        # budget (a diagnosis of the features apart from the choice of threshold).
        curve = detection.keyword_curve(scored, scorer.labels, config, word)
        result["test_det_recall"] = detection.best_row(curve, budget)["recall"]
    kept = [k for k in base_keywords if k in config.thresholds]
    if kept:
        metrics = detection.evaluate(scored, scorer.labels, detection.only(config, kept))
        said = metrics["recall_per_keyword"]
        result["base_keywords_recall"] = statistics.fmean(said.get(k, 0.0) for k in kept)
        result["base_keywords_false_accepts_per_hour"] = metrics["false_accepts_per_hour"]
    return result


def run(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.enroll",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-job", required=True)
    parser.add_argument("--data-dir", required=True, help="the base job's preprocessing run")
    parser.add_argument("--words", required=True, help="a folder of <word>/ clip folders")
    parser.add_argument("--work-dir", required=True)
    parser.add_argument("--counts", type=int, nargs="+", default=[3, 5, 10, 20])
    parser.add_argument("--test-clips", type=int, default=10,
                        help="clips of test speakers per word (at least)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--test-data-dir", default=None,
                        help="the preprocessing run whose test clips and noise make the "
                             "test recordings (default: --data-dir)")
    parser.add_argument("--max-false-accepts-per-hour", type=float, default=2.0)
    parser.add_argument("--keep-keywords", action="store_true")
    parser.add_argument("--fine-tune", type=int, default=None,
                        help="trainer.enroll's --fine-tune (default: its default)")
    parser.add_argument("--synthetic-voices", type=int, default=0)
    parser.add_argument("--held-back-minutes", type=enroll.held_back_minutes, default=None,
                        help="trainer.enroll's --held-back-minutes (default: its default)")
    parser.add_argument("--seed", type=int, default=0, help="the test recordings' seed")
    parser.add_argument("--enrol-seed", type=int, default=42,
                        help="trainer.enroll's --seed (augmentation and training)")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    base_scorer = scoring.Scorer(args.base_job)
    base_keywords = events.keywords_of(base_scorer.labels)
    budget = args.max_false_accepts_per_hour
    test_data = args.test_data_dir or args.data_dir
    results = []
    for folder in sorted(p for p in pathlib.Path(args.words).iterdir() if p.is_dir()):
        word = folder.name
        test, enrol = split_speakers(speakers_of(folder), args.test_clips)
        available = sum(len(clips) for clips in enrol.values())
        generated = test_streams(word, test, test_data, args.minutes, args.seed)
        base = measure(base_scorer, generated, word, base_keywords, budget) \
            if args.keep_keywords else {}
        for count in args.counts:
            if count > available:
                print(f"{word}: {available} enrolment clips, fewer than {count}: skipped")
                continue
            job = work / f"{word}-{count}"
            flags = ["--keep-keywords"] if args.keep_keywords else []
            if args.fine_tune is not None:
                flags += ["--fine-tune", str(args.fine_tune)]
            if args.synthetic_voices:
                flags += ["--synthetic-voices", str(args.synthetic_voices)]
            if args.held_back_minutes is not None:
                flags += ["--held-back-minutes", f"{args.held_back_minutes:g}"]
            chosen = pick(enrol, count)
            enrolled = enroll.run(["--base-job", args.base_job, "--data-dir", args.data_dir,
                                   "--keyword", word, "--recordings", *map(str, chosen),
                                   "--job-dir", str(job), "--no-report",
                                   "--max-false-accepts-per-hour", str(budget),
                                   "--seed", str(args.enrol_seed), *flags])
            scorer = scoring.Scorer(str(job))
            row = {"word": word, "count": count, "test_clips": len(test),
                   "test_speakers": len({dataset.speaker_id(str(p)) for p in test}),
                   "estimate": enrolled["estimate"],
                   **measure(scorer, generated, word, base_keywords, budget)}
            # Validation: the enrolment speakers' clips it did not learn from, among the
            # val split's words (for choosing how to enrol without the test recordings).
            used = set(chosen)
            rest = [p for clips in enrol.values() for p in clips if p not in used]
            if rest:
                found = measure(scorer, test_streams(word, rest, test_data, args.minutes,
                                                     args.seed + 100, contract.VAL),
                                word, [], budget)
                row.update({"val_clips": len(rest), "val_recall": found["recall"],
                            "val_false_accepts_per_hour": found["false_accepts_per_hour"]})
            if base:
                row["base_job_keywords_recall"] = base["base_keywords_recall"]
                row["base_job_keywords_false_accepts_per_hour"] = \
                    base["base_keywords_false_accepts_per_hour"]
            results.append(row)
            print(f"{word:6s} {count:3d} recordings: recall {row['recall']:.3f}, "
                  f"{row['false_accepts_per_hour']:.1f} false accepts per hour (test DET at "
                  f"{budget:g}: {row['test_det_recall']:.3f}; estimated "
                  f"on held-back recordings: {row['estimate']['recall']:.2f}, "
                  f"{row['estimate']['false_accepts_per_hour']:.1f})"
                  + (f"; val ({len(rest)} clips): recall {row['val_recall']:.3f}, "
                     f"{row['val_false_accepts_per_hour']:.1f}" if rest else "")
                  + (f"; base keywords recall {row['base_keywords_recall']:.3f} at "
                     f"{row['base_keywords_false_accepts_per_hour']:.1f} against the base "
                     f"job's {row['base_job_keywords_recall']:.3f} at "
                     f"{row['base_job_keywords_false_accepts_per_hour']:.1f}"
                     if base else ""),
                  flush=True)
    summary = {}
    for count in args.counts:
        rows = [row for row in results if row["count"] == count]
        if not rows:
            continue
        summary[count] = {key: statistics.fmean(row[key] for row in rows)
                          for key in ("recall", "false_accepts_per_hour", "test_det_recall")
                          + (("base_keywords_recall", "base_keywords_false_accepts_per_hour",
                              "base_job_keywords_recall",
                              "base_job_keywords_false_accepts_per_hour")
                             if args.keep_keywords else ())}
        summary[count]["words"] = len(rows)
        valued = [row for row in rows if "val_recall" in row]
        if valued:
            summary[count].update({"val_words": len(valued), **{
                key: statistics.fmean(row[key] for row in valued)
                for key in ("val_recall", "val_false_accepts_per_hour")}})
        print(f"mean of {len(rows)} words, {count} recordings: recall "
              f"{summary[count]['recall']:.3f}, {summary[count]['false_accepts_per_hour']:.1f}"
              f" false accepts per hour (test DET at {budget:g}: "
              f"{summary[count]['test_det_recall']:.3f})" + (
                  f"; val, {summary[count]['val_words']} words: recall "
                  f"{summary[count]['val_recall']:.3f}, "
                  f"{summary[count]['val_false_accepts_per_hour']:.1f}"
                  if valued else "")
              + (f"; base keywords {summary[count]['base_keywords_recall']:.3f} at "
                 f"{summary[count]['base_keywords_false_accepts_per_hour']:.1f} against the "
                 f"base job's {summary[count]['base_job_keywords_recall']:.3f} at "
                 f"{summary[count]['base_job_keywords_false_accepts_per_hour']:.1f}"
                 if args.keep_keywords else ""))
    (work / "results.json").write_text(json.dumps({"rows": results, "mean": summary},
                                                  indent=2) + "\n")
    return {"rows": results, "mean": summary}


def main(argv: Optional[list[str]] = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
