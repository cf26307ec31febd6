"""Training states and weight checkpoints on disk: their format version, reading a state to
resume (and what to do when it is corrupt), the sampler position it may resume, checkpoints
kept in rotation.

A run directory holds state.pt (everything resume needs) and checkpoints/step_*.pt and best.pt.
Since FORMAT_VERSION 2 every one of these describes itself, as nanoGPT's checkpoints do: the
weights, `format_version`, `step`, `base_model_dir` and `base_model_hash` (model.pth's file_hash),
the run's resolved `config`, `data_stats`, the metric where known and, for the decoder, which GPT
it voiced (`gpt`: source and hash), so that export needs nothing but the checkpoint. Files from
before (no `format_version`, "version 1") still load; a newer version is refused by name.

The state it replaces is kept beside the newest, as state.prev.pt (rotated atomically: at every
moment state.pt and state.prev.pt are each a complete state), so a newest state that cannot be
read (a CRC error, a truncated copy) costs the steps since the previous save, not the run; the
run resumes from the previous one, and `export checkpoint=latest` exports it. At rest that is two
states on disk, and three while one is written (the new one is complete before the older is let
go); `check_run_space` warns before the first step when they, the kept checkpoints and an export
will not fit.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from xtts_ft.errors import BadValue, DiskFull
from xtts_ft.io_utils import check_free_space, disk_full_error, files_bytes, human_bytes, tensor_bytes, torch_save

log = logging.getLogger(__name__)
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


def previous_path(state_path: Path) -> Path:
    """Where the state before the newest is kept: state.prev.pt beside state.pt."""
    return Path(state_path).with_name(f"{Path(state_path).stem}.prev.pt")


def save_state(state: dict, state_path: Path) -> None:
    """state.pt, written atomically; the state it replaces becomes state.prev.pt only once the new
    one is complete on disk (a hard link, then renames: no moment without either)."""
    state_path = Path(state_path)
    previous = previous_path(state_path)

    def keep_the_replaced_state() -> None:
        if state_path.is_file():
            link_atomically(state_path, previous)

    torch_save(state, state_path, before_replace=keep_the_replaced_state)


def link_atomically(source: Path, target: Path) -> None:
    """`target` becomes a second name of `source`'s bytes (a hard link: no copy), replacing what it
    was in one rename; a copy on a file system without hard links."""
    link = target.with_name(f".{target.name}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(source, link)
    except OSError:
        shutil.copyfile(source, link)
    os.replace(link, target)


def read_state(state_path: Path) -> dict:
    """A training state, every tensor's CRC checked; BadValue naming the file when it cannot be read."""
    from pickle import UnpicklingError

    import torch

    from xtts_ft.model.loading import check_weights_file

    try:
        check_weights_file(state_path)  # every tensor's CRC: a truncated or altered file fails here
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except ValueError as err:  # check_weights_file's message names the file and the fault
        raise BadValue(str(err)) from None
    except (RuntimeError, EOFError, UnpicklingError) as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise BadValue(f"{state_path} cannot be read as a training state ({type(err).__name__}: {first})") from None
    check_format(state, state_path)
    return state


def load_state(state_path: Path, part: str) -> dict:
    """The training state to resume (`part`: gpt | decoder, what its checkpoints hold).

    A newest state that cannot be read falls back to the previous one (state.prev.pt), said in one
    line: the run continues exactly from that step. The unreadable file is kept aside
    (state.unreadable.pt) and the previous one becomes state.pt, so the next save rotates good
    states only. With neither readable, the error says what can still be saved: the checkpoints
    hold the weights (and what an export records) but no optimizer, scheduler, RNG or sampler
    position, so resuming from one would not continue this run: it is offered for export instead.
    """
    state_path = Path(state_path)
    try:
        return read_state(state_path)
    except NewerFormatError:
        raise
    except BadValue as err:
        problem = str(err)
    previous = previous_path(state_path)
    if previous.is_file():
        try:
            state = read_state(previous)
        except NewerFormatError:
            raise
        except BadValue:
            problem += f"; the previous state {previous} cannot be read either"
        else:
            # The previous state becomes the newest (the next save keeps it as previous); at no moment is
            # there no state.pt, and the unreadable bytes stay for a look.
            aside = state_path.with_name(f"{state_path.stem}.unreadable.pt")
            link_atomically(state_path, aside)
            link_atomically(previous, state_path)
            log.warning(
                "%s; resuming from the previous state, step %d (%s); the unreadable file is kept as %s (%s: delete it)",
                problem,
                state["step"],
                previous,
                aside,
                human_bytes(aside.stat().st_size),
            )
            return state
    raise BadValue(f"{problem}. {salvage(state_path.parent, part)}")


