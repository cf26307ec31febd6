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
    from xtts_ft.stages import prepare

    return prepare.run(compose("prepare", demo_overrides(workdir)))


TRAIN_OVERRIDES = [
    "model=tiny",
    "run_name=demo",
    "lr=1e-3",
    "batch_size=4",
    "log_every=1",
    "eval_every=10",
    "save_every=10",
]


@pytest.fixture(scope="session")
def trained(workdir, tiny_model_dir, prepared) -> Path:
    from xtts_ft.stages import train_gpt

    cfg = compose("train_gpt", demo_overrides(workdir) + TRAIN_OVERRIDES + ["max_steps=30"])
    return train_gpt.run(cfg)


@pytest.fixture(scope="session")
def exported(workdir, trained) -> Path:
    from xtts_ft.stages import export

    cfg = compose("export", [o for o in demo_overrides(workdir) if o.startswith("paths.")] + ["run_name=demo"])
    return export.run(cfg)


@pytest.fixture(scope="session")
def synthesizer(exported):
    from xtts_ft.inference import XttsSynthesizer

    return XttsSynthesizer(exported, device="cpu")


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


@pytest.fixture(scope="session")
def prepared_24k(workdir, tiny_model_dir) -> Path:
    from xtts_ft.stages import prepare

    return prepare.run(compose("prepare", decoder_data_overrides(workdir) + ["decoder_copies=true"]))


@pytest.fixture(scope="session")
def decoder_trained(workdir, prepared_24k) -> Path:
    """A short spectral-only decoder run (its own runs dir: the shared GPT export stays decoder-free)."""
    from xtts_ft.stages import train_decoder

    overrides = (
        decoder_data_overrides(workdir)
        + DECODER_OVERRIDES
        + [f"paths.runs_dir={workdir / 'runs_decoder'}", "max_steps=3"]
    )
    return train_decoder.run(compose("train_decoder", overrides))


def hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    """`hub` tests need the Hugging Face Hub, `gpu` tests a CUDA device: skipped, with the reason,
    where this machine has neither (CI and the offline development machines)."""
    hub = [item for item in items if "hub" in item.keywords]
    gpu = [item for item in items if "gpu" in item.keywords]
    if hub and not hub_reachable():
        for item in hub:
            item.add_marker(pytest.mark.skip(reason="needs the Hugging Face Hub (huggingface.co:443 unreachable)"))
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
