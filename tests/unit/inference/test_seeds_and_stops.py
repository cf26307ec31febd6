"""What a synthesis tells its caller about itself (issue 31, item 14): one `stopped` flag (with the per-sentence
detail beside it), and the seed it sampled with — `seed=` on every call, a fresh seed when unseeded, and
that seed handed back so a result can be had again."""

import numpy as np
import pytest

from tests.helpers.settings import DEMO

# The untrained tiny model never stops: each sentence runs to its babble guard (set to 8 codes below), so
# every call is short and two samplings differ in their codes, not their length.
DECODING = {"max_seconds_per_char": 0.02}
TEXT = "Hello there."
REFERENCE = DEMO / "en" / "wavs" / "alicia_000.flac"


@pytest.fixture(scope="module")
def untrained(tiny_model_dir):
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(tiny_model_dir, device="cpu")
    synthesizer._max_codes = lambda *args: 8  # ~0.4 s a sentence: the decoder's work stays small
    return synthesizer


def _say(untrained, **kwargs):
    return untrained.synthesize(text=TEXT, language="en", reference=REFERENCE, **{"decoding": DECODING, **kwargs})


def test_stopped_is_one_flag_and_the_sentences_are_kept_apart():
    from xtts_ft.inference import Synthesis

    wav = np.zeros(2400, dtype=np.float32)
    assert Synthesis(wav, 24000, 0.1, [True, True]).stopped is True
    cut = Synthesis(wav, 24000, 0.1, [True, False, True])
    assert cut.stopped is False and cut.stopped_per_sentence == [True, False, True]


def test_seed_repeats_the_audio_and_an_unseeded_call_says_which_it_drew(untrained):
    seeded = _say(untrained, seed=5)
    assert seeded.seed == 5 and seeded.stopped is False  # untrained: cut by its guard, one flag
    assert np.array_equal(seeded.wav, _say(untrained, decoding={**DECODING, "seed": 5}).wav)  # the same seed, twice

    first, second = _say(untrained), _say(untrained)
    assert isinstance(first.seed, int) and first.seed != second.seed
    assert not np.array_equal(first.wav, second.wav)  # unseeded calls differ...
    assert np.array_equal(_say(untrained, seed=first.seed).wav, first.wav)  # ...and the seed reported gives it again


def test_a_seed_given_twice_with_two_values_is_refused(untrained):
    with pytest.raises(ValueError, match=r"seed=1 and decoding\['seed'\]=2 disagree — fix: give the seed once"):
        _say(untrained, seed=1, decoding={**DECODING, "seed": 2})
    with pytest.raises(ValueError, match=r"seed='7' is not an integer"):
        _say(untrained, seed="7")
    from xtts_ft.inference.synthesizer import with_seed

    assert with_seed({"seed": 5, "top_k": 1}, 5) == ({"seed": 5, "top_k": 1}, 5)  # the same seed twice is one seed


def test_a_stream_takes_a_seed_and_says_it(untrained):
    def stream(**kwargs):
        return list(
            untrained.stream(
                text=TEXT,
                language="en",
                reference=REFERENCE,
                decoding=DECODING,
                chunk_codes=8,
                first_chunk_codes=8,
                **kwargs,
            )
        )

    seeded = stream(seed=11)
    assert {chunk.seed for chunk in seeded} == {11}
    unseeded = stream()
    drawn = unseeded[0].seed
    assert isinstance(drawn, int) and {chunk.seed for chunk in unseeded} == {drawn}
    again = stream(seed=drawn)
    assert all(np.array_equal(a.wav, b.wav) for a, b in zip(unseeded, again)) and len(again) == len(unseeded)


def test_many_requests_take_one_seed_or_each_draw_their_own(untrained, tmp_path):
    requests = [
        {"text": TEXT, "language": "en", "reference": REFERENCE},
        {"text": "Good morning.", "language": "en", "reference": REFERENCE},
    ]
    unseeded = untrained.synthesize_many(requests, DECODING, batch_size=2)
    assert len({r.seed for r in unseeded}) == 2 and all(isinstance(r.seed, int) for r in unseeded)
    alone = untrained.synthesize_many(requests[1:], DECODING, batch_size=1, seed=unseeded[1].seed)[0]
    assert np.abs(alone.wav - unseeded[1].wav).max() <= 1e-5  # request 1 again, from the seed it reported

    rows = untrained.synthesize_batch(requests, tmp_path, DECODING, batch_size=2, seed=9)
    assert [row["seed"] for row in rows] == [9, 9] and [row["stopped"] for row in rows] == [False, False]
