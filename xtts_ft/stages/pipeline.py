"""Stage `pipeline`: run a recipe's stages in order, skipping those whose outputs exist.

Once a stage runs, every later stage runs too (its inputs changed): a train_dvae that ran makes the
train_gpt after it run again, which warns with the measured code drift when the GPT weights it continues
learnt the old DVAE's codes (and export refuses to ship the new DVAE with them).

The recipe is read and planned by `xtts_ft.recipe_plan`: its stages, each composed like
`xtts-ft <stage> overrides...` with the pipeline's extra overrides where they apply (every
override checked before anything runs). Each stage runs through its plain `run(cfg)`. The
recipe's `outputs`, printed at the end, name their places with `${paths.*}` so that they
are where the stages really wrote.
"""

from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path
from typing import List

from omegaconf import DictConfig, OmegaConf

from xtts_ft import stages
from xtts_ft.recipe_plan import load_recipe, output_locations, plan, recipe_path, stage_heading

log = logging.getLogger(__name__)


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


def summary(report: List[dict]) -> str:
    """The run in one line: each stage that ran and its time, then those done already."""
    ran = [f"{s['stage']} {s['seconds']:.1f} s" for s in report if not s["skipped"]]
    done = [s["stage"] for s in report if s["skipped"]]
    if not ran:
        return f"── nothing to run: {', '.join(done)} done already (force=true re-runs them)"
    line = f"── finished in {sum(s['seconds'] for s in report if not s['skipped']):.1f} s: {', '.join(ran)}"
    return line + (f" (done already: {', '.join(done)})" if done else "")


def run(cfg: DictConfig) -> List[dict]:
    recipe = load_recipe(cfg.recipe)
    planned = plan(cfg)
    report = []
    upstream_ran = False  # once a stage runs, later stages' outputs are stale
    for stage, _, stage_cfg in planned:
        module = stages.load(stage)
        if not cfg.force and not upstream_ran and stage_done(module, stage_cfg):
            log.info(f"── {stage}: done already, skipping (force=true re-runs it)")
            report.append({"stage": stage, "skipped": True})
            continue
        log.info(stage_heading(stage, upstream_ran, lambda: stage_done(module, stage_cfg)))
        started = time.perf_counter()
        module.run(stage_cfg)
        upstream_ran = upstream_ran or stage  # the first stage that ran: what made the later ones stale
        report.append({"stage": stage, "skipped": False, "seconds": round(time.perf_counter() - started, 1)})
    log.info(summary(report))
    if recipe.get("outputs"):
        lines = [f"  {what}:\n    {where}" for what, where in output_locations(recipe["outputs"], planned).items()]
        log.info("\n".join(["outputs:", *lines]))
    if recipe.get("next"):  # what to do with the outputs: commands, their paths where the stages wrote
        steps = [f"  {what}:\n    {command}" for what, command in output_locations(recipe["next"], planned).items()]
        log.info("\n".join(["next:", *steps]))
    return report
