"""The reference runs the launch tests compare with, trained once per session: one process
accumulating two micro-batches, and two gloo ranks under a single-node torchrun."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.distributed import ddp_overrides, launch_env, run_together, torchrun


@pytest.fixture(scope="session")
def accumulated_run(workdir, prepared) -> Path:
    from xtts_ft.config import compose
    from xtts_ft.stages import train_gpt

    runs = workdir / "launch" / "accumulated"
    return train_gpt.run(compose("train_gpt", ddp_overrides(workdir, runs) + ["grad_accum_steps=2"]))


@pytest.fixture(scope="session")
def two_rank_run(workdir, prepared) -> Path:
    runs = workdir / "launch" / "two_ranks"
    command = torchrun("--standalone", "--nproc-per-node=2") + ["train-gpt", *ddp_overrides(workdir, runs)]
    (done,) = run_together([command], [workdir / "launch" / "two_ranks_cwd"], launch_env(), timeout=300)
    assert done["returncode"] == 0, done["output"][-3000:]
    return runs / "demo" / "gpt" / "state.pt"
