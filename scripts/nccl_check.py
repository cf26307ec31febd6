"""`xtts-ft train-gpt` under torchrun with our DDP path forced on, on ONE rank over NCCL.

With WORLD_SIZE=1 xtts_ft.train.runtime.start takes the single-process path (no process
group, no DDP). On a one-GPU machine that leaves NCCL and the DDP wrapping untested, so this
launcher replaces runtime.start by what its multi-rank branch does (cuda:LOCAL_RANK,
init_process_group("nccl")) and treats an initialised group as distributed: train() then wraps
the GPT in DistributedDataParallel(device_ids=[cuda:0]), uses no_sync() between micro-batches,
dist.barrier() and all_reduce for the logged losses, exactly as with N ranks. Then it runs the
CLI (xtts_ft.cli.main) with the given arguments. Nothing in xtts_ft is changed on disk.

    python -m torch.distributed.run --standalone --nproc_per_node=1 nccl_check.py train-gpt ...
"""

import os
import sys
import time

import torch
import torch.distributed as dist

from xtts_ft.train import runtime as rt

_start = rt.start


def nccl_version() -> str:
    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def start(device: str = "auto", num_threads: int = 0) -> rt.Runtime:
    _start(device, num_threads)  # thread settings; WORLD_SIZE=1 -> no group yet
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = os.environ.get("CHECK_BACKEND", "nccl")  # gloo: a dry run of this launcher on CPU
    device_ = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device_)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    probe = torch.ones(4, device=device_)
    dist.all_reduce(probe)
    dist.barrier()
    print(
        f"NCCL_CHECK process group: backend={dist.get_backend()} world_size={dist.get_world_size()} rank={dist.get_rank()} "
        f"nccl={nccl_version() if backend == 'nccl' else '-'} all_reduce_ok={bool((probe == 1).all())}",
        flush=True,
    )
    return rt.Runtime(dist.get_rank(), dist.get_world_size(), device_)


rt.start = start
rt.Runtime.distributed = property(lambda self: dist.is_initialized())

_ddp = torch.nn.parallel.DistributedDataParallel


class CountingDDP(_ddp):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        print(f"NCCL_CHECK DDP wraps the GPT: device_ids={self.device_ids}", flush=True)


torch.nn.parallel.DistributedDataParallel = CountingDDP

if __name__ == "__main__":
    from xtts_ft.cli import main

    started = time.perf_counter()
    main(sys.argv[1:])
    print(f"NCCL_CHECK finished in {time.perf_counter() - started:.1f} s", flush=True)
