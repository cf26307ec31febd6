"""The run directory of a training stage (runs/<run_name>/gpt or /decoder): starting a run under
its locks (noting stop signals for the loop, `xtts_ft.train.preemption`; a full disk said in one
line with the step that is intact), refusing to start over an existing run, the resolved config
written beside it, the prepared data's statistics it records, and whether it is done
(progress.json)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from xtts_ft.errors import FileInTheWay
from xtts_ft.io_utils import is_out_of_space
from xtts_ft.train import runtime as rt


def run_locked(cfg, out: Path, train: Callable[[Any, rt.Runtime, Path], Path]) -> Path:
    """Start the process (one rank under torchrun), hold the run directory's lock on rank 0 and the
    dataset's shared lock on every rank, train: a stop signal is noted for the loop to stop at a step
    boundary, and a write that runs out of space is one line saying which state is intact."""
    from xtts_ft.train import checkpoints as ckpt
    from xtts_ft.train.preemption import stopping_on_signals

    try:
        with stopping_on_signals():
            return locked(cfg, out, train)
    except (OSError, RuntimeError) as error:
        if not is_out_of_space(error, out):
            raise
        raise ckpt.disk_full_in_run(error, out) from error


def locked(cfg, out: Path, train: Callable[[Any, rt.Runtime, Path], Path]) -> Path:
    """The process started, the locks held (the run directory's on rank 0, the dataset's on every rank): train."""
    runtime = rt.start(cfg.model.device, cfg.num_threads)
    # train-gpt only: its length-bucketed steps change memory size; the decoder's fixed segments do not.
    if runtime.device.type == "cpu" and cfg.get("keep_freed_memory", False):
        rt.keep_freed_host_memory()
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    try:
        # Every rank reads the dataset (under torchrun on several hosts, each its own copy).
        with rt.DatasetReadLock(data_dir, out), rt.RunLock(out) if runtime.is_main else contextlib.nullcontext():
            return train(cfg, runtime, out)
    finally:
        runtime.close()


def is_done(out: Path, max_steps: int) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    progress = Path(out) / "progress.json"
    return progress.is_file() and json.loads(progress.read_text())["step"] >= max_steps


def check_fresh(state_path: Path, resume: bool) -> None:
    """Refuse to start over a run that exists unless asked to continue it."""
    if state_path.is_file() and not resume:
        out = state_path.parent
        raise FileInTheWay(
            f"{out} already holds a training run",
            fix=f"resume=true continues it; to start over, delete {out} or choose another run_name",
        )


def start_run_dir(cfg, out: Path, data_dir: Path, is_main: bool) -> dict:
    """Write the resolved config beside the run (rank 0) and return the prepared data's stats,
    which the training state and checkpoints carry into the export."""
    if is_main:
        from omegaconf import OmegaConf

        from xtts_ft.io_utils import write_text

        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    stats_path = Path(data_dir) / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    stats.pop("config", None)
    return stats


def manifest_hash(path: Path) -> str:
    """What a saved sampler position is tied to: the training manifest's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
