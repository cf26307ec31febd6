"""Audio operations: load any soundfile-readable file as mono float32, resample, trim.

We load with soundfile and resample with soxr (high quality) rather than torchaudio.load,
so our code does not depend on torchaudio's codec backends.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile as sf
import soxr


def read_mono(path: Path, max_seconds: Optional[float] = None):
    """(mono float32 samples, source rate); with `max_seconds`, only that much of the start is decoded.
    Raises RuntimeError naming the file if it cannot be read."""
    try:
        stop = None if max_seconds is None else int(max_seconds * sf.info(str(path)).samplerate)
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True, stop=stop)
    except Exception as err:  # soundfile raises several types for corrupt or truncated files
        raise RuntimeError(f"cannot read audio {path}: {err}") from err
    channels = audio.shape[1]
    if channels == 1:
        return audio[:, 0], rate
    # A mix-down as a matrix-vector product: ndarray.mean over the short channel axis was ~4 ms
    # per stereo clip, the costliest numpy call of `prepare`.
    return audio @ np.full(channels, 1 / channels, dtype=np.float32), rate


def header_seconds(path: Path) -> float:
    """The duration the file's header gives, without decoding it. Raises RuntimeError naming the file if it cannot be read."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # as read_mono: several types for corrupt or truncated files
        raise RuntimeError(f"cannot read audio {path}: {err}") from err
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


def load_audio(path: Path, sample_rate: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """Mono float32 at `sample_rate` (the first `max_seconds` only, when given). Raises RuntimeError
    naming the file if it cannot be read."""
    audio, rate = read_mono(path, max_seconds)
    if rate != sample_rate and audio.size:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
    return audio


def trim_bounds(audio: np.ndarray, top_db: float, frame_length: int = 2048, hop_length: int = 512):
    """(start, end) sample bounds of `audio` without leading/trailing frames quieter than peak - top_db.

    The same rule as librosa.effects.trim (centred RMS frames, dB relative to the loudest
    frame), in numpy: librosa's first call costs ~4 s of lazy imports and JIT in every worker
    process, more than a whole corpus of short clips takes. tests/test_audio.py checks they agree.
    """
    padded = np.pad(audio, frame_length // 2)
    # Frame energies from one running sum (each sample squared once, not once per overlapping frame).
    energy = np.concatenate([[0.0], np.cumsum(np.square(padded, dtype=np.float64))])
    starts = np.arange(0, padded.size - frame_length + 1, hop_length)
    power = (energy[starts + frame_length] - energy[starts]) / frame_length
    db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(power.max(initial=0.0), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop_length), int(min(audio.size, (loud[-1] + 1) * hop_length))


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16, rounded and clipped. We quantise ourselves: libsndfile's float
    conversion made a WAV write twice as slow, and it floors where this rounds."""
    return np.clip(np.rint(np.asarray(audio) * 32768.0), -32768, 32767).astype(np.int16)


def encode_wav(audio: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit PCM WAV file's bytes, encoded in memory."""
    encoded = io.BytesIO()
    sf.write(encoded, to_pcm16(audio), sample_rate, subtype="PCM_16", format="WAV")
    return encoded.getvalue()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """A 16-bit PCM WAV, written atomically."""
    from xtts_ft.io_utils import atomic_path

    # Encoded in memory, then written: libsndfile fsyncs every file it closes, which made the
    # write of a clip cost more than its decoding.
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(encode_wav(audio, sample_rate))
