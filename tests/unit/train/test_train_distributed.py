"""torchrun on CPU (gloo): two processes follow the trajectory of one process that accumulates
their two micro-batches. Runs the real CLI under torchrun, as users launch it."""

import os
import subprocess
import sys

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.distributed import STEPS, assert_same_run
from tests.helpers.settings import REPO, TRAIN_OVERRIDES, demo_overrides
from xtts_ft.config import compose
from xtts_ft.model.loading import load_xtts
from xtts_ft.stages import train_gpt


def _losses(state_path):
    events = EventAccumulator(str(state_path.parent / "tensorboard"))
    events.Reload()
    return [e.value for e in events.Scalars("train/loss")]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(
    tiny_model_dir, accumulated_run, two_rank_run
):
    """The reference runs of tests/unit/train/conftest.py (shared with the multi-node and submitit tests):
    `torchrun --standalone --nproc-per-node=2` against one process with grad_accum_steps=2."""
    output = (two_rank_run.parents[3] / "two_ranks_cwd" / "launcher.log").read_text()
    assert output.count(f"trained GPT for {STEPS} steps") == 1  # rank 0 reports, rank 1 stays quiet
    assert_same_run(accumulated_run, two_rank_run)
    base = load_xtts(tiny_model_dir, "cpu", for_inference=False)[1].gpt.state_dict()
    trained = torch.load(two_rank_run, map_location="cpu", weights_only=True)["gpt"]
    assert sum(not torch.equal(value, base[key]) for key, value in trained.items()) > 10  # they trained


def test_lora_under_two_gloo_processes_matches_one_process(tmp_path, prepared, workdir):
    """method=lora under torchrun: DDP over PEFT's wrapped GPT (only the adapters need gradients)
    follows the single process's trajectory, and the state holds only the adapter."""
    lora = ["method=lora", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1", "lr=1e-2"]
    common = (
        demo_overrides(workdir)
        + TRAIN_OVERRIDES
        + lora
        + ["eval_every=1000", "eval_sentences=[]", "max_steps=3", "batch_size=2"]
    )
    single = train_gpt.run(compose("train_gpt", common + [f"paths.runs_dir={tmp_path / 'one'}", "grad_accum_steps=2"]))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "xtts_ft.cli",
        "train-gpt",
    ]
    done = subprocess.run(
        launch + common + [f"paths.runs_dir={tmp_path / 'two'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    two = tmp_path / "two" / "demo" / "gpt" / "state.pt"
    a = torch.load(single, map_location="cpu", weights_only=True)
    b = torch.load(two, map_location="cpu", weights_only=True)
    assert set(a["gpt"]) == set(b["gpt"]) and all("lora_" in key for key in a["gpt"])
    for key, value in a["gpt"].items():
        torch.testing.assert_close(b["gpt"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # lora_B starts at zero: after 3 steps every one moved (2 layers × 4 targets), in both runs alike.
    lora_b = [v for k, v in b["gpt"].items() if "lora_B" in k]
    assert len(lora_b) == 8 and all(v.abs().sum() > 0 for v in lora_b)
    np.testing.assert_allclose(_losses(two), _losses(single), rtol=1e-4)
