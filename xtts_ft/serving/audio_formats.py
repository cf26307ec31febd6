"""The bytes of a speech response: float32 mono audio as wav, flac, pcm, mp3 or opus.

`pcm` is what OpenAI's API calls pcm: raw 16-bit little-endian samples, 24 kHz mono, no header. `wav`
is the same samples behind a 44-byte RIFF header; streamed, the header goes first with its sizes
unknown (0xFFFFFFFF, which players and ffmpeg read as "until the stream ends"), then the frames as
they come. flac, mp3 and opus are encoded by libsndfile (the `soundfile` wheel bundles one built
with LAME and libopus), in one piece once the audio is whole: they are offered only where this
libsndfile can write them (`FORMATS`).
"""

from __future__ import annotations

import io
import struct
from typing import Dict, Tuple

import numpy as np

from xtts_ft.data.audio import to_pcm16

STREAMABLE = ("wav", "pcm")  # formats whose bytes go out as the audio is made
UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed WAV's RIFF and data sizes


def _libsndfile_formats() -> Dict[str, Tuple[str, str]]:
    """Response format → (libsndfile container, subtype), for those this libsndfile can write."""
    import soundfile

    wanted = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
    return {
        name: (container, subtype)
        for name, (container, subtype) in wanted.items()
        if subtype in soundfile.available_subtypes(container)
    }


ENCODED = _libsndfile_formats()
FORMATS = ("wav", "pcm", *ENCODED)  # every response_format this server answers
MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",  # Ogg Opus, as OpenAI's opus is
}


def pcm16(wav: np.ndarray) -> bytes:
    """float32 samples in [-1, 1] → 16-bit little-endian PCM, quantised as every WAV of the package is."""
    return to_pcm16(wav).astype("<i2").tobytes()


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN_SIZE) -> bytes:
    """A 44-byte PCM WAV header for 16-bit mono; `data_bytes` unknown (streaming) by default."""
    riff = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def encode(wav: np.ndarray, sample_rate: int, response_format: str) -> bytes:
    """The whole audio in `response_format` (one of FORMATS)."""
    if response_format == "pcm":
        return pcm16(wav)
    if response_format == "wav":
        frames = pcm16(wav)
        return wav_header(sample_rate, len(frames)) + frames
    import soundfile

    container, subtype = ENCODED[response_format]
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(wav, dtype=np.float32), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
