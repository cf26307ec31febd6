import numpy as np
import pytest

from xtts_ft.data.audio import trim_bounds


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_db", [30.0, 40.0, 60.0])
def test_trim_bounds_agree_with_librosa(seed, top_db):
    import librosa

    rng = np.random.default_rng(seed)
    speech = rng.normal(0, 0.2, int(rng.integers(5000, 40000))).astype(np.float32)
    audio = np.concatenate([rng.normal(0, 1e-4, int(rng.integers(0, 20000))).astype(np.float32), speech,
                            rng.normal(0, 1e-4, int(rng.integers(0, 20000))).astype(np.float32)])
    _, expected = librosa.effects.trim(audio, top_db=top_db)
    assert trim_bounds(audio, top_db) == tuple(int(x) for x in expected)


def test_trim_bounds_of_digital_silence_keeps_all_like_librosa():
    assert trim_bounds(np.zeros(10000, dtype=np.float32), 40) == (0, 10000)  # as librosa: silence is caught elsewhere
