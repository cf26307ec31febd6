"""An uninterrupted tiny train-gpt run, once per session, for the tests that stop a run (a signal, a
corrupt state, a full disk) and check that the resumed run ends on the same weights."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.settings import TRAIN_OVERRIDES, demo_overrides
from xtts_ft.config import compose

STEPS = 12
# No evals (nothing but the training steps), a state every step (save_every is no part of the trajectory).
RESUME_OVERRIDES = TRAIN_OVERRIDES + [
    "eval_every=1000",
    "eval_sentences=[]",
    "save_every=1",
    "keep_last=2",
    "num_threads=1",  # on shared cores, one thread each: measured 15x faster than all cores under load
]
_straight: dict = {}


def gpt_overrides(workdir: Path, runs_dir: Path, *extra: str) -> list:
    return demo_overrides(workdir) + RESUME_OVERRIDES + [f"paths.runs_dir={runs_dir}", *extra]


def straight_gpt_state(workdir: Path) -> dict:
    """The state of a tiny train-gpt run of STEPS steps without a stop (run once per session)."""
    if workdir not in _straight:
        from xtts_ft.stages import train_gpt

        cfg = compose("train_gpt", gpt_overrides(workdir, workdir / "straight-resume", f"max_steps={STEPS}"))
        path = train_gpt.run_dir(cfg) / "state.pt"
        if not train_gpt.is_done(cfg):
            path = train_gpt.run(cfg)
        _straight[workdir] = torch.load(path, map_location="cpu", weights_only=True)
    return _straight[workdir]


def assert_same_run(resumed: Path, straight: dict) -> None:
    """The resumed run's state.pt is where the uninterrupted one ended: step, data position, weights."""
    state = torch.load(resumed, map_location="cpu", weights_only=True)
    position = ("step", "epoch", "batch_in_epoch")
    assert [state[k] for k in position] == [straight[k] for k in position]
    for key, value in straight["gpt"].items():
        torch.testing.assert_close(state["gpt"][key], value, rtol=1e-5, atol=1e-6, msg=key)
