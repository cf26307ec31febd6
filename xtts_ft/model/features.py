"""What the GPT trains on, computed from 22.05 kHz waveforms: DVAE audio codes and conditioning mels.

The mel settings are the ones coqui's GPT trainer uses for XTTS-v2, with the normalisation
taken from the model's own mel_stats.pth (never coqui's URL default).
"""

from __future__ import annotations

import torch
from torch import nn

from xtts_ft.model.constants import GPT_SAMPLE_RATE


class GptFeatures(nn.Module):
    def __init__(self, dvae: nn.Module, mel_stats: torch.Tensor, use_perceiver: bool = True):
        from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram

        super().__init__()
        self.dvae = dvae
        self.dvae_mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=GPT_SAMPLE_RATE)
        self.dvae_mel.mel_norms = mel_stats
        # XTTS-v2 (perceiver conditioning) uses a finer mel for the reference than XTTS-v1.
        fft, hop, win = (2048, 256, 1024) if use_perceiver else (4096, 1024, 4096)
        self.cond_mel = TorchMelSpectrogram(
            filter_length=fft,
            hop_length=hop,
            win_length=win,
            normalize=False,
            sampling_rate=GPT_SAMPLE_RATE,
            mel_fmin=0,
            mel_fmax=8000,
            n_mel_channels=80,
            mel_norm_file=None,
        )
        self.cond_mel.mel_norms = mel_stats

    @torch.no_grad()
    def audio_codes(self, wavs: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms → (B, ~T/1024) DVAE code ids."""
        return self.dvae.get_codebook_indices(self.dvae_mel(wavs))

    @torch.no_grad()
    def conditioning_mels(self, cond_wavs: torch.Tensor) -> torch.Tensor:
        """(B, T) reference crops → (B, 1, 80, frames) as the GPT's conditioning encoder expects."""
        return self.cond_mel(cond_wavs).unsqueeze(1)
