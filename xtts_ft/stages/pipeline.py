"""Stage `pipeline`: run a recipe's stages in order, skipping those whose outputs exist.

Once a stage runs, every later stage runs too (its inputs changed).

A recipe (`recipes/<name>/recipe.yaml`, or a variant `recipes/<name>/<variant>.yaml` run as
`recipe=<name>/<variant>`) is a list of `{stage, overrides}`; each stage is
composed like `xtts-ft <stage> overrides...` and run through its plain `run(cfg)`. Extra
overrides given to the pipeline go to every stage whose config has that key; one that no
stage has is an error before anything runs (a typo would otherwise be dropped silently).
The recipe's `outputs`, printed at the end, name their places with `${paths.*}` so that they
are where the stages really wrote.
"""

from __future__ import annotations

import difflib
import json
import shlex
import time
from pathlib import Path
from typing import List, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from xtts_ft import stages
from xtts_ft.config import RECIPES_DIR, STAGES, ConfigValueError, PathsConfig, compose


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
            raise ValueError(
                f"{path}: stages[{i}].stage={entry.get('stage')!r} is not one of {', '.join(STAGES[:-1])}"
            )
    return spec


_ABSENT = object()


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether `key` (dotted, list indices allowed) exists in cfg, even as a required `???` value."""
    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True) is not _ABSENT
    except (MissingMandatoryValue, InterpolationResolutionError):  # there, but not given or not resolvable yet
        return True


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def applicable(override: str, cfg: DictConfig) -> bool:
    """`paths.runs_dir=x` (or the group `model=xtts_v2`) applies to a stage whose config has that key;
    `+a.b=v` also to one that has `a`, where it adds `b`."""
    key = override_key(override)
    if has_key(cfg, key):
        return True
    return override.startswith("+") and "." in key and has_key(cfg, key.rsplit(".", 1)[0])


def all_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Every dotted key of cfg (lists as one key), for suggesting the key a typo meant."""
    keys = []
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            keys += all_keys(node, f"{dotted}.")
    return keys


def check_overrides(recipe: str, overrides: List[str], bases: List[DictConfig]) -> None:
    """An override no stage has would be dropped silently: it is an error naming the close keys."""
    for override in overrides:
        if any(applicable(override, base) for base in bases):
            continue
        known = sorted({key for base in bases for key in all_keys(base)})
        close = difflib.get_close_matches(override_key(override), known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "`xtts-ft <stage> --help` lists a stage's keys"
        raise ConfigValueError(
            f"override {override!r} matches no key of any stage of recipe {recipe!r} — fix: correct the key ({hint})"
        )


def plan(cfg: DictConfig) -> List[Tuple[str, List[str], DictConfig]]:
    """(stage, its overrides, its composed config) for each stage of the recipe, with the pipeline's
    extra overrides where they apply; every override is checked before any stage runs."""
    recipe = load_recipe(cfg.recipe)
    entries = [(entry["stage"], list(entry.get("overrides") or [])) for entry in recipe["stages"]]
    bases = [compose(stage, overrides) for stage, overrides in entries]
    check_overrides(cfg.recipe, list(cfg.overrides), bases)
    planned = []
    for (stage, overrides), base in zip(entries, bases):
        extra = [o for o in cfg.overrides if applicable(o, base)]
        # prepare: rebuild, not "up to date" (unless the recipe or the user set the stage's force themselves)
        if (
            cfg.get("force")
            and "force" in base
            and not any(o.split("=")[0].lstrip("+~") == "force" for o in overrides + extra)
        ):
            extra.append("force=true")
        planned.append((stage, overrides + extra, compose(stage, overrides + extra) if extra else base))
    return planned


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


def output_locations(outputs: dict, planned: List[Tuple[str, List[str], DictConfig]]) -> dict:
    """The recipe's `outputs` with `${paths.*}` resolved as the stages saw them (a paths.* override
    moved the files, so the listing moves with them)."""
    paths = next((c.paths for _, _, c in planned if "paths" in c), OmegaConf.structured(PathsConfig))
    context = OmegaConf.create({"paths": OmegaConf.to_container(paths, resolve=True), "outputs": outputs})
    return OmegaConf.to_container(context, resolve=True)["outputs"]


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
