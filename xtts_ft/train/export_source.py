"""What an export takes from a training run: its state.pt (checkpoint=latest), or a kept checkpoint
(best or a step) alone, read and checked.

A checkpoint describes itself (`xtts_ft.train.checkpoints`); one from before that (no
format_version) takes what it lacks from state.pt, and a run whose state.pt was lost still
exports its kept steps.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.train import checkpoints as ckpt

log = logging.getLogger(__name__)


def load_training_state(path: Path) -> dict:
    """A training state or checkpoint, refused by name when unreadable or of a newer format."""
    if not path.is_file():
        raise MissingFile(f"training state {path} does not exist", fix="run `xtts-ft train-gpt` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise BadValue(f"{path} is not a readable xtts-ft training state ({type(err).__name__}: {err})") from err
    ckpt.check_format(state, path)
    return state


def chosen_weights(cfg: DictConfig, run_dir: Path, part: str = "gpt") -> dict:
    """The checkpoint to export (part = gpt | decoder): {} for the latest state (default), else
    checkpoints/best.pt (the run's best eval) or a kept step."""
    choice = str(cfg.checkpoint if part == "gpt" else cfg.decoder_checkpoint)
    if choice == "latest":
        return {}
    if choice == "best":
        path = run_dir / "checkpoints" / "best.pt"
    elif choice.isdigit():
        path = run_dir / "checkpoints" / f"step_{int(choice):08d}.pt"
    else:
        raise BadValue(
            f"{'checkpoint' if part == 'gpt' else 'decoder_checkpoint'}={choice} is not a checkpoint",
            fix="latest, best or a step number",
        )
    if not path.is_file():
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
        raise MissingFile(
            f"checkpoint={choice}: {path} does not exist (kept: {', '.join(kept) or 'none'})",
            fix="checkpoint=<one of those>, or latest",
        )
    return load_training_state(path)


def training_source(cfg: DictConfig, state_path: Path, part: str) -> dict | None:
    """What to export of one run (part = gpt | decoder), None where the run does not exist.

    checkpoint=latest: state.pt (state.prev.pt, said in one line, when state.pt cannot be read).
    A chosen checkpoint that describes itself (format_version 2+): the checkpoint alone, state.pt is not read. An older checkpoint: state.pt with the
    checkpoint's weights and step, or the checkpoint alone when state.pt cannot be read but the
    checkpoint carries the run's config (a run whose state.pt was lost still exports its kept steps).
    """
    run_dir = state_path.parent
    latest = str(cfg.checkpoint if part == "gpt" else cfg.decoder_checkpoint) == "latest"
    if not state_path.is_file() and (latest or not (run_dir / "checkpoints").is_dir()):
        return None
    chosen = chosen_weights(cfg, run_dir, part)
    if chosen.get("format_version", 1) >= 2:
        return chosen
    try:
        state = load_training_state(state_path)
    except ckpt.NewerFormatError:
        raise
    except (ValueError, FileNotFoundError) as err:
        if not chosen:  # latest: the previous state (state.prev.pt), else say what can still be exported
            return ckpt.previous_state_for_export(state_path, part, str(err))
        if "config" not in chosen:  # a checkpoint from before checkpoints described themselves
            raise
        log.warning("%s cannot be read; exporting %s step %d from its checkpoint", state_path, part, chosen["step"])
        return chosen
    state.update({key: chosen[key] for key in (part, "step") if key in chosen})
    return state
