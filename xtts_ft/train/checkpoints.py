"""Training states and weight checkpoints on disk: their format version, reading a state to
resume (and what to do when it is corrupt), the sampler position it may resume, checkpoints
kept in rotation.

A run directory holds state.pt (everything resume needs) and checkpoints/step_*.pt and best.pt.
Since FORMAT_VERSION 2 every one of these describes itself, as nanoGPT's checkpoints do: the
weights, `format_version`, `step`, `base_model_dir` and `base_model_hash` (model.pth's file_hash),
the run's resolved `config`, `data_stats`, the metric where known and, for the decoder, which GPT
it voiced (`gpt`: source and hash), so that export needs nothing but the checkpoint. Files from
before (no `format_version`, "version 1") still load; a newer version is refused by name.
"""

from __future__ import annotations

from pathlib import Path

from xtts_ft.errors import BadValue
from xtts_ft.io_utils import torch_save

FORMAT_VERSION = 2


class NewerFormatError(BadValue):
    """A state or checkpoint written by a newer xtts-ft (not a damaged file: nothing to salvage)."""


def check_format(payload: dict, path: Path) -> None:
    """Refuse a state or checkpoint written by a newer xtts-ft, whose keys this code may misread."""
    version = payload.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NewerFormatError(
            f"{path} has format_version {version}, newer than this xtts-ft reads ({FORMAT_VERSION}): "
            "upgrade xtts-ft to use it"
        )


def load_state(state_path: Path, part: str) -> dict:
    """The training state to resume (`part`: gpt | decoder, what its checkpoints hold). A corrupt or
    truncated state is named, with what can still be saved: the checkpoints hold the weights (and
    what an export records) but no optimizer, scheduler, RNG or sampler position, so resuming from
    one would not continue this run: it is offered for export instead of pretending."""
    from pickle import UnpicklingError

    import torch

    from xtts_ft.model.loading import check_weights_file

    try:
        check_weights_file(state_path)  # every tensor's CRC: a truncated or altered file fails here
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except ValueError as err:  # check_weights_file's message names the file and the fault
        problem = str(err)
    except (RuntimeError, EOFError, UnpicklingError) as err:
        problem = f"{state_path} cannot be read as a training state ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    else:
        check_format(state, state_path)
        return state
    raise BadValue(f"{problem}. {salvage(state_path.parent, part)}")


def salvage(out: Path, part: str) -> str:
    """What the user can do with a run whose state.pt is lost: export its newest intact checkpoint."""
    from xtts_ft.model.loading import check_weights_file

    run_name = out.parent.name
    for checkpoint in sorted((out / "checkpoints").glob("step_*.pt"), reverse=True):
        try:
            check_weights_file(checkpoint)
        except ValueError:
            continue
        step = int(checkpoint.stem.split("_")[1])
        option = "checkpoint" if part == "gpt" else "decoder_checkpoint"
        return (
            f"The newest intact checkpoint, {checkpoint}, holds the {part} weights of step {step} but not the optimizer, "
            "scheduler, RNG and sampler position, so this run cannot continue exactly from it. Keep those weights with "
            f"`xtts-ft export run_name={run_name} {option}={step} out_dir=exports/{run_name}-step{step}` (a model you can "
            f"fine-tune further: model.source=exports/{run_name}-step{step} with another run_name), or delete {out} to start over."
        )
    return f"No intact checkpoint is left in {out / 'checkpoints'}: delete {out} to start the run over."


def check_sampler_key(state_path: Path, saved: dict, current: dict) -> None:
    """A saved sampler position means something only for the same data path (manifest, batch, seed)."""
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        raise BadValue(
            f"{state_path} was trained with another data path ("
            + "; ".join(f"{k}: {old} → {new}" for k, (old, new) in changed.items())
            + "): its sampler position means nothing here. Use another run_name, or delete the run to start over."
        )


def save_checkpoint(checkpoints: Path, step: int, payload: dict, keep_last: int) -> None:
    """checkpoints/step_<step>.pt (written atomically), keeping the last `keep_last` (0: all)."""
    torch_save(payload, checkpoints / f"step_{step:08d}.pt")
    for old in sorted(checkpoints.glob("step_*.pt"))[: -keep_last or None]:
        old.unlink()
