"""state.pt with the state it replaced kept as state.prev.pt: rotated atomically, and the fallback
when the newest cannot be read (the run continues exactly from the previous one)."""

import logging

import pytest
import torch

from tests.helpers.resume import STEPS, assert_same_run, gpt_overrides, straight_gpt_state
from xtts_ft.config import compose
from xtts_ft.stages import train_gpt
from xtts_ft.train import checkpoints as ckpt


def _state(step: int) -> dict:
    return {"step": step, "weights": torch.full((64,), float(step))}


def _step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


def test_each_save_keeps_the_state_it_replaces(tmp_path):
    state_path = tmp_path / "state.pt"
    ckpt.save_state(_state(1), state_path)
    assert not (tmp_path / "state.prev.pt").exists()  # nothing replaced yet
    for step in (2, 3):
        ckpt.save_state(_state(step), state_path)
    assert (_step(state_path), _step(tmp_path / "state.prev.pt")) == (3, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.prev.pt", "state.pt"]  # no temporary left


def test_an_unreadable_newest_state_falls_back_to_the_previous(tmp_path, caplog):
    state_path = tmp_path / "state.pt"
    for step in (1, 2):
        ckpt.save_state(_state(step), state_path)
    truncated = state_path.read_bytes()[:-100]
    state_path.write_bytes(truncated)

    with caplog.at_level(logging.WARNING, logger="xtts_ft.train.checkpoints"):
        state = ckpt.load_state(state_path, "gpt")
    assert state["step"] == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{state_path} is truncated or corrupted") and "\n" not in line
    assert f"resuming from the previous state, step 1 ({tmp_path / 'state.prev.pt'})" in line
    assert f"kept as {tmp_path / 'state.unreadable.pt'}" in line
    # The previous state is now the newest, the unreadable bytes kept aside: the next save rotates good states.
    assert (tmp_path / "state.unreadable.pt").read_bytes() == truncated
    assert _step(state_path) == 1
    ckpt.save_state(_state(2), state_path)
    assert (_step(state_path), _step(tmp_path / "state.prev.pt")) == (2, 1)

    # Neither readable: the refusal, with what can be salvaged.
    state_path.write_bytes(truncated)
    (tmp_path / "state.prev.pt").write_bytes(truncated)
    with pytest.raises(ValueError, match=r"state.prev.pt cannot be read either\. No intact checkpoint is left"):
        ckpt.load_state(state_path, "gpt")


@pytest.mark.slow
def test_a_run_whose_newest_state_is_corrupt_continues_exactly_from_the_previous(tmp_path, workdir, prepared, caplog):
    straight = straight_gpt_state(workdir)
    overrides = gpt_overrides(workdir, tmp_path)
    state_path = train_gpt.run(compose("train_gpt", overrides + ["max_steps=3"]))
    altered = bytearray(state_path.read_bytes())
    altered[len(altered) // 2] ^= 0xFF  # one flipped bit in a tensor: its CRC fails
    state_path.write_bytes(bytes(altered))

    with caplog.at_level(logging.WARNING, logger="xtts_ft.train.checkpoints"):
        resumed = train_gpt.run(compose("train_gpt", overrides + [f"max_steps={STEPS}"]))
    assert any("resuming from the previous state, step 2" in r.getMessage() for r in caplog.records)
    assert_same_run(resumed, straight)