def previous_state_for_export(state_path: Path, part: str, problem: str) -> dict:
    """What `export checkpoint=latest` takes when state.pt cannot be read (`problem` says why): the
    previous state, state.prev.pt, CRC-checked, said in one line naming the step exported (the
    run resumes from the same state, so both agree on what "latest" is). Export only reads: nothing
    in the run dir is renamed. With neither readable, BadValue with what can still be exported."""
    state_path = Path(state_path)
    previous = previous_path(state_path)
    if previous.is_file():
        try:
            state = read_state(previous)
        except NewerFormatError:
            raise
        except BadValue:
            problem += f"; the previous state {previous} cannot be read either"
        else:
            log.warning(
                "%s; exporting the previous state instead: %s step %d (%s)", problem, part, state["step"], previous
            )
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
            + "): its sampler position means nothing here",
            fix="use another run_name, or delete the run to start over",
        )


def save_checkpoint(checkpoints: Path, step: int, payload: dict, keep_last: int) -> None:
    """checkpoints/step_<step>.pt (written atomically), keeping the last `keep_last` (0: all)."""
    torch_save(payload, checkpoints / f"step_{step:08d}.pt")
    for old in sorted(checkpoints.glob("step_*.pt"))[: -keep_last or None]:
        old.unlink()


def state_step(state_path: Path) -> Optional[int]:
    """The step of the newest readable state (state.pt, else state.prev.pt), read without loading its
    tensors; None when there is none."""
    import torch

    for path in (Path(state_path), previous_path(state_path)):
        try:
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:  # missing or unreadable: the next one, then none
            continue
    return None


RESUME_FIX = "free space on that disk, or move paths.runs_dir (with this run in it) to a disk with room; then run the same command to resume"


def disk_full_in_run(error: Exception, out: Path) -> DiskFull:
    """A full disk during a training run (a `DiskFull`, or the system's ENOSPC from a writer of its
    own), in one line: the file, the space it needed and the space free, which state is intact
    (its step), and how to resume."""
    state_path = Path(out) / "state.pt"
    step = state_step(state_path)
    intact = (
        f"the last state, step {step} ({state_path}), is intact"
        if step is not None
        else "no training state was saved yet: the run starts again from step 0"
    )
    path = Path(getattr(error, "path", None) or getattr(error, "filename", None) or out)
    in_run = Path(out).resolve() in path.resolve().parents or path.resolve() == Path(out).resolve()
    fix = RESUME_FIX if in_run else "free space on that disk; then run the same command to resume"
    return disk_full_error(path, getattr(error, "need_bytes", None), intact=intact, fix=fix)


def moments_bytes(optimizers: Iterable) -> int:
    """What AdamW keeps per trainable parameter once it has stepped: two moments of its size."""
    total = 0
    for optimizer in optimizers:
        for group in [] if optimizer is None else optimizer.param_groups:
            total += sum(2 * p.numel() * p.element_size() for p in group["params"] if p.requires_grad)
    return total


def device_of(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.stat(path).st_dev


def check_run_space(out: Path, cfg, weights: list, optimizers: Iterable, model_dir: Path) -> bool:
    """Before the first step: warn (one line) when what the run will write does not fit in the space
    free: state.pt and state.prev.pt (three states while one is written), the kept step checkpoints
    (keep_last, one more while the oldest is let go) and best.pt, then an export in paths.exports_dir.
    `weights`: the tensors a state holds, what a checkpoint holds first; `optimizers`: AdamW's."""
    out, export_dir = Path(out), Path(cfg.paths.exports_dir)
    checkpoint = tensor_bytes(weights[0])
    state = sum(tensor_bytes(w) for w in weights) + moments_bytes(optimizers)
    kept = cfg.keep_last or max(cfg.max_steps // max(cfg.save_every, 1), 1)
    present = files_bytes([out / "state.pt", previous_path(out / "state.pt"), *(out / "checkpoints").glob("*.pt")])
    run_need = max(3 * state + (kept + 2) * checkpoint - present, 0)
    export = files_bytes(p for p in Path(model_dir).iterdir() if p.is_file())
    what = (
        f"this run (state.pt + state.prev.pt, three while one is saved, of {human_bytes(state)} each; "
        f"{kept} step checkpoints + best.pt of {human_bytes(checkpoint)} each"
    )
    fix = "free space, lower keep_last, or move paths.runs_dir (and paths.exports_dir) to a disk with room"
    if device_of(out) == device_of(export_dir):
        return check_free_space(out, run_need + export, f"{what}; an export of {human_bytes(export)})", fix)
    fits = check_free_space(out, run_need, f"{what})", fix)
    return check_free_space(export_dir, export, f"its export ({human_bytes(export)})", fix) and fits
