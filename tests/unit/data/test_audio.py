import numpy as np
import pytest

from xtts_ft.data.audio import trim_bounds


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_db", [30.0, 40.0, 60.0])
def test_trim_bounds_agree_with_librosa(seed, top_db):
    import librosa

    rng = np.random.default_rng(seed)
    speech = rng.normal(0, 0.2, int(rng.integers(5000, 40000))).astype(np.float32)
    audio = np.concatenate(
        [
            rng.normal(0, 1e-4, int(rng.integers(0, 20000))).astype(np.float32),
            speech,
            rng.normal(0, 1e-4, int(rng.integers(0, 20000))).astype(np.float32),
        ]
    )
    _, expected = librosa.effects.trim(audio, top_db=top_db)
    assert trim_bounds(audio, top_db) == tuple(int(x) for x in expected)


def test_trim_bounds_of_digital_silence_keeps_all_like_librosa():
    assert trim_bounds(np.zeros(10000, dtype=np.float32), 40) == (0, 10000)  # as librosa: silence is caught elsewhere


@pytest.mark.parametrize("rate", [16000, 22050, 24000])
def test_integrated_loudness_agrees_with_pyloudnorm(rate):
    import pyloudnorm

    from xtts_ft.data.clips import integrated_loudness

    rng = np.random.default_rng(rate)
    meter = pyloudnorm.Meter(rate)
    for samples in (int(0.4 * rate), int(0.5 * rate) + 7, 3 * rate + 123, 11 * rate):
        audio = (rng.standard_normal(samples) * rng.uniform(0.001, 0.5)).astype(np.float32)
        audio[: samples // 3] *= 1e-3  # a quiet stretch the relative gate must drop
        assert integrated_loudness(audio, rate) == pytest.approx(meter.integrated_loudness(audio), abs=1e-4)
    assert integrated_loudness(np.zeros(rate, dtype=np.float32), rate) == float("-inf")
    assert integrated_loudness(np.ones(rate // 10, dtype=np.float32), rate) == float("-inf")  # shorter than a block


def test_wav_writes_round_to_16_bit_and_clip(tmp_path):
    import soundfile as sf

    from xtts_ft.data.audio import write_wav

    audio = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -1.7, 1.4e-5, 1.6e-5, -1.6e-5], dtype=np.float32)
    write_wav(tmp_path / "x.wav", audio, 22050)
    written, rate = sf.read(tmp_path / "x.wav", dtype="int16")
    assert rate == 22050 and sf.info(tmp_path / "x.wav").subtype == "PCM_16"
    assert written.tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 0, 1, -1]
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]  # no temporary file left beside it
