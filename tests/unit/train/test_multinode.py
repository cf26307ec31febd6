"""Several nodes, rehearsed on one machine: two torchrun launchers, one per simulated node, meet
through torchrun's c10d rendezvous on loopback and train over gloo. Only global rank 0 writes the
run; the dataset and run locks say what to do on a file system that cannot lock."""

from __future__ import annotations

import errno
import fcntl

import pytest
import torch

from tests.helpers.distributed import (
    STEPS,
    assert_same_run,
    ddp_overrides,
    free_port,
    launch_env,
    run_together,
    torchrun,
)
from xtts_ft.errors import RunRefused
from xtts_ft.train import runtime as rt
from xtts_ft.train.cache import cached_features_on_ranks


@pytest.mark.slow
def test_two_nodes_by_c10d_rendezvous_match_two_local_ranks_and_one_process(
    tmp_path, workdir, accumulated_run, two_rank_run
):
    """`torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT` on each
    node. Each launcher is given its own paths.runs_dir: the rendezvous decides which node holds global
    rank 0, and the other node's folder must stay empty (its LOCAL_RANK is 0 too, and it must not write)."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [tmp_path / f"node{rank}" for rank in range(2)]
    commands = [
        torchrun(
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}",
            "--rdzv-id=rehearsal",
        )
        + ["train-gpt", *ddp_overrides(workdir, node / "out")]
        for rank, node in enumerate(nodes)
    ]
    results = run_together(commands, nodes, launch_env(), timeout=300)
    for node, done in zip(nodes, results):
        assert done["returncode"] == 0, f"{node.name}:\n{done['output'][-3000:]}"
    written = [node for node in nodes if (node / "out").exists()]  # (runs/.hydra/ in each: Hydra's own logs)
    assert len(written) == 1, [list((n / "out").rglob("*")) for n in written]
    state = written[0] / "out" / "demo" / "gpt" / "state.pt"
    assert sum(done["output"].count(f"trained GPT for {STEPS} steps") for done in results) == 1

    assert_same_run(two_rank_run, state)
    assert_same_run(accumulated_run, state)  # (test_train_distributed.py checks that these runs trained)


class Rank:
    def __init__(self, rank: int):
        self.rank, self.world_size, self.barriers = rank, 2, 0

    is_main = property(lambda self: self.rank == 0)

    def barrier(self):
        self.barriers += 1


def test_only_global_rank_0_writes_the_feature_cache(tmp_path):
    """A rank other than 0 that finds the cache missing or stale (a node with its own copy of the
    dataset) computes what it needs and leaves the file alone; rank 0 writes it."""
    clips = []
    for name in ("a.wav", "b.wav"):
        clips.append(tmp_path / name)
        clips[-1].write_bytes(name.encode())
    cache = tmp_path / "train.codes.pt"

    def compute(clip):
        return torch.tensor([len(clip.name)])

    values, computed = cached_features_on_ranks(Rank(1), cache, "h", clips, compute, "codes")
    assert [int(v) for v in values] == [5, 5] and not cache.exists()
    rank0 = Rank(0)
    values, computed = cached_features_on_ranks(rank0, cache, "h", clips, compute, "codes")
    assert computed == 2 and cache.is_file() and rank0.barriers == 1


def test_runtime_rank_is_the_global_rank(monkeypatch):
    """On the second node of a 2×1 launch LOCAL_RANK is 0 but RANK is 1: the process is not main."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(rt.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(rt.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(rt.dist, "get_world_size", lambda: 2)
    runtime = rt.start("cpu", num_threads=1)
    assert (runtime.rank, runtime.world_size, runtime.is_main) == (1, 2, False)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS])
def test_a_file_system_that_cannot_lock_is_one_line_with_the_mount_option(tmp_path, monkeypatch, code):
    """NFSv3 without lockd answers flock with ENOLCK, Lustre without `-o flock` with ENOSYS: the run
    refuses in one line that names the fix, instead of a traceback about an OSError."""

    def no_locks(f, operation):
        raise OSError(code, "no locks here")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunRefused) as refused:
        with rt.RunLock(tmp_path / "run"):
            pass
    assert "cannot lock files" in str(refused.value) and "-o flock" in refused.value.fix
    with pytest.raises(RunRefused):
        with rt.DatasetReadLock(tmp_path / "data", tmp_path / "run"):
            pass
