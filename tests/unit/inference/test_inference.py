import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from xtts_ft.inference import split_sentences


@pytest.fixture(autouse=True)
def _kernel_tricks_on(monkeypatch):
    """The tests here check cpu_kernels' tricks as they run by default: an XTTS_FT_PLAIN_KERNELS left set in the
    environment would switch them off (the plain path's test sets it itself)."""
    from xtts_ft.inference import PLAIN_KERNELS_ENV

    monkeypatch.delenv(PLAIN_KERNELS_ENV, raising=False)


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


def test_same_seed_same_audio_and_latents_are_cached(synthesizer, prepared, monkeypatch):
    """The second call with the same reference skips the voice's work: the conditioning latents and the
    speaker embedding are computed once, on the first."""
    from collections import Counter, OrderedDict

    monkeypatch.setattr(synthesizer, "_voices", OrderedDict())  # whatever other tests left there
    computed = Counter()
    xtts = type(synthesizer.model)
    for name in ("get_gpt_cond_latents", "get_speaker_embedding"):
        real = getattr(xtts, name)
        monkeypatch.setattr(
            xtts, name, lambda self, *a, _real=real, _name=name, **k: computed.update([_name]) or _real(self, *a, **k)
        )
    kwargs = dict(text="Hello there.", language="en", reference=_reference(prepared), decoding={"seed": 3})
    first = synthesizer.synthesize(**kwargs)
    assert computed == {"get_gpt_cond_latents": 1, "get_speaker_embedding": 1}
    second = synthesizer.synthesize(**kwargs)
    assert computed == {"get_gpt_cond_latents": 1, "get_speaker_embedding": 1}  # the cached voice, not recomputed
    assert np.array_equal(first.wav, second.wav)
    assert len(synthesizer._voices) == 1


def test_voice_cache_is_bounded_and_drops_the_least_recently_used(synthesizer, prepared, monkeypatch):
    from collections import OrderedDict

    monkeypatch.setattr(synthesizer, "_voices", OrderedDict())
    monkeypatch.setattr(synthesizer, "voice_cache_size", 2)
    first, second, third = sorted((prepared / "wavs").glob("*.wav"))[:3]
    synthesizer.clone_voice(first)
    synthesizer.clone_voice(second)
    synthesizer.clone_voice(first)  # used again: now the most recent
    synthesizer.clone_voice(third)
    assert [Path(key[0]).name for key in synthesizer._voices] == [first.name, third.name]


def test_only_the_start_of_a_long_reference_is_decoded(synthesizer, tmp_path, monkeypatch):
    """The spy sits on libsndfile's decoding call (soundfile.SoundFile.read): what was asked of the file and
    what it gave, not the size of what reached the model."""
    long_clip = tmp_path / "an-hour-would-do-the-same.flac"
    rng = np.random.default_rng(0)
    sf.write(str(long_clip), (0.1 * rng.standard_normal(60 * 16000)).astype(np.float32), 16000)
    decoded = []  # (file, frames asked for, frames decoded) of every decoding read
    real_read = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        data = real_read(self, frames, *args, **kwargs)
        decoded.append((Path(self.name).name, frames, data.shape[0]))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", read)
    monkeypatch.setattr(synthesizer, "max_reference_seconds", 4.0)
    synthesizer.clone_voice(long_clip)
    assert sf.info(str(long_clip)).frames == 60 * 16000
    assert decoded == [(long_clip.name, 4 * 16000, 4 * 16000)]  # 4 s of the 60 decoded, once


def test_the_babble_guard_caps_a_sentence_that_does_not_stop(tiny_model_dir):
    """The untrained tiny model never emits its stop token for this seed: generation runs until
    the guard's cap, 2 s + max_seconds_per_char per character, and is reported as cut."""
    from tests.helpers.settings import DEMO
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.model.constants import CODES_PER_SECOND

    synthesizer = XttsSynthesizer(tiny_model_dir, device="cpu")
    text = "Hello there."
    result = synthesizer.synthesize(
        text=text,
        language="en",
        reference=DEMO / "en" / "wavs" / "alicia_000.flac",
        decoding={"seed": 0, "max_seconds_per_char": 0.1},
    )
    max_codes = int((2.0 + 0.1 * len(text)) * CODES_PER_SECOND)  # 68 codes of 1024 samples at 22.05 kHz
    assert result.stopped is False and result.stopped_per_sentence == [False]
    assert abs(result.wav.size - max_codes * 1024 * 24000 / 22050) <= 256  # one decoder hop of rounding

    # The characters counted are those said: a number as its words (Wolof's run 5-10 times the digits).
    from xtts_ft.data.text import clean_text

    text = "Hello 1987."
    said = clean_text(text, "en")
    assert said == "hello one thousand, nine hundred and eighty-seven."
    result = synthesizer.synthesize(
        text=text,
        language="en",
        reference=DEMO / "en" / "wavs" / "alicia_000.flac",
        decoding={"seed": 0, "max_seconds_per_char": 0.1},
    )
    max_codes = int((2.0 + 0.1 * len(said)) * CODES_PER_SECOND)
    assert result.stopped is False and result.stopped_per_sentence == [False]
    assert abs(result.wav.size - max_codes * 1024 * 24000 / 22050) <= 256
    wolof = "Am na 1 987 654 xar."
    assert (
        synthesizer._max_codes(wolof, "wo", 0.1)
        == int((2.0 + 0.1 * len(clean_text(wolof, "wo"))) * CODES_PER_SECOND)
        > int((2.0 + 0.1 * len(wolof)) * CODES_PER_SECOND) * 3
    )  # (below the model's own cap)


