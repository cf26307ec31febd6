"""The HiFiGAN decoder's side of XTTS: what it is fed (GPT latents, speaker embedding), how its
output lines up with the 24 kHz target, and the losses it is fine-tuned with.

coqui's `HifiDecoder.forward` first stretches the latents with two parameter-free linear
interpolations (×ar_mel_length_compression/output_hop_length = ×4: one GPT frame covers 1024
samples at 22.05 kHz = 4 hops of 256; then ×output_sample_rate/input_sample_rate = ×160/147 to
24 kHz hops), then runs the HiFiGAN generator, which turns each 24 kHz frame into exactly 256
samples (upsampling 8·8·2·2). `decoder_input` is that first half, applied to the whole clip as
inference applies it; training then cuts segments on the 24 kHz frame grid, where the output
and the target are both whole multiples of 256 samples and line up sample for sample.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xtts_ft.model.constants import DECODER_HOP


def decoder_input(decoder, latents: torch.Tensor) -> torch.Tensor:
    """(B, T, C) GPT latents → (B, C, Z) generator input at 24 kHz frames, exactly as
    `HifiDecoder.forward` computes it (same interpolations, same scale factors), minus its
    `.squeeze(0)` that drops the batch axis of a batch of one."""
    z = F.interpolate(
        latents.transpose(1, 2),
        scale_factor=[decoder.ar_mel_length_compression / decoder.output_hop_length],
        mode="linear",
    )
    if decoder.output_sample_rate != decoder.input_sample_rate:
        z = F.interpolate(z, scale_factor=[decoder.output_sample_rate / decoder.input_sample_rate], mode="linear")
    return z


def decoder_frames(decoder, latent_frames: int) -> int:
    """How many 24 kHz frames `decoder_input` makes of `latent_frames` GPT frames (interpolate
    floors input size × scale factor at each stage)."""
    frames = math.floor(latent_frames * (decoder.ar_mel_length_compression / decoder.output_hop_length))
    if decoder.output_sample_rate != decoder.input_sample_rate:
        frames = math.floor(frames * (decoder.output_sample_rate / decoder.input_sample_rate))
    return frames


def decoder_samples(decoder, latent_frames: int) -> int:
    """Output samples at 24 kHz for `latent_frames` GPT frames: the decoder output is this long."""
    return decoder_frames(decoder, latent_frames) * DECODER_HOP


@torch.no_grad()
def gpt_latents(gpt, text_tokens: torch.Tensor, codes: torch.Tensor, cond_latent: torch.Tensor) -> torch.Tensor:
    """The latents the decoder sees at inference, for a clip's own audio codes: (1, N+1, C).

    Xtts.inference generates codes c1..cN followed by the stop token, then runs the GPT again
    teacher-forced on exactly that sequence, in eval mode, conditioned on the reference's
    conditioning latents, with expected_output_len = (N+1)·1024, and decodes what
    `return_latent=True` gives: the final-norm hidden states at the inputs [start, c1..cN], so
    N+1 frames (eval mode trims 5 trailing padding positions; train mode would trim 1 and
    dropout would perturb them — one way a trainer drifts from inference). We do the same with
    the clip's DVAE codes standing in for the generated ones and a reference clip of the same
    speaker for the conditioning: the only difference from inference is sampled vs. true codes.
    """
    if gpt.training:
        raise RuntimeError(
            "gpt_latents needs the GPT in eval mode (train mode changes the latents' length and adds dropout)"
        )
    device = text_tokens.device
    stop = torch.tensor([gpt.stop_audio_token], dtype=torch.long, device=device)
    generated = torch.cat([codes.to(device).long(), stop]).unsqueeze(0)
    return gpt(
        text_tokens.unsqueeze(0).to(device),
        torch.tensor([text_tokens.numel()], device=device),
        generated,
        torch.tensor([generated.shape[1] * gpt.code_stride_len], device=device),
        cond_latents=cond_latent.to(device),
        return_attentions=False,
        return_latent=True,
    )


def vocoder_loss_config(
    sample_rate: int, mel_weight: float, stft_weight: float, adv_weight: float, feat_match_weight: float
):
    """coqui's HiFiGAN loss configuration at our sample rate and weights (see TrainDecoderConfig)."""
    from TTS.vocoder.configs.hifigan_config import HifiganConfig

    config = HifiganConfig(
        use_stft_loss=stft_weight > 0,
        stft_loss_weight=stft_weight,
        use_l1_spec_loss=True,
        l1_spec_loss_weight=mel_weight,
        use_mse_gan_loss=True,
        mse_G_loss_weight=adv_weight,
        use_feat_match_loss=True,
        feat_match_loss_weight=feat_match_weight,
    )
    config.audio.sample_rate = sample_rate
    config.l1_spec_loss_params = {**config.l1_spec_loss_params, "sample_rate": sample_rate}
    return config


def build_losses(sample_rate: int, mel_weight: float, stft_weight: float, adv_weight: float, feat_match_weight: float):
    """coqui-tts's own HiFiGAN losses: (GeneratorLoss, DiscriminatorLoss) modules."""
    from TTS.vocoder.layers.losses import DiscriminatorLoss, GeneratorLoss

    config = vocoder_loss_config(sample_rate, mel_weight, stft_weight, adv_weight, feat_match_weight)
    return GeneratorLoss(config), DiscriminatorLoss(config)


def build_discriminator():
    """HiFiGAN's multi-period + multi-scale discriminator, as coqui-tts ships it."""
    from TTS.vocoder.models.hifigan_discriminator import HifiganDiscriminator

    return HifiganDiscriminator()
