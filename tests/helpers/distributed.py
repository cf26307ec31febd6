"""Distributed training runs as tests launch them: the few settings every such run shares, launchers
(torchrun, a submitit job) started as process groups and always stopped, and the check that two runs
followed the same trajectory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from tests.helpers.settings import REPO, TRAIN_OVERRIDES, demo_overrides

# Affordable distributed runs: 3 optimizer steps of 2 clips per rank (4 per step on 2 ranks), no eval.
STEPS = 3


def ddp_overrides(workdir: Path, runs_dir: Path) -> List[str]:
    """The settings of every run compared here: the demo data prepared in `workdir`, written under runs_dir."""
    return (
        demo_overrides(workdir)
        + TRAIN_OVERRIDES
        + ["eval_every=1000", "eval_sentences=[]", f"max_steps={STEPS}", "batch_size=2", f"paths.runs_dir={runs_dir}"]
    )


def launch_env(**extra: str) -> dict:
    """One thread per rank (2 cores shared), the repository importable from any working directory,
    and no torchrun variables inherited from the test process."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def torchrun(*options: str) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "xtts_ft.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> List[int]:
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(process: subprocess.Popen) -> None:
    """Stop a launcher and everything it started (torchrun puts its workers in sessions of their
    own, so its process group is not enough): SIGTERM to each, then SIGKILL to what is left."""
    pids = [process.pid, *descendants(process.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)


def run_together(commands: Sequence[List[str]], cwds: Sequence[Path], env: dict, timeout: float) -> List[dict]:
    """Start every command at once (one simulated node each), wait for all of them; each result is
    {returncode, output} (stdout and stderr together). Whatever still runs at the end is stopped."""
    processes, logs = [], []
    try:
        for command, cwd in zip(commands, cwds):
            Path(cwd).mkdir(parents=True, exist_ok=True)
            log = open(Path(cwd) / "launcher.log", "w+")
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        results = []
        for process, log in zip(processes, logs):
            log.seek(0)
            results.append({"returncode": process.returncode, "output": log.read()})
        return results
    finally:
        for process in processes:
            stop(process)
        for log in logs:
            log.close()


def losses(state_path: Path) -> List[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(state_path).parent / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def assert_same_run(expected: Path, actual: Path, world_size: int = 2) -> None:
    """`actual` (a distributed run's state.pt) followed `expected`'s trajectory: same step and sampler
    position, the same weights and the same logged losses (to float rounding across process counts)."""
    a = torch.load(expected, map_location="cpu", weights_only=True)
    b = torch.load(actual, map_location="cpu", weights_only=True)
    assert json.loads((Path(actual).parent / "progress.json").read_text())["world_size"] == world_size
    assert a["sampler"]["global_batch"] == b["sampler"]["global_batch"] == 4
    assert (b["step"], b["batch_in_epoch"]) == (a["step"], a["batch_in_epoch"]) == (STEPS, STEPS)
    assert set(a["gpt"]) == set(b["gpt"])
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    np.testing.assert_allclose(losses(actual), losses(expected), rtol=1e-4)
