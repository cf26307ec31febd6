"""Audio operations: load any soundfile-readable file as mono float32, resample, trim.

We load with soundfile and resample with soxr (high quality) rather than torchaudio.load,
so our code does not depend on torchaudio's codec backends.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import soundfile as sf
import soxr


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 at `sample_rate`. Raises RuntimeError naming the file if it cannot be read."""
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt files
        raise RuntimeError(f"cannot read audio {path}: {err}") from err
    audio = audio.mean(axis=1)
    if rate != sample_rate and audio.size:
        audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
    return audio


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    from xtts_ft.io_utils import atomic_path

    with atomic_path(Path(path)) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype="PCM_16", format="WAV")