def test_load_and_synthesis_print_no_transformers_noise(tiny_model_dir, tmp_path):
    """Was, at every load: `bos_token_id must be None or an integer within the vocabulary...`, and at
    every sentence: `Both max_new_tokens (=...) and max_length (=...) seem to have been set`."""
    import subprocess
    import sys

    from tests.helpers.settings import DEMO

    script = (
        "from xtts_ft.inference import XttsSynthesizer\n"
        f"s = XttsSynthesizer({str(tiny_model_dir)!r}, device='cpu')\n"
        f"r = s.synthesize(text='Hello there. Good morning.', language='en', reference={str(DEMO / 'en' / 'wavs' / 'alicia_000.flac')!r})\n"
        "print('SYNTHESIZED', len(r.stopped_per_sentence))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "SYNTHESIZED 2" in result.stdout, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "must be `None` or an integer within the vocabulary" not in output
    assert "seem to have been set" not in output


def test_long_text_is_split_into_sentences():
    assert split_sentences("One thing. Another thing! A third?", "en") == ["One thing.", "Another thing!", "A third?"]
    assert len(split_sentences("Premier. Second.", "fr")) == 2
    assert split_sentences("Dëgg la. Waaw.", "wo") == ["Dëgg la.", "Waaw."]  # unknown to pysbd: English rules


def test_bad_requests_are_clear_errors(synthesizer, prepared, tmp_path):
    with pytest.raises(ValueError, match="not in this model's config.languages: .* — fix: language="):
        synthesizer.synthesize(text="Hi.", language="xx", reference=_reference(prepared))
    with pytest.raises(FileNotFoundError, match="reference audio"):
        synthesizer.synthesize(text="Hi.", language="en", reference=tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="exactly one of reference= or voice= — fix: "):
        synthesizer.synthesize(text="Hi.", language="en")
    with pytest.raises(ValueError, match="text is empty — fix: "):
        synthesizer.synthesize(text="  ", language="en", reference=_reference(prepared))


def test_streaming_yields_chunks_that_add_up_to_the_whole(synthesizer, prepared):
    """The chunks' audio is the whole synthesis's (same seed: the same codes). Streamed as one chunk, a
    sentence is synthesize()'s audio to float rounding (its latents come from the generate, not from
    Xtts.inference's second GPT pass). Cut into chunks, each chunk but the last was decoded before the
    later codes were known (the decoder's convolutions look both ways, over thousands of samples), so
    those differ from the whole by the missing context; the last chunk, decoded from every code, is
    the whole's audio to float rounding past its cross-fade."""
    kwargs = dict(
        text="The birch canoe slid on the smooth planks.",
        language="en",
        reference=_reference(prepared),
        decoding={"seed": 0},
    )
    whole = synthesizer.synthesize(**kwargs)
    peak = float(np.abs(whole.wav).max())
    [one] = list(synthesizer.stream(**kwargs, first_chunk_codes=1000, chunk_codes=1000))
    # The trained tiny GPT stops after a few codes: tiny chunks make several. The first, after 1 code,
    # decodes to the 1024 samples held back for the cross-fade: it is not yielded empty.
    chunks = list(synthesizer.stream(**kwargs, first_chunk_codes=1, chunk_codes=2))
    assert len(chunks) >= 3
    assert all(c.sample_rate == 24000 and c.wav.dtype == np.float32 and c.wav.size > 0 for c in chunks)
    times = [c.seconds_since_start for c in chunks]
    assert times == sorted(times) and 0 < times[0] < times[-1]  # the first chunk comes before the end
    streamed = np.concatenate([c.wav for c in chunks])
    assert streamed.size == whole.wav.size
    past_fade = chunks[-1].wav.size - 1024  # the last chunk's samples after its cross-fade with the one before
    # Measured: 5e-7 of the peak for the one chunk and past the last fade; ~2% of it near the earlier seams.
    np.testing.assert_allclose(one.wav, whole.wav, rtol=0, atol=1e-5 * peak)
    assert past_fade > 0
    np.testing.assert_allclose(streamed[-past_fade:], whole.wav[-past_fade:], rtol=0, atol=1e-5 * peak)
    assert np.abs(streamed - whole.wav).max() <= 0.05 * peak


# Streaming, on the untrained tiny model: it never stops, so a sentence runs to its babble guard.
STREAM_DECODING = {"seed": 0, "max_seconds_per_char": 0.02}


def _demo_reference():
    from tests.helpers.settings import DEMO

    return DEMO / "en" / "wavs" / "alicia_000.flac"


def test_our_stream_loop_is_coquis_inference_stream(untrained):
    """first_chunk_codes == chunk_codes: the same chunks as coqui-tts's own Xtts.inference_stream,
    sentence by sentence, same voice, settings, babble guard and seed. Sentence 1 is 48 codes
    (3 chunks of 16, then the held-back overlap alone), sentence 2 is 53 (5 left over)."""
    import torch

    text, reference = "Hello there. Good morning, my friend.", _demo_reference()
    ours = list(
        untrained.stream(
            text=text,
            language="en",
            reference=reference,
            decoding=STREAM_DECODING,
            chunk_codes=16,
            first_chunk_codes=16,
        )
    )
    voice = untrained.clone_voice(reference)
    settings = untrained.decoding_settings(STREAM_DECODING)
    torch.manual_seed(0)
    theirs = []
    for sentence in split_sentences(text, "en"):
        max_codes = untrained._max_codes(sentence, "en", STREAM_DECODING["max_seconds_per_char"])
        assert max_codes in (48, 53)
        with untrained._babble_guard(max_codes):
            theirs += [
                wav.float().numpy()
                for wav in untrained.model.inference_stream(
                    sentence,
                    "en",
                    voice.gpt_cond_latent,
                    voice.speaker_embedding,
                    stream_chunk_size=16,
                    enable_text_splitting=False,
                    **settings,
                )
            ]
    assert [c.wav.size for c in ours] == [w.size for w in theirs] and len(ours) == 8
    for chunk, wav in zip(ours, theirs):
        # Equal but for the last chunk of sentence 1: coqui cross-fades the overlap with itself (float rounding).
        np.testing.assert_allclose(chunk.wav, wav, rtol=0, atol=1e-6)


def test_a_short_first_chunk_then_the_usual_ones(untrained):
    """first_chunk_codes=8, chunk_codes=20 over a 48-code sentence: chunks at 8, 28 and 48 codes,
    then the end. The first holds ~8 codes of audio less the 1024 samples held back for the
    cross-fade, the next two ~20, the last the held-back 1024; the whole is as long as with 20-code chunks (the same codes under the same seed) and as
    the babble guard's cap, which holds although its setting is restored as soon as the GPT starts."""
    from xtts_ft.model.constants import CODES_PER_SECOND

    kwargs = dict(text="Hello there.", language="en", reference=_demo_reference(), decoding=STREAM_DECODING)
    max_codes = int((2.0 + 0.02 * len(kwargs["text"])) * CODES_PER_SECOND)
    per_code = 1024 * 24000 / 22050  # output samples per code

    gpt = untrained.model.gpt
    default_cap = gpt.max_gen_mel_tokens
    chunks = untrained.stream(**kwargs, first_chunk_codes=8, chunk_codes=20)
    short = [next(chunks)]
    assert gpt.max_gen_mel_tokens == default_cap  # the guard is not held while the caller listens
    short += list(chunks)
    usual = list(untrained.stream(**kwargs, first_chunk_codes=20, chunk_codes=20))

    assert max_codes == 48 and len(short) == 4 and len(usual) == 3
    sizes = [c.wav.size for c in short]
    assert abs(sizes[0] - (8 * per_code - 1024)) <= 256  # one decoder hop of rounding
    assert all(abs(size - 20 * per_code) <= 256 for size in sizes[1:3]) and sizes[3] == 1024
    assert sizes[0] < usual[0].wav.size / 2
    assert sum(sizes) == sum(c.wav.size for c in usual)
    assert abs(sum(sizes) - max_codes * per_code) <= 256


@pytest.mark.parametrize(
    "bad", [dict(first_chunk_codes=0), dict(chunk_codes=0), dict(first_chunk_codes=-3), dict(chunk_codes=2.5)]
)
def test_bad_chunk_sizes_are_clear_errors(untrained, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"{name}=.* — fix: {name}=<an integer ≥ 1>"):
        untrained.stream(
            text="Hi.", language="en", reference=_demo_reference(), **bad
        )  # at the call, before any audio


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


# Batched synthesis. A short babble guard keeps the untrained tiny GPT (it never stops) at a few dozen codes.
BATCH_DECODING = {"max_seconds_per_char": 0.02}


def _mixed_requests(prepared):
    """Texts of mixed lengths (so mixed prefix padding and babble guards), voices, languages, and a two-sentence text."""
    en, fr = sorted((prepared / "wavs").glob("0_*.wav")), sorted((prepared / "wavs").glob("1_*.wav"))
    return [
        {"text": "Hello there.", "language": "en", "reference": en[0]},
        {
            "text": "The birch canoe slid on the smooth planks of the old wooden dock.",
            "language": "en",
            "reference": en[-1],
        },
        {"text": "Bonjour.", "language": "fr", "reference": fr[0]},
        {"text": "One thing. Another, somewhat longer, thing!", "language": "en", "reference": en[1]},
    ]


def _codes(synthesizer, requests, decoding, batch_size):
    sentences = [s for i, r in enumerate(requests) for s in synthesizer._sentences(i, r, decoding)]
    settings = synthesizer.decoding_settings(decoding)
    return [
        (row.codes, row.stopped)
        for start in range(0, len(sentences), batch_size)
        for row in synthesizer._generate(sentences[start : start + batch_size], settings)
    ], sentences


@pytest.fixture(scope="module")
def untrained(tiny_model_dir):
    """The untrained tiny XTTS: its GPT never emits the stop token, so every row runs to its own guard."""
    from xtts_ft.inference import XttsSynthesizer

    return XttsSynthesizer(tiny_model_dir, device="cpu")


@pytest.mark.parametrize("model", ["untrained", "synthesizer"])
def test_batched_codes_are_those_of_one_at_a_time_and_of_coquis_generate(model, request, prepared):
    """Greedy (top_k=1): five sentences of mixed text lengths in one generate get exactly the codes
    each gets alone, and alone they are the codes of coqui-tts's own GPT.generate (Xtts.inference's).
    Untrained, every row is cut by its own babble guard (mixed code lengths); the trained export's
    GPT stops by itself."""
    import torch

    synthesizer = request.getfixturevalue(model)
    decoding = {**BATCH_DECODING, "seed": 0, "top_k": 1}
    alone, sentences = _codes(synthesizer, _mixed_requests(prepared), decoding, batch_size=1)
    together, _ = _codes(synthesizer, _mixed_requests(prepared), decoding, batch_size=4)
    assert len(sentences) == 5 and len({s.tokens.shape[-1] for s in sentences}) >= 4  # text lengths 7 to 50 tokens
    lengths, stopped = [len(codes) for codes, _ in alone], [stop for _, stop in alone]
    if model == "untrained":
        assert lengths == [s.max_codes for s in sentences] and len(set(lengths)) >= 3 and not any(stopped)
    else:
        assert all(stopped) and all(codes[-1] == synthesizer.model.gpt.stop_audio_token for codes, _ in alone)
    for (a, stopped_a), (b, stopped_b) in zip(alone, together):
        assert torch.equal(a, b) and stopped_a == stopped_b
    settings = synthesizer.decoding_settings(decoding)
    for sentence, (codes, _) in zip(sentences, alone):
        with synthesizer._babble_guard(sentence.max_codes), torch.no_grad():
            theirs = synthesizer.model.gpt.generate(
                sentence.voice.gpt_cond_latent,
                sentence.tokens,
                do_sample=True,
                num_beams=1,
                **{k: settings[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")},
            )
        assert torch.equal(theirs[0], codes)
    # The latents each row's decoder speaks, read during a left-padded generate of 4 rows, are those
    # of coqui's second GPT pass over the text and codes (Xtts.inference's), guard-cut rows included.
    gpt = synthesizer.model.gpt
    rows = [row for start in (0, 4) for row in synthesizer._generate(sentences[start : start + 4], settings)]
    assert not gpt.gpt_inference.final_norm._forward_hooks  # the hook is gone once the generate is done
    for sentence, row in zip(sentences, rows):
        with torch.no_grad():
            theirs = gpt(
                sentence.tokens,
                torch.tensor([sentence.tokens.shape[-1]]),
                row.codes.unsqueeze(0),
                torch.tensor([row.codes.shape[-1] * gpt.code_stride_len]),
                cond_latents=sentence.voice.gpt_cond_latent,
                return_attentions=False,
                return_latent=True,
            )
        assert row.latents.shape == theirs.shape and torch.allclose(row.latents, theirs, rtol=0, atol=1e-5)


def test_rows_in_one_voice_share_its_conditioning_pass(untrained, prepared):
    """Rows that speak in the same voice share the GPT's pass over its conditioning latents (the GPT-2
    inside XTTS has no position embeddings of its own, so those keys and values do not depend on the
    row): four sentences in two voices, interleaved, get the codes each gets alone, and the latents of
    coqui's own GPT pass; the voices' pass has one row per voice."""
    import torch

    en = sorted((prepared / "wavs").glob("0_*.wav"))
    requests = [
        {"text": "Hello there.", "language": "en", "reference": en[0]},
        {"text": "The birch canoe slid on the smooth planks.", "language": "en", "reference": en[1]},
        {"text": "One thing. Another, somewhat longer, thing!", "language": "en", "reference": en[0]},
    ]
    decoding = {**BATCH_DECODING, "seed": 0, "top_k": 1}
    alone, sentences = _codes(untrained, requests, decoding, batch_size=1)
    gpt = untrained.model.gpt
    passes = []  # rows × positions of each pass over inputs_embeds, the prompt's two and the steps
    hook = gpt.gpt_inference.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: passes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        rows = untrained._generate(sentences, untrained.decoding_settings(decoding))
    finally:
        hook.remove()
    voice_length = sentences[0].voice.gpt_cond_latent.shape[1]
    assert len(sentences) == 4 and passes[0] == (2, voice_length) and passes[1][0] == 4 and set(passes[2:]) == {(4, 1)}
    for sentence, row, (codes, stopped) in zip(sentences, rows, alone):
        assert torch.equal(row.codes, codes) and row.stopped == stopped
        with torch.no_grad():
            theirs = gpt(
                sentence.tokens,
                torch.tensor([sentence.tokens.shape[-1]]),
                row.codes.unsqueeze(0),
                torch.tensor([row.codes.shape[-1] * gpt.code_stride_len]),
                cond_latents=sentence.voice.gpt_cond_latent,
                return_attentions=False,
                return_latent=True,
            )
        assert row.latents.shape == theirs.shape and torch.allclose(row.latents, theirs, rtol=0, atol=1e-5)


def test_a_batch_may_run_its_products_through_packed_weights_and_gets_the_same_audio(untrained, prepared, monkeypatch):
    """Where MKL's products are slow (PackedProducts times it), a batch's products by the GPT-2 Conv1D
    weights go through oneDNN with the weights packed for it: its one-code steps and its prompt's pass, each
    kind decided apart. Forced here: the same audio as MKL's products; every product of the batch of 4 goes
    packed, none of the batch of one; a machine where only the steps gain packs only those; afterwards the
    layers are as before, weights untouched."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from xtts_ft.inference import PackedProducts

    if not PackedProducts.available():
        pytest.skip("this torch build has no oneDNN")
    decoding = {**BATCH_DECODING, "seed": 0, "top_k": 1}
    requests = _mixed_requests(prepared)[:4]
    layers = [m for m in untrained.model.gpt.gpt.modules() if isinstance(m, Conv1D)]
    biases = [layer.bias.detach().clone() for layer in layers]
    # A random model's Conv1D biases are zeros: give them values, or a lost bias would go unseen.
    with torch.no_grad():
        for layer in layers:
            layer.bias.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: False)
    try:
        _check_packed_products(untrained, requests, decoding, layers, monkeypatch)
    finally:
        with torch.no_grad():
            for layer, bias in zip(layers, biases):
                layer.bias.copy_(bias)


def _check_packed_products(untrained, requests, decoding, layers, monkeypatch):
    import torch

    from xtts_ft.inference import PackedProducts

    weights = [layer.weight.detach().clone() for layer in layers]
    usual = untrained.synthesize_many(requests, decoding, batch_size=4)
    packed_rows = []  # rows of each packed product
    real_product = PackedProducts.packed_product

    def counted(x, packed, bias):
        packed_rows.append(x.shape[0])
        return real_product(x, packed, bias)

    monkeypatch.setattr(PackedProducts, "packed_product", staticmethod(counted))
    all_rows = []  # (rows, inside a batch's patched generate) of every product of the last layer
    hook = layers[-1].register_forward_pre_hook(
        lambda layer, args: all_rows.append(
            (args[0].reshape(-1, args[0].shape[-1]).shape[0], "forward" in vars(layer))
        )
    )
    # A machine where only the few-row steps gain: the prompt's pass keeps MKL's products.
    monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: rows == 4)
    try:
        steps_only = untrained.synthesize_many(requests, decoding, batch_size=4)
        batch_of_four = [rows for rows, patched in all_rows if patched]
        assert 4 in batch_of_four and any(rows > 4 for rows in batch_of_four)
        assert packed_rows and set(packed_rows) == {4} and batch_of_four.count(4) * len(layers) == len(packed_rows)
        # Both kinds faster: 5 sentences, a batch of 4 (its prompt's pass and its steps packed), then the last
        # sentence alone (MKL).
        monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: True)
        packed_rows.clear()
        all_rows.clear()
        packed = untrained.synthesize_many(requests, decoding, batch_size=4)
    finally:
        hook.remove()
    batch_of_four = [rows for rows, patched in all_rows if patched]
    assert 4 in batch_of_four and any(rows > 4 for rows in batch_of_four)
    assert sorted(packed_rows) == sorted(batch_of_four * len(layers))
    assert 1 in [rows for rows, patched in all_rows if not patched]  # the batch of one: MKL's products
    for a, b, c in zip(usual, steps_only, packed):
        assert a.stopped == b.stopped == c.stopped and a.wav.shape == b.wav.shape == c.wav.shape
        assert np.abs(a.wav - b.wav).max() <= 1e-5 * max(1.0, np.abs(a.wav).max())
        assert np.abs(a.wav - c.wav).max() <= 1e-5 * max(1.0, np.abs(a.wav).max())
    for layer, weight in zip(layers, weights):
        assert "forward" not in vars(layer) and torch.equal(layer.weight, weight)
    # A caller that holds a half-read batched generator while another call runs: the layers are patched
    # only inside each generate, so neither sees the other's state and both finish.
    first = untrained.iter_synthesize(requests, decoding, batch_size=4)
    index, result = next(first)  # the batch of 4 is generated; the packed copy is held
    assert not any("forward" in vars(layer) for layer in layers)
    [again] = untrained.synthesize_many(requests[:1], decoding, batch_size=2)
    assert again.wav.shape == usual[0].wav.shape
    rest = dict(first)
    assert sorted([index, *rest]) == list(range(len(requests))) and not any(
        "forward" in vars(layer) for layer in layers
    )
    # A synthesizer around a model in memory (train-gpt's eval audio) batches too.
    from xtts_ft.inference import XttsSynthesizer

    wrapped = XttsSynthesizer.from_model(untrained.config, untrained.model)
    [again] = wrapped.synthesize_many(requests[:1], decoding, batch_size=2)
    assert again.wav.shape == usual[0].wav.shape and np.abs(again.wav - usual[0].wav).max() <= 1e-5


def test_a_language_whose_reading_package_is_missing_is_one_clear_error(untrained, prepared):
    """coqui's tokenizer reads Japanese as romaji through cutlet, an optional package (coqui-tts[ja]): without it,
    synthesis says which package to install instead of ending in cutlet's ModuleNotFoundError."""
    try:
        import cutlet  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cutlet is installed here")
    reference = sorted((prepared / "wavs").glob("0_*.wav"))[0]
    assert "ja" in untrained.languages
    with pytest.raises(
        RuntimeError,
        match=r"XTTS reads 'ja' text as romaji, which needs a package .*cutlet.* "
        r"— fix: pip install 'coqui-tts\[ja\]'",
    ):
        untrained.synthesize("こんにちは。", "ja", reference=reference)
    with pytest.raises(RuntimeError, match=r"pip install 'coqui-tts\[ja\]'"):
        untrained.synthesize_many([{"text": "こんにちは。", "language": "ja", "reference": reference}])


def test_a_batched_generates_cache_grows_in_place_with_the_values_concatenation_gives():
    """cache_grown_in_place: each step writes its position into a buffer instead of copying the whole cache
    (transformers' DynamicLayer concatenates); the keys and values are those concatenation gives, a full buffer
    moves to one twice its size, a layer whose tensors were replaced (reorder_cache, reset) takes the usual
    update, and afterwards the layer has its own update back and is freed without Python's cycle collector."""
    import gc
    import weakref

    import torch
    from transformers import DynamicCache

    from xtts_ft.inference import cache_grown_in_place

    generator = torch.Generator().manual_seed(0)
    usual, grown = DynamicCache(), DynamicCache()
    prompt = [torch.randn(2, 3, 5, 4, generator=generator) for _ in range(2)]
    for cache in (usual, grown):
        cache.update(*prompt, layer_idx=0)

    def step_both(usual, grown) -> torch.Tensor:
        new = [torch.randn(2, 3, 1, 4, generator=generator) for _ in range(2)]
        keys, values = usual.update(*new, layer_idx=0)
        grown_keys, grown_values = grown.update(*new, layer_idx=0)
        assert torch.equal(keys, grown_keys) and torch.equal(values, grown_values)
        return grown_keys

    with cache_grown_in_place(grown, most_positions=100, first_reserve=3):
        layer = grown.layers[0]
        storages = [step_both(usual, grown).untyped_storage() for _ in range(6)]  # 5 + 3 reserved: the 4th step moves
        assert len({storage.data_ptr() for storage in storages}) == 2
        assert storages[-1].nbytes() == 2 * 3 * 16 * 4 * 4  # rows × heads × positions × width × 4 bytes
        for cache in (usual, grown):
            cache.reorder_cache(torch.tensor([1, 0]))
        step_both(usual, grown)
        for cache in (usual, grown):
            cache.layers[0].reset()
            cache.update(*prompt, layer_idx=0)
        step_both(usual, grown)
    assert "update" not in vars(layer) and grown.get_seq_length() == usual.get_seq_length()
    alive = weakref.ref(layer)
    gc.disable()
    try:
        del layer, grown, cache, storages
        assert alive() is None
    finally:
        gc.enable()


def test_fused_gelu_is_gpt2s_gelu_new_to_float_rounding_and_is_put_back(untrained):
    import torch
    from transformers.activations import NewGELUActivation

    from xtts_ft.inference import fused_gelu

    # XTTS's GPT-2 uses it (activation "gelu_new"), so the batched generate's patch does apply.
    assert any(isinstance(m, NewGELUActivation) for m in untrained.model.gpt.gpt.modules())
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), NewGELUActivation())
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0)) * 4
    usual = module(x)
    with fused_gelu(module):
        assert "forward" in vars(module[1])
        fused = module(x)
    assert "forward" not in vars(module[1])
    assert torch.allclose(fused, usual, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="stopped"), fused_gelu(module):  # put back on the way out of an error too
        raise RuntimeError("stopped")
    assert "forward" not in vars(module[1])


