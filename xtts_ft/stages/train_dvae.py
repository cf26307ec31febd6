"""Stage `train-dvae`: fine-tune XTTS's DVAE (mel → audio codes) on a prepared manifest, measuring at every
eval how far its codes drift from the base DVAE's (what a GPT trained on the base's codes depends on).

The stage checks the settings and runs the recipe (`xtts_ft.train.dvae.DvaeRecipe`: set-up, resume, the
loop, evals, checkpoints) under the run directory's lock. It writes runs/<run_name>/dvae/: state.pt
(everything resume needs), progress.json, checkpoints/step_*.pt and best.pt, tensorboard/, config.yaml,
and the product: dvae.pth, mel_stats.pth and dvae.json (the latest eval's code drift, reconstruction loss and
codebook use, the base's beside them). `train-gpt dvae=<this directory>` trains a GPT on its codes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from xtts_ft.train import rundir
from xtts_ft.train import runtime as rt
from xtts_ft.train.dvae import DvaeRecipe, check_settings


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "dvae"


def is_done(cfg: DictConfig) -> bool:
    """The run reached max_steps and its product is complete (a killed or shorter run is not done: it resumes)."""
    return rundir.is_done(run_dir(cfg), cfg.max_steps) and (run_dir(cfg) / "dvae.json").is_file()


def run(cfg: DictConfig) -> Path:
    """Train (or continue) the run; returns its directory (the product: dvae.pth, mel_stats.pth, dvae.json)."""
    check_settings(cfg)
    return rundir.run_locked(cfg, run_dir(cfg), train)


def train(cfg: DictConfig, runtime: rt.Runtime, out: Path) -> Path:
    """The recipe from set-up to clean-up, in one process (what `run` holds the locks for)."""
    recipe = DvaeRecipe(runtime, out)
    try:
        recipe.setup(cfg)
        recipe.load_state()
        return recipe.train()
    finally:
        recipe.cleanup()
