"""The process a training recipe runs in: distributed set-up (torchrun), the device, mixed
precision, the run-directory and dataset locks and memory figures."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from xtts_ft.errors import BadValue
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


def start(device: str = "auto", num_threads: int = 0) -> Runtime:
    """A single process, or one rank of a torchrun launch (WORLD_SIZE/RANK/LOCAL_RANK set).

    NCCL on GPUs (one per local rank), gloo on CPU.
    """
    if num_threads > 0:
        torch.set_num_threads(num_threads)
    elif torch.get_num_threads() == 1 and (os.cpu_count() or 1) > 1 and "OMP_NUM_THREADS" not in os.environ:
        # coqui's trainer dataset module pins torch to one thread when imported; undo that unless
        # the user asked for it.
        torch.set_num_threads(os.cpu_count())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Runtime(0, 1, pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_ = pick_device(device)
    if device_.type == "cuda":
        device_ = torch.device("cuda", local_rank)
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
        raise BadValue(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise BadValue("precision=fp16 needs a CUDA device; on CPU use precision=bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadValue(f"{torch.cuda.get_device_name(device)} does not support bf16; use precision=fp16")
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


class RunLock(FileLock):
    """An exclusive lock on a run directory (`run.lock` in it), held while a run writes into it."""

    def __init__(self, run_dir: Path):
        super().__init__(
            Path(run_dir) / "run.lock",
            f"{run_dir} is in use by a running training ({{holder}}); wait for it to finish, or give this run another run_name",
        )


class DatasetReadLock(FileLock):
    """A shared lock on a prepared dataset, held by every training run reading it: `prepare` takes
    the same lock exclusively to replace the dataset, so it refuses, naming the run, instead of
    pulling the clips out from under it (and a run does not start on a dataset being replaced)."""

    def __init__(self, data_dir: Path, run_dir: Path):
        super().__init__(
            dir_lock_path(data_dir),
            f"{data_dir} is being prepared ({{holder}}); start the training when `xtts-ft prepare` has finished",
            shared=True,
            label=f"the training run {run_dir}",
        )