def test_plain_kernels_give_the_codes_of_the_fast_path(untrained, prepared, monkeypatch):
    """XTTS_FT_PLAIN_KERNELS=1 (read when a batch runs) switches off every trick of cpu_kernels: no weight is
    packed, no Conv1D or GELU forward is replaced, no cache layer grows in place. A seeded batch then gets
    exactly the code ids it gets with the tricks on (packed products forced on here, where timing might not
    choose them), and its audio to float rounding."""
    import torch
    from transformers.activations import NewGELUActivation
    from transformers.pytorch_utils import Conv1D

    from xtts_ft.inference import PLAIN_KERNELS_ENV, PackedProducts, cpu_kernels

    requests = _mixed_requests(prepared)
    decoding = {**BATCH_DECODING, "seed": 5}
    gpt = untrained.model.gpt.gpt
    layers = [m for m in gpt.modules() if isinstance(m, Conv1D)]
    gelus = [m for m in gpt.modules() if isinstance(m, NewGELUActivation)]
    assert layers and gelus
    runs = []  # per generate: its rows' codes, and which tricks were on while it ran
    grown = []  # each in-place cache update

    def generate(sentences, settings, _real=untrained._generate):
        tricks = {
            "packed": any("forward" in vars(layer) for layer in layers),
            "gelu": any("forward" in vars(act) for act in gelus),
        }
        rows = _real(sentences, settings)
        runs[-1].append(([row.codes for row in rows], {**tricks, "grown": bool(grown)}))
        return rows

    real_update = cpu_kernels._InPlaceGrowth.update
    monkeypatch.setattr(untrained, "_generate", generate)
    monkeypatch.setattr(
        cpu_kernels._InPlaceGrowth, "update", lambda self, *a, **k: grown.append(1) or real_update(self, *a, **k)
    )
    monkeypatch.setattr(PackedProducts, "packed_is_faster", lambda self, weight, rows, packed=None: True)
    results = {}
    for plain in (False, True):
        if plain:
            monkeypatch.setenv(PLAIN_KERNELS_ENV, "1")
        runs.append([])
        grown.clear()
        results[plain] = untrained.synthesize_many(requests, decoding, batch_size=4)
    fast, plain = runs
    assert len(fast) == len(plain) == 2  # 5 sentences: a batch of 4, then one
    assert fast[0][1] == {"packed": PackedProducts.available(), "gelu": True, "grown": True}
    assert all(tricks == {"packed": False, "gelu": False, "grown": False} for _, tricks in plain)
    for (fast_codes, _), (plain_codes, _) in zip(fast, plain):
        assert len(fast_codes) == len(plain_codes)
        assert all(torch.equal(a, b) for a, b in zip(fast_codes, plain_codes))
    for a, b in zip(results[False], results[True]):
        assert a.stopped == b.stopped and a.wav.shape == b.wav.shape
        assert np.abs(a.wav - b.wav).max() <= 1e-5 * max(1.0, np.abs(b.wav).max())


