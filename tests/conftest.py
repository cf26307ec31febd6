"""Shared fixtures: one tiny XTTS, one prepared demo dataset, one short training run and export
per test session (importing coqui-tts and building the model costs seconds; every stage test
reuses them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.settings import DECODER_OVERRIDES, TRAIN_OVERRIDES, decoder_data_overrides, demo_overrides
from tests.helpers.speech import build_tiny_mms
from xtts_ft.config import compose


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


@pytest.fixture(scope="session")
def tiny_mms(workdir) -> Path:
    return build_tiny_mms(workdir / "models" / "tiny-mms")


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
