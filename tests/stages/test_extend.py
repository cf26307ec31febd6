"""New languages and emotion tokens: the Wolof cleaner, `xtts-ft extend`, training with emotion
labels, inference with language="wo"/emotion=, plain coqui-tts loading, and the tiny recipes."""

import json
import shutil

import numpy as np
import pytest
import torch

from tests.helpers.settings import REPO, demo_overrides
from xtts_ft.config import compose
from xtts_ft.data.cleaners.wolof import number_to_words
from xtts_ft.data.text import clean_text

WOLOF_DEMO = REPO / "data" / "wolof_demo"
EMOTION_DEMO = REPO / "data" / "emotion_demo"
EMOTIONS = ["neutral", "happy", "sad", "angry", "whisper"]


# --- the Wolof cleaner ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "number, words",
    [
        (1, "benn"),
        (5, "juróom"),
        (6, "juróom-benn"),
        (9, "juróom-ñeent"),
        (10, "fukk"),
        (16, "fukk ak juróom-benn"),
        (20, "ñaar-fukk"),
        (30, "fanweer"),
        (47, "ñeent-fukk ak juróom-ñaar"),
        (100, "téeméer"),
        (300, "ñetti téeméer"),
        (1000, "junni"),
        (2026, "ñaari junni ak ñaar-fukk ak juróom-benn"),
        (0, "tus"),
    ],
)
def test_wolof_numbers(number, words):
    assert number_to_words(number) == words