def test_sampled_codes_follow_each_sentences_seed_not_its_batch(untrained, prepared):
    """Sampling: a sentence's codes come from its own seeded stream, so batch size 1, 2 or 5 gives the
    same codes; another seed gives other codes."""
    import torch

    requests = _mixed_requests(prepared)
    decoding = {**BATCH_DECODING, "seed": 3}
    one = [codes for codes, _ in _codes(untrained, requests, decoding, batch_size=1)[0]]
    for batch_size in (2, 5):
        assert all(torch.equal(a, b) for a, (b, _) in zip(one, _codes(untrained, requests, decoding, batch_size)[0]))
    other = [codes for codes, _ in _codes(untrained, requests, {**decoding, "seed": 4}, batch_size=5)[0]]
    assert sum(not torch.equal(a, b) for a, b in zip(one, other)) == len(one)


def test_batched_audio_is_the_audio_of_synthesize(synthesizer, prepared):
    """Greedy: synthesize_many at batch 2 (sentences of two requests decoded together, the second
    text cut into two sentences) gives each request synthesize()'s audio (coqui's Xtts.inference,
    which runs the GPT over text and codes again for the latents) up to float rounding, in request
    order."""
    requests = [_mixed_requests(prepared)[2], _mixed_requests(prepared)[3]]
    decoding = {**BATCH_DECODING, "seed": 0, "top_k": 1}
    batched = synthesizer.synthesize_many(requests, decoding, batch_size=2)
    for request, result in zip(requests, batched):
        alone = synthesizer.synthesize(**request, decoding=decoding)
        assert result.wav.shape == alone.wav.shape and result.stopped == alone.stopped
        assert np.abs(result.wav - alone.wav).max() <= 1e-5 * max(1.0, np.abs(alone.wav).max())
    assert [len(r.stopped_per_sentence) for r in batched] == [1, 2] and all(r.seconds_to_generate > 0 for r in batched)


