"""Audio operations: load any soundfile-readable file as mono float32, resample, trim.

We load with soundfile and resample with soxr (high quality) rather than torchaudio.load,
so our code does not depend on torchaudio's codec backends.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import soundfile as sf
import soxr

from xtts_ft.errors import UserError

# Containers libsndfile cannot decode (AAC, WMA, video): the fix is a conversion.
CONVERT_FIRST = (".m4a", ".aac", ".mp4", ".wma", ".webm", ".mkv", ".mov", ".amr")


class UnreadableAudio(UserError, RuntimeError):
    """Audio soundfile cannot read (corrupt, truncated, cut short, empty, a format it does not know, no
    permission): the user's file, named. Still a RuntimeError, which callers catch to drop the clip."""


def unreadable(path: Path, err: Exception) -> UnreadableAudio:
    """The error for audio soundfile cannot read, with the likely cause and its fix."""
    path = Path(path)
    if path.suffix.lower() in CONVERT_FIRST:
        hint = f"; {path.suffix} is not a format libsndfile reads — fix: convert it (ffmpeg -i {path.name} {path.stem}.flac)"
    elif path.is_file() and not os.access(path, os.R_OK):
        hint = " (permission denied — fix: make it readable by this user)"
    else:
        hint = ""
    return UnreadableAudio(f"cannot read audio {path}: {err}{hint}")


def read_mono(path: Path, max_seconds: Optional[float] = None):
    """(mono float32 samples, source rate); with `max_seconds`, only that much of the start is decoded.
    Raises RuntimeError naming the file if it cannot be read."""
    try:
        stop = None if max_seconds is None else int(max_seconds * sf.info(str(path)).samplerate)
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True, stop=stop)
    except Exception as err:  # soundfile raises several types for corrupt or truncated files
        raise unreadable(path, err) from err
    channels = audio.shape[1]
    if channels == 1:
        return audio[:, 0], rate
    # A mix-down as a matrix-vector product: ndarray.mean over the short channel axis was ~4 ms
    # per stereo clip, the costliest numpy call of `prepare`.
    return audio @ np.full(channels, 1 / channels, dtype=np.float32), rate


def header_seconds(path: Path) -> float:
    """The duration the file's header gives, without decoding it. Raises RuntimeError naming the
    file if it cannot be read, or if it is a WAV cut short (see `wav_shortfall`)."""
    try:
        status = os.stat(path)
    except OSError as err:
        raise UnreadableAudio(f"cannot read audio {path}: {err.strerror or err}") from err
    if stat.S_ISREG(status.st_mode) and status.st_size == 0:
        raise UnreadableAudio(f"audio {path} is an empty file (0 bytes); copy it again from its source")
    try:
        info = sf.info(str(path))
    except Exception as err:  # as read_mono: several types for corrupt or truncated files
        raise unreadable(path, err) from err
    shortfall = wav_shortfall(path)
    if shortfall is not None:
        declared, held = shortfall
        raise UnreadableAudio(
            f"audio {path} is cut short: its header promises {declared:.2f} s, the file holds {held:.2f} s "
            "(an interrupted copy or download?); copy it again from its source"
        )
    return info.frames / info.samplerate if info.samplerate > 0 else 0.0


TRUNCATION_SLACK_SECONDS = 0.01


def wav_shortfall(path: Path) -> Optional[Tuple[float, float]]:
    """(seconds a RIFF WAV's data chunk declares, seconds the file holds) when the file ends more
    than TRUNCATION_SLACK_SECONDS before its declared data does; None otherwise, and for any other
    format. libsndfile reads such a file without error and reports only the frames present, so a
    clip cut short by a failed copy would keep its whole transcript. A size of 0, or one of 2 GiB or
    more (0xFFFFFFFF, 0x7FFFFFFF: placeholders of streams written before their length was known),
    declares nothing."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            byte_rate = 0
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if kind == b"fmt ":
                    fmt = f.read(size)
                    byte_rate = struct.unpack("<I", fmt[8:12])[0] if len(fmt) >= 12 else 0
                    f.seek(size % 2, os.SEEK_CUR)
                elif kind == b"data":
                    held = os.fstat(f.fileno()).st_size - f.tell()
                    if (
                        size == 0
                        or size >= 0x7FFF0000
                        or byte_rate <= 0
                        or (size - held) / byte_rate <= TRUNCATION_SLACK_SECONDS
                    ):
                        return None
                    return size / byte_rate, max(held, 0) / byte_rate
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None  # sf.info read it; a read error here is left to the decoder to report


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
    process, more than a whole corpus of short clips takes. tests/unit/data/test_audio.py checks they agree.
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
