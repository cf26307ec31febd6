import dataclasses
import typing

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from xtts_ft.config import CONF_DIR, SCHEMAS, STAGES, ColumnsConfig, SourceConfig, compose


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

    with pytest.raises(ConfigValueError, match=r"^max_step is not a setting of train-gpt$") as raised:
        compose("train_gpt", ["+max_step=7"])
    assert raised.value.fix == "did you mean max_steps=...?"
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
    with pytest.raises(ConfigValueError, match=r"^max_steps=-5 is not an integer ≥ 1$") as raised:
        compose("train_gpt", ["max_steps=-5"])
    assert raised.value.fix == "max_steps=<an integer ≥ 1>"  # the fix in `fix`, not in the message's prose
    with pytest.raises(ConfigValueError, match="precision=fp64 .* one of fp32, bf16, fp16"):
        compose("train_decoder", ["precision=fp64"])
    with pytest.raises(ConfigValueError, match="eval_fraction=1.5"):
        compose("prepare", ["eval_fraction=1.5"])
    with pytest.raises(ConfigValueError, match="decoding.top_p=0.0"):
        compose("synth", ["decoding.top_p=0"])
    with pytest.raises(ConfigValueError, match="segment_samples=1000 .* multiple of 256"):
        compose("train_decoder", ["segment_samples=1000"])
    with pytest.raises(ConfigValueError, match=r"min_seconds=12.0 is above max_seconds=11.6") as raised:
        compose("prepare", ["min_seconds=12"])
    assert raised.value.fix == "make min_seconds ≤ max_seconds"
    with pytest.raises(ConfigValueError, match="port=0"):
        compose("web", ["port=0"])


def test_edge_values_that_mean_something_are_accepted():
    cfg = compose("train_gpt", ["max_steps=1", "eval_every=0", "keep_last=0", "warmup_steps=0"])
    assert (cfg.max_steps, cfg.eval_every, cfg.keep_last) == (1, 0, 0)
    assert compose("synth", ["decoding.temperature=null"]).decoding.temperature is None  # unset: the model's value


# --- each value in one place: the YAML holds it, the schema only its type -----------------------

LIST_ENTRY_TYPES = (SourceConfig, ColumnsConfig)  # a list entry takes its defaults from its type: no YAML can


def stage_yaml(stage: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{stage}.yaml"), resolve=False)


def leaves(node: dict, prefix: str = "") -> dict:
    """{dotted key: value} of every value a YAML file sets (a non-empty mapping is walked into)."""
    found = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            found.update(leaves(value, f"{prefix}{key}."))
        else:
            found[prefix + key] = value
    return found


def schema_fields(schema: type, prefix: str = ""):
    """(dotted key, field, its type) for every field of a schema and of the parts nested in it."""
    hints = typing.get_type_hints(schema)
    for item in dataclasses.fields(schema):
        yield prefix + item.name, item, hints[item.name]
        if dataclasses.is_dataclass(hints[item.name]):
            yield from schema_fields(hints[item.name], f"{prefix}{item.name}.")


@pytest.mark.parametrize("stage", STAGES)
def test_the_schema_holds_types_and_no_value(stage):
    """A default written in the dataclass would be a second copy of the YAML's (or one the YAML hides)."""
    with_a_value = []
    for key, item, kind in schema_fields(SCHEMAS[stage]):
        if dataclasses.is_dataclass(kind):  # a nested part: its own fields are checked
            assert item.default_factory is kind, key
        elif item.default is not MISSING or item.default_factory is not dataclasses.MISSING:
            with_a_value.append(key)
        if typing.get_origin(kind) is list and dataclasses.is_dataclass(typing.get_args(kind)[0]):
            assert typing.get_args(kind)[0] in LIST_ENTRY_TYPES, key  # whose defaults stay in the schema
    assert with_a_value == []


@pytest.mark.parametrize("stage", STAGES)
def test_every_setting_gets_its_value_from_the_yaml(stage):
    """The schema gives no value, so a key no YAML sets would compose as `???`: the only keys left
    missing are the ones conf/<stage>.yaml marks required."""
    required = {key for key, value in leaves(stage_yaml(stage)).items() if value == "???"}
    assert missing_keys(OmegaConf.to_container(compose(stage), resolve=False)) == required


def missing_keys(node, prefix: str = "") -> set:
    """The dotted keys whose value is `???`, inside lists too (not resolving interpolations)."""
    if node == "???":
        return {prefix}
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return {key for name, child in items for key in missing_keys(child, f"{prefix}.{name}" if prefix else str(name))}


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_yaml_merges_into_its_schema_and_sets_each_value_once(stage):
    shown = stage_yaml(stage)
    defaults_list = shown.pop("defaults")
    assert defaults_list[0] == f"{stage}_schema" and defaults_list[-1] == "_self_"  # the YAML's values merge last
    assert shown, f"conf/{stage}.yaml shows no setting"
    # A shared part (paths.yaml, decoding.yaml, <group>_defaults.yaml) comes before the group option it
    # completes, so that the option's own values win.
    included = [entry for entry in defaults_list[1:-1] if isinstance(entry, str)]
    for position, entry in enumerate(defaults_list):
        if isinstance(entry, dict):  # a group: {data: demo}
            ((group, _),) = entry.items()
            assert defaults_list.index(f"{group}_defaults") < position
    # No key is set by two of the files a stage is made of.
    seen = {}
    for name, node in [(f"{stage}.yaml", shown)] + [(f"{part}.yaml", load_conf(part)) for part in included]:
        for key in leaves(node):
            assert key not in seen, f"{key} is set in both {seen[key]} and {name}"
            seen[key] = name


def load_conf(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{name}.yaml"), resolve=False)


@pytest.mark.parametrize("group", ["data", "model"])
def test_a_group_option_sets_only_what_differs_from_its_defaults(group):
    defaults = leaves(load_conf(f"{group}_defaults")[group])
    for option in sorted((CONF_DIR / group).glob("*.yaml")):
        repeated = {k: v for k, v in leaves(load_conf(f"{group}/{option.stem}")).items() if defaults.get(k, "?") == v}
        assert repeated == {}, f"conf/{group}/{option.name} repeats conf/{group}_defaults.yaml"


def test_values_named_elsewhere_agree():
    from xtts_ft.config import default_paths
    from xtts_ft.model.constants import GPT_SAMPLE_RATE

    assert compose("prepare").sample_rate == GPT_SAMPLE_RATE  # clips are written at the GPT/DVAE rate
    assert OmegaConf.to_yaml(default_paths()) == OmegaConf.to_yaml(compose("synth").paths)


@pytest.mark.parametrize(
    "stage, override",
    [
        ("train_gpt", "lora.rank=x"),
        ("train_gpt", "betas=[a,b]"),
        ("train_gpt", "model.tiny_seed=x"),
        ("train_gpt", "+language_weights={en: x}"),
        ("train_gpt", "max_steps=null"),
        ("synth", "decoding.top_k=1.5"),
        ("synth", "paths.nope=1"),
        ("web", "port=abc"),
        ("prepare", "data.sources=[{path: a, language: en, target_seconds: x}]"),
    ],
)
def test_an_override_is_checked_against_the_schema_type(stage, override):
    with pytest.raises(ConfigCompositionException):
        compose(stage, [override])