def test_a_bad_request_fails_before_any_synthesis(synthesizer, prepared, monkeypatch):
    requests = _mixed_requests(prepared)[:2] + [{"text": "Hi.", "language": "xx", "reference": _reference(prepared)}]
    monkeypatch.setattr(synthesizer, "_generate", lambda *a: pytest.fail("synthesized before checking every request"))
    with pytest.raises(ValueError, match="^request 2: language 'xx' is not in this model's config.languages"):
        synthesizer.synthesize_many(requests, BATCH_DECODING)
    with pytest.raises(
        ValueError, match="^texts.csv, line 4: language 'xx' is not"
    ):  # read_requests' place, where it has one
        synthesizer.synthesize_many(requests[:2] + [{**requests[2], "where": "texts.csv, line 4"}], BATCH_DECODING)
    with pytest.raises(ValueError, match=r"batch_size=0 — fix: batch_size=<an integer ≥ 1>"):
        synthesizer.synthesize_many(requests[:1], BATCH_DECODING, batch_size=0)
    reference = _reference(prepared)
    with pytest.raises(ValueError, match=r"^text '\?!\.\.\.' has no words to say, only punctuation or symbols — fix"):
        synthesizer.synthesize(text="?!...", language="en", reference=reference)
    with pytest.raises(FileNotFoundError, match=r"reference audio .* is a folder, not an audio file — fix"):
        synthesizer.synthesize(text="Hi.", language="en", reference=reference.parent)
    # A sentence past the model's text tokens: refused at the request, as coqui's own assertion would stop it deep
    # inside (one text, streamed, or in a batch alike).
    long = {"text": "word " * 600, "language": "en", "reference": _reference(prepared)}
    for call in (
        lambda: synthesizer.synthesize(**long),
        lambda: synthesizer.stream(**long),
        lambda: synthesizer.synthesize_many([long]),
    ):
        with pytest.raises(
            ValueError, match=r"text tokens; the model takes fewer than \d+ — fix: split it into shorter sentences"
        ):
            call()


