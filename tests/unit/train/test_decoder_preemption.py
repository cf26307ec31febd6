"""train-decoder stopped by a signal (SLURM's `--signal=USR1@...` before a time limit): it saves at
the step boundary, exits with EXIT_STOPPED (75), and the same command resumes it onto the weights of
an uninterrupted run, bit for bit."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers.settings import DECODER_OVERRIDES, REPO, decoder_data_overrides
from xtts_ft.config import compose
from xtts_ft.stages import train_decoder
from xtts_ft.train import preemption

STEPS, SAVE_EVERY = 6, 2


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}.{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}.{i}").items()}
    return {}


def _progress_step(run_dir) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.slow
def test_a_signalled_decoder_run_saves_stops_and_resumes_bitwise(tmp_path, workdir, prepared_24k):
    overrides = decoder_data_overrides(workdir) + DECODER_OVERRIDES  # spectral-only (adversarial=false), 2048 samples
    overrides += ["batch_size=1", f"save_every={SAVE_EVERY}", f"max_steps={STEPS}", "num_threads=1"]
    straight = train_decoder.run(compose("train_decoder", overrides + [f"paths.runs_dir={tmp_path / 'straight'}"]))

    stopped_overrides = overrides + [f"paths.runs_dir={tmp_path / 'stopped'}"]
    run_dir = tmp_path / "stopped" / "demo" / "decoder"
    command = [sys.executable, "-m", "xtts_ft.cli", "train-decoder", *stopped_overrides]
    command.append(f"hydra.run.dir={tmp_path / 'hydra'}")
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while _progress_step(run_dir) < SAVE_EVERY and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _progress_step(run_dir) == SAVE_EVERY, "the run ended or stalled before its first save"
        proc.send_signal(signal.SIGUSR1)  # mid-run: after step 2's save, before the end
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == preemption.EXIT_STOPPED, output[-3000:]
    stopped = _progress_step(run_dir)
    assert SAVE_EVERY <= stopped < STEPS
    assert f"stopping at step {stopped} on SIGUSR1: state saved to {run_dir / 'state.pt'}" in output
    assert "Traceback" not in output
    cfg = compose("train_decoder", stopped_overrides)
    assert not train_decoder.is_done(cfg)

    resumed = train_decoder.run(cfg)  # the same command, run again
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (straight, resumed))
    assert (b["step"], b["epoch"], b["batch_in_epoch"]) == (a["step"], a["epoch"], a["batch_in_epoch"])
    assert a["discriminator"] is None and b["discriminator"] is None
    for part in ("decoder", "opt_gen"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys() and flat_a
        for key in flat_a:
            assert torch.equal(flat_b[key], flat_a[key]), f"{part}{key}"
