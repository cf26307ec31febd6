"""`export checkpoint=latest` when the newest state.pt cannot be read: it exports the previous state
(state.prev.pt), as training would resume from it, and says so in one line naming the step."""

import json
import logging
import shutil

import pytest
import torch

from tests.helpers.settings import demo_overrides
from xtts_ft.config import compose
from xtts_ft.stages import export


def _run_copy(tmp_path, trained):
    """A copy of the shared training run (runs/demo/gpt: states at steps 30 and 20), and the export
    overrides that read it."""
    runs = tmp_path / "runs"
    shutil.copytree(trained.parent, runs / "demo" / "gpt")
    paths = [o for o in demo_overrides(tmp_path) if o.startswith("paths.") and "runs_dir" not in o]
    return runs / "demo" / "gpt", paths + [f"paths.runs_dir={runs}", "run_name=demo"]


def test_latest_exports_the_previous_state_when_the_newest_cannot_be_read(tmp_path, trained, caplog):
    run_dir, overrides = _run_copy(tmp_path, trained)
    state_path, previous_path = run_dir / "state.pt", run_dir / "state.prev.pt"
    previous = torch.load(previous_path, map_location="cpu", weights_only=True)
    assert previous["step"] == 20  # trained: 30 steps, a state every 10
    truncated = state_path.read_bytes()[:-4096]  # a copy cut short, a disk that filled up
    state_path.write_bytes(truncated)

    with caplog.at_level(logging.WARNING, logger="xtts_ft.train.checkpoints"):
        out = export.run(compose("export", overrides + [f"out_dir={tmp_path / 'latest'}"]))
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith(f"{state_path} is not a readable xtts-ft training state") and "\n" not in line
    assert line.endswith(f"; exporting the previous state instead: gpt step 20 ({previous_path})")

    record = json.loads((out / "xtts_ft.json").read_text())
    assert record["training"]["gpt_steps"] == 20
    assert record["training"]["checkpoint"] == {"choice": "latest", "step": 20, "run_steps": 30}
    weights = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(weights[f"gpt.{k}"], v) for k, v in previous["gpt"].items())
    # Export only reads: the run dir is as it was (training, resumed, sets the unreadable file aside itself).
    assert state_path.read_bytes() == truncated and not (run_dir / "state.unreadable.pt").exists()

    # Neither state readable: the refusal names both, with what can still be exported.
    previous_path.write_bytes(previous_path.read_bytes()[:-4096])
    with pytest.raises(
        ValueError,
        match=r"state.prev.pt cannot be read either\. The newest intact checkpoint, .*step_00000030\.pt, holds the gpt",
    ):
        export.run(compose("export", overrides + [f"out_dir={tmp_path / 'none'}"]))
    assert not (tmp_path / "none").exists()
