"""A stop signal (SIGTERM, SIGUSR1, submitit's preemption signal) stops a training run at a step
boundary with its state saved; the same command resumes it on the same trajectory."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers.resume import STEPS, assert_same_run, gpt_overrides, straight_gpt_state
from tests.helpers.settings import REPO
from xtts_ft.config import compose
from xtts_ft.stages import train_gpt
from xtts_ft.train import preemption
from xtts_ft.train.runtime import Runtime

CPU = Runtime(0, 1, torch.device("cpu"))


def test_a_signal_is_only_noted_and_the_step_boundary_saves_then_stops(tmp_path, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    saved = []
    with preemption.stopping_on_signals():
        preemption.stop_if_asked(CPU, 4, lambda: saved.append(4), tmp_path)  # no signal: goes on
        os.kill(os.getpid(), signal.SIGTERM)  # noted, not fatal
        with pytest.raises(preemption.RunStopped) as stopped:
            preemption.stop_if_asked(CPU, 5, lambda: saved.append(5), tmp_path)
    assert saved == [5] and stopped.value.code == preemption.EXIT_STOPPED == 75
    assert (stopped.value.step, stopped.value.signal_name) == (5, "SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler before is back

    # A state already saved at this step (progress.json) is not written again.
    (tmp_path / "progress.json").write_text(json.dumps({"step": 6}))
    with preemption.stopping_on_signals():
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(preemption.RunStopped):
            preemption.stop_if_asked(CPU, 6, lambda: saved.append(6), tmp_path)
    assert saved == [5]


def test_under_submitit_its_handler_runs_once_the_state_is_saved(tmp_path, monkeypatch):
    """submitit sets a handler for its preemption signal (checkpoint, requeue, exit); it must run only
    after the state is on disk, not in the middle of a step."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    events = []

    def submitit_handler(signum, frame):  # what submitit's checkpoint_and_try_requeue does, at the end
        events.append(("requeue", signum))
        sys.exit(-1)

    before = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with preemption.stopping_on_signals():
            os.kill(os.getpid(), signal.SIGUSR2)
            assert events == []  # noted only: the step goes on
            with pytest.raises(SystemExit) as exited:
                preemption.stop_if_asked(CPU, 3, lambda: events.append(("save", 3)), tmp_path)
        assert events == [("save", 3), ("requeue", signal.SIGUSR2)] and exited.value.code == -1
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler
    finally:
        signal.signal(signal.SIGUSR2, before)


@pytest.mark.slow
def test_sigterm_mid_run_saves_stops_and_the_same_command_resumes_exactly(tmp_path, workdir, prepared):
    straight = straight_gpt_state(workdir)
    overrides = gpt_overrides(workdir, tmp_path / "runs", f"max_steps={STEPS}", "save_every=5")
    command = [sys.executable, "-m", "xtts_ft.cli", "train-gpt", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = tmp_path / "runs" / "demo" / "gpt"
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "progress.json").is_file() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # after step 5's save, before the end
    output, _ = proc.communicate(timeout=300)
    stopped = json.loads((run_dir / "progress.json").read_text())["step"]
    assert proc.returncode == preemption.EXIT_STOPPED, output[-3000:]
    assert 5 <= stopped < STEPS
    assert (
        f"stopping at step {stopped} on SIGTERM: state saved to {run_dir / 'state.pt'}; run the same command to resume"
        in output
    )
    assert torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)["step"] == stopped
    assert "Traceback" not in output

    resumed = train_gpt.run(compose("train_gpt", overrides))
    assert_same_run(resumed, straight)
