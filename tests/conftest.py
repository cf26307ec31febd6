"""Shared fixtures: one tiny XTTS, one prepared demo dataset, one short training run and export
per test session (importing coqui-tts and building the model costs seconds; every stage test
reuses them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xtts_ft.config import compose

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("xtts_ft")


@pytest.fixture(scope="session")
def tiny_model_dir(workdir) -> Path:
    from xtts_ft.model.tiny import build_tiny_xtts

    return build_tiny_xtts(workdir / "models" / "tiny-xtts", seed=0)


@pytest.fixture(scope="session")
def prepared(workdir, tiny_model_dir) -> Path:  # its vocabulary checks the texts
    from xtts_ft import prepare

    return prepare.run(compose("prepare", demo_overrides(workdir)))


TRAIN_OVERRIDES = ["model=tiny", "run_name=demo", "lr=1e-3", "batch_size=4", "log_every=1", "eval_every=10", "save_every=10"]


@pytest.fixture(scope="session")
def trained(workdir, tiny_model_dir, prepared) -> Path:
    from xtts_ft import train_gpt

    cfg = compose("train_gpt", demo_overrides(workdir) + TRAIN_OVERRIDES + ["max_steps=30"])
    return train_gpt.run(cfg)


@pytest.fixture(scope="session")
def exported(workdir, trained) -> Path:
    from xtts_ft import export

    cfg = compose("export", [o for o in demo_overrides(workdir) if o.startswith("paths.")] + ["run_name=demo"])
    return export.run(cfg)


@pytest.fixture(scope="session")
def synthesizer(exported):
    from xtts_ft.inference import XttsSynthesizer

    return XttsSynthesizer(exported, device="cpu")
