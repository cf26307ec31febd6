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


def test_a_value_no_stage_can_run_with_is_refused_when_composed():
    from xtts_ft.config import ConfigValueError

    # Was: "trains the GPT for 0 steps" and exit 0.
    with pytest.raises(ConfigValueError, match=r"max_steps=-5 is not an integer ≥ 1 — fix: max_steps=<an integer ≥ 1>"):
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
