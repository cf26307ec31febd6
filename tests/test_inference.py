import numpy as np
import soundfile as sf
import pytest

from xtts_ft.inference import split_sentences


def _reference(prepared):
    return next((prepared / "wavs").glob("0_wavs__alicia*.wav"))


def test_synthesis_is_24khz_finite_and_not_silent(synthesizer, prepared):
    text = "The birch canoe slid on the smooth planks."
    result = synthesizer.synthesize(text=text, language="en", reference=_reference(prepared), decoding={"seed": 0})
    assert result.sample_rate == 24000
    assert result.wav.dtype == np.float32 and np.isfinite(result.wav).all()
    assert np.sqrt(np.mean(result.wav**2)) > 1e-3
    # The babble guard bounds the length: 2 s + 0.25 s per character.
    assert 0.1 < result.duration <= 2.0 + 0.25 * len(text) + 0.5
    assert result.real_time_factor > 0


def test_same_seed_same_audio_and_latents_are_cached(synthesizer, prepared):
    kwargs = dict(text="Hello there.", language="en", reference=_reference(prepared), decoding={"seed": 3})
    first = synthesizer.synthesize(**kwargs)
    second = synthesizer.synthesize(**kwargs)
    assert np.array_equal(first.wav, second.wav)
    assert len(synthesizer._voices) == 1


def test_long_text_is_split_into_sentences():
    assert split_sentences("One thing. Another thing! A third?", "en") == ["One thing.", "Another thing!", "A third?"]
    assert len(split_sentences("Premier. Second.", "fr")) == 2
    assert split_sentences("Dëgg la. Waaw.", "wo") == ["Dëgg la.", "Waaw."]  # unknown to pysbd: English rules


def test_bad_requests_are_clear_errors(synthesizer, prepared, tmp_path):
    with pytest.raises(ValueError, match="not in this model's config.languages"):
        synthesizer.synthesize(text="Hi.", language="xx", reference=_reference(prepared))
    with pytest.raises(FileNotFoundError, match="reference audio"):
        synthesizer.synthesize(text="Hi.", language="en", reference=tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="exactly one of"):
        synthesizer.synthesize(text="Hi.", language="en")
    with pytest.raises(ValueError, match="empty"):
        synthesizer.synthesize(text="  ", language="en", reference=_reference(prepared))


def test_streaming_yields_chunks_that_add_up_to_the_whole(synthesizer, prepared):
    kwargs = dict(text="The birch canoe slid on the smooth planks.", language="en", reference=_reference(prepared), decoding={"seed": 0})
    whole = synthesizer.synthesize(**kwargs)
    chunks = list(synthesizer.stream(**kwargs, chunk_codes=2))
    assert len(chunks) >= 2
    assert all(c.sample_rate == 24000 and c.wav.dtype == np.float32 and c.wav.size > 0 for c in chunks)
    times = [c.seconds_since_start for c in chunks]
    assert times == sorted(times) and 0 < times[0] < times[-1]  # the first chunk comes before the end
    assert sum(c.wav.size for c in chunks) == whole.wav.size


def test_batch_synthesis_from_a_csv(synthesizer, prepared, tmp_path):
    from xtts_ft.inference import read_requests

    reference = _reference(prepared)
    table = tmp_path / "texts.csv"
    table.write_text(f"text,name,reference\nHello there.,hello,\nGood morning.,,{reference}\n")
    requests = read_requests(table, "en", str(reference), None)
    assert [r["name"] for r in requests] == ["hello", None] and all(r["reference"] == str(reference) for r in requests)
    rows = synthesizer.synthesize_batch(requests, tmp_path / "out", decoding={"seed": 0})
    assert [r["name"] for r in rows] == ["hello", "0001"]
    for row in rows:
        audio, rate = sf.read(row["file"], dtype="float32")
        assert rate == 24000 and audio.size / rate == pytest.approx(row["seconds"], abs=1e-3) and row["seconds"] > 0
    (tmp_path / "bad.csv").write_text("words\nhi\n")
    with pytest.raises(ValueError, match="no `text` column"):
        read_requests(tmp_path / "bad.csv", "en", str(reference), None)
    (tmp_path / "empty.txt").write_text("one\n\ntwo\n")
    assert [r["text"] for r in read_requests(tmp_path / "empty.txt", "fr", None, "alicia")] == ["one", "two"]