def test_synth_stage_streams_with_its_chunk_sizes(exported, prepared, tmp_path, capsys):
    """`xtts-ft synth ... stream=true stream_first_chunk_codes=1 stream_chunk_codes=2`: the chunks
    written end to end, the time to first audio printed; a bad size is refused before any audio."""
    from xtts_ft.config import compose
    from xtts_ft.stages import synth

    base = [
        f"checkpoint={exported}",
        "text=The birch canoe slid on the smooth planks.",
        "language=en",
        f"reference={_reference(prepared)}",
        "device=cpu",
        "decoding.seed=0",
        "stream=true",
    ]
    out = synth.run(
        compose(
            "synth", base + [f"out={tmp_path / 'streamed.wav'}", "stream_first_chunk_codes=1", "stream_chunk_codes=2"]
        )
    )
    audio, rate = sf.read(out)
    printed = capsys.readouterr().out
    chunks = int(re.search(r"in (\d+) streamed chunks; first audio after [0-9.]+ s", printed).group(1))
    assert rate == 24000 and audio.size > 0 and chunks >= 3  # the trained tiny GPT stops after a few codes
    with pytest.raises(ValueError, match="^stream_chunk_codes=0 is not an integer ≥ 1"):
        synth.run(compose("synth", base + [f"out={tmp_path / 'bad.wav'}", "stream_chunk_codes=0"]))
    assert not (tmp_path / "bad.wav").exists()


