"""Stage `pipeline`: run a recipe's stages in order, skipping those whose outputs exist.

Once a stage runs, every later stage runs too (its inputs changed).

A recipe (`recipes/<name>/recipe.yaml`, or a variant `recipes/<name>/<variant>.yaml` run as
`recipe=<name>/<variant>`) is a list of `{stage, overrides}`; each stage is
composed like `xtts-ft <stage> overrides...` and run through its plain `run(cfg)`. Extra
overrides given to the pipeline go to every stage whose config has that key.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import List

import yaml
from omegaconf import DictConfig

from xtts_ft.config import RECIPES_DIR, STAGES, compose

def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        candidates = [path]
    else:  # a recipe folder, or a variant inside one: recipe=wolof/tiny → recipes/wolof/tiny.yaml
        candidates = [path / "recipe.yaml", RECIPES_DIR / recipe / "recipe.yaml", RECIPES_DIR / f"{recipe}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.name for p in RECIPES_DIR.iterdir() if (p / "recipe.yaml").is_file())
    known += sorted(f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml") if p.name != "recipe.yaml")
    raise FileNotFoundError(f"no recipe {recipe!r}; known recipes: {', '.join(known)}")


def load_recipe(recipe: str) -> dict:
    path = recipe_path(recipe)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ValueError(f"{path}: `stages` must be a non-empty list of {{stage, overrides}}")
    for i, entry in enumerate(stages):
        if entry.get("stage") not in STAGES or entry["stage"] == "pipeline":
            raise ValueError(f"{path}: stages[{i}].stage={entry.get('stage')!r} is not one of {', '.join(STAGES[:-1])}")
    return spec


def applicable(override: str, cfg: DictConfig) -> bool:
    """`paths.runs_dir=x` or `model=xtts_v2` applies to a stage whose config has `paths` / `model`."""
    return override.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in cfg


def stage_done(module, cfg: DictConfig) -> bool:
    if hasattr(module, "is_done"):
        return module.is_done(cfg)
    return all(Path(p).exists() for p in module.outputs(cfg))


def run(cfg: DictConfig) -> List[dict]:
    recipe = load_recipe(cfg.recipe)
    report = []
    upstream_ran = False  # once a stage runs, later stages' outputs are stale
    for entry in recipe["stages"]:
        stage = entry["stage"]
        overrides = list(entry.get("overrides") or [])
        base = compose(stage, overrides)
        extra = [o for o in cfg.overrides if applicable(o, base)]
        stage_cfg = compose(stage, overrides + extra) if extra else base
        module = importlib.import_module(f"xtts_ft.{stage}")
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
        for what, where in recipe["outputs"].items():
            print(f"  {what}:\n    {where}")
    return report