def test_wolof_cleaner_spells_numbers_abbreviations_and_symbols_and_is_idempotent():
    cases = {
        "Am na 6 xar ak 10 bëy.": "am na juróom-benn xar ak fukk bëy.",
        "Dr. Ndiaye dafa dem Tuubaa.": "doktoor ndiaye dafa dem tuubaa.",
        "« Na nga def ? »": "na nga def?",
        "Jërëjëf, ba beneen yoon etc.": "jërëjëf, ba beneen yoon ak yeneen.",
        "50 %": "juróom-fukk ci téeméer",
        "2 000 000": "ñaari tamndareet",
        "3,5": "ñett koma juróom",
        "3.5 kilo": "ñett koma juróom kilo",  # a decimal point reads as the comma does, not as a full stop
        "1.500 nit": "junni ak juróomi téeméer nit",  # a dot before three digits separates thousands
        "Tàngay -5 degre, 2-3 fan": "tàngay mines juróom degre, ñaar - ñett fan",  # a minus sign; a range is not one
        "Waa jiʼ dem na, ‘waaw’": "waa ji' dem na, 'waaw'",  # the modifier-letter apostrophe too
        "Ci 12.05.2023": "ci fukk ak ñaar. juróom. ñaari junni ak ñaar-fukk ak ñett",  # a date is not a decimal
        "0.250": "tus koma ñaar juróom tus",  # a thousands group never starts with 0
        "Woo 77 123 45 67": "woo juróom-ñaar-fukk ak juróom-ñaar téeméer ak ñaar-fukk ak ñett ñeent-fukk ak juróom "
        "juróom-benn-fukk ak juróom-ñaar",  # a phone number is read group by group
        "n°5, 10°C": "nimero juróom, fukk degre c",  # an abbreviation before a digit; a symbol before a letter
        "$100 walla 5 000 $": "téeméer dolaar walla juróomi junni dolaar",  # the currency after the amount
        "$1 000, $5-10": "junni dolaar, dolaar juróom - fukk",  # a grouped amount; a range keeps its sign first
        "Woo 33 821 00 00, 12 345 678": "woo fanweer ak ñett juróom-ñetti téeméer ak ñaar-fukk ak benn tus tus tus tus, fukk ak "
        "ñaari tamndareet ak ñetti téeméer ak ñeent-fukk ak juróomi junni ak juróom-benni "
        "téeméer ak juróom-ñaar-fukk ak juróom-ñett",  # zeros one by one; thousands stay
        "Nº 5": "nimero juróom",
        "Ndax no ko def? No 5, 3Mme Diop": "ndax no ko def? nimero juróom, ñett madaam diop",  # "no" only before a number
        # A range between amounts with a sign or unit: no minus sign.
        "Ñu ngi ci 30%-40%, 500€-700€.": "ñu ngi ci fanweer ci téeméer - ñeent-fukk ci téeméer, juróomi téeméer euro - "
        "juróom-ñaari téeméer euro.",
        "Kod bi 0042, 007": "kod bi tus tus ñeent-fukk ak ñaar, tus tus juróom-ñaar",  # leading zeros are said
        "Am na 1½ kilo, ¼ bi, 50‰, 20 m²": "am na benn ak benn ci ñaar kilo, benn ci ñeent bi, juróom-fukk ci junni, ñaar-fukk m ñaar",
        "1,000,000 nit, 1,234.56": "tamndareet nit, junni ak ñaari téeméer ak fanweer ak ñeent koma juróom juróom-benn",  # English
        "+221 77 123 45 67, +5°C, 2+3": "ñaari téeméer ak ñaar-fukk ak benn juróom-ñaar-fukk ak juróom-ñaar téeméer ak ñaar-fukk ak "
        "ñett ñeent-fukk ak juróom juróom-benn-fukk ak juróom-ñaar, juróom degre c, ñaar ak ñett",
        "Sëriñ Tuubaa ak شَيْخ": "sëriñ tuubaa ak شَيْخ",  # Wolofal keeps its vowel signs
        "15h30, 8 h": "fukk ak juróom waxtu ak fanweer, juróom-ñett waxtu",
        "...Waaw… dégg naa.": "waaw. dégg naa.",  # the one-character ellipsis as "...", no pause before the first word
        "Ndar, etc., te ñëw.": "ndar, ak yeneen, te ñëw.",  # the abbreviation's dot before a comma is not a full stop
        "[Ndiaye] dafa dem.": "ndiaye dafa dem.",  # brackets around a name are not an emotion token
        "[5]": "juróom",
        "$1,000,000, €1,234.56": "tamndareet dolaar, junni ak ñaari téeméer ak fanweer ak ñeent koma juróom juróom-benn euro",
        "8h00, 15h05, 1h30mn": "juróom-ñett waxtu, fukk ak juróom waxtu ak juróom, benn waxtu ak fanweer",
        "10², Orange™ ak Free, 1º": "fukk ñaar, orange ak free, benn",  # nothing glued on by NFKC
        "1½-2": "benn ak benn ci ñaar - ñaar",
        # A slashed fraction as a vulgar one; a date's slashes are not fractions.
        "1/2 kilo, xët 2/10, 12/05/2024": "benn ci ñaar kilo, xët ñaar ci fukk, fukk ak ñaar juróom ñaari junni ak ñaar-fukk ak ñeent",
        "£5, ¥100, 5 000 ₦": "juróom pound, téeméer yen, juróomi junni naira",  # currencies by name, after the amount
        # Ordinals: the Wolof suffix, its connective, the French suffixes; the first is njëkk.
        "1er bi, 2e bi, 3ème, 21eel, 2eelu xët wi": "njëkk bi, ñaareel bi, ñetteel, ñaar-fukk ak benneel, ñaareelu xët wi",
        "N°2e, 2e-3e, 2nde, 2èmes": "nimero ñaareel, ñaareel - ñetteel, ñaareel, ñaareel",  # a range of ordinals, not a minus
        # A day before its month is no fraction (the larger number first, or the month's zero); 5/5 is one.
        "15/08, 31/12, 24/7, 5/5": "fukk ak juróom juróom-ñett, fanweer ak benn fukk ak ñaar, ñaar-fukk ak ñeent juróom-ñaar, juróom ci juróom",
        "£5-£10": "juróom pound - fukk pound",  # a range between amounts, not a minus
    }
    for raw, clean in cases.items():
        assert clean_text(raw, "wo") == clean, raw
        assert clean_text(clean, "wo") == clean, f"not idempotent on {clean!r}"
    # A language code as configs and datasets write it: any case, a region after - or _.
    assert clean_text("Dr. Ndiaye 5", "WO") == clean_text("Dr. Ndiaye 5", "wo_SN") == "doktoor ndiaye juróom"
    assert clean_text("[happy]Hello", "en") == "[happy]hello"  # an emotion token's name stays as written
    for raw, language in (("[Laughs] ok", "en"), ("[5] hi", "en"), ("[bég] waaw", "wo"), ("आज 2024, में 5वां", "hi")):
        clean = clean_text(raw, language)
        assert clean_text(clean, language) == clean, f"not idempotent on {raw!r} ({language})"
    assert (
        clean_text("आज 2024, में 5वां", "hi") == "आज 2024, में 5वां"
    )  # (num2words has no Hindi: digits stay, spaced as written)


# --- extend -----------------------------------------------------------------------------------


