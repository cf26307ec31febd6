"""Stage `synth`: one text, one voice, one WAV, through the shared inference module."""

from __future__ import annotations

from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from xtts_ft.inference import XttsSynthesizer


def outputs(cfg: DictConfig) -> List[Path]:
    return [Path(cfg.out)]


def run(cfg: DictConfig) -> Path:
    synthesizer = XttsSynthesizer(cfg.checkpoint, device=cfg.device)
    result = synthesizer.synthesize_to_file(
        Path(cfg.out),
        text=cfg.text,
        language=cfg.language,
        reference=cfg.reference,
        decoding=OmegaConf.to_container(cfg.decoding, resolve=True),
    )
    note = "" if all(result.stopped) else " (cut by the babble guard: the model did not stop by itself)"
    print(f"wrote {cfg.out}: {result.duration:.2f} s at {result.sample_rate} Hz, RTF {result.real_time_factor:.2f}{note}")
    return Path(cfg.out)
