"""A write that fails for want of space is one line (the file, the space it needed, the space free,
what is intact, the fix), and a run that will not fit is foreseen before its first step."""

import errno
import logging
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.resume import STEPS, assert_same_run, gpt_overrides, straight_gpt_state
from xtts_ft import io_utils
from xtts_ft.cli import one_line
from xtts_ft.config import compose
from xtts_ft.errors import DiskFull
from xtts_ft.stages import train_gpt
from xtts_ft.train import checkpoints as ckpt

TORCH_ON_A_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 8065280 vs 8065168"


def _full_disk(monkeypatch, real_save=torch.save, only=""):
    """torch.save writes a little, then the disk is full (for files whose name holds `only`)."""

    def save(obj, f, *args, **kwargs):
        if only not in str(f):
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as out:
            out.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_torch_save_on_a_full_disk_says_so_in_one_line(tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    with pytest.raises(DiskFull) as full:
        io_utils.torch_save({"w": torch.zeros(250_000)}, tmp_path / "big.pt")  # 1 MB of tensor
    line = one_line(full.value)
    assert "\n" not in line and line.startswith(
        f"error: no space left to write {tmp_path / 'big.pt'}: it needs about 1.1 MB,"
    )
    assert " free there — fix: free space on that disk" in line
    assert list(tmp_path.iterdir()) == []  # the partial file is gone (and the space it held)

    # torch's own error on a full disk names no disk: the free space tells it apart from other failures.
    def torch_fails(obj, f, *args, **kwargs):
        raise RuntimeError(TORCH_ON_A_FULL_DISK)

    monkeypatch.setattr(torch, "save", torch_fails)
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 4096)
    with pytest.raises(DiskFull, match=r"big.pt: it needs about 1.1 MB, 4 kB free there"):
        io_utils.torch_save({"w": torch.zeros(250_000)}, tmp_path / "big.pt")
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 10**12)
    with pytest.raises(RuntimeError, match="unexpected pos") as other:
        io_utils.torch_save({"w": torch.zeros(250_000)}, tmp_path / "big.pt")
    assert not isinstance(other.value, DiskFull)


def test_a_directory_build_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """export (atomic_dir) and prepare (resumable_dir) build directories: a write inside that runs out
    of space is a DiskFull naming its file; prepare's partial build is kept for the next run."""
    with pytest.raises(DiskFull, match=r"no space left to write .*model.pth: it needs more, .* free there"):
        with io_utils.atomic_dir(tmp_path / "export") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.pth"))
    assert not (tmp_path / "export").exists()
    with pytest.raises(DiskFull, match=r"no space left to write .*clip.wav"):
        with io_utils.resumable_dir(tmp_path / "dataset", "key") as work:
            (work / "done.wav").write_bytes(b"1")
            raise OSError(errno.EDQUOT, "Disk quota exceeded", str(work / "clip.wav"))
    assert (tmp_path / ".dataset.partial" / "done.wav").is_file()
    # torch's error (export's model.pth): the disk is seen full when it fails, before the partial build goes.
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 0)
    with pytest.raises(DiskFull, match=r"export: it needs more than the 1 kB written when the disk filled, 0 B free"):
        with io_utils.atomic_dir(tmp_path / "export") as tmp:
            (tmp / "model.pth").write_bytes(b"x" * 1000)
            raise RuntimeError(TORCH_ON_A_FULL_DISK)


def test_a_run_that_will_not_fit_is_foreseen(tmp_path, monkeypatch, caplog):
    weights = {"w": torch.zeros(250_000)}  # 1 MB: a checkpoint; the state adds AdamW's two moments
    param = torch.nn.Parameter(torch.zeros(250_000))
    optimizer = torch.optim.AdamW([param])
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    (model_dir / "model.pth").write_bytes(b"0" * 2_000_000)
    cfg = SimpleNamespace(
        keep_last=3, max_steps=100, save_every=10, paths=SimpleNamespace(exports_dir=tmp_path / "exports")
    )
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 20_000_000)
    assert ckpt.check_run_space(tmp_path / "run", cfg, [weights], [optimizer], model_dir)
    monkeypatch.setattr(io_utils, "free_bytes", lambda path: 5_000_000)
    with caplog.at_level(logging.WARNING, logger="xtts_ft.io_utils"):
        assert not ckpt.check_run_space(tmp_path / "run", cfg, [weights], [optimizer], model_dir)
    (line,) = [r.getMessage() for r in caplog.records]
    # 3 states of 3 MB (weights + 2 moments) while one is saved, 5 checkpoints of 1 MB, an export of 2 MB
    assert line.startswith("this run (state.pt + state.prev.pt, three while one is saved, of 3.0 MB each; 3 step")
    assert "will write about 16.0 MB in" in line and "only 5.0 MB is free there" in line
    assert "lower keep_last, or move paths.runs_dir" in line


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_state_and_resumes_exactly(tmp_path, workdir, prepared, monkeypatch):
    straight = straight_gpt_state(workdir)
    overrides = gpt_overrides(workdir, tmp_path)
    state_path = train_gpt.run(compose("train_gpt", overrides + ["max_steps=2"]))
    saved = state_path.read_bytes()

    _full_disk(monkeypatch, only=".state.pt.")  # the disk fills while step 3's state is written
    with pytest.raises(DiskFull) as full:
        train_gpt.run(compose("train_gpt", overrides + [f"max_steps={STEPS}"]))
    line = one_line(full.value)
    assert "\n" not in line and line.startswith(f"error: no space left to write {state_path}: it needs about ")
    assert f"free there; the last state, step 2 ({state_path}), is intact — fix: free space on that disk, or " in line
    assert line.endswith(
        "move paths.runs_dir (with this run in it) to a disk with room; then run the same command to resume"
    )
    assert state_path.read_bytes() == saved  # untouched, and the previous one beside it
    assert torch.load(state_path.with_name("state.prev.pt"), weights_only=True)["step"] == 1

    monkeypatch.undo()  # space is freed
    resumed = train_gpt.run(compose("train_gpt", overrides + [f"max_steps={STEPS}"]))
    assert_same_run(resumed, straight)
