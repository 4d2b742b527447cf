"""Spoken words from an offline synthesiser (eSpeak NG), and how close two words sound.

eSpeak NG's library and voice data come as the `espeakng-loader` wheel from PyPI, so
nothing is downloaded at run time; it is driven here through ctypes. A voice *setting*
is one of its English voices (American, British, Scottish, Caribbean, ...), one of its
voice variants (`f1`..`f5`, `m1`..`m8`, `klatt`, `croak`, `whisper`, named ones), a rate
and a pitch. `Synthesizer.clip` says a word with a setting and returns a one-second clip
at 16 kHz, the word placed as in a recorded clip. `Synthesizer.phonemes` gives the IPA
the synthesiser itself would say, and `phoneme_distance` how far apart two words sound
(an edit distance over phonemes, 0 for homophones), which `confusable_words` uses to
find the words nearest a keyword in a word list.

eSpeak NG keeps global state: one `Synthesizer` per process, used by one thread at a
time (a lock guards it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import unicodedata
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import soxr

from pipelines import contract, errors

INSTALL_HINT = "pip install espeakng-loader (it carries eSpeak NG's library and voices)"
# eSpeak NG's English voices (the Shavian-alphabet one reads another script).
LANGUAGES = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
             "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
RATES = (110, 130, 150, 170, 190, 210, 230)  # words per minute (eSpeak's default: 175)
PITCHES = (15, 30, 45, 60, 75, 90)  # 0..100 (default 50)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH = 1, 3  # espeak_PARAMETER
_IPA = 0x02  # espeak_TextToPhonemes: phoneme mode bit 1, IPA as UTF-8
MARK = "_nohash_tts"  # in the name of every clip `pipelines.synthesize` writes
SILENCE_LEVEL = 0.02  # |sample| below this fraction of the peak is silence at a word's edges
_LOCK = threading.Lock()


class SynthesizerMissing(errors.UserError):
    """eSpeak NG's library or data cannot be loaded."""


class Voice(NamedTuple):
    """One voice setting of the synthesiser."""
    language: str
    variant: str
    rate: int
    pitch: int

    @property
    def name(self) -> str:
        """eSpeak's name for language and variant, e.g. "en-us+f3"."""
        return f"{self.language}+{self.variant}"

    @property
    def speaker_id(self) -> str:
        """Eight hex digits naming the setting: what preprocessing splits by."""
        text = f"{self.name}/{self.rate}/{self.pitch}"
        return hashlib.sha1(text.encode()).hexdigest()[:8]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)
_INSTANCE: list = []


def synthesizer() -> "Synthesizer":
    """The process's Synthesizer, started on first use (eSpeak NG is one per process)."""
    with _LOCK:
        if not _INSTANCE:
            _INSTANCE.append(Synthesizer())
        return _INSTANCE[0]


class Synthesizer:
    """eSpeak NG, loaded once per process through `synthesizer()` (raises
    SynthesizerMissing when it cannot be)."""

    def __init__(self):
        try:
            import espeakng_loader  # pylint: disable=import-outside-toplevel
            self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
            self.data_path = espeakng_loader.get_data_path()
        except (ImportError, OSError) as error:
            raise SynthesizerMissing(f"the speech synthesiser eSpeak NG cannot be loaded "
                                     f"({errors.first_line(error)}); {INSTALL_HINT}") from None
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                                   ctypes.c_int, ctypes.c_int]
        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise SynthesizerMissing(f"eSpeak NG did not start (data in {self.data_path}); "
                                     f"{INSTALL_HINT}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, samples, count, _events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def variants(self) -> list[str]:
        """The voice variants eSpeak NG ships (file names in its data's voices/!v)."""
        folder = os.path.join(self.data_path, "voices", "!v")
        return sorted(name for name in os.listdir(folder)
                      if os.path.isfile(os.path.join(folder, name)) and " " not in name)

    def _set_voice(self, name: str) -> None:
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {name!r}")

    def speak(self, text: str, voice: Voice) -> np.ndarray:
        """`text` said with `voice`: float32 samples at 16 kHz, as long as it lasts."""
        with _LOCK:
            self._set_voice(voice.name)
            self._lib.espeak_SetParameter(_RATE, voice.rate, 0)
            self._lib.espeak_SetParameter(_PITCH, voice.pitch, 0)
            self._chunks = []
            data = text.encode("utf-8")
            self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, 0, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, np.float32)
        samples = np.concatenate(chunks).astype(np.float32) / 32768.0
        return soxr.resample(samples, self.sample_rate, contract.SAMPLE_RATE,
                             quality="HQ").astype(np.float32)

    def clip(self, word: str, voice: Voice, rng: np.random.Generator) -> np.ndarray:
        """A one-second clip of `word`: the speech trimmed of silence, laid at a random
        offset inside the second (cut to a second when longer), peak at a random level."""
        return place_in_clip(trim_silence(self.speak(word, voice)), rng)

    def phonemes(self, word: str, language: str = "en-us") -> str:
        """The IPA eSpeak NG says `word` with (stress marks included)."""
        with _LOCK:
            self._set_voice(language)
            pointer = ctypes.c_char_p(word.encode("utf-8"))
            parts = []
            while pointer.value:
                out = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), 0, _IPA)
                if not out:
                    break
                parts.append(out.decode("utf-8"))
        return " ".join(parts).strip()


