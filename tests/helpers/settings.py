"""Paths and overrides the tests share: the demo corpus, its stages' overrides into a temporary
folder, and affordable training settings for the tiny model."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def demo_overrides(tmp: Path) -> list:
    return [
        f"data.sources.0.path={DEMO / 'en'}",
        f"data.sources.1.path={DEMO / 'fr'}",
        f"paths.processed_dir={tmp / 'processed'}",
        f"paths.runs_dir={tmp / 'runs'}",
        f"paths.exports_dir={tmp / 'exports'}",
        f"paths.models_dir={tmp / 'models'}",
    ]


TRAIN_OVERRIDES = [
    "model=tiny",
    "run_name=demo",
    "lr=1e-3",
    "batch_size=4",
    "log_every=1",
    "eval_every=10",
    "save_every=10",
]


def decoder_data_overrides(tmp: Path) -> list:
    """The demo corpus prepared with 24 kHz copies (the decoder's targets), beside the plain one."""
    return [
        o if not o.startswith("paths.processed_dir=") else f"paths.processed_dir={tmp / 'processed_24k'}"
        for o in demo_overrides(tmp)
    ]


# Affordable decoder runs: the real-sized generator on 2048-sample segments (8 decoder frames).
DECODER_OVERRIDES = [
    "model=tiny",
    "run_name=demo",
    "gpt=base",
    "batch_size=2",
    "segment_samples=2048",
    "log_every=1",
    "eval_every=0",
    "adversarial=false",
    "lr_gen=1e-3",
    "lr_disc=1e-3",
    "keep_last=1",
]
