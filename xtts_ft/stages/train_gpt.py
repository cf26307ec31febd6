"""Stage `train-gpt`: fine-tune the XTTS GPT on a prepared manifest.

The stage checks the settings and runs the recipe (`xtts_ft.train.gpt.GptRecipe`: set-up, resume,
the loop, evals, checkpoints) under the run directory's lock. It writes runs/<run_name>/gpt/:
state.pt (everything resume needs), progress.json, checkpoints/step_*.pt and best.pt (the best
eval by `best_metric`), tensorboard/, config.yaml. `export` turns the run into a model.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from xtts_ft.train import rundir
from xtts_ft.train import runtime as rt
from xtts_ft.train.gpt import GptRecipe, check_best_metric, check_checkpointing, check_method


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "gpt"


def is_done(cfg: DictConfig) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    return rundir.is_done(run_dir(cfg), cfg.max_steps)


def run(cfg: DictConfig) -> Path:
    """Train (or continue) the run; returns its state.pt."""
    check_best_metric(cfg)
    check_method(cfg)
    check_checkpointing(cfg)
    return rundir.run_locked(cfg, run_dir(cfg), train)


def train(cfg: DictConfig, runtime: rt.Runtime, out: Path) -> Path:
    """The recipe from set-up to clean-up, in one process (what `run` holds the locks for)."""
    recipe = GptRecipe(runtime, out)
    try:
        recipe.setup(cfg)
        recipe.load_state()
        return recipe.train()
    finally:
        recipe.cleanup()
