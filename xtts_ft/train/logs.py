"""TensorBoard for both recipes: the writer of a run (resume-safe) and the mel images it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def summary_writer(out: Path, step: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: after a crash, events logged past the saved step are dropped, not duplicated.
    return SummaryWriter(str(Path(out) / "tensorboard"), purge_step=step + 1 if step else None)


def mel_image(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """A log-mel spectrogram as a [0, 1] image for TensorBoard (low frequencies at the bottom)."""
    import librosa

    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wav, sr=sample_rate, n_mels=80), ref=np.max, top_db=80)
    return np.flipud((mel + 80) / 80).astype(np.float32).copy()
