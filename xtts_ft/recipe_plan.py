"""A pipeline recipe, read and planned: which stages it runs, each with its composed config.

A recipe (`recipes/<name>/recipe.yaml`, or a variant `recipes/<name>/<variant>.yaml` run as
`recipe=<name>/<variant>`) is a list of `{stage, overrides}`; each stage is composed like
`xtts-ft <stage> overrides...`. Extra overrides given to the pipeline go to every stage whose
config has that key; one that no stage has is an error before anything runs (a typo would
otherwise be dropped silently). The recipe's `outputs` name their places with `${paths.*}`,
resolved as the stages saw them (`output_locations`). A stage that runs again because an earlier one
ran is said to (`stage_heading`): nothing re-runs silently. A recipe that trains the DVAE must train the
GPT after it (`check_gpt_follows_dvae`).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from xtts_ft.config import RECIPES_DIR, STAGES, compose, default_paths
from xtts_ft.errors import BadValue, ConfigValueError, MissingFile, RunRefused

log = logging.getLogger(__name__)


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
    raise MissingFile(f"no recipe {recipe!r}; known recipes: {', '.join(known)}")


def load_recipe(recipe: str) -> dict:
    path = recipe_path(recipe)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise BadValue(f"{path}: `stages` must be a non-empty list of {{stage, overrides}}")
    for i, entry in enumerate(stages):
        if entry.get("stage") not in STAGES or entry["stage"] == "pipeline":
            raise BadValue(f"{path}: stages[{i}].stage={entry.get('stage')!r} is not one of {', '.join(STAGES[:-1])}")
    check_gpt_follows_dvae(path, [entry["stage"] for entry in stages])
    warn_gpt_ignores_dvae(path, stages)
    return spec


def check_gpt_follows_dvae(path: Path, stages: List[str]) -> None:
    """A recipe that trains the DVAE trains the GPT after it (issue 34): a new DVAE changes the codes the
    GPT predicts, so a GPT trained before it (or the base's) would be paired with codes it never learnt."""
    if "train_dvae" not in stages:
        return
    last = len(stages) - 1 - stages[::-1].index("train_dvae")
    if "train_gpt" not in stages[last + 1 :]:
        raise RunRefused(
            f"{path}: stages[{last}] train_dvae has no train_gpt after it, and the GPT must learn the new DVAE's codes",
            fix="add a train_gpt stage after it with dvae=${paths.runs_dir}/<run_name>/dvae (its train-dvae run)",
        )


def warn_gpt_ignores_dvae(path: Path, stages: List[dict]) -> None:
    """A train_gpt after train_dvae without `dvae=` trains on the base's codes: safe (export ships the DVAE the GPT
    trained on) but the trained DVAE is then unused, which is surely not what the recipe meant."""
    names = [entry["stage"] for entry in stages]
    if "train_dvae" not in names:
        return
    first = names.index("train_dvae")
    for i, entry in enumerate(stages[first + 1 :], start=first + 1):
        overrides = [str(o).strip("'\"") for o in entry.get("overrides") or []]
        if entry["stage"] == "train_gpt" and not any(o.startswith("dvae=") for o in overrides):
            log.warning(
                "%s: stages[%d] train_gpt has no dvae= override: it trains on the base's DVAE codes and the DVAE of "
                "stages[%d] goes unused (add dvae=${paths.runs_dir}/<run_name>/dvae, unless the pipeline's "
                "overrides set it)",
                path,
                i,
                first,
            )


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


def output_locations(outputs: dict, planned: List[Tuple[str, List[str], DictConfig]]) -> dict:
    """The recipe's `outputs` with `${paths.*}` resolved as the stages saw them (a paths.* override
    moved the files, so the listing moves with them)."""
    paths = next((c.paths for _, _, c in planned if "paths" in c), default_paths())
    context = OmegaConf.create({"paths": OmegaConf.to_container(paths, resolve=True), "outputs": outputs})
    return OmegaConf.to_container(context, resolve=True)["outputs"]


def stage_heading(stage: str, upstream: Optional[str], was_done: Callable[[], bool]) -> str:
    """The line a pipeline logs before it runs `stage`: with why, when the stage had run already and runs again
    because `upstream`, an earlier stage, ran (so what it made is stale). `was_done` is asked only then."""
    if upstream and was_done():
        return f"── {stage}: runs again, as {upstream} ran before it (its inputs changed)"
    return f"── {stage}"
