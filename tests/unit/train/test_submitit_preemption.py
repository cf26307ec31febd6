"""A preempted submitit job: the signal reaches the task mid-run, the run saves at the step boundary,
submitit requeues the job (the local executor restarts its tasks as SLURM requeues a job), and the
requeued run resumes where it stopped and ends on the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.helpers.distributed import launch_env, stop
from tests.helpers.resume import STEPS, gpt_overrides, straight_gpt_state

SAVE_EVERY = 5  # the run is signalled once step 5 is saved: the stop saves a step no schedule would


def progress_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


def submitit_task(launcher: subprocess.Popen) -> psutil.Process:
    """The job's task: the process submitit's local controller started (`python -m submitit.core._submit`)."""
    tasks = [
        p
        for p in psutil.Process(launcher.pid).children(recursive=True)
        if "submitit.core._submit" in " ".join(p.cmdline())
    ]
    assert len(tasks) == 1, tasks
    return tasks[0]


def assert_bitwise_same(resumed: Path, straight: dict) -> None:
    """The requeued run ended where the uninterrupted one did: step, data position and every weight and
    optimizer moment, bit for bit."""
    state = torch.load(resumed, map_location="cpu", weights_only=True)
    position = ("step", "epoch", "batch_in_epoch")
    assert [state[k] for k in position] == [straight[k] for k in position]
    assert set(state["gpt"]) == set(straight["gpt"])
    for key, value in straight["gpt"].items():
        assert torch.equal(state["gpt"][key], value), key
    for index, moments in straight["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(state["optimizer"]["state"][index][name], value), (index, name)


@pytest.mark.slow
def test_a_preempted_submitit_job_is_requeued_and_ends_on_the_uninterrupted_weights(tmp_path, workdir, prepared):
    straight = straight_gpt_state(workdir)
    runs, sweep = tmp_path / "runs", tmp_path / "sweep"
    command = [sys.executable, "-m", "xtts_ft.cli", "train-gpt", "-m", "hydra/launcher=local"]
    command += ["hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}"]
    command += gpt_overrides(workdir, runs, f"max_steps={STEPS}", f"save_every={SAVE_EVERY}")
    run_dir = runs / "demo" / "gpt"
    with open(tmp_path / "launcher.log", "w+") as launcher_log:
        launcher = subprocess.Popen(
            command,
            cwd=tmp_path,
            env=launch_env(),
            stdout=launcher_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 240
            while progress_step(run_dir) < SAVE_EVERY and launcher.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert progress_step(run_dir) == SAVE_EVERY, launcher_log.read()
            # What SLURM does before a preemption or the time limit (sbatch --signal=USR2@..., submitit's
            # signal; LocalJob._interrupt sends the same): the signal, to the task.
            submitit_task(launcher).send_signal(signal.SIGUSR2)
            launcher.wait(timeout=240)
        finally:
            stop(launcher)
        launcher_log.seek(0)
        launcher_output = launcher_log.read()

    task_logs = sorted((sweep / ".submitit").rglob("*_0_log.*"))
    task_output = "".join(p.read_text() for p in task_logs)  # both attempts: the requeued task appends
    assert launcher.returncode == 0, launcher_output[-2000:] + task_output[-4000:]
    stopping = [line for line in task_output.splitlines() if "stopping at step" in line]
    assert len(stopping) == 1, task_output[-4000:]  # stopped once, on the signal, then requeued
    stopped = int(stopping[0].split("stopping at step ")[1].split()[0])
    assert SAVE_EVERY < stopped < STEPS
    assert f"stopping at step {stopped} on SIGUSR2: state saved to {run_dir / 'state.pt'}" in stopping[0]
    assert "Requeued job" in task_output  # by submitit: the launcher's checkpoint(), then exit code 144
    # The requeued task resumed from the state saved at the stop, not from the scheduled save before it.
    assert f"resuming {run_dir / 'state.pt'} at step {stopped}" in task_output
    assert "Traceback" not in task_output
    assert_bitwise_same(run_dir / "state.pt", straight)
