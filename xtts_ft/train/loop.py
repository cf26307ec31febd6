"""The parts of a training stage that are the same for the GPT and the decoder loops: starting a
locked run, refusing to overwrite or to resume a different data path, per-step seeding, weight
checkpoints kept in rotation, TensorBoard set-up and its mel images.

The loops themselves stay in their stage modules (`train_gpt`, `train_decoder`): only what is
truly shared lives here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from xtts_ft.io_utils import torch_save
from xtts_ft.train import runtime as rt

log = logging.getLogger(__name__)


def run_locked(cfg, out: Path, train: Callable[[Any, rt.Runtime, Path], Path]) -> Path:
    """Start the process (one rank under torchrun), hold the run directory's lock on rank 0 and the
    dataset's shared lock on every rank, train."""
    runtime = rt.start(cfg.model.device, cfg.num_threads)
    # train-gpt only: its length-bucketed steps change memory size; the decoder's fixed segments do not.
    if runtime.device.type == "cpu" and cfg.get("keep_freed_memory", False):
        rt.keep_freed_host_memory()
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    try:
        # Every rank reads the dataset (under torchrun on several hosts, each its own copy).
        with rt.DatasetReadLock(data_dir, out), rt.RunLock(out) if runtime.is_main else contextlib.nullcontext():
            return train(cfg, runtime, out)
    finally:
        runtime.close()


def is_done(out: Path, max_steps: int) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    progress = Path(out) / "progress.json"
    return progress.is_file() and json.loads(progress.read_text())["step"] >= max_steps


def check_fresh(state_path: Path, resume: bool) -> None:
    """Refuse to start over a run that exists unless asked to continue it."""
    if state_path.is_file() and not resume:
        out = state_path.parent
        raise FileExistsError(
            f"{out} already holds a training run; resume=true continues it. To start over, delete {out} or choose another run_name."
        )


def start_run_dir(cfg, out: Path, data_dir: Path, is_main: bool) -> dict:
    """Write the resolved config beside the run (rank 0) and return the prepared data's stats,
    which the training state carries into the export."""
    if is_main:
        from omegaconf import OmegaConf

        from xtts_ft.io_utils import write_text

        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    stats_path = Path(data_dir) / "stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    stats.pop("config", None)
    return stats


def warn_slow_bf16(precision: str, device: torch.device) -> None:
    if precision == "bf16" and device.type == "cpu" and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        log.warning(
            "precision=bf16 on a CPU without native bf16 kernels (capability %s): autocast emulates them, "
            "measured ~90x slower than fp32 here. Use precision=fp32 (grad_checkpointing=true saves memory).",
            torch.backends.cpu.get_cpu_capability(),
        )


def position_rng(seed: int, *position: int) -> np.random.Generator:
    """The randomness of one (micro-)batch from its position alone (seed, epoch, batch, ...): it also
    seeds torch (dropout and the like), so a resumed run draws exactly what an uninterrupted one did."""
    rng = np.random.default_rng([seed, *position])
    torch.manual_seed(int(rng.integers(2**62)))
    return rng


def check_sampler_key(state_path: Path, saved: dict, current: dict) -> None:
    """A saved sampler position means something only for the same data path (manifest, batch, seed)."""
    changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if changed:
        raise ValueError(
            f"{state_path} was trained with another data path ("
            + "; ".join(f"{k}: {old} → {new}" for k, (old, new) in changed.items())
            + "): its sampler position means nothing here. Use another run_name, or delete the run to start over."
        )


def load_state(state_path: Path, part: str) -> dict:
    """The training state to resume (`part`: gpt | decoder, what its checkpoints hold). A corrupt or
    truncated state is named, with what can still be saved: the checkpoints hold the weights (and
    what an export records) but no optimizer, scheduler, RNG or sampler position, so resuming from
    one would not continue this run: it is offered for export instead of pretending."""
    from pickle import UnpicklingError

    from xtts_ft.model.loading import check_weights_file

    try:
        check_weights_file(state_path)  # every tensor's CRC: a truncated or altered file fails here
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except ValueError as err:  # check_weights_file's message names the file and the fault
        problem = str(err)
    except (RuntimeError, EOFError, UnpicklingError) as err:
        problem = f"{state_path} cannot be read as a training state ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    raise ValueError(f"{problem}. {salvage(state_path.parent, part)}")


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


def checkpoint_payload(state: dict, part: str) -> dict:
    """What a checkpoint keeps of a training state: the `part` weights and what an export records
    (step, base model, config, data statistics; for the decoder, which GPT it voiced), so that it
    exports on its own even when state.pt is lost; not the optimizer and the rest."""
    keep = (part, "step", "base_model_dir", "config", "data_stats") + (("gpt",) if part == "decoder" else ())
    return {key: state[key] for key in keep if key in state}


def save_checkpoint(checkpoints: Path, step: int, payload: dict, keep_last: int) -> None:
    """checkpoints/step_<step>.pt (written atomically), keeping the last `keep_last` (0: all)."""
    torch_save(payload, checkpoints / f"step_{step:08d}.pt")
    for old in sorted(checkpoints.glob("step_*.pt"))[: -keep_last or None]:
        old.unlink()


def summary_writer(out: Path, step: int):
    from torch.utils.tensorboard import SummaryWriter

    # purge_step: after a crash, events logged past the saved step are dropped, not duplicated.
    return SummaryWriter(str(Path(out) / "tensorboard"), purge_step=step + 1 if step else None)


def manifest_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def mel_image(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """A log-mel spectrogram as a [0, 1] image for TensorBoard (low frequencies at the bottom)."""
    import librosa

    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wav, sr=sample_rate, n_mels=80), ref=np.max, top_db=80)
    return np.flipud((mel + 80) / 80).astype(np.float32).copy()
