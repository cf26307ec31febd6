import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from xtts_ft.config import STAGES, compose


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


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException):
        compose("train_gpt", ["max_steps=many"])


def test_required_keys_are_missing_until_given():
    cfg = compose("synth")
    with pytest.raises(MissingMandatoryValue):
        _ = cfg.checkpoint
