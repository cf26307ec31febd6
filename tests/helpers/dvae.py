"""A DVAE other than the base's, made honestly for the issue-34 tests without training one: the base's
DiscreteVAE with its encoder weights perturbed by a seeded generator, saved as a `train-dvae` run's
product (dvae.pth, mel_stats.pth copied, dvae.json last, with the code drift measured on real clips)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from xtts_ft.data.audio import load_audio
from xtts_ft.model.constants import GPT_SAMPLE_RATE
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import dvae_hash, load_dvae


def clip_codes(dvae_dir: Path, clips: Sequence[Path]) -> list:
    """Each clip's DVAE codes under the DVAE of `dvae_dir`, as train-gpt computes them."""
    dvae, mel_stats = load_dvae(dvae_dir)
    features = GptFeatures(dvae, mel_stats)
    return [
        features.audio_codes(torch.from_numpy(load_audio(clip, GPT_SAMPLE_RATE)).unsqueeze(0)).squeeze(0)
        for clip in clips
    ]


def code_drift(base_dir: Path, dvae_dir: Path, clips: Sequence[Path]) -> tuple[float, int]:
    """(fraction of the clips' frames whose code differs between the two DVAEs, frames compared)."""
    changed = frames = 0
    for old, new in zip(clip_codes(base_dir, clips), clip_codes(dvae_dir, clips)):
        changed += int((old != new).sum())
        frames += old.numel()
    return changed / max(frames, 1), frames


def perturbed_dvae(base_dir: Path, out: Path, clips: Sequence[Path], seed: int = 0, scale: float = 0.1) -> Path:
    """`out` holding the base's DVAE with encoder weights w + scale·std(w)·N(0, 1) (seeded), the base's
    mel_stats.pth and a dvae.json as train-dvae writes it (code_drift measured on `clips`). Idempotent:
    an `out` that already has its dvae.json is returned as it is (several test modules share one)."""
    out = Path(out)
    if (out / "dvae.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    dvae, _ = load_dvae(base_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in dvae.encoder.parameters():
            if param.ndim > 1:
                param.add_(scale * param.std() * torch.randn(param.shape, generator=generator))
    torch.save(dvae.state_dict(), out / "dvae.pth")
    shutil.copy2(Path(base_dir) / "mel_stats.pth", out / "mel_stats.pth")
    drift, frames = code_drift(base_dir, out, clips)
    record = {
        "kind": "xtts-ft-dvae",
        "format_version": 1,
        "mode": "encoder",
        "step": 0,
        "base_model_dir": str(Path(base_dir).resolve()),
        "base_dvae_hash": dvae_hash(base_dir),
        "dvae_hash": dvae_hash(out),
        "metrics": {"code_drift": drift, "eval_frames": frames, "codebook_size": dvae.codebook.n_embed},
        "base_metrics": {"code_drift": 0.0, "eval_frames": frames, "codebook_size": dvae.codebook.n_embed},
    }
    (out / "dvae.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return out
