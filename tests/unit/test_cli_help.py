"""`xtts-ft <verb> --help`: our own page per verb, not Hydra's stock one (issue 31, item 10): every
setting with its type, default and what it does, the groups with their options, two example commands
that compose. The descriptions have one source, the comment beside each default in conf/*.yaml."""

import sys

import pytest
from omegaconf import OmegaConf

from xtts_ft import cli
from xtts_ft.config import SCHEMAS, compose, schema_settings, setting_descriptions, type_name, validate

STAGE_VERBS = [verb for verb in cli.VERBS if verb not in ("pipeline", "demo")]


def help_page(verb: str, capsys, monkeypatch) -> str:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    cli.main([verb, "--help"])  # returns: no SystemExit, nothing composed by Hydra
    return capsys.readouterr().out


@pytest.mark.parametrize("stage", list(SCHEMAS))
def test_every_setting_of_every_stage_has_a_description(stage):
    """The comment beside a default in conf/*.yaml is the setting's description: a setting added without
    one fails here."""
    descriptions = setting_descriptions(stage)
    undescribed = [key for key in schema_settings(SCHEMAS[stage]) if not descriptions.get(key, "").strip()]
    assert undescribed == [], f"{stage}: give these a comment beside their default in conf/: {undescribed}"


@pytest.mark.parametrize("verb", STAGE_VERBS)
def test_a_verbs_help_lists_each_setting_with_type_default_and_description(verb, capsys, monkeypatch):
    page = help_page(verb, capsys, monkeypatch)
    stage = verb.replace("-", "_")
    assert "powered by Hydra" not in page and page.startswith(f"usage: xtts-ft {verb} ")
    composed = OmegaConf.to_container(compose(stage), resolve=False)
    descriptions = setting_descriptions(stage)
    for key, hint in schema_settings(SCHEMAS[stage]).items():
        line = next((line for line in page.splitlines() if line.startswith(f"  {key}: ")), None)
        assert line is not None, f"{key} is not on `xtts-ft {verb} --help`"
        assert line.startswith(f"  {key}: {type_name(hint)} = "), line
        value = composed
        for part in key.split("."):
            value = value[part]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert line.endswith(f" = {value}"), line
        first_words = " ".join(descriptions[key].split()[:4])
        assert first_words in " ".join(page.split()), (key, first_words)


def test_the_help_names_the_groups_and_their_options(capsys, monkeypatch):
    page = help_page("train-gpt", capsys, monkeypatch)
    assert "  data=NAME  demo (default), emotion, emotion_demo, ljspeech, wolof, wolof_demo" in page
    assert "  model=NAME  extended, tiny (default), xtts_v2" in page
    assert "  max_steps: int = 1000\n      optimizer steps\n" in page
    assert "  model.revision: str or null = null\n" in page and "  run_name: str = ${data.name}\n" in page
    assert "each entry takes: path, formatter, language," in page  # data.sources' entries
    assert "data=NAME" not in help_page("synth", capsys, monkeypatch)  # synth has no group


@pytest.mark.parametrize("verb", STAGE_VERBS)
def test_a_verbs_two_examples_are_commands_that_compose(verb, capsys, monkeypatch):
    import shlex

    examples = cli.stage_examples(verb)
    assert len(examples) == 2, f"give {verb} two examples in xtts_ft/cli.py EXAMPLES"
    page = help_page(verb, capsys, monkeypatch)
    for example in examples:
        assert f"  {example}\n" in page
        words = shlex.split(example)
        assert words[:2] == ["xtts-ft", verb], example
        cfg = validate(compose(verb, words[2:]), verb.replace("-", "_"))
        assert OmegaConf.missing_keys(cfg) == set(), (example, OmegaConf.missing_keys(cfg))


def test_the_top_level_help_lists_every_verb_in_one_line_each(capsys):
    cli.main(["--help"])
    listed = capsys.readouterr().out.split("verbs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == list(cli.VERBS)
    assert all(len(line.split()) > 2 for line in listed)


def test_hydras_own_help_is_still_there(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    with pytest.raises(SystemExit) as stop:
        cli.main(["synth", "--hydra-help"])
    assert stop.value.code in (0, None) and "Hydra (" in capsys.readouterr().out


def test_a_descriptions_comment_lines_and_section_titles(tmp_path):
    """The comment after a key, and the lines directly above it; a section's title is not a description."""
    from xtts_ft.config import yaml_comments

    conf = tmp_path / "x.yaml"
    conf.write_text(
        "# A stage.\ndefaults:\n  - x_schema\n\n# Optimisation.\nlr: 1.0  # the rate\n"
        "# Above it,\n# in two lines.\nseed: 0\ntext: 'a # b'  # not the # in quotes\n"
        "part:\n  key: 1  # nested\n"
    )
    found = yaml_comments(conf)
    assert found["lr"] == "the rate" and found["seed"] == "Above it, in two lines."
    assert found["text"] == "not the # in quotes" and found["part.key"] == "nested"