def wolof_overrides(workdir):
    return [o for o in demo_overrides(workdir) if o.startswith("paths.")] + [
        "data=wolof_demo",
        f"data.sources.0.path={WOLOF_DEMO}",
        f"data.sources.1.path={REPO / 'data' / 'demo' / 'en'}",
    ]


@pytest.fixture(scope="module")
def wolof_prepared(workdir, tiny_model_dir):
    from xtts_ft.stages import prepare

    return prepare.run(compose("prepare", wolof_overrides(workdir) + ["model=tiny"]))


@pytest.fixture(scope="module")
def extended(workdir, wolof_prepared):
    from xtts_ft.stages import extend

    cfg = compose(
        "extend",
        wolof_overrides(workdir) + ["model=tiny", "languages=[wo]", "emotions=[happy,sad]", "bpe_vocab_size=200"],
    )
    return extend.run(cfg)


def test_prepare_keeps_wolof_text_the_base_vocabulary_lacks(wolof_prepared):
    dropped = [json.loads(line) for line in (wolof_prepared / "dropped.jsonl").read_text().splitlines()]
    assert not [d for d in dropped if d["language"] == "wo"]
    wolof = [json.loads(line) for line in (wolof_prepared / "train.jsonl").read_text().splitlines() if '"wo"' in line]
    assert len(wolof) >= 24 and any("juróom-benn" in s["text"] for s in wolof)  # "6" spelled by the Wolof cleaner


def test_extend_keeps_every_token_id_and_embedding_row(extended, tiny_model_dir):
    old_vocab = json.loads((tiny_model_dir / "vocab.json").read_text())
    new_vocab = json.loads((extended / "vocab.json").read_text())
    old_ids = {**old_vocab["model"]["vocab"], **{t["content"]: t["id"] for t in old_vocab["added_tokens"]}}
    new_ids = {**new_vocab["model"]["vocab"], **{t["content"]: t["id"] for t in new_vocab["added_tokens"]}}
    assert all(new_ids[token] == i for token, i in old_ids.items())
    assert new_vocab["model"]["merges"][: len(old_vocab["model"]["merges"])] == old_vocab["model"]["merges"]
    n_old, n_new = len(old_ids), len(new_ids)
    assert n_new > n_old + 3 and {"[wo]", "[happy]", "[sad]"} <= set(new_ids)

    old = torch.load(tiny_model_dir / "model.pth", weights_only=True)["model"]
    new = torch.load(extended / "model.pth", weights_only=True)["model"]
    for key in ("gpt.text_embedding.weight", "gpt.text_head.weight", "gpt.text_head.bias"):
        assert new[key].shape[0] == n_new
        assert torch.equal(new[key][:n_old], old[key]), key  # bit-for-bit
    untouched = [k for k in old if not k.startswith(("gpt.text_embedding", "gpt.text_head"))]
    assert all(torch.equal(old[k], new[k]) for k in untouched)

    # New rows start from what the model already knows, not noise.
    embedding = old["gpt.text_embedding.weight"]
    languages = [
        old_ids[f"[{x}]"]
        for x in (
            "en",
            "es",
            "fr",
            "de",
            "it",
            "pt",
            "pl",
            "tr",
            "ru",
            "nl",
            "cs",
            "ar",
            "zh-cn",
            "hu",
            "ko",
            "ja",
            "hi",
        )
    ]
    assert torch.allclose(new["gpt.text_embedding.weight"][new_ids["[wo]"]], embedding[languages].mean(0))
    from tokenizers import Tokenizer

    old_tokenizer = Tokenizer.from_file(str(tiny_model_dir / "vocab.json"))
    bpe_token = next(t for t, i in new_vocab["model"]["vocab"].items() if i >= n_old and len(t) > 2)
    pieces = old_tokenizer.encode(bpe_token).ids
    assert len(pieces) > 1 and torch.allclose(
        new["gpt.text_embedding.weight"][new_ids[bpe_token]], embedding[pieces].mean(0)
    )

    config = json.loads((extended / "config.json").read_text())
    assert config["languages"][-1] == "wo" and config["model_args"]["gpt_number_text_tokens"] == n_new
    record = json.loads((extended / "xtts_ft.json").read_text())["extension"]
    assert record["languages"] == ["wo"] and record["emotion_tokens"] == ["happy", "sad"]
    assert record["char_limits"] == {"wo": 250} and record["cleaners"] == {"wo": "wolof_cleaner"}
    assert record["added_tokens"] == n_new - n_old


