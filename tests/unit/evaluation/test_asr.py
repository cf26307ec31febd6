"""The ASR layer (xtts_ft.evaluation.asr) on a tiny MMS-like CTC model built and saved here: the real
transformers loading path (vocab.json per language, adapter.<lang>.safetensors, target_lang)."""

import json

import numpy as np
import pytest

from tests.helpers.speech import ALPHABETS, FAVOURITE, SPECIAL, espeak  # noqa: F401
from xtts_ft.evaluation import asr, metrics


def test_each_language_gets_its_own_asr_or_is_not_scored(tiny_mms):
    config = {"default": "bundled", "wo": {"model": str(tiny_mms)}, "de": None}
    assert asr.resolve(config, "wo") == asr.Asr(str(tiny_mms), "transformers", "wol")  # ISO 639-1 wo -> MMS's wol
    assert asr.resolve(config, "en") == asr.Asr("bundled", "whisper", "en")
    choice, why = asr.choose(config, "fr")
    assert choice is None and why == "no ASR for fr: asr.default=bundled is an English-only Whisper"
    assert asr.choose(config, "de") == (None, "no ASR for de: asr names no model for it and no default")
    # A multilingual Whisper knows French but not Wolof; an MMS-like default knows what its vocabulary has.
    assert asr.resolve({"default": "large-v3"}, "fr") == asr.Asr("large-v3", "whisper", "fr")
    assert asr.choose("large-v3", "wo")[1] == "no ASR for wo: Whisper has no language 'wo' (asr=large-v3)"
    assert asr.resolve({"default": str(tiny_mms)}, "fr").language == "fra"
    assert (
        asr.choose({"default": str(tiny_mms)}, "de")[1]
        == f"no ASR for de: {tiny_mms} has no language 'deu' (asr.default)"
    )
    # An explicit backend code wins; "zh-cn" falls back to the entry for "zh".
    assert asr.resolve({"wo": {"model": "facebook/mms-1b-all", "language": "wol"}}, "wo").language == "wol"
    assert asr.resolve({"zh": "large-v3"}, "zh-cn") == asr.Asr("large-v3", "whisper", "zh")
    with pytest.raises(ValueError, match=r"asr.wo=\{'modle': 'x'\}: an entry is .*unknown keys: modle"):
        asr.choose({"wo": {"modle": "x"}}, "wo")


def test_a_one_language_model_is_not_a_default(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({**SPECIAL, "a": 5}))  # one flat vocabulary: one language
    assert asr.choose({"default": str(tmp_path)}, "fr")[1].endswith(
        "is a one-language model: name the language it is for"
    )
    assert asr.resolve({"fr": str(tmp_path)}, "fr") == asr.Asr(str(tmp_path), "transformers", "fr")


def test_require_names_the_setting_and_the_fix():
    with pytest.raises(
        ValueError,
        match=r"eval_asr_model: no ASR for fr: eval_asr_model=bundled is an English-only Whisper — "
        r"fix: eval_asr_model=\{default: \.\.\., fr: <model>\}",
    ):
        asr.require("bundled", "fr", setting="eval_asr_model")


def test_mms_like_model_loads_by_path_and_honours_the_language(tiny_mms):
    audio, rate = espeak("Na nga def?", "fr")
    assert asr.transcribe(audio, rate, "wo", {"wo": str(tiny_mms)}) == "ñ"  # the wol adapter and vocabulary
    assert asr.transcribe(audio, rate, "fr", {"fr": str(tiny_mms)}) == "e"  # the fra ones, from the same directory
    pipe = asr.transformers_pipeline(str(tiny_mms), "wol")
    assert pipe.tokenizer.target_lang == "wol" and pipe.model.lm_head.out_features == len(SPECIAL) + len(
        ALPHABETS["wol"]
    )


@pytest.mark.parametrize("rate", [22050, 24000, 16000])
def test_audio_reaches_the_model_at_16_khz(tiny_mms, monkeypatch, rate):
    real = asr.transformers_pipeline(str(tiny_mms), "wol")
    heard = []

    def spy(model, target_lang):
        def call(inputs, **kwargs):
            heard.append((inputs["sampling_rate"], inputs["raw"].size))
            return real(inputs, **kwargs)

        call.model = real.model
        return call

    monkeypatch.setattr(asr, "transformers_pipeline", spy)
    asr.transcribe(np.zeros(rate, np.float32), rate, "wo", {"wo": str(tiny_mms)})  # one second
    assert heard == [(16000, 16000)]


def test_word_timestamps_refuse_a_language_an_english_only_whisper_cannot_hear():
    # What prepare hands the long-recording segmenter: a clear error before any model loads.
    with pytest.raises(ValueError, match="English-only and cannot transcribe 'wo'"):
        asr.transcribe_words(np.zeros(asr.ASR_RATE, np.float32), "wo-SN", asr.BUNDLED)


def test_cer_compares_texts_cleaned_by_the_language():
    # Wolof's cleaner writes numbers in words: "6" is what an ASR hears as "juróom-benn".
    assert metrics.cer("Am na 6 xar.", "am na juróom benn xar", "wo") == 0.0
    assert (
        metrics.cer("Am na 6 xar.", "am na juróom benn xar") > 0.4
    )  # without the cleaner, formatting counts as errors
    assert metrics.cer("I have 2 dogs.", "i have two dogs", "en") == 0.0
    assert metrics.wer("I have 2 dogs.", "i have two dogs", "en") == 0.0


@pytest.mark.hub
def test_mms_from_the_hub_transcribes_wolof():
    audio, rate = espeak("Na nga def? Maa ngi fi rekk.", "fr")
    choice = asr.require({"wo": "facebook/mms-1b-all"}, "wo")
    assert choice.language == "wol"
    transcript = choice.transcribe(audio, rate)
    assert transcript and metrics.cer("Na nga def? Maa ngi fi rekk.", transcript, "wo") < 0.9