def is_synthetic(path: str) -> bool:
    """Whether a clip's file was written by `pipelines.synthesize`."""
    return MARK in path.rsplit("/", 1)[-1]


def trim_silence(samples: np.ndarray, level: float = SILENCE_LEVEL) -> np.ndarray:
    """`samples` without the near-silence before and after the speech."""
    if not len(samples):
        return samples
    loud = np.flatnonzero(np.abs(samples) >= level * max(np.abs(samples).max(), 1e-9))
    return samples[loud[0]:loud[-1] + 1] if len(loud) else samples[:0]


def place_in_clip(speech: np.ndarray, rng: np.random.Generator,
                  length: int = contract.CLIP_SAMPLES) -> np.ndarray:
    """`speech` laid at a uniform random offset in a clip of `length` samples, scaled to a
    peak drawn from the range of recorded clips (0.1 to 0.9)."""
    speech = np.asarray(speech, np.float32)[:length]
    out = np.zeros(length, np.float32)
    if not len(speech):
        return out
    start = int(rng.integers(0, length - len(speech) + 1))
    peak = max(float(np.abs(speech).max()), 1e-9)
    out[start:start + len(speech)] = speech * (rng.uniform(0.1, 0.9) / peak)
    return out


def voice_grid(variants: Sequence[str]) -> list[Voice]:
    """Every setting of LANGUAGES x `variants` x RATES x PITCHES."""
    return [Voice(language, variant, rate, pitch) for language in LANGUAGES
            for variant in variants for rate in RATES for pitch in PITCHES]


def choose_voices(grid: Sequence[Voice], count: int, seed: int) -> list[Voice]:
    """`count` settings of `grid` drawn without replacement (all of it if fewer)."""
    order = np.random.default_rng(seed).permutation(len(grid))[:count]
    return [grid[i] for i in sorted(order)]


# --- how close two words sound -----------------------------------------------------------

_MARKS = {"ˈ", "ˌ", "-", " ", "_"}  # stress and separators: not phonemes


def phoneme_tokens(ipa: str) -> list[str]:
    """IPA text -> phonemes: one per base letter, length marks and combining diacritics kept
    with the letter before them, stress marks dropped."""
    tokens: list[str] = []
    for char in ipa:
        if char in _MARKS:
            continue
        if tokens and (char in "ːˑ" or unicodedata.combining(char)):
            tokens[-1] += char
        else:
            tokens.append(char)
    return tokens


def phoneme_distance(first: Sequence[str], second: Sequence[str]) -> float:
    """Levenshtein distance between two phoneme sequences over the longer's length:
    0 for the same sounds, 1 for nothing in common."""
    if not first and not second:
        return 0.0
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, 1):
        current = [i]
        for j, b in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (a != b)))
        previous = current
    return previous[-1] / max(len(first), len(second))


def homophones(words: Iterable[str], keywords: Iterable[str],
               phonemes: dict[str, list[str]]) -> set[str]:
    """The `words` the synthesiser says exactly as one of the `keywords`."""
    said = {tuple(phonemes[keyword]) for keyword in keywords}
    return {word for word in words if tuple(phonemes[word]) in said}


def confusable_words(keywords: Iterable[str], vocabulary: Iterable[str],
                     phonemes: dict[str, list[str]], per_keyword: int,
                     exclude: Optional[Iterable[str]] = None) -> dict[str, list[str]]:
    """For each keyword, the `per_keyword` words of `vocabulary` that sound nearest it.

    A word that sounds the same as a keyword (distance 0: a homophone, "know" for "no")
    is never a negative, and neither is a keyword or a word of `exclude`.

    Args:
      phonemes: word -> phoneme tokens, for every keyword and word of the vocabulary.
    """
    keywords = list(keywords)
    left_out = set(keywords) | set(exclude or ()) | homophones(vocabulary, keywords, phonemes)
    candidates = [word for word in vocabulary if word not in left_out]
    nearest = {}
    for keyword in keywords:
        ranked = sorted(candidates, key=lambda word: (
            phoneme_distance(phonemes[keyword], phonemes[word]), word))
        nearest[keyword] = ranked[:per_keyword]
    return nearest