def test_the_wolof_corpus_tokenizes_without_unk(extended, wolof_prepared):
    from xtts_ft.data.sample import read_manifest
    from xtts_ft.model.layout import read_sidecar
    from xtts_ft.model.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(extended, read_sidecar(extended))
    texts = [
        s.text
        for split in ("train", "eval")
        for s in read_manifest(wolof_prepared / f"{split}.jsonl")
        if s.language == "wo"
    ]
    assert len(texts) == 28
    unk = tokenizer.tokenizer.token_to_id("[UNK]")
    for text in texts:
        ids = tokenizer.encode(text, "wo")
        assert ids[0] == tokenizer.tokenizer.token_to_id("[wo]") and unk not in ids, text
    ids = tokenizer.encode("[happy]na nga def?", "wo")
    assert ids[:2] == [tokenizer.tokenizer.token_to_id("[wo]"), tokenizer.tokenizer.token_to_id("[happy]")]
    assert ids[2:] == tokenizer.encode("na nga def?", "wo")[1:]  # the tag is not text
    with pytest.raises(ValueError, match="no \\[angry\\] emotion token; its emotion tokens: happy, sad"):
        tokenizer.encode("waaw", "wo", emotion="angry")


def test_characters_the_vocabulary_lacks_are_reported_once(extended, caplog):
    """Text with a letter no Wolof corpus here has (ɓ, Pulaar's) still encodes — coqui's way, as
    [UNK] — but not silently: one warning names the letter, however many sentences carry it."""
    from xtts_ft.model.layout import read_sidecar
    from xtts_ft.model.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(extended, read_sidecar(extended))
    unk = tokenizer.tokenizer.token_to_id("[UNK]")
    with caplog.at_level("WARNING", logger="xtts_ft.model.tokenizer"):
        assert unk not in tokenizer.encode("Waa jiʼ dem na.", "wo")  # cleaned to an apostrophe the corpus has
        assert not caplog.records
        for text in ("Ɓaawo dem na.", "Ɓaawo dem na ca kaw."):
            assert unk in tokenizer.encode(text, "wo")
    warnings = [r.getMessage() for r in caplog.records]
    assert (
        len(warnings) == 1
        and "[wo] text 'ɓaawo dem na.'" in warnings[0]
        and "lacks: ɓ — each is read as [UNK]" in warnings[0]
    )


def test_extending_twice_or_without_the_corpus_language_is_refused(workdir, extended, wolof_prepared):
    from xtts_ft.errors import BadValue, FileInTheWay
    from xtts_ft.stages import extend

    cfg = compose("extend", wolof_overrides(workdir) + ["model=tiny", "languages=[wo]"])
    with pytest.raises(FileInTheWay, match="wolof_demo-extended exists") as refused:
        extend.run(cfg)
    assert "overwrite=true" in refused.value.fix
    cfg = compose("extend", wolof_overrides(workdir) + ["model=tiny", "languages=[ff]", f"out_dir={workdir / 'ff'}"])
    with pytest.raises(BadValue, match="no 'ff' text"):
        extend.run(cfg)
    # overwrite=true replaces only a model extend wrote: never a folder a typo names.
    mine = workdir / "my-notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    cfg = compose(
        "extend", wolof_overrides(workdir) + ["model=tiny", "languages=[wo]", f"out_dir={mine}", "overwrite=true"]
    )
    with pytest.raises(FileInTheWay, match="is not a model extend wrote"):
        extend.run(cfg)
    assert (mine / "notes.txt").read_text() == "mine"


# --- train, export, infer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def wolof_export(workdir, extended):
    from xtts_ft.stages import export, train_gpt

    overrides = wolof_overrides(workdir) + [
        f"model.source={extended}",
        "model.build_tiny=false",
        "model.name=wo",
        "run_name=wolof",
        "max_steps=6",
        "lr=1e-3",
        "eval_every=0",
        "save_every=6",
        "+language_weights={en: 0.5}",
    ]
    train_gpt.run(compose("train_gpt", overrides))
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    return export.run(compose("export", paths + ["run_name=wolof"]))


def test_wolof_export_records_the_extension_and_the_card_shows_the_coqui_hook(wolof_export):
    record = json.loads((wolof_export / "xtts_ft.json").read_text())
    assert "wo" in record["languages"] and record["emotion_tokens"] == ["happy", "sad"]
    assert record["extension"]["char_limits"] == {"wo": 250}
    card = (wolof_export / "README.md").read_text()
    assert "model.tokenizer.preprocess_text = lambda txt, lang" in card and 'char_limits["wo"] = 250' in card
    assert '"[happy]Hello there."' in card


