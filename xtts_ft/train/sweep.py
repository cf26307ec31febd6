"""How a Hydra multirun of a training verb names its runs: `xtts-ft train-gpt -m lr=1e-5,5e-6
lora.rank=8,16` runs four jobs (Hydra's basic launcher, or hydra/launcher=slurm|local), and each
job gets its own run directory named from the values it sweeps,

    <runs_dir>/<run_name>-sweep/lora.rank-8_lr-1e-5/gpt/

so no two jobs share a run lock, a state or a TensorBoard folder, and running the same sweep again
resumes each run. The name is Hydra's `${hydra:job.override_dirname}` over the swept keys only (the
overrides every job shares, paths and data among them, stay out of it); `-` joins a key and its
value and `_` the pairs, so the name needs no quoting in a later override (`run_name=...`,
`checkpoints=[...]`) or in a shell.
"""

from __future__ import annotations

import math
from typing import Any, List

from xtts_ft.errors import RunRefused

TRAINING_VERBS = ("train-gpt", "train-decoder", "train-dvae")
SWEEP_SUFFIX = "-sweep"
KEY_VALUE_SEPARATOR, PAIR_SEPARATOR = "-", "_"


def sweep_run_overrides(verb: str, overrides: List[str]) -> List[str]:
    """The overrides of a training multirun with each job's run_name made its own: `run_name=<the
    run_name given, or ${data.name}>-sweep/${hydra:job.override_dirname}` in place of any run_name
    given, and Hydra's override_dirname told to name the swept keys alone. Unchanged for another verb,
    for a multirun that sweeps nothing (one job) and for one that names its jobs itself (run_name swept,
    or interpolating a swept value: `'run_name=lr${lr}'`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if verb not in TRAINING_VERBS:
        return overrides
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group for o in parsed if o.is_sweep_override() and not o.is_hydra_override()}
    given = [o for o in parsed if o.key_or_group == "run_name"]
    if not swept or "run_name" in swept or any("${" in str(o.value()) for o in given):
        return overrides  # one job, or the user names each job (run_name=a,b or run_name=lr${lr})
    base = given[-1].value() if given else "${data.name}"
    shared = sorted({o.key_or_group for o in parsed if o.key_or_group not in swept} | {"run_name"})
    kept = [line for line, o in zip(overrides, parsed) if o.key_or_group != "run_name"]
    dirname = "hydra.job.config.override_dirname"
    return [
        *kept,
        f"run_name={base}{SWEEP_SUFFIX}/${{hydra:job.override_dirname}}",
        f"{dirname}.exclude_keys=[{','.join(repr(key) for key in shared)}]",
        f"{dirname}.kv_sep={KEY_VALUE_SEPARATOR}",
        f"{dirname}.item_sep={PAIR_SEPARATOR}",
    ]


def job_value(stage: str, result: Any) -> Any:
    """What a job returns to its sweeper: under an Optuna sweeper (`hydra/sweeper=eval_loss`) a train-gpt
    job returns its run's best eval score (the eval loss, or the CER with best_metric=cer) for Optuna to
    minimise; any other job returns what its stage returned."""
    from hydra.core.hydra_config import HydraConfig

    if stage != "train_gpt" or not HydraConfig.initialized():
        return result
    if "optuna" not in str(HydraConfig.get().sweeper.get("_target_", "")).lower():
        return result
    import torch

    # mmap: the score without reading the weights and the optimizer's moments.
    best = float(torch.load(result, map_location="cpu", weights_only=True, mmap=True)["best_eval_loss"])
    if not math.isfinite(best):
        raise RunRefused(
            f"{result} has no eval score for the Optuna sweep to minimise",
            fix="eval_every=<steps> (at most max_steps) with a prepared eval set",
        )
    return best
