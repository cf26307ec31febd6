"""Stage `pipeline`: run a recipe's stages in order, skipping those whose outputs exist.

Once a stage runs, every later stage runs too (its inputs changed).

The recipe is read and planned by `xtts_ft.recipe_plan`: its stages, each composed like
`xtts-ft <stage> overrides...` with the pipeline's extra overrides where they apply (every
override checked before anything runs). Each stage runs through its plain `run(cfg)`. The
recipe's `outputs`, printed at the end, name their places with `${paths.*}` so that they
are where the stages really wrote.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from xtts_ft import stages
from xtts_ft.recipe_plan import load_recipe, output_locations, plan, recipe_path


def show(cfg: DictConfig, resolve: bool = False) -> str:
    """What `--cfg job` prints: the pipeline's config, then each stage's as it would run."""
    parts = ["# pipeline", OmegaConf.to_yaml(cfg, resolve=resolve)]
    for n, (stage, _, stage_cfg) in enumerate(plan(cfg), start=1):
        parts += [f"# stage {n}: {stage}", OmegaConf.to_yaml(stage_cfg, resolve=resolve)]
    return "\n".join(parts)


def describe(cfg: DictConfig) -> str:
    """What `--info` prints: the recipe file and each stage's command line."""
    recipe = load_recipe(cfg.recipe)
    lines = [f"recipe {cfg.recipe}: {recipe_path(cfg.recipe)}", f"  {recipe.get('description', '')}"]
    for n, (stage, overrides, _) in enumerate(plan(cfg), start=1):
        lines.append(f"  {n}. xtts-ft {stage.replace('_', '-')} {shlex.join(overrides)}")
    return "\n".join(lines)


def stage_done(module, cfg: DictConfig) -> bool:
    if hasattr(module, "is_done"):
        return module.is_done(cfg)
    return all(Path(p).exists() for p in module.outputs(cfg))


def run(cfg: DictConfig) -> List[dict]:
    recipe = load_recipe(cfg.recipe)
    planned = plan(cfg)
    report = []
    upstream_ran = False  # once a stage runs, later stages' outputs are stale
    for stage, _, stage_cfg in planned:
        module = stages.load(stage)
        if not cfg.force and not upstream_ran and stage_done(module, stage_cfg):
            print(f"── {stage}: done already, skipping (force=true re-runs it)")
            report.append({"stage": stage, "skipped": True})
            continue
        print(f"── {stage}")
        started = time.perf_counter()
        module.run(stage_cfg)
        upstream_ran = True
        report.append({"stage": stage, "skipped": False, "seconds": round(time.perf_counter() - started, 1)})
    print("pipeline:", json.dumps(report))
    if recipe.get("outputs"):
        print("\noutputs:")
        for what, where in output_locations(recipe["outputs"], planned).items():
            print(f"  {what}:\n    {where}")
    return report