def test_plain_coqui_loads_the_wolof_export_and_encodes_wolof_with_the_documented_hook(wolof_export):
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    from xtts_ft.inference import XttsSynthesizer

    config = XttsConfig()
    config.load_json(str(wolof_export / "config.json"))
    model = Xtts(config)
    model.load_checkpoint(config, checkpoint_dir=str(wolof_export), eval=True)  # weights and vocabulary
    ours = XttsSynthesizer(wolof_export, device="cpu")
    assert torch.equal(model.gpt.text_embedding.weight, ours.model.gpt.text_embedding.weight)
    with pytest.raises(NotImplementedError):
        model.tokenizer.encode("Na nga def?", "wo")  # coqui alone refuses the language
    # The hook the model card shows, in the user's code:
    coqui_preprocess = model.tokenizer.preprocess_text
    model.tokenizer.preprocess_text = lambda txt, lang: (
        clean_text(txt, lang) if lang in ("wo",) else coqui_preprocess(txt, lang)
    )
    model.tokenizer.char_limits["wo"] = 250
    for text in ("Na nga def? Am na 6 xar.", "[happy]Jërëjëf."):
        assert model.tokenizer.encode(text, "wo") == ours.model.tokenizer.encode(text, "wo")
    assert model.tokenizer.encode("[happy]hello", "en") == ours.model.tokenizer.encode("hello", "en", emotion="happy")


def test_our_module_speaks_wolof_with_an_emotion_token(wolof_export):
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(wolof_export, device="cpu")
    reference = WOLOF_DEMO / "wavs" / "awa_001.flac"
    seen = []
    encode = synthesizer.model.tokenizer.encode
    synthesizer.model.tokenizer.encode = lambda txt, lang, emotion=None: (
        seen.append((txt, lang)) or encode(txt, lang, emotion)
    )
    plain = synthesizer.synthesize("Na nga def?", "wo", reference=reference, decoding={"seed": 0})
    happy = synthesizer.synthesize("Na nga def?", "wo", reference=reference, emotion="happy", decoding={"seed": 0})
    # Each text twice: the length check (as coqui will read it), then coqui's inference, which lower-cases before encoding.
    assert seen == [("na nga def?", "wo")] * 2 + [("[happy]na nga def?", "wo")] * 2
    for result in (plain, happy):
        assert result.sample_rate == 24000 and result.wav.size > 0 and np.isfinite(result.wav).all()
    with pytest.raises(ValueError, match="no emotion 'angry': emotion tokens: happy, sad; emotion presets: none"):
        synthesizer.synthesize("Na nga def?", "wo", reference=reference, emotion="angry")


def test_a_model_without_the_language_names_the_ones_it_has(synthesizer, prepared):
    reference = WOLOF_DEMO / "wavs" / "awa_001.flac"
    with pytest.raises(ValueError, match=r"language 'wo' is not in this model's config.languages: en, es, fr"):
        synthesizer.synthesize("Na nga def?", "wo", reference=reference)


def test_emotion_labels_become_tokens_in_front_of_the_text(extended, tmp_path):
    from xtts_ft.data.batches import encode_samples
    from xtts_ft.data.sample import Sample
    from xtts_ft.model.layout import read_sidecar
    from xtts_ft.model.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(extended, read_sidecar(extended))
    clip = "wavs/awa_000.flac"  # as a manifest in WOLOF_DEMO would name it (a manifest's clips lie inside its folder)
    samples = [
        Sample(clip, "na nga def?", "awa", "wo", 1.0, emotion="happy"),
        Sample(clip, "na nga def?", "awa", "wo", 1.0),
    ]
    items, skipped = encode_samples(samples, tokenizer, 200, 22050 * 12, WOLOF_DEMO / "train.jsonl")
    happy = tokenizer.tokenizer.token_to_id("[happy]")
    assert (
        not skipped
        and items[0].text_tokens[1] == happy
        and items[0].text_tokens[2:].tolist() == items[1].text_tokens[1:].tolist()
    )
    with pytest.raises(
        ValueError, match="emotion label\\(s\\) angry have no token in the model \\(its emotion tokens: happy, sad\\)"
    ):
        encode_samples(
            [Sample(clip, "waaw", "awa", "wo", 1.0, emotion="angry")], tokenizer, 200, 22050 * 12, tmp_path / "t.jsonl"
        )


