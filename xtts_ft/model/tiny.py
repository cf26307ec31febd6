"""Build a tiny, randomly initialised XTTS of the real architecture, saved in the stock layout.

Same classes and file layout as XTTS-v2, only smaller where coqui-tts lets it be: 2 GPT
layers of width 64, a small BPE vocabulary with the XTTS special tokens, a small DVAE.
coqui's loader builds the HiFiGAN decoder and speaker encoder at their fixed real size
(only the decoder's input width follows the GPT width), so those stay real-sized.
Tests and the demo run every stage on it through the same loader the real model uses.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

from xtts_ft.io_utils import atomic_dir, write_json
from xtts_ft.model.constants import GPT_SAMPLE_RATE
from xtts_ft.model.layout import REAL_DVAE, SIDECAR

LANGUAGES = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar", "zh-cn", "hu", "ko", "ja", "hi"]
SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", "[START]"] + [f"[{lang}]" for lang in LANGUAGES]
TINY_DVAE = {**REAL_DVAE, "codebook_dim": 32, "hidden_dim": 32, "num_resnet_blocks": 1}
TINY_GPT = dict(gpt_layers=2, gpt_n_model_channels=64, gpt_n_heads=4)
# Enough text for BPE merges that look like a real vocabulary; the alphabet covers Latin scripts.
BPE_TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
    "le petit chat dort sur le canapé et il fait très beau aujourd'hui",
    "nous allons au marché le samedi matin avec les enfants de l'école",
    "hello world this is a tiny text to speech model for tests",
]
ALPHABET = list(string.ascii_lowercase + string.digits + ".,;:!?'\"-()") + list("àâäçéèêëîïôöùûüÿñœæß")


def build_tokenizer(path: Path, vocab_size: int = 320) -> None:
    """A BPE over lower-cased text with the XTTS special tokens, like the released vocab.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # show_progress=False: tokenizers' own bar is written to fd 1 by Rust, around our console (blank lines in a pipe).
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=ALPHABET, show_progress=False
    )
    tokenizer.train_from_iterator(BPE_TEXT, trainer=trainer)
    tokenizer.save(str(path))


def synthetic_mel_stats(dvae_mel) -> torch.Tensor:
    """Per-channel mean log-mel of quiet noise: a stand-in for the released mel_stats.pth."""
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.05, GPT_SAMPLE_RATE * 4).astype(np.float32))
    return dvae_mel(noise.unsqueeze(0)).mean(dim=(0, 2))


def calibration_audio(n: int = 64, seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Speech-like synthetic signals: harmonic tones (random f0, amplitude envelope) plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(GPT_SAMPLE_RATE * seconds)) / GPT_SAMPLE_RATE
    signals = []
    for _ in range(n):
        f0 = rng.uniform(80, 300)
        tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) * rng.uniform(0, 1) / k for k in range(1, 20))
        envelope = 0.05 + 0.3 * np.abs(np.sin(2 * np.pi * rng.uniform(1, 5) * t))
        signal = tone * envelope + rng.normal(0, rng.uniform(0.001, 0.1), t.size)
        signals.append(signal * rng.uniform(0.05, 0.5))
    return torch.from_numpy(np.stack(signals).astype(np.float32))


@torch.no_grad()
def calibrate_codebook(dvae, dvae_mel, seed: int = 0) -> None:
    """Seed the DVAE codebook with encoder outputs of calibration audio (a k-means++-style init).

    A purely random codebook maps all speech to 2-3 codes, which leaves the tiny GPT nothing
    to learn; with this init espeak-ng speech uses a few hundred codes, like a trained DVAE.
    """
    hidden = dvae.encoder(dvae.norm(dvae_mel(calibration_audio(seed=seed))))
    frames = hidden.permute(0, 2, 1).reshape(-1, hidden.shape[1])
    pick = torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(seed))[: dvae.codebook.n_embed]
    dvae.codebook.embed.copy_(frames[pick].T)
    dvae.codebook.embed_avg.copy_(frames[pick].T)
    # One use per code, as if each had been seen once: embed == embed_avg / cluster_size, and the codebook's
    # moving average (train-dvae mode=full) starts from counts a trained DVAE would have, not from zero.
    dvae.codebook.cluster_size.fill_(1.0)


def build_tiny_xtts(out_dir: Path, seed: int = 0, gpt: dict | None = None, dvae: dict | None = None) -> Path:
    """Build and save a random XTTS at `out_dir`. `gpt`/`dvae` override the tiny sizes (e.g. the
    benchmark's full-size GPT: gpt_layers=30, gpt_n_model_channels=1024, gpt_n_heads=16, with
    the real DVAE shape `layout.REAL_DVAE`)."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.layers.tortoise.arch_utils import TorchMelSpectrogram
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.xtts import Xtts

    out_dir = Path(out_dir)
    gpt_sizes, dvae_kwargs = {**TINY_GPT, **(gpt or {})}, {**TINY_DVAE, **(dvae or {})}
    torch.manual_seed(seed)
    with atomic_dir(out_dir) as tmp:
        build_tokenizer(tmp / "vocab.json")
        config = XttsConfig()
        config.model_args.tokenizer_file = ""  # the loader reads vocab.json beside model.pth
        for key, value in gpt_sizes.items():
            setattr(config.model_args, key, value)
        config.model_args.gpt_num_audio_tokens = dvae_kwargs["num_tokens"] + 2
        config.model_args.gpt_start_audio_token = dvae_kwargs["num_tokens"]
        config.model_args.gpt_stop_audio_token = dvae_kwargs["num_tokens"] + 1
        config.model_args.gpt_use_perceiver_resampler = True  # as in the release
        config.model_args.decoder_input_dim = gpt_sizes["gpt_n_model_channels"]
        # Decoding as released (temperature 0.75, top-k 50, top-p 0.85) except the repetition
        # penalty: coqui's default 2.0, not the release's 10. A random tiny DVAE maps speech to a
        # handful of codes, so a penalty of 10 makes the tiny GPT stop after a few frames.
        config.temperature, config.top_k, config.top_p = 0.75, 50, 0.85
        config.repetition_penalty, config.length_penalty = 2.0, 1.0
        config.gpt_cond_len, config.gpt_cond_chunk_len = 30, 4
        config.languages = list(LANGUAGES)

        model = Xtts(config)
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

        model.tokenizer = VoiceBpeTokenizer(vocab_file=str(tmp / "vocab.json"))
        from xtts_ft.model.quiet import unused_gpt2_token_ids_unreported

        with unused_gpt2_token_ids_unreported():  # (transformers' warning about coqui's GPT-2 config, as at loading)
            model.init_models()  # sizes the text embedding from the vocabulary, as load_checkpoint does
        dvae_mel = TorchMelSpectrogram(mel_norm_file=None, sampling_rate=GPT_SAMPLE_RATE)
        mel_stats = synthetic_mel_stats(dvae_mel)
        dvae_mel.mel_norms = mel_stats
        model.mel_stats.copy_(mel_stats)
        dvae = DiscreteVAE(**dvae_kwargs).eval()
        calibrate_codebook(dvae, dvae_mel, seed)

        config.save_json(str(tmp / "config.json"))
        torch.save({"model": model.state_dict()}, tmp / "model.pth")
        torch.save(dvae.state_dict(), tmp / "dvae.pth")
        torch.save(mel_stats, tmp / "mel_stats.pth")
        torch.save({}, tmp / "speakers_xtts.pth")  # no named voices; export can add some
        write_json(tmp / SIDECAR, {"kind": "tiny-random", "seed": seed, "gpt": gpt_sizes, "dvae": dvae_kwargs})
    return out_dir
