"""`extend`'s closing hint teaches what the README and docs/extend.md teach, `model=extended`, as a
command that composes to the base extend just wrote (issue 31, item 9; it said
`model.source=... model.build_tiny=false`)."""

import shlex
from pathlib import Path

import pytest

from xtts_ft.config import compose
from xtts_ft.stages import extend


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "xtts-ft train-gpt data=wolof_demo model=extended"),
        (
            ["paths.models_dir=/scratch/models"],
            "xtts-ft train-gpt data=wolof_demo model=extended paths.models_dir=/scratch/models",
        ),
        (["out_dir=/elsewhere/wo"], "xtts-ft train-gpt data=wolof_demo model=extended model.source=/elsewhere/wo"),
    ],
)
def test_the_hint_is_model_extended_and_trains_on_what_extend_wrote(overrides, expected):
    cfg = compose("extend", ["data=wolof_demo", "model=tiny", *overrides])
    out = extend.output_dir(cfg)
    command = extend.training_command(cfg, out)
    assert command == expected
    trained = compose("train_gpt", shlex.split(command)[2:])
    assert Path(trained.model.source) == out and trained.model.build_tiny is False
    assert trained.data.name == cfg.data.name


def test_the_docs_say_the_same():
    from tests.helpers.settings import REPO

    assert "model=extended" in (REPO / "docs" / "extend.md").read_text(encoding="utf-8")
    assert "model=extended" in extend.__doc__ and "model.build_tiny" not in extend.__doc__
