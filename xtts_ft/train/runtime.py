"""The process a training recipe runs in: distributed set-up (torchrun on one node or several, a
submitit job's tasks, srun's), the device, mixed precision, the run-directory and dataset locks (and
what a shared file system needs for them) and memory figures."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.distributed as dist

from xtts_ft.errors import BadValue, MissingPackage, RunRefused
from xtts_ft.io_utils import FileLock, dir_lock_path
from xtts_ft.model.loading import pick_device

log = logging.getLogger(__name__)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def job_ranks() -> Optional[Dict[str, str]]:
    """torch.distributed's env:// variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a
    job whose tasks a scheduler started, torchrun aside; None for a single process or when torchrun (or the
    user) has set WORLD_SIZE already.

    - A submitit job (`hydra/launcher=slurm` or `local`, SUBMITIT_EXECUTOR set): submitit's JobEnvironment
      gives the global and local rank and the task count; the master is the job's first host, its port
      derived from the job id (the same on every task, and again when the job is requeued) unless
      MASTER_PORT is set.
    - `srun` without submitit (SLURM_STEP_NUM_TASKS set: a batch script's own shell, one process, is not a
      rank): SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS and the first node of SLURM_JOB_NODELIST.
    """
    if "WORLD_SIZE" in os.environ:
        return None
    if os.environ.get("SUBMITIT_EXECUTOR"):
        from submitit.helpers import TorchDistributedEnvironment

        job = TorchDistributedEnvironment()
        ranks = (job.rank, job.world_size, job.local_rank, job.master_addr, job.master_port)
    elif int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        try:
            from submitit.slurm.slurm import SlurmJobEnvironment  # reads SLURM's compressed node lists
        except ImportError:
            raise MissingPackage(
                "a training under srun needs submitit to read the SLURM job's node list",
                fix="pip install 'xtts-ft[cluster]', or launch the ranks with torchrun",
            ) from None
        job = SlurmJobEnvironment()
        port = os.environ.get("MASTER_PORT") or str(20000 + int(job.raw_job_id) % 40000)
        ranks = (job.global_rank, job.num_tasks, job.local_rank, job.hostnames[0], port)
    else:
        return None
    rank, world_size, local_rank, addr, port = ranks
    if world_size <= 1:
        return None
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR", str(addr)),
        "MASTER_PORT": str(port),
    }


def start(device: str = "auto", num_threads: int = 0) -> Runtime:
    """A single process, or one rank of a distributed launch: torchrun (WORLD_SIZE/RANK/LOCAL_RANK set, on
    one node or several), a submitit job's task (hydra/launcher=slurm|local) or an srun task (`job_ranks`).

    NCCL on GPUs (one per local rank), gloo on CPU. The rank is the global one (RANK, across nodes): only
    rank 0 writes the run (state, checkpoints, TensorBoard, caches, the run lock); a node's local rank 0 is
    not the main process.
    """
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1 and "OMP_NUM_THREADS" not in os.environ:
        # coqui's trainer dataset module pins torch to one thread when imported; undo that unless
        # the user asked for it.
        torch.set_num_threads(os.cpu_count())
    scheduled = job_ranks()
    if scheduled is not None:
        os.environ.update(scheduled)  # init_process_group's env:// reads them
        log.info("rank %s of %s from the job environment", scheduled["RANK"], scheduled["WORLD_SIZE"])
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(0, 1, pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_ = pick_device(device)
    if device_.type == "cuda":
        # A scheduler may show each task only its own GPU (--gpus-per-task): then it is cuda:0.
        device_ = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device_)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Runtime(dist.get_rank(), dist.get_world_size(), device_)


def glibc():
    """The process's C library when it is glibc (mallopt and malloc_trim are glibc's), else None."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def keep_freed_host_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step frees gigabytes of activations and gradients, and the next step asks for
    them again. With glibc's defaults, blocks above a (sliding) 32 MB threshold are mmapped and
    unmapped each time, and the top of the heap is trimmed once 64 MB lie free there; every such
    return is paid again as page faults (the kernel zeroing pages) in the next step, worst when a
    longer batch follows a shorter one, as length-bucketed batches do. A fixed mmap threshold and
    a trim threshold out of reach keep that memory; the peak (VmHWM) is unchanged because freed
    memory is reused before the heap grows. Measured at full size on CPU: 8 % less training time
    (BENCHMARKS.md). Same mechanism as the MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_
    environment variables, applied from inside the process. No-op (False) without glibc.
    """
    libc = glibc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    # 32 MB is glibc's largest mmap threshold; setting any value turns its sliding adjustment off.
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    return libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok


def return_freed_host_memory() -> bool:
    """Hand the heap memory freed so far back to the kernel (glibc's malloc_trim), once the model is
    loaded: coqui-tts reads model.pth whole and copies it into the model, and the freed copy (1.9 GB
    at full size) would otherwise stay in the process for the whole run (keep_freed_host_memory
    keeps freed memory on purpose, for the steps). No-op (False) without glibc."""
    libc = glibc()
    return libc is not None and libc.malloc_trim(0) == 1


def autocast(precision: str, device: torch.device):
    """bf16/fp16 autocast where asked (fp16 only on CUDA); fp32: no autocast."""
    if precision not in PRECISIONS:
        raise BadValue(f"precision={precision!r} is not a precision", fix=f"choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise BadValue("precision=fp16 needs a CUDA device", fix="on CPU use precision=bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadValue(f"{torch.cuda.get_device_name(device)} does not support bf16", fix="use precision=fp16")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def warn_slow_bf16(precision: str, device: torch.device) -> None:
    if (
        precision == "bf16"
        and device.type == "cpu"
        and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX")
    ):
        log.warning(
            "precision=bf16 on a CPU without native bf16 kernels (capability %s): autocast emulates them, "
            "measured ~90x slower than fp32 here. Use precision=fp32 (grad_checkpointing=true saves memory).",
            torch.backends.cpu.get_cpu_capability(),
        )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# What flock(2) answers on a file system that does not lock: NFSv3 without lockd (ENOLCK), Lustre mounted
# without `-o flock` (ENOSYS), and some FUSE or object-store mounts (EOPNOTSUPP, EINVAL).
NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class ClusterFileLock(FileLock):
    """A FileLock (flock) that says what to change when the file system cannot lock.

    flock works across the nodes of a cluster on NFSv4 (locks are part of the protocol), on NFSv3 with
    lockd (the Linux client turns flock into NFS locks) and on Lustre mounted with `-o flock`; on a
    Lustre mount with `-o localflock` it only locks within one node. The lock file names its holder
    (label, pid, host): a refusal says which run on which node holds it.
    """

    def __enter__(self) -> "FileLock":
        try:
            return super().__enter__()
        except OSError as error:
            if error.errno not in NO_LOCKS:
                raise
            raise RunRefused(
                f"the file system holding {self.path} cannot lock files ({os.strerror(error.errno)}), and the "
                "training locks its run directory and its dataset there",
                fix="mount Lustre with -o flock, run lockd for NFSv3 (NFSv4 locks as it is), or move paths.runs_dir "
                "and paths.processed_dir to a file system that locks",
            ) from None


class RunLock(ClusterFileLock):
    """An exclusive lock on a run directory (`run.lock` in it), held while a run writes into it (by
    global rank 0 alone)."""

    def __init__(self, run_dir: Path):
        super().__init__(
            Path(run_dir) / "run.lock",
            f"{run_dir} is in use by a running training ({{holder}}); wait for it to finish, or give this run another run_name",
        )


class DatasetReadLock(ClusterFileLock):
    """A shared lock on a prepared dataset, held by every training run reading it: `prepare` takes
    the same lock exclusively to replace the dataset, so it refuses, naming the run, instead of
    pulling the clips out from under it (and a run does not start on a dataset being replaced).
    Every rank holds it (a shared lock: they do not exclude each other), so a node reading its own
    copy of the dataset protects that copy too."""

    def __init__(self, data_dir: Path, run_dir: Path):
        super().__init__(
            dir_lock_path(data_dir),
            f"{data_dir} is being prepared ({{holder}}); start the training when `xtts-ft prepare` has finished",
            shared=True,
            label=f"the training run {run_dir}",
        )
