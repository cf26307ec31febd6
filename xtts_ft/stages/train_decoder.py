"""Stage `train-decoder`: fine-tune XTTS's HiFiGAN decoder on the latents of a GPT (the run's own
train-gpt result, the base's, or a given state/checkpoint) → the 24 kHz audio of the prepared clips.

The stage runs the recipe (`xtts_ft.train.decoder.DecoderRecipe`: set-up, resume, the loop with
its discriminator and generator steps, evals, checkpoints) under the run directory's lock. It
writes runs/<run_name>/decoder/: state.pt (everything resume needs, discriminator included),
progress.json, checkpoints/step_*.pt and best.pt (generator weights), tensorboard/, config.yaml.
`export` puts the decoder into the model it writes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from xtts_ft.train import rundir
from xtts_ft.train import runtime as rt
from xtts_ft.train.decoder import DecoderRecipe


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "decoder"


def is_done(cfg: DictConfig) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    return rundir.is_done(run_dir(cfg), cfg.max_steps)


def run(cfg: DictConfig) -> Path:
    """Train (or continue) the run; returns its state.pt."""
    return rundir.run_locked(cfg, run_dir(cfg), train)


def train(cfg: DictConfig, runtime: rt.Runtime, out: Path) -> Path:
    """The recipe from set-up to clean-up, in one process (what `run` holds the locks for)."""
    recipe = DecoderRecipe(runtime, out)
    try:
        recipe.setup(cfg)
        recipe.load_state()
        return recipe.train()
    finally:
        recipe.cleanup()
