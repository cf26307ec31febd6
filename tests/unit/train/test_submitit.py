"""Jobs started by a scheduler rather than torchrun: a submitit job (hydra/launcher=slurm or local)
and srun tasks. The training reads its rank, the task count and the master from the job; a real
submitit local job of two tasks trains as two torchrun ranks do."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.helpers.distributed import assert_same_run, ddp_overrides, free_port, launch_env, run_together
from xtts_ft.train import runtime as rt

SLURM_TASK_5_OF_8 = {
    "SLURM_JOB_ID": "77",
    "SLURM_NTASKS": "8",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[03-04]",
}


@pytest.fixture
def no_launch_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")) or key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_a_submitit_local_task_reads_its_rank_from_the_job(no_launch_env):
    for key, value in {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
    }.items():
        no_launch_env.setenv(key, value)
    ranks = rt.job_ranks()
    assert {k: ranks[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")} == {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
    }
    assert ranks["MASTER_ADDR"] == socket.gethostname()
    assert 20000 <= int(ranks["MASTER_PORT"]) <= 60000 and rt.job_ranks() == ranks  # every task derives the same port
    no_launch_env.setenv("MASTER_PORT", "29533")
    assert rt.job_ranks()["MASTER_PORT"] == "29533"


@pytest.mark.parametrize("how", ["submitit", "srun"])
def test_a_slurm_task_reads_its_rank_and_master_from_slurm(no_launch_env, how):
    for key, value in SLURM_TASK_5_OF_8.items():
        no_launch_env.setenv(key, value)
    if how == "submitit":
        no_launch_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    else:
        no_launch_env.setenv("SLURM_STEP_NUM_TASKS", "8")
    ranks = rt.job_ranks()
    assert {k: ranks[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu03",  # the first node of the job
    }


def test_a_batch_script_or_torchrun_is_not_read_as_a_slurm_job(no_launch_env):
    """A batch script's own shell is one process, though SLURM_NTASKS says 8 (no srun step): waiting
    for 7 more ranks would hang. Under torchrun, torchrun's variables win."""
    for key, value in SLURM_TASK_5_OF_8.items():
        no_launch_env.setenv(key, value)
    assert rt.job_ranks() is None
    no_launch_env.setenv("SLURM_STEP_NUM_TASKS", "8")
    no_launch_env.setenv("WORLD_SIZE", "2")
    assert rt.job_ranks() is None


@pytest.mark.slow
def test_a_two_task_submitit_local_job_matches_two_torchrun_ranks(tmp_path, workdir, two_rank_run):
    """The whole command: `xtts-ft train-gpt -m hydra/launcher=local hydra.launcher.tasks_per_node=2 ...`
    submits one job to submitit's local executor, which starts two tasks; they train as one DDP run."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "xtts_ft.cli", "train-gpt", "-m", "hydra/launcher=local"]
    command += [
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.timeout_min=5",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    command += ddp_overrides(workdir, runs)
    (done,) = run_together([command], [tmp_path], launch_env(MASTER_PORT=str(free_port())), timeout=330)
    task_logs = sorted((tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert done["returncode"] == 0, done["output"][-2000:] + "".join(p.read_text()[-2000:] for p in task_logs)
    assert len([p for p in task_logs if p.name.endswith("_log.out")]) == 2  # two tasks ran
    assert_same_run(two_rank_run, runs / "demo" / "gpt" / "state.pt")


def test_the_launcher_configs_compose(tmp_path):
    """`xtts-ft train-gpt -m hydra/launcher=slurm hydra.launcher.nodes=2 ...` is the whole command: the
    launcher configs ship in the package's config path, over hydra-submitit-launcher's."""
    shown = subprocess.run(
        [sys.executable, "-m", "xtts_ft.cli", "train-gpt", "hydra/launcher=slurm", "hydra.launcher.nodes=2"]
        + ["hydra.launcher.partition=gpu", "hydra.launcher.account=speech", "--cfg", "hydra", "--resolve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    launcher = shown.stdout.split("\n  launcher:\n", 1)[1].split("\n  sweeper:", 1)[0]
    for line in ("nodes: 2", "gpus_per_node: 1", "tasks_per_node: 1", "partition: gpu", "account: speech"):
        assert f"    {line}\n" in launcher + "\n", launcher
    assert "SlurmLauncher" in launcher and "signal_delay_s: 120" in launcher and "max_num_timeout: 20" in launcher
