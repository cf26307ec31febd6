"""synth checks what it can before the model loads (issue 31, item 11): a bad reference, a language the
model does not have or an output it cannot write failed only after 10-11 s of loading."""

import numpy as np
import pytest
import soundfile as sf

from xtts_ft.config import compose
from xtts_ft.errors import UserError
from xtts_ft.stages import synth


class Loaded(Exception):
    """Raised where the model would load: the checks were passed."""


@pytest.fixture
def no_loading(monkeypatch):
    def load(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(synth, "XttsSynthesizer", load)


@pytest.fixture
def reference(tmp_path):
    path = tmp_path / "ref.wav"
    sf.write(path, np.zeros(22050, dtype=np.float32), 22050)
    return path


def synth_cfg(model_dir, tmp_path, *overrides):
    return compose("synth", [f"checkpoint={model_dir}", "text=Hello.", f"out={tmp_path / 'out.wav'}", *overrides])


@pytest.mark.parametrize(
    "override, said",
    [
        ("reference={tmp}/missing.wav", "reference audio {tmp}/missing.wav does not exist"),
        ("reference={tmp}", "is a folder, not an audio file"),
        ("reference={tmp}/notes.wav", "cannot read audio {tmp}/notes.wav"),  # a text file named .wav
        ("language=xx", "language 'xx' is not in this model's config.languages: en, "),
        ("out={tmp}/a_file/x.wav", "cannot write into {tmp}/a_file"),
    ],
)
def test_a_bad_input_is_refused_before_the_model_loads(
    override, said, tiny_model_dir, tmp_path, reference, no_loading
):
    (tmp_path / "notes.wav").write_text("not audio")
    (tmp_path / "a_file").write_text("")
    cfg = synth_cfg(tiny_model_dir, tmp_path, f"reference={reference}", override.format(tmp=tmp_path))
    with pytest.raises(UserError) as refused:
        synth.run(cfg)
    assert said.format(tmp=tmp_path) in str(refused.value)


def test_a_batchs_rows_are_checked_before_the_model_loads(tiny_model_dir, tmp_path, reference, no_loading):
    texts = tmp_path / "lines.csv"
    texts.write_text(f"text,language,reference\nHello.,en,{reference}\nBonjour.,zz,{reference}\n")
    cfg = compose("synth", [f"checkpoint={tiny_model_dir}", f"texts={texts}", f"out_dir={tmp_path / 'out'}"])
    with pytest.raises(UserError, match=r"lines.csv, line 3: language 'zz' is not in this model's config.languages"):
        synth.run(cfg)


def test_good_inputs_reach_the_model(tiny_model_dir, tmp_path, reference, no_loading):
    with pytest.raises(Loaded):
        synth.run(synth_cfg(tiny_model_dir, tmp_path, f"reference={reference}", f"out={tmp_path}/new/dir/x.wav"))
