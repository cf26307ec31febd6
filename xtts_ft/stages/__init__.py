"""The stages: one thin module per CLI verb (compose the config, call the library, write the
outputs), each with a plain `run(cfg)` for the CLI, the pipeline, notebooks and tests.

A stage never imports another stage. The CLI and the pipeline reach a stage by its name, through
`load`, never by a static import.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from xtts_ft.config import STAGES
from xtts_ft.errors import BadValue


def load(name: str) -> ModuleType:
    """The module of stage `name` (`train_gpt` or `train-gpt`)."""
    stage = name.replace("-", "_")
    if stage not in STAGES:
        raise BadValue(f"unknown stage {name!r}", fix=f"choose one of {', '.join(STAGES)}")
    return importlib.import_module(f"xtts_ft.stages.{stage}")
