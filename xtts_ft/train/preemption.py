"""Stopping a training run on request, at a step boundary, with its state saved: what a time limit
or a preemption needs to cost nothing but the restart.

The signals: SIGTERM (`kill -TERM`, torchrun passing on its own, SLURM's preemption), SIGUSR1
(SLURM's `--signal=USR1@<seconds>` before a time limit) and, under submitit, submitit's own
preemption signal (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another). The handler only notes
the signal; the loop calls `stop_if_asked` at the top of every step: every rank agrees (a signal
seen by any rank stops all at the same step), rank 0 saves the full state unless it was just saved,
and one line says so. Then:
- under submitit, submitit's handler for its signal, set aside here, runs now that the state is
  safe: it calls the launcher's `checkpoint()` (hydra-submitit-launcher resubmits the same job, with
  the same overrides), requeues the job and exits; the requeued job resumes from state.pt;
- otherwise the process exits with EXIT_STOPPED (75, sysexits' EX_TEMPFAIL: try again later);
  running the same command resumes the run exactly where it stopped.
A second SIGTERM while the first is pending stops the process at once (the last save is intact).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from xtts_ft.train import runtime as rt

log = logging.getLogger(__name__)
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: stopped on request; run the same command again


class RunStopped(SystemExit):
    """The run stopped at a step boundary on a signal, its state saved. A SystemExit (code
    EXIT_STOPPED): no stage after it runs, and no traceback is printed."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(EXIT_STOPPED)
        self.step, self.signal_name = step, signal_name


class StopRequest:
    """The signal received (None: none), and the handlers set aside while ours are installed."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: dict = {}

    def note(self, signum: int, frame=None) -> None:
        if self.signum is not None and signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # asked twice: stop now
            os.kill(os.getpid(), signal.SIGTERM)
        self.signum = self.signum or signum


REQUEST = StopRequest()


def submitit_signal() -> Optional[int]:
    """submitit's preemption signal when this process is a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)


def stop_signals() -> list:
    extra = submitit_signal()
    return [signal.SIGTERM, signal.SIGUSR1] + ([extra] if extra not in (None, signal.SIGTERM, signal.SIGUSR1) else [])


@contextmanager
def stopping_on_signals() -> Iterator[StopRequest]:
    """Note SIGTERM/SIGUSR1 (and submitit's signal) instead of dying, for the loop to stop at a step
    boundary; the handlers before are back afterwards. Outside the main thread (where Python cannot
    set handlers) signals keep their usual effect."""
    REQUEST.signum, REQUEST.previous = None, {}
    if threading.current_thread() is not threading.main_thread():
        yield REQUEST
        return
    for signum in stop_signals():
        REQUEST.previous[signum] = signal.signal(signum, REQUEST.note)
    try:
        yield REQUEST
    finally:
        for signum, handler in REQUEST.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        REQUEST.signum, REQUEST.previous = None, {}


def asked_to_stop(runtime: rt.Runtime) -> Optional[int]:
    """The signal that asks this run to stop, agreed by every rank (each must call it at the same
    step): the highest signal number any rank noted, None when none did."""
    noted = REQUEST.signum or 0
    if runtime.distributed:
        flag = torch.tensor([noted], device=runtime.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        noted = int(flag.item())
    return noted or None


def stop_if_asked(runtime: rt.Runtime, step: int, save: Callable[[], None], out: Path) -> None:
    """At the top of a step: when a stop signal came, save the state (rank 0; not again if this step's
    state is on disk), say so, and leave as submitit expects, or with EXIT_STOPPED."""
    signum = asked_to_stop(runtime)
    if signum is None:
        return
    state_path, name = Path(out) / "state.pt", signal.Signals(signum).name
    if runtime.is_main:
        if step > 0 and last_saved_step(out) != step:
            save()
        where = f"state saved to {state_path}" if step > 0 else "nothing to save before the first step"
        log.warning("stopping at step %d on %s: %s; run the same command to resume", step, name, where)
    runtime.barrier()  # the state is on disk before any rank leaves
    hand_over_to_submitit()
    raise RunStopped(step, name)


def last_saved_step(out: Path) -> Optional[int]:
    """The step of the run's last save (progress.json, written after its state), None before any."""
    progress = Path(out) / "progress.json"
    return json.loads(progress.read_text())["step"] if progress.is_file() else None


def hand_over_to_submitit() -> None:
    """Under submitit, run the handler it set for its preemption signal (rank 0: checkpoint, requeue,
    exit; other ranks: it returns) now that the state is saved."""
    usr = submitit_signal()
    handler = REQUEST.previous.get(usr) if usr is not None else None
    if callable(handler):
        handler(usr, None)
