import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from xtts_ft.config import CONF_DIR, SCHEMAS, STAGES, compose


@pytest.mark.parametrize("stage", [s for s in STAGES])
def test_every_stage_composes_from_its_yaml(stage):
    cfg = compose(stage)
    assert len(cfg) > 0


def test_groups_select_model_and_data():
    cfg = compose("train_gpt", ["model=xtts_v2", "data=ljspeech", "max_steps=7"])
    assert cfg.model.source == "coqui/XTTS-v2"
    assert cfg.model.build_tiny is False
    assert cfg.data.sources[0].formatter == "ljspeech"
    assert cfg.max_steps == 7
    assert cfg.run_name == "ljspeech"  # interpolated from data.name


def test_typo_in_override_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose("train_gpt", ["max_step=7"])


def test_a_typo_added_with_plus_is_rejected_too():
    """Hydra's own message for a typo suggests `+max_step=7`, which it then adds: the stage ignored it."""
    from xtts_ft.config import ConfigValueError

    with pytest.raises(
        ConfigValueError, match=r"max_step is not a setting of train_gpt — fix: did you mean max_steps=\.\.\.\?"
    ):
        compose("train_gpt", ["+max_step=7"])
    assert compose("train_gpt", ["+language_weights={en: 0.2}"]).language_weights == {
        "en": 0.2
    }  # a setting's new entries: fine


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose("train_gpt", ["max_steps=many"])


def test_required_keys_are_missing_until_given():
    cfg = compose("synth")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.checkpoint


def test_a_home_folder_path_is_expanded_and_a_text_is_not(tmp_path):
    """`~` reaches Hydra quoted (or from a YAML file): a folder named `~` in the current directory was made."""
    from pathlib import Path

    cfg = compose(
        "prepare",
        [
            'paths.processed_dir="~/proc"',
            "data.name=x",
            'data.sources=[{path: "~/corpus", formatter: ljspeech, language: en}]',
        ],
    )
    assert cfg.paths.processed_dir == str(Path.home() / "proc") and cfg.data.sources[0].path == str(
        Path.home() / "corpus"
    )
    assert compose("synth", ['text="~/not a path"']).text == "~/not a path"
    assert compose("synth", ['checkpoint="~/exports/mine"']).checkpoint == str(Path.home() / "exports" / "mine")


def test_a_value_no_stage_can_run_with_is_refused_when_composed():
    from xtts_ft.config import ConfigValueError

    # Was: "trains the GPT for 0 steps" and exit 0.
    with pytest.raises(
        ConfigValueError, match=r"max_steps=-5 is not an integer ≥ 1 — fix: max_steps=<an integer ≥ 1>"
    ):
        compose("train_gpt", ["max_steps=-5"])
    with pytest.raises(ConfigValueError, match="precision=fp64 .* one of fp32, bf16, fp16"):
        compose("train_decoder", ["precision=fp64"])
    with pytest.raises(ConfigValueError, match="eval_fraction=1.5"):
        compose("prepare", ["eval_fraction=1.5"])
    with pytest.raises(ConfigValueError, match="decoding.top_p=0.0"):
        compose("synth", ["decoding.top_p=0"])
    with pytest.raises(ConfigValueError, match="segment_samples=1000 .* multiple of 256"):
        compose("train_decoder", ["segment_samples=1000"])
    with pytest.raises(ConfigValueError, match=r"min_seconds=12.0 is above max_seconds=11.6 — fix"):
        compose("prepare", ["min_seconds=12"])
    with pytest.raises(ConfigValueError, match="port=0"):
        compose("web", ["port=0"])


def test_edge_values_that_mean_something_are_accepted():
    cfg = compose("train_gpt", ["max_steps=1", "eval_every=0", "keep_last=0", "warmup_steps=0"])
    assert (cfg.max_steps, cfg.eval_every, cfg.keep_last) == (1, 0, 0)
    assert compose("synth", ["decoding.temperature=null"]).decoding.temperature is None  # unset: the model's value


# --- the stage YAMLs show the schema's defaults, and composing is unchanged by them ------------


def stage_yaml(stage: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{stage}.yaml"), resolve=False)


def values_that_differ(shown: dict, defaults: dict, prefix: str = "") -> list:
    """(key, shown value, default) for every value `shown` sets that is not the default (or not a key)."""
    differ = []
    for key, value in shown.items():
        if key not in defaults:
            differ.append((prefix + key, value, "<no such key in the schema>"))
        elif isinstance(value, dict) and value and isinstance(defaults[key], dict):
            differ += values_that_differ(value, defaults[key], f"{prefix}{key}.")
        elif value != defaults[key]:
            differ.append((prefix + key, value, defaults[key]))
    return differ


@pytest.mark.parametrize("stage", STAGES)
def test_every_value_a_stage_yaml_shows_is_its_schema_default(stage):
    shown = stage_yaml(stage)
    defaults_list = shown.pop("defaults")
    assert defaults_list[0] == f"{stage}_schema" and defaults_list[-1] == "_self_"  # the YAML's values merge last
    assert shown, f"conf/{stage}.yaml shows no knob"
    schema = OmegaConf.to_container(OmegaConf.structured(SCHEMAS[stage]), resolve=False)
    assert values_that_differ(shown, schema) == []


@pytest.mark.parametrize("stage", STAGES)
def test_composing_a_stage_gives_its_schema_defaults_merged_with_its_groups(stage):
    expected = OmegaConf.structured(SCHEMAS[stage])
    for entry in stage_yaml(stage)["defaults"]:
        if isinstance(entry, dict):  # a group: {data: demo}
            ((group, option),) = entry.items()
            expected = OmegaConf.merge(expected, {group: OmegaConf.load(CONF_DIR / group / f"{option}.yaml")})
    # As YAML text: the same keys, values and key order (the order the config is saved in).
    assert OmegaConf.to_yaml(compose(stage)) == OmegaConf.to_yaml(expected)