def test_emotion_presets_work_on_an_unextended_model(exported, tmp_path):
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.stages.export import add_emotion_presets

    export_dir = tmp_path / "export"
    shutil.copytree(exported, export_dir)
    whisper = EMOTION_DEMO / "wavs" / "whisper_000.flac"
    assert add_emotion_presets(export_dir, {"whisper": str(whisper)}) == ["whisper"]
    synthesizer = XttsSynthesizer(export_dir, device="cpu")
    assert synthesizer.emotion_tokens == [] and list(synthesizer.emotion_presets) == ["whisper"]
    reference = EMOTION_DEMO / "wavs" / "neutral_000.flac"
    voice = synthesizer.clone_voice(reference)
    styled, token = synthesizer.with_emotion(voice, "whisper")
    assert token is None  # no token: the preset alone carries the emotion
    assert torch.equal(
        styled.gpt_cond_latent, synthesizer.clone_voice(whisper).gpt_cond_latent
    )  # prosody from the preset
    assert torch.equal(styled.speaker_embedding, voice.speaker_embedding)  # timbre from the voice
    plain = synthesizer.synthesize("Hello there.", "en", reference=reference, decoding={"seed": 1})
    styled_audio = synthesizer.synthesize(
        "Hello there.", "en", reference=reference, emotion="whisper", decoding={"seed": 1}
    )
    assert styled_audio.wav.size > 0 and not (
        plain.wav.size == styled_audio.wav.size and np.allclose(plain.wav, styled_audio.wav)
    )


# --- the tiny recipes, end to end -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, data, check",
    [
        ("wolof/tiny", "wolof_demo", lambda record: "wo" in record["languages"]),
        (
            "emotion/tiny",
            "emotion_demo",
            lambda record: record["emotion_tokens"] == EMOTIONS and record["emotion_presets"] == ["sad", "whisper"],
        ),
    ],
)
def test_tiny_recipe_runs_end_to_end(tmp_path, monkeypatch, recipe, data, check):
    from xtts_ft.stages import pipeline

    monkeypatch.chdir(REPO)  # the recipes name the shipped corpora relative to the repository
    paths = [f"paths.{k}={tmp_path / k}" for k in ("processed_dir", "runs_dir", "exports_dir", "models_dir")]
    cfg = compose("pipeline", [f"recipe={recipe}"])
    cfg.overrides = paths + ["max_steps=12", "eval_every=12", "save_every=12", "max_utterances=2"]
    report = pipeline.run(cfg)
    assert [r["stage"] for r in report][:5] == ["prepare", "extend", "train_gpt", "train_decoder", "export"]
    assert not any(r["skipped"] for r in report)
    record = json.loads((tmp_path / "exports_dir" / data / "xtts_ft.json").read_text())
    assert check(record) and record["training"]["gpt_steps"] == 12 and record["training"]["decoder_steps"] == 12
    assert (tmp_path / "runs_dir" / data / "eval" / "report.md").is_file()
    import soundfile as sf

    wav = next((tmp_path / "runs_dir" / data / "synth").glob("*.wav"))
    audio, rate = sf.read(wav)
    assert rate == 24000 and audio.size > 0
    again = pipeline.run(cfg)  # every stage done: all skipped
    assert all(r["skipped"] for r in again)


@pytest.mark.slow
def test_evaluate_scores_wolof_with_the_ctc_model_configured_for_it(wolof_export, wolof_prepared, workdir, tmp_path):
    """Whisper has no Wolof: a (tiny, local) MMS-like CTC model configured for wo gives a Wolof CER."""
    from tests.helpers.speech import build_tiny_mms
    from xtts_ft.stages import evaluate

    mms = build_tiny_mms(workdir / "models" / "tiny-mms")
    cfg = compose(
        "evaluate",
        [
            f"checkpoint={wolof_export}",
            f"manifest={wolof_prepared / 'eval.jsonl'}",
            f"out_dir={tmp_path}",
            "languages=[wo]",
            "max_utterances=4",
            "write_metrics=false",
            f"asr={{default: bundled, wo: {mms}}}",
        ],
    )
    table = evaluate.run(cfg)
    assert set(table["language"]) == {"wo"} and (table["asr"] == f"transformers `{mms}` (wol)").all()
    assert (table["transcript"] == "ñ").all()  # the wol adapter's head, from the model's directory
    assert table["cer"].notna().all() and (table["cer"] > 0.5).all()
    assert f"- `wo`: transformers `{mms}` (wol)" in (tmp_path / "report.md").read_text()