def test_a_batch_into_an_earlier_batchs_folder_never_leaves_its_old_index(exported, prepared, tmp_path, monkeypatch):
    """`synth texts=... out_dir=` over an earlier batch's folder: the old index goes before any WAV is replaced, so a
    run that fails part-way (here: the disk fills after the first new WAV is written) leaves no index describing
    the new audio; a request refused before any synthesis leaves none either; a finished run writes its own. An
    out_dir that is a file is refused before the model loads."""
    import xtts_ft.inference.synthesizer as synthesizer_module
    from xtts_ft.config import compose
    from xtts_ft.stages import synth

    out = tmp_path / "batch"
    out.mkdir()
    earlier_index = '{"name": "0000", "text": "an earlier text"}\n'
    (out / "index.jsonl").write_text(earlier_index)
    earlier_wav = np.zeros(24000, dtype=np.float32)  # the earlier batch's WAVs: a second of silence each
    for name in ("0000", "0001"):
        sf.write(str(out / f"{name}.wav"), earlier_wav, 24000)
    texts = tmp_path / "texts.csv"
    texts.write_text("text,language\nOne.,en\nTwo.,en\n")
    base = [
        f"checkpoint={exported}",
        f"texts={texts}",
        f"out_dir={out}",
        f"reference={_reference(prepared)}",
        "device=cpu",
        "decoding.seed=0",
        "decoding.max_seconds_per_char=0.02",
    ]
    written = []  # (WAV, whether an index was there when it was written)
    write_wav = synthesizer_module.write_wav

    def disk_full_after_one(path, audio, rate):
        if written:
            raise OSError(28, "No space left on device", str(path))
        written.append((Path(path).name, (out / "index.jsonl").exists()))
        write_wav(path, audio, rate)

    monkeypatch.setattr(synthesizer_module, "write_wav", disk_full_after_one)
    with pytest.raises(OSError, match="No space left on device"):
        synth.run(compose("synth", base))
    monkeypatch.undo()
    [(name, index_there)] = written
    audio, _ = sf.read(str(out / name), dtype="float32")
    assert not np.array_equal(audio, earlier_wav) and not index_there  # new audio written (the old index gone), then
    assert not (out / "index.jsonl").exists()  # the failure: no index describes the new audio, nor the old

    (out / "index.jsonl").write_text(earlier_index)  # the earlier batch again, whole: its index and its WAVs
    for name in ("0000", "0001"):
        sf.write(str(out / f"{name}.wav"), earlier_wav, 24000)
    texts.write_text("text,language\nOne.,en\nTwo.,xx\n")
    with pytest.raises(ValueError, match=r"texts.csv, line 3: language 'xx'"):
        synth.run(compose("synth", base))
    # Every row is checked before the model loads: a refused batch leaves the earlier one as it was.
    assert (out / "index.jsonl").read_text() == earlier_index
    assert all(
        np.array_equal(sf.read(str(out / f"{n}.wav"), dtype="float32")[0], earlier_wav) for n in ("0000", "0001")
    )
    texts.write_text("text\nOne.\n")
    synth.run(compose("synth", base))
    assert [json.loads(line)["text"] for line in (out / "index.jsonl").read_text().splitlines()] == ["One."]
    with pytest.raises(ValueError, match=r"out_dir=.*texts.csv is a file") as refused:
        synth.run(compose("synth", [o if not o.startswith("out_dir=") else f"out_dir={texts}" for o in base]))
    assert refused.value.fix.startswith("out_dir=<a folder>")
    with pytest.raises(ValueError, match=r"out=.*hello.mp3: synth writes WAV files") as refused:
        synth.run(compose("synth", [f"checkpoint={exported}", "text=Hi.", f"out={tmp_path / 'hello.mp3'}"]))
    assert refused.value.fix.startswith("out=<name>.wav")


def test_timing_the_packed_products_leaves_torchs_global_rng_alone():
    """Unseeded synthesis follows torch's global RNG: PackedProducts' timing products must not draw from it."""
    import torch

    from xtts_ft.inference import PackedProducts

    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    PackedProducts().packed_is_faster(torch.ones(64, 256), 4)
    assert torch.equal(torch.rand(3), expected)
