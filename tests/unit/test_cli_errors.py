"""The CLI's answer to a mistake on the command line: one line, `error: … — fix: …`, a near name where
there is one, exit status 1, for every verb (issue 31, item 5). In-process (cli.main) but for one
subprocess run that checks the exit status and that nothing else is printed."""

import subprocess
import sys

import pytest

from xtts_ft import cli
from xtts_ft.config import ConfigValueError, compose

STAGE_VERBS = [verb for verb in cli.VERBS if verb not in ("pipeline", "demo")]


def one_error_line(capsys, monkeypatch, argv: list) -> str:
    """Run `xtts-ft <argv>` in-process (nothing can run: `--cfg job`) and return its one stderr line."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the stage verbs hand Hydra their arguments through it
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--cfg", "job"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert stop.value.code == 1, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert lines[0].count(" — fix: ") == 1 and "<verb>" not in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        # Hydra said "Could not override 'max_step'. To append to your config use +max_step=5".
        (["train-gpt", "max_step=5"], "max_step is not a setting of train-gpt — fix: did you mean max_steps?"),
        (["train-gpt", "max_steps=abc"], "max_steps=abc is not an integer — fix: max_steps=<an integer>"),
        (["train-gpt", "lr=fast"], "lr=fast is not a number — fix: lr=<a number>"),
        (
            ["train-gpt", "data=demmo"],
            "there is no data option 'demmo' — fix: did you mean data=demo? the options: demo,",
        ),
        (["synth", "decoding.temprature=0.5"], "fix: did you mean decoding.temperature?"),
        (["synth", "temprature=0.5"], "fix: did you mean decoding.temperature?"),  # a nested key, named at the top
        (["train-gpt", "model.sourc=x"], "fix: did you mean model.source?"),
        (["train-gpt", "datta=demo"], "fix: did you mean data?"),
        (["prepare", "data.sources=[{path: a, languag: en}]"], "languag is not a key of an entry of data.sources"),
        (["train-gpt", "+max_steps=3"], "fix: drop the +: max_steps=..."),
        (["train-gpt", "+max_step=5"], "max_step is not a setting of train-gpt — fix: did you mean max_steps=...?"),
        (["train-gpt", "lr=[fast"], "cannot read the override 'lr=[fast'"),
        (["train-gpt", "-m", "lr=1e-5,fast"], "lr=fast is not a number"),  # every value of a sweep is checked
        (
            ["train-gpt", "-m", "max_steps=1,-5"],
            "max_steps=-5 is not an integer ≥ 1 — fix: max_steps=<an integer ≥ 1>",
        ),
        (["demo", "lr=fast"], "lr=fast is not a number"),  # the pipeline composes its stages the same way
    ],
)
def test_an_override_mistake_is_one_line_with_a_near_name(argv, expected, capsys, monkeypatch):
    assert expected in one_error_line(capsys, monkeypatch, argv)


@pytest.mark.parametrize("verb", STAGE_VERBS)
def test_every_stage_verb_answers_an_unknown_key_in_one_line(verb, capsys, monkeypatch):
    """Read from the verb table, so a verb added later is held to it too."""
    line = one_error_line(capsys, monkeypatch, [verb, "no_such_setting=1"])
    assert line.startswith(f"error: no_such_setting is not a setting of {verb} — fix: "), line


def test_a_misspelt_verb_gets_did_you_mean(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["trian-gpt", "data=demo"])
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 1
    assert line.startswith("error: unknown verb 'trian-gpt' — fix: did you mean train-gpt?"), line
    assert "did you mean" not in cli.unknown_verb("zzzzzz") and "xtts-ft --help" in cli.unknown_verb("zzzzzz")


def test_what_hydra_takes_legitimately_still_composes():
    """`+key=` adding an entry of a mapping, Hydra's own settings and groups, and a multirun's sweeps."""
    cli.check_overrides("train_gpt", ["+language_weights={en: 0.2}", "hydra.run.dir=/tmp/x", "hydra.job.chdir=false"])
    cli.check_overrides("train_gpt", ["hydra/launcher=submitit_local", "data=ljspeech", "model=xtts_v2"])
    cli.check_overrides("train_gpt", ["lr=1e-5,1e-4", "data=demo,ljspeech", "seed=range(0,3)"], multirun=True)
    # Every value of every sweep is composed once, not every combination.
    assert cli.sweep_runs(["lr=1e-5,1e-4", "data=demo,ljspeech,wolof", "seed=1"]) == [
        ["lr=1e-05", "data=demo", "seed=1"],
        ["lr=0.0001", "data=ljspeech", "seed=1"],
        ["lr=1e-05", "data=wolof", "seed=1"],
    ]
    assert cli.sweep_runs(["lr=interval(1e-6,1e-4)", "seed=1"]) == [["seed=1"]]  # Optuna's: left to Hydra


def test_compose_says_the_same_and_is_still_hydras_exception():
    """Notebooks and the pipeline compose through xtts_ft.config.compose: the same words; a caller that
    catches Hydra's ConfigCompositionException still does."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigValueError) as raised:
        compose("train_gpt", ["max_step=5"])
    assert isinstance(raised.value, ConfigCompositionException)
    assert raised.value.fix.startswith("did you mean max_steps?")


def test_the_exit_status_is_1_and_nothing_else_is_printed(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "xtts_ft.cli", "train-gpt", "data=demo", "max_step=5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: max_step is not a setting of train-gpt — fix: did you mean max_steps? "
        "(`xtts-ft train-gpt --help` lists the settings)"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing ran: no runs/.hydra either
