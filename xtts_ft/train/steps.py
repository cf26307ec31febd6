"""What every optimizer step of both recipes shares: the randomness of a micro-batch from its
position alone, the divergence guard, and the mean over ranks of the losses a step logs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from xtts_ft.errors import RunRefused
from xtts_ft.train import runtime as rt


class TrainingDiverged(RunRefused, FloatingPointError):
    """A loss or gradient norm went non-finite under the user's settings (lr, warm-up, precision):
    the run stops with what to change. Still a FloatingPointError, as it was before the kinds."""


def position_rng(seed: int, *position: int) -> np.random.Generator:
    """The randomness of one (micro-)batch from its position alone (seed, epoch, batch, ...): it also
    seeds torch (dropout and the like), so a resumed run draws exactly what an uninterrupted one did."""
    rng = np.random.default_rng([seed, *position])
    torch.manual_seed(int(rng.integers(2**62)))
    return rng


def check_diverged(
    losses: torch.Tensor,
    grad_norms: Sequence[torch.Tensor],
    precision: str,
    step: int,
    readings: str,
    state_path: Path,
    advice: str,
) -> None:
    """Stop, saving nothing, when a loss or (outside fp16) a gradient norm is not finite.

    Gradients are all-reduced, so every rank sees the same norms and stops together. fp16
    overflows are the grad scaler's business (it skips the step). `readings` describes the step's
    losses and norms for the message; `step` is the step that failed (1-based).
    """
    norms_ok = precision == "fp16" or all(bool(torch.isfinite(norm)) for norm in grad_norms)
    if bool(torch.isfinite(losses).all()) and norms_ok:
        return
    last_good = state_path if state_path.is_file() else "none (no state saved yet)"
    raise TrainingDiverged(
        f"training diverged at step {step}: {readings}. Stopped without saving; the last good state is {last_good}. {advice}"
    )


def mean_over_ranks(losses: torch.Tensor, runtime: rt.Runtime) -> torch.Tensor:
    """The mean of every rank's (CPU) losses, so that rank 0 logs all micro-batches of the step;
    every rank must call it together. One process: the losses as they are."""
    if not runtime.distributed:
        return losses
    reduced = losses.to(runtime.device)
    torch.distributed.all_reduce(reduced)
    return reduced.cpu() / runtime.world_size
