"""Synthetic speech as a data source: spoken words from eSpeak NG as one-second WAV clips.

    python -m pipelines.synthesize --confusable-with down,go,left,no,right,stop,up,yes \\
        --ordinary 200 --voices-per-word 8 --output SYN/_unknown_
    python -m pipelines.synthesize --words yes --voices-per-word 300 --output SYN/yes

Each word is said by `--voices-per-word` voice settings of eSpeak NG (`pipelines.tts`:
its English voices, every voice variant it ships, rates and pitches), drawn per word, and
written as 16 kHz mono 16-bit WAV, one clip per file::

    OUTPUT/<word>_<setting>_nohash_tts.wav

The eight hex digits of <setting> name the voice setting, and preprocessing takes them as
the speaker, so every clip of one setting lands in the same split (`pipelines.dataset`).
`--confusable-with` adds, for each keyword, the `--per-keyword` words of a word list (the
`--vocabulary` most frequent English words of `wordfreq`) that sound nearest it by the
synthesiser's own phonemes (homophones, and words that only extend the keyword, such as
"stops" for "stop", are left out: a detector fires on the keyword before the ending is
said); `--ordinary` adds the most frequent words besides. Preprocess the output next to
the real data (`--data-dir DIR --data-dir SYN`): other words become `_unknown_`.

The clips are made on Beam workers (DirectRunner locally, Dataflow at scale: OUTPUT may
be gs://). Files already in OUTPUT from an earlier run (named as above) are refused, or
replaced with `--overwrite`; nothing else there is touched. The run ends with
`clips planned N = written W + failed F`, W counted from the files in OUTPUT.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import zlib
from typing import Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from pipelines import batch, claim, contract, errors, tts

SUFFIX = f"{tts.MARK}.wav"
NAMESPACE = "synthesize"
_CLIP_NAME = re.compile(r"[a-z']+_[0-9a-f]{8}" + re.escape(SUFFIX))
VOCABULARY = 20_000
PER_KEYWORD = 20
VOICES_PER_WORD = 8


def clip_name(word: str, voice: tts.Voice) -> str:
    return f"{word}_{voice.speaker_id}{SUFFIX}"


def word_seed(word: str, seed: int) -> int:
    """A seed of its own for each word (stable across runs and machines)."""
    return zlib.crc32(word.encode()) ^ seed


def vocabulary(size: int) -> list[str]:
    """The `size` most frequent English words (letters only), most frequent first."""
    import wordfreq  # pylint: disable=import-outside-toplevel
    words = wordfreq.top_n_list("en", size * 2)
    return [word for word in words if word.isascii() and word.isalpha() and len(word) > 1][:size]


def extends(word: list[str], keyword: list[str]) -> bool:
    """Whether `word` is `keyword` said with something after it (phonemes)."""
    return len(word) > len(keyword) and word[:len(keyword)] == keyword


def plan_words(words: list[str], confusable_with: list[str], per_keyword: int, ordinary: int,
               size: int, synthesizer: tts.Synthesizer) -> dict[str, str]:
    """The words to say, each with why: "given", "near <keyword>" or "ordinary"."""
    planned = {word: "given" for word in words}
    if not confusable_with and not ordinary:
        return planned
    listed = vocabulary(size)
    phonemes = {word: tts.phoneme_tokens(synthesizer.phonemes(word))
                for word in set(listed) | set(confusable_with)}
    extensions = {word for word in listed for keyword in confusable_with
                  if extends(phonemes[word], phonemes[keyword])}
    # Rhyming keywords share their nearest words ("go", "no"): each keyword gets
    # `per_keyword` words of its own, the next nearest where one is already taken.
    nearest = tts.confusable_words(confusable_with, listed, phonemes,
                                   per_keyword * len(confusable_with), exclude=extensions)
    for keyword in confusable_with:
        own = [word for word in nearest[keyword] if word not in planned][:per_keyword]
        for word in own:
            planned[word] = f"near {keyword}"
    homophones = tts.homophones(listed, confusable_with, phonemes)
    common = [word for word in listed if word not in planned and word not in homophones
              and word not in confusable_with and word not in extensions]
    for word in common[:ordinary]:
        planned[word] = "ordinary"
    return planned


class SayWord(beam.DoFn):
    """(word, voice, seed) -> the path of the clip written, or a rejection."""

    def __init__(self, output: str):
        self._output = output
        self._written = Metrics.counter(NAMESPACE, "written")
        self._failed = Metrics.counter(NAMESPACE, "failed")

    def setup(self):
        self._synthesizer = tts.synthesizer()

    def process(self, element):
        import soundfile  # pylint: disable=import-outside-toplevel
        word, voice, seed = element
        path = f"{self._output}/{clip_name(word, voice)}"
        samples = self._synthesizer.clip(word, voice, np.random.default_rng(seed))
        if not np.any(samples):
            self._failed.inc()
            yield beam.pvalue.TaggedOutput("failed", f"{path}: the synthesiser said nothing")
            return
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, contract.SAMPLE_RATE, format="WAV",
                        subtype="PCM_16")
        partial = f"{path}.partial"
        with FileSystems.create(partial) as handle:
            handle.write(buffer.getvalue())
        FileSystems.rename([partial], [path])
        self._written.inc()
        yield path


def earlier_clips(output: str) -> list[str]:
    """Files in `output` named as this command names its clips (or their partial files)."""
    listed = FileSystems.match([f"{output}/*{SUFFIX}*"])[0].metadata_list
    return sorted(meta.path for meta in listed
                  if _CLIP_NAME.fullmatch(meta.path.rsplit("/", 1)[-1].removesuffix(".partial")))


def build_parser() -> argparse.ArgumentParser:
    parser = batch.beam_parser("python -m pipelines.synthesize", __doc__)
    parser.add_argument("--words", default="", help="comma-separated words to say")
    parser.add_argument("--confusable-with", default="", metavar="KEYWORDS",
                        help="comma-separated keywords: add the words that sound nearest each")
    parser.add_argument("--per-keyword", type=int, default=PER_KEYWORD,
                        help=f"words added per keyword of --confusable-with "
                             f"(default {PER_KEYWORD})")
    parser.add_argument("--ordinary", type=int, default=0, metavar="N",
                        help="add the N most frequent English words besides (default 0)")
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY,
                        help=f"words of the frequency list searched (default {VOCABULARY})")
    parser.add_argument("--voices-per-word", type=int, default=VOICES_PER_WORD,
                        help=f"voice settings that say each word (default {VOICES_PER_WORD})")
    parser.add_argument("--seed", type=int, default=0, help="seeds the voices and placement")
    parser.add_argument("--output", required=True,
                        help="folder the clips go to, e.g. SYN/_unknown_ (local or gs://)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the clips of an earlier run in --output (only files "
                             "named as this command names them are removed)")
    return parser


def _word_list(text: str, flag: str) -> list[str]:
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    bad = [word for word in words if not re.fullmatch(r"[a-z']+", word)]
    if bad:
        raise errors.UserError(f"{flag}: {bad[0]!r} is not a word of letters")
    return words


def run(argv: Optional[list[str]] = None) -> dict:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    for flag in ("per_keyword", "ordinary", "vocabulary", "voices_per_word"):
        if getattr(args, flag) < 0 or (flag == "voices_per_word" and args.voices_per_word < 1):
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    options = batch.pipeline_options(beam_args)
    words = _word_list(args.words, "--words")
    keywords = _word_list(args.confusable_with, "--confusable-with")
    if not words and not keywords and not args.ordinary:
        raise errors.UserError("nothing to say: give --words, --confusable-with or --ordinary")
    synthesizer = tts.synthesizer()
    planned = plan_words(words, keywords, args.per_keyword, args.ordinary, args.vocabulary,
                         synthesizer)
    grid = tts.voice_grid(synthesizer.variants())
    jobs = [(word, voice, word_seed(word, args.seed) + index)
            for word in sorted(planned)
            for index, voice in enumerate(tts.choose_voices(
                grid, args.voices_per_word, word_seed(word, args.seed)))]
    output = args.output.rstrip("/")
    with claim.Claim(output, "python -m pipelines.synthesize"):
        earlier = earlier_clips(output)
        if earlier and not args.overwrite:
            raise errors.UserError(f"{output}: already holds {len(earlier)} clips of an earlier "
                                   "run; pass --overwrite to replace them, or choose another "
                                   "--output")
        if earlier:
            FileSystems.delete(earlier)
        for keyword in keywords:
            near = [word for word, why in planned.items() if why == f"near {keyword}"]
            print(f"near {keyword}: {', '.join(near)}")
        print(f"saying {len(planned)} words with {args.voices_per_word} voice settings each: "
              f"{len(jobs)} clips")
        pipeline = beam.Pipeline(options=options)
        said = (pipeline
                | "Plan" >> beam.Create(jobs)
                | "Spread" >> beam.Reshuffle()
                | "Say" >> beam.ParDo(SayWord(output)).with_outputs("failed", main="clips"))
        said.failed | "ReportFailed" >> beam.Map(lambda line: print(f"failed: {line}",
                                                                   file=sys.stderr))
        batch.run_pipeline(pipeline, output, ())
        written = len([path for path in earlier_clips(output) if path.endswith(SUFFIX)])
    failed = len(jobs) - written
    print(f"clips planned {len(jobs)} = written {written} + failed {failed}: {output}/")
    if failed:
        raise errors.PartialFailure(f"{output}: {failed} of {len(jobs)} clips were not "
                                    "written (see above)")
    return {"planned": len(jobs), "written": written, "words": planned}


def main(argv: Optional[list[str]] = None) -> int:
    return errors.run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
