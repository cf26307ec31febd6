import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.helpers.settings import demo_overrides
from xtts_ft.config import compose
from xtts_ft.data import clips, records
from xtts_ft.data.sample import read_manifest
from xtts_ft.stages import prepare


def test_demo_corpus_is_prepared(prepared):
    train = read_manifest(prepared / "train.jsonl")
    evaluation = read_manifest(prepared / "eval.jsonl")
    assert (len(train), len(evaluation)) == (37, 3)
    # Speaker-aware split: every speaker is in eval, and no clip is in both.
    assert {s.speaker for s in evaluation} == {"alicia", "andy", "annie"}
    assert not {s.audio for s in train} & {s.audio for s in evaluation}
    assert {s.language for s in train} == {"en", "fr"}
    for sample in train[:5]:
        info = sf.info(str(prepared / sample.audio))
        assert info.samplerate == 22050 and info.channels == 1
        assert info.frames / 22050 == pytest.approx(sample.duration, abs=1e-3)
        assert 0.5 <= sample.duration <= 11.6


def test_every_dropped_clip_has_a_reason(prepared):
    dropped = [json.loads(line) for line in (prepared / "dropped.jsonl").read_text().splitlines()]
    assert sorted(d["reason"] for d in dropped) == ["empty_text", "missing_file"]
    assert all(d["message"] and d["source_line"].endswith(tuple("0123456789")) for d in dropped)
    stats = json.loads((prepared / "stats.json").read_text())
    assert stats["train"]["clips"] == 37 and stats["eval"]["clips"] == 3
    assert stats["dropped"]["reasons"] == {"missing_file": 1, "empty_text": 1}
    assert stats["train"]["hours"] > 0.02


def test_split_is_deterministic(tmp_path, prepared):
    cfg = compose("prepare", demo_overrides(tmp_path))
    again = prepare.run(cfg)
    assert (again / "eval.jsonl").read_text() == (prepared / "eval.jsonl").read_text()
    assert (again / "train.jsonl").read_text() == (prepared / "train.jsonl").read_text()


def _corpus(tmp_path, rows, header="audio_file|text|speaker_name"):
    root = tmp_path / "corpus"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def _prepare(tmp_path, root, formatter="coqui_csv", source_extra="", overrides=("max_text_tokens=0",)):
    return prepare.run(
        compose(
            "prepare",
            [
                "data.name=t",
                f"data.sources=[{{path: {root}, formatter: {formatter}, language: en{source_extra}}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                *overrides,
            ],
        )
    )


def test_a_sample_rate_the_model_does_not_hear_is_warned_about(tmp_path, caplog):
    """sample_rate=16000 is written as asked (the user named it) but said to be one training resamples."""
    import numpy as np
    import soundfile as sf

    root = _corpus(tmp_path, ["wavs/a.wav|a clip long enough|s1", "wavs/b.wav|another clip here|s1"])
    for name in ("a", "b"):
        sf.write(root / "wavs" / f"{name}.wav", 0.1 * np.sin(np.arange(2 * 22050) / 8.0).astype(np.float32), 22050)
    with caplog.at_level("WARNING", logger="xtts_ft.stages.prepare"):
        out = _prepare(tmp_path, root, overrides=("max_text_tokens=0", "sample_rate=16000", "eval_fraction=0.5"))
    assert [r.getMessage() for r in caplog.records if "sample_rate=16000" in r.getMessage()] == [
        "sample_rate=16000: the clips are written at 16000 Hz, but XTTS's GPT, DVAE and speaker encoder hear 22050 Hz, so "
        "training resamples every clip (nothing above 8000 Hz survives) — fix: sample_rate=22050 (the default)"
    ]
    assert {sf.info(str(wav)).samplerate for wav in (out / "wavs").glob("*.wav")} == {16000}


def test_the_same_recording_under_two_names_is_said(tmp_path, caplog):
    """A copy of a clip, or the same samples in another format, is kept (the user decides) but named in a
    warning with both rows' lines: the same recording in train and eval inflates eval scores. A different
    clip of the same length is not."""
    import shutil

    import numpy as np
    import soundfile as sf

    root = _corpus(
        tmp_path,
        [
            "wavs/a.wav|the first clip|s1",
            "wavs/b.wav|the first clip again|s1",
            "wavs/c.flac|the first clip once more|s2",
            "wavs/d.wav|another clip|s2",
        ],
    )
    t = np.arange(2 * 22050) / 22050
    sf.write(root / "wavs" / "a.wav", (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050, subtype="PCM_16")
    shutil.copy(root / "wavs" / "a.wav", root / "wavs" / "b.wav")
    sf.write(root / "wavs" / "c.flac", sf.read(root / "wavs" / "a.wav", dtype="int16")[0], 22050, subtype="PCM_16")
    sf.write(root / "wavs" / "d.wav", (0.1 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 22050, subtype="PCM_16")
    with caplog.at_level("WARNING", logger="xtts_ft.data.dataset"):
        out = _prepare(tmp_path, root, overrides=("max_text_tokens=0", "eval_fraction=0.5"))
    [warning] = [r.getMessage() for r in caplog.records if "same audio" in r.getMessage()]
    csv = root / "metadata.csv"
    assert warning.startswith(
        f"2 clip(s) are the same audio as an earlier clip, e.g. {csv}:3 (b.wav) = {csv}:2 (a.wav); "
        f"{csv}:4 (c.flac) = {csv}:2 (a.wav) — kept;"
    )
    assert len(read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")) == 4


def test_bad_audio_and_paths_are_dropped_with_reasons(tmp_path):
    import numpy as np

    root = _corpus(
        tmp_path,
        [
            "wavs/a.wav|good one|s1",
            "wavs/b.wav|good two|s1",
            "wavs/short.wav|too short|s1",
            "wavs/broken.wav|not audio|s1",
            "wavs/a.wav|same file again|s1",
            "../outside.wav|escapes the root|s1",
        ],
    )
    tone = 0.3 * np.sin(np.linspace(0, 2000, 44100)).astype("float32")
    sf.write(root / "wavs" / "a.wav", tone, 44100)  # 44.1 kHz stereo source → 22.05 kHz mono
    sf.write(root / "wavs" / "b.wav", np.stack([tone, tone], axis=1), 44100)
    sf.write(root / "wavs" / "short.wav", tone[:4000], 44100)
    (root / "wavs" / "broken.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "outside.wav").write_bytes(b"")
    out = _prepare(tmp_path, root)
    reasons = sorted(json.loads(line)["reason"] for line in (out / "dropped.jsonl").read_text().splitlines())
    assert reasons == ["duplicate_audio", "outside_root", "too_short", "unreadable_audio"]
    kept = read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")
    assert len(kept) == 2
    assert sf.info(str(out / kept[0].audio)).samplerate == 22050


def test_too_few_clips_for_an_eval_split_is_a_clear_error(tmp_path):
    import numpy as np

    root = _corpus(tmp_path, ["wavs/a.wav|only one|s1"])
    sf.write(root / "wavs" / "a.wav", 0.3 * np.sin(np.linspace(0, 2000, 44100)).astype("float32"), 22050)
    with pytest.raises(ValueError, match="cannot build both a train and an eval split"):
        _prepare(tmp_path, root)
    assert not (tmp_path / "out" / "t").exists()  # nothing half-written is left behind


def test_eval_fraction_of_a_corpus_of_many_speakers_with_few_clips(caplog):
    """Common Voice's shape: 10 speakers x 2 clips. By default each speaker gives one clip (half the corpus,
    said); min_eval_per_speaker=0 takes eval_fraction of the whole corpus (was: each share rounds to none: an error)."""
    from xtts_ft.data.dataset import split_by_speaker
    from xtts_ft.data.sample import Sample

    samples = [Sample(f"wavs/{s}_{k}.wav", "text", f"spk{s}", "en", 2.0) for s in range(10) for k in range(2)]
    with caplog.at_level("WARNING", logger="xtts_ft.data.dataset"):
        train, evaluation = split_by_speaker(samples, compose("prepare", []))
    assert (len(train), len(evaluation)) == (10, 10)
    assert [r.getMessage()[:35] for r in caplog.records] == ["eval takes 10 of 20 clips (eval_fra"]
    train, evaluation = split_by_speaker(samples, compose("prepare", ["min_eval_per_speaker=0"]))
    assert (len(train), len(evaluation)) == (18, 2) and len({s.speaker for s in evaluation}) == 2
    assert split_by_speaker(samples, compose("prepare", ["min_eval_per_speaker=0"]))[1] == evaluation  # seeded
    with pytest.raises(ValueError, match="eval_fraction=0.0 with min_eval_per_speaker=0 gives no clip to eval"):
        split_by_speaker(samples, compose("prepare", ["min_eval_per_speaker=0", "eval_fraction=0"]))


def test_korean_texts_are_checked_as_xtts_reads_them(tiny_model_dir):
    """Training's tokenizer reads Korean romanized: prepare counted the Hangul's tokens."""
    from tokenizers import Tokenizer

    from xtts_ft.data.text import as_read, clean_text, token_ids

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "vocab.json"))
    text = "오늘 날씨가 정말 좋네요."
    assert as_read(clean_text(text, "ko"), "ko") == "oneul nal-ssiga jeongmal johne-yo."
    read = len(token_ids(tokenizer, as_read(clean_text(text, "ko"), "ko"), "ko"))
    assert read > len(token_ids(tokenizer, clean_text(text, "ko"), "ko"))
    assert records.check_text(text, "ko", compose("prepare", [f"max_text_tokens={read}"]), tokenizer) == clean_text(
        text, "ko"
    )
    with pytest.raises(clips.Rejected, match=f"{read} tokens > max_text_tokens={read - 1}"):
        records.check_text(text, "ko", compose("prepare", [f"max_text_tokens={read - 1}"]), tokenizer)


def test_chinese_texts_are_checked_as_pinyin(tiny_model_dir):
    """Training's tokenizer reads Chinese as pinyin: its tokens are counted on the pinyin, not the Hanzi."""
    pytest.importorskip("pypinyin", reason="coqui-tts[zh] (pypinyin) is not installed: Chinese is not read as pinyin")
    from tokenizers import Tokenizer

    from xtts_ft.data.text import as_read, clean_text, token_ids

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "vocab.json"))
    text = "今天天气很好。"
    assert as_read(clean_text(text, "zh"), "zh") == "jin1tian1tian1qi4hen3hao3,"
    read = len(token_ids(tokenizer, as_read(clean_text(text, "zh"), "zh"), "zh"))
    assert read > len(token_ids(tokenizer, clean_text(text, "zh"), "zh"))
    assert records.check_text(text, "zh", compose("prepare", [f"max_text_tokens={read}"]), tokenizer) == clean_text(
        text, "zh"
    )
    with pytest.raises(clips.Rejected, match=f"{read} tokens > max_text_tokens={read - 1}"):
        records.check_text(text, "zh", compose("prepare", [f"max_text_tokens={read - 1}"]), tokenizer)


def test_a_chinese_text_without_pypinyin_names_the_fix(tiny_model_dir, monkeypatch):
    """Without coqui-tts[zh], a Chinese text cannot be read as training reads it: the error says what to install.
    (pypinyin is hidden here whether or not it is installed: None in sys.modules makes its import fail.)"""
    from tokenizers import Tokenizer

    monkeypatch.setitem(sys.modules, "pypinyin", None)
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "vocab.json"))
    with pytest.raises(RuntimeError, match=r"XTTS reads 'zh' text as pinyin, .* — fix: pip install 'coqui-tts\[zh\]'"):
        records.check_text("你好。", "zh", compose("prepare", []), tokenizer)


def test_bad_header_names_the_file(tmp_path):
    root = _corpus(tmp_path, ["wavs/a.wav|x|s1"], header="file|transcript")
    with pytest.raises(ValueError, match=r"metadata.csv:1"):
        _prepare(tmp_path, root)


def test_ljspeech_prefers_the_normalized_column(tmp_path):
    import numpy as np

    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text(
        "LJ001|Dr. Smith, 1st|Doctor Smith, first\nLJ002|Plain text|\n"
    )  # empty: the text
    for name in ("LJ001", "LJ002"):
        sf.write(root / "wavs" / f"{name}.wav", 0.3 * np.sin(np.linspace(0, 3000, 33075)).astype("float32"), 22050)
    out = _prepare(tmp_path, root, formatter="ljspeech")
    texts = sorted(s.text for s in read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl"))
    assert texts == ["doctor smith, first", "plain text"]  # the normalized column, then the English cleaner


def test_same_file_names_in_different_folders_do_not_collide(tmp_path):
    import numpy as np

    root = _corpus(
        tmp_path,
        [
            "s1/0001.wav|first speaker|s1",
            "s2/0001.wav|second speaker|s2",
            "s1/0002.wav|first again|s1",
            "s2/0002.wav|second again|s2",
        ],
    )
    for folder, freq in (("s1", 2000), ("s2", 4000)):
        (root / folder).mkdir()
        for name in ("0001", "0002"):
            sf.write(root / folder / f"{name}.wav", 0.3 * np.sin(np.linspace(0, freq, 22050)).astype("float32"), 22050)
    out = _prepare(tmp_path, root)
    kept = read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")
    assert len({s.audio for s in kept}) == 4
    by_text = {s.text: sf.read(str(out / s.audio))[0] for s in kept}
    assert not np.allclose(by_text["first speaker"], by_text["second speaker"])


def test_extra_columns_travel_into_the_sample(tmp_path):
    import numpy as np

    root = _corpus(tmp_path, ["a.wav|one|s1|calm", "b.wav|two|s1|calm"], header="audio_file|text|speaker_name|style")
    for name in ("a", "b"):
        sf.write(root / f"{name}.wav", 0.3 * np.sin(np.linspace(0, 3000, 22050)).astype("float32"), 22050)
    out = _prepare(tmp_path, root)
    sample = read_manifest(out / "train.jsonl")[0]
    assert (
        sample.extra["style"] == "calm"
        and sample.extra["raw_text"] in ("one", "two")
        and sample.extra["source_line"].endswith(("metadata.csv:2", "metadata.csv:3"))
    )


def _tone(seconds=1.0, rate=22050, amplitude=0.3, channels=1):
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    wave = (amplitude * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype("float32")
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def _kept(out):
    return read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")


def test_vctk_layout(tmp_path):
    root = tmp_path / "vctk"
    for speaker in ("p225", "p226"):
        for i in (1, 2):
            (root / "txt" / speaker).mkdir(parents=True, exist_ok=True)
            (root / "txt" / speaker / f"{speaker}_00{i}.txt").write_text(f"Please call Stella {i}.\n")
            (root / "wav48_silence_trimmed" / speaker).mkdir(parents=True, exist_ok=True)
            mic = "mic2" if speaker == "p226" else "mic1"  # some copies hold only the second microphone's files
            sf.write(
                root / "wav48_silence_trimmed" / speaker / f"{speaker}_00{i}_{mic}.flac", _tone(rate=48000), 48000
            )
    sf.write(
        root / "wav48_silence_trimmed" / "p225" / "p225_001_mic2.flac", _tone(rate=48000) * 0, 48000
    )  # mic1 wins (this silence would be dropped)
    out = _prepare(tmp_path, root, formatter="vctk")
    kept = _kept(out)
    assert sorted((s.speaker, s.text) for s in kept) == [
        ("p225", "please call stella one."),
        ("p225", "please call stella two."),
        ("p226", "please call stella one."),
        ("p226", "please call stella two."),
    ]
    assert all(s.extra["source_rate"] == 48000 for s in kept)
    assert {sf.info(str(out / s.audio)).samplerate for s in kept} == {22050}


def test_common_voice_tsv(tmp_path):
    root = tmp_path / "cv"
    (root / "clips").mkdir(parents=True)
    rows = [
        "client_id\tpath\tsentence\tup_votes\tgender",
        "abc\ta.mp3.wav\tBonjour à tous.\t2\tfemale",
        "abc\tb.mp3.wav\tIl y a 3 chats.\t3\tfemale",
        "def\tc.mp3.wav\t\t1\tmale",
    ]
    (root / "validated.tsv").write_text("\n".join(rows) + "\n")
    for name in ("a", "b", "c"):
        sf.write(root / "clips" / f"{name}.mp3.wav", _tone(rate=48000, channels=2), 48000)
    out = prepare.run(
        compose(
            "prepare",
            [
                "data.name=cv",
                f"data.sources=[{{path: {root}, formatter: common_voice, language: fr, metadata: validated.tsv}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                "max_text_tokens=0",
            ],
        )
    )
    kept = _kept(out)
    assert sorted(s.text for s in kept) == ["bonjour à tous.", "il y a trois chats."]
    assert {s.speaker for s in kept} == {"abc"} and kept[0].extra["gender"] == "female"
    assert sf.info(str(out / kept[0].audio)).channels == 1
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["source_line"].rsplit(":", 1)[1]) for d in dropped] == [("empty_text", "4")]


@pytest.mark.parametrize("suffix", ["csv", "tsv", "jsonl"])
def test_generic_table_with_configured_columns(tmp_path, suffix):
    root = tmp_path / "tbl"
    root.mkdir()
    rows = [("x.wav", "First line.", "ann", "happy"), ("y.wav", "Second line.", "ann", "sad")]
    if suffix == "jsonl":
        text = "".join(json.dumps({"file": a, "sentence": t, "who": w, "mood": m}) + "\n" for a, t, w, m in rows)
    else:
        sep = "," if suffix == "csv" else "\t"
        text = "\n".join([sep.join(["file", "sentence", "who", "mood"])] + [sep.join(r) for r in rows]) + "\n"
    (root / f"meta.{suffix}").write_text(text)
    for name in ("x", "y"):
        sf.write(root / f"{name}.wav", _tone(rate=16000), 16000)
    columns = "{audio: file, text: sentence, speaker: who, emotion: mood}"
    out = _prepare(tmp_path, root, formatter="table", source_extra=f", metadata: meta.{suffix}, columns: {columns}")
    kept = sorted(_kept(out), key=lambda s: s.text)
    assert [(s.text, s.speaker, s.emotion) for s in kept] == [
        ("first line.", "ann", "happy"),
        ("second line.", "ann", "sad"),
    ]
    assert "mood" not in kept[0].extra and "file" not in kept[0].extra


def test_audiofolder(tmp_path):
    root = tmp_path / "af"
    root.mkdir()
    (root / "metadata.csv").write_text("file_name,transcription\none.wav,Hello there.\ntwo.wav,General Kenobi.\n")
    for name in ("one", "two"):
        sf.write(root / f"{name}.wav", _tone(rate=44100), 44100)
    out = _prepare(
        tmp_path, root, formatter="audiofolder", source_extra=", speaker: obi, columns: {text: transcription}"
    )
    assert sorted((s.text, s.speaker) for s in _kept(out)) == [("general kenobi.", "obi"), ("hello there.", "obi")]


def test_every_kind_of_bad_record_gets_its_reason(tmp_path, tiny_model_dir):
    import numpy as np

    root = _corpus(
        tmp_path,
        [
            "wavs/good1.wav|Dr. Smith paid $20.|s1",
            "wavs/good2.wav|It is easy to tell the depth of a well.|s1",
            "wavs/missing.wav|No file.|s1",
            "wavs/empty.wav|Empty audio.|s1",
            "wavs/truncated.wav|Cut short.|s1",
            "wavs/short.wav|Too short.|s1",
            "wavs/long.wav|Too long.|s1",
            "wavs/clipped.wav|Clipped.|s1",
            "wavs/cjk.wav|你好世界|s1",
            "wavs/many.wav|" + "word " * 120 + "|s1",
            "wavs/good1.wav|Duplicate.|s1",
            "../escape.wav|Outside.|s1",
            "wavs/blank.wav|   |s1",
        ],
    )
    w = root / "wavs"
    for name in ("good1", "good2", "cjk", "many"):
        sf.write(w / f"{name}.wav", _tone(seconds=1.5, rate=44100), 44100)
    sf.write(w / "empty.wav", np.zeros(0, dtype="float32"), 22050)
    sf.write(w / "truncated.wav", _tone(seconds=2.0), 22050)
    (w / "truncated.wav").write_bytes((w / "truncated.wav").read_bytes()[:30])
    sf.write(w / "short.wav", _tone(seconds=0.2), 22050)
    sf.write(w / "long.wav", _tone(seconds=13.0), 22050)
    sf.write(w / "clipped.wav", np.clip(_tone(seconds=1.5, amplitude=3.0), -1, 1), 22050)
    sf.write(w / "blank.wav", _tone(), 22050)
    (tmp_path / "escape.wav").write_bytes(b"")
    out = _prepare(tmp_path, root, overrides=[f"paths.models_dir={tiny_model_dir.parent}", "max_text_chars=1000"])
    dropped = {
        d["audio"].rsplit("/", 1)[-1] + ":" + d["source_line"].rsplit(":", 1)[1]: d["reason"]
        for d in map(json.loads, (out / "dropped.jsonl").read_text().splitlines())
    }
    assert dropped == {
        "missing.wav:4": "missing_file",
        "empty.wav:5": "unreadable_audio",
        "truncated.wav:6": "unreadable_audio",
        "short.wav:7": "too_short",
        "long.wav:8": "too_long",
        "clipped.wav:9": "clipped",
        "cjk.wav:10": "unknown_characters",
        "many.wav:11": "too_many_tokens",
        "good1.wav:12": "duplicate_audio",
        "escape.wav:13": "outside_root",
        "blank.wav:14": "empty_text",
    }
    kept = sorted(_kept(out), key=lambda s: s.text)
    assert [s.text for s in kept] == ["doctor smith paid twenty dollars.", "it is easy to tell the depth of a well."]
    assert kept[0].extra["raw_text"] == "Dr. Smith paid $20."
    assert all(sf.info(str(out / s.audio)).samplerate == 22050 for s in kept)
    message = [json.loads(row) for row in (out / "dropped.jsonl").read_text().splitlines() if "cjk" in row][0][
        "message"
    ]
    assert "你" in message


def test_decoder_copies_come_from_the_source_and_loudness_is_normalised(tmp_path):
    import pyloudnorm

    root = _corpus(tmp_path, ["wavs/hi.wav|High rate source.|s1", "wavs/lo.wav|Low rate source.|s1"])
    sf.write(root / "wavs" / "hi.wav", _tone(seconds=2.0, rate=48000, amplitude=0.05), 48000)
    sf.write(root / "wavs" / "lo.wav", _tone(seconds=2.0, rate=16000, amplitude=0.05), 16000)
    out = _prepare(tmp_path, root, overrides=["max_text_tokens=0", "decoder_copies=true", "loudness_lufs=-23"])
    for sample in _kept(out):
        audio, rate = sf.read(str(out / sample.audio))
        copy, copy_rate = sf.read(str(out / sample.extra["audio_24k"]))
        assert (rate, copy_rate) == (22050, 24000)
        assert copy.size / 24000 == pytest.approx(audio.size / 22050, abs=0.002)  # the same span
        assert pyloudnorm.Meter(22050).integrated_loudness(audio) == pytest.approx(-23, abs=0.5)
        assert sample.extra["band_limited"] == (sample.extra["source_rate"] < 24000)
    assert json.loads((out / "stats.json").read_text())["band_limited_clips"] == 1


def test_a_clip_the_peak_limit_keeps_below_the_loudness_target_is_reported(tmp_path, caplog):
    """A quiet tone with one loud click cannot reach -14 LUFS without peaks past -1 dBFS: kept at the limit
    and counted in a warning naming it; a steady tone reaches the target and is not."""
    import pyloudnorm

    root = _corpus(tmp_path, ["wavs/steady.wav|A steady tone.|s1", "wavs/click.wav|A quiet tone, one click.|s1"])
    sf.write(root / "wavs" / "steady.wav", _tone(seconds=2.0, rate=22050, amplitude=0.05), 22050)
    clicked = _tone(seconds=2.0, rate=22050, amplitude=0.02)
    clicked[22050] = 0.9
    sf.write(root / "wavs" / "click.wav", clicked, 22050, subtype="FLOAT")
    with caplog.at_level("WARNING", logger="xtts_ft.data.dataset"):
        out = _prepare(tmp_path, root, overrides=["max_text_tokens=0", "loudness_lufs=-14"])
    [warning] = [r.getMessage() for r in caplog.records if "loudness_lufs" in r.getMessage()]
    assert warning.startswith(
        "1 clip(s) stay below loudness_lufs=-14.0: reaching it would push their peaks past -1 dBFS"
    )
    assert f"{root / 'metadata.csv'}:3" in warning and "fix: a lower loudness_lufs (loudness_lufs=-" in warning
    loudness = {
        s.text: pyloudnorm.Meter(22050).integrated_loudness(sf.read(str(out / s.audio))[0]) for s in _kept(out)
    }
    assert loudness["a steady tone."] == pytest.approx(-14, abs=0.5) and loudness["a quiet tone, one click."] < -15


def test_a_ledger_line_from_before_digests_gets_its_clips_digest(tmp_path):
    """An interrupted run's ledger written before clips carried a digest: the resumed run hashes the clip it
    finds, so a repeated recording among those clips is still recognised. The digest it reads back must be
    the one the audio worker gave the same clip when it wrote it (two paths: either formula wrong fails)."""
    sf.write(tmp_path / "source.wav", _tone(seconds=1.5), 22050)
    (tmp_path / "wavs").mkdir()
    settings = clips.AudioSettings.from_config(compose("prepare", []))
    written = clips.run_audio_job(clips.AudioJob(tmp_path / "source.wav", "a.wav"), settings, tmp_path)
    assert isinstance(written, clips.ClipInfo) and len(written.digest) == 32
    old_line = {k: v for k, v in dataclasses.asdict(written).items() if k not in ("digest", "loudness_shortfall")}
    (tmp_path / ".done-1.jsonl").write_text(json.dumps({"name": "a.wav", **old_line}) + "\n")
    assert clips.read_done(tmp_path)["a.wav"].digest == written.digest


def test_worker_processes_give_the_same_dataset(tmp_path, prepared, workdir, monkeypatch):
    monkeypatch.setattr(clips, "CLIPS_PER_WORKER", 1)  # the demo is small: force two workers
    in_this_process = []  # the patch reaches this process only, not the spawned worker
    run_audio_job = clips.run_audio_job
    monkeypatch.setattr(
        clips, "run_audio_job", lambda job, *args: in_this_process.append(job.name) or run_audio_job(job, *args)
    )
    out = prepare.run(
        compose(
            "prepare",
            demo_overrides(tmp_path)[:2]
            + [f"paths.processed_dir={tmp_path}", f"paths.models_dir={workdir / 'models'}", "num_workers=2"],
        )
    )
    for name in ("train.jsonl", "eval.jsonl", "dropped.jsonl"):
        assert (out / name).read_text() == (prepared / name).read_text()
    # The worker really ran: at least the first chunk (queued to it at once, never taken back) was its.
    clip_count = len(
        (prepared / "train.jsonl").read_text().splitlines() + (prepared / "eval.jsonl").read_text().splitlines()
    )
    assert clip_count == 40 and len(in_this_process) <= clip_count - clips.CHUNK
    first = sorted((prepared / "wavs").iterdir())[0]
    assert (out / "wavs" / first.name).read_bytes() == first.read_bytes()


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hugging_face_dataset(tmp_path, layout):
    datasets = pytest.importorskip("datasets")
    import io

    clips = []
    for i, rate in enumerate((16000, 48000, 44100)):
        buffer = io.BytesIO()
        sf.write(buffer, _tone(seconds=1.2, rate=rate), rate, format="FLAC")
        clips.append({"bytes": buffer.getvalue(), "path": f"clip{i}.flac"})
    table = {"audio": clips, "sentence": ["Hello there.", "It costs $5.", ""], "spk": ["a", "a", "b"]}
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio(decode=False))
    path = tmp_path / "ds"
    if layout == "save_to_disk":
        dataset.save_to_disk(str(path))
    else:
        path.mkdir()
        dataset.to_parquet(str(path / "train.parquet"))
    out = prepare.run(
        compose(
            "prepare",
            [
                "data.name=hf",
                f"data.sources=[{{path: {path}, formatter: hf, language: en, columns: {{audio: audio, text: sentence, speaker: spk}}}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                "max_text_tokens=0",
            ],
        )
    )
    kept = sorted(_kept(out), key=lambda s: s.text)
    assert [(s.text, s.speaker) for s in kept] == [("hello there.", "a"), ("it costs five dollars.", "a")]
    assert {s.extra["source_rate"] for s in kept} == {16000, 48000}
    assert all(sf.info(str(out / s.audio)).samplerate == 22050 for s in kept)
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert [(d["reason"], d["source_line"].endswith("[train][2]")) for d in dropped] == [("empty_text", True)]

    # Another version of the dataset (row 0's audio changed) is not served from the old cache.
    buffer = io.BytesIO()
    sf.write(buffer, _tone(seconds=2.5, rate=16000), 16000, format="FLAC")
    table["audio"][0] = {"bytes": buffer.getvalue(), "path": "clip0.flac"}
    dataset = datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio(decode=False))
    if layout == "save_to_disk":
        shutil.rmtree(path)
        dataset.save_to_disk(str(path))
    else:
        dataset.to_parquet(str(path / "train.parquet"))
    out = prepare.run(
        compose(
            "prepare",
            [
                "data.name=hf",
                f"data.sources=[{{path: {path}, formatter: hf, language: en, columns: {{audio: audio, text: sentence, speaker: spk}}}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                "max_text_tokens=0",
            ],
        )
    )
    hello = next(s for s in _kept(out) if s.text == "hello there.")
    assert hello.duration == pytest.approx(2.5, abs=0.05)


@pytest.mark.parametrize("caller_works", [False, True])
def test_audio_workers_keep_job_order(tmp_path, monkeypatch, caller_works):
    """Spawned workers and this process share the chunks; results and files are those of one process."""
    monkeypatch.setattr(clips, "CLIPS_PER_WORKER", 1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    jobs = []
    for i in range(21):  # 3 chunks of 8 (the last one short), one unreadable file in the middle
        path = corpus / f"c{i}.wav"
        if i == 10:
            path.write_bytes(b"not audio")
        else:
            sf.write(path, _tone(seconds=0.6 + 0.05 * i, rate=44100), 44100)
        jobs.append(clips.AudioJob(path, f"c{i}.wav"))
    settings = clips.AudioSettings(22050, 0.5, 11.0, 40.0, 0.01, None, False)

    def run(out: Path, num_workers: int, **kwargs):
        with clips.AudioWorkers(settings, out, num_workers, expected_jobs=len(jobs), **kwargs) as workers:
            for job in jobs:
                workers.submit(job)
            return workers, workers.results()

    alone, expected = run(tmp_path / "one", 1)
    assert alone.pool is None
    shared, results = run(tmp_path / "two", 2, caller_works=caller_works)
    assert shared.spawned == (1 if caller_works else 2)
    assert [r.samples if isinstance(r, clips.ClipInfo) else r.reason for r in results] == [
        r.samples if isinstance(r, clips.ClipInfo) else r.reason for r in expected
    ]
    assert results[10].reason == "unreadable_audio" and results[9].samples < results[11].samples
    assert not shared.chunks[0][2].cancelled()  # the first chunk went through the worker process, whoever else worked
    if not caller_works:  # every chunk went through a worker process
        assert [(first, end) for first, end, _ in shared.chunks] == [(0, 8), (8, 16), (16, 21)]
        assert not any(future.cancelled() for *_, future in shared.chunks)
    for job in jobs[:10] + jobs[11:]:
        assert (tmp_path / "two" / "wavs" / job.name).read_bytes() == (
            tmp_path / "one" / "wavs" / job.name
        ).read_bytes()


def _resume_corpus(tmp_path):
    """20 good clips of distinct lengths over 2 speakers and one unreadable file (21 audio jobs)."""
    rows = [f"wavs/c{i:02d}.wav|clip number {i}|s{i % 2}" for i in range(20)] + ["wavs/bad.wav|not audio|s0"]
    root = _corpus(tmp_path, rows)
    for i in range(20):
        sf.write(root / "wavs" / f"c{i:02d}.wav", _tone(seconds=0.6 + 0.05 * i, rate=44100), 44100)
    (root / "wavs" / "bad.wav").write_bytes(b"RIFF....garbage")
    return root


def _count_audio_jobs(monkeypatch, fail_at=None):
    calls = []
    run_audio_job = clips.run_audio_job

    def counted(job, cfg, out):
        calls.append(job.name)
        if len(calls) == fail_at:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C here
        return run_audio_job(job, cfg, out)

    monkeypatch.setattr(clips, "run_audio_job", counted)
    return calls


def test_a_rerun_on_unchanged_input_does_nothing_and_a_change_redoes_it(tmp_path, monkeypatch, capsys):
    root = _resume_corpus(tmp_path)
    out = _prepare(tmp_path, root)
    first = {name: (out / name).read_text() for name in ("train.jsonl", "eval.jsonl", "dropped.jsonl", "stats.json")}
    calls = _count_audio_jobs(monkeypatch)
    assert _prepare(tmp_path, root) == out
    assert calls == [] and "is up to date" in capsys.readouterr().out
    assert {name: (out / name).read_text() for name in first} == first
    assert prepare.is_done(
        compose(
            "prepare",
            [
                "data.name=t",
                f"data.sources=[{{path: {root}, formatter: coqui_csv, language: en}}]",
                f"paths.processed_dir={tmp_path / 'out'}",
                "max_text_tokens=0",
            ],
        )
    )

    sf.write(root / "wavs" / "c03.wav", _tone(seconds=2.0, rate=44100), 44100)  # one clip re-recorded
    _prepare(tmp_path, root)
    assert len(calls) == 21
    durations = {s.extra["raw_text"]: s.duration for s in _kept(out)}
    assert durations["clip number 3"] == pytest.approx(2.0, abs=0.05)

    _prepare(tmp_path, root, overrides=("max_text_tokens=0", "trim_top_db=30"))  # another setting
    assert len(calls) == 42
    _prepare(tmp_path, root, overrides=("max_text_tokens=0", "trim_top_db=30", "force=true"))
    assert len(calls) == 63
    assert not list((tmp_path / "out").glob(".t.partial")) and not list(out.glob(".done-*")) + list(
        out.glob(".staging-*")
    )


def test_an_interrupted_run_leaves_no_dataset_and_the_next_run_continues_it(tmp_path, monkeypatch, capsys):
    root = _resume_corpus(tmp_path)
    reference = prepare.run(
        compose(
            "prepare",
            [
                "data.name=t",
                f"data.sources=[{{path: {root}, formatter: coqui_csv, language: en}}]",
                f"paths.processed_dir={tmp_path / 'reference'}",
                "max_text_tokens=0",
            ],
        )
    )
    unpatched = clips.run_audio_job
    _count_audio_jobs(monkeypatch, fail_at=11)  # one process: the first chunk of 8 is done, the second is not
    with pytest.raises(KeyboardInterrupt):
        _prepare(tmp_path, root)
    partial = tmp_path / "out" / ".t.partial"
    assert not (tmp_path / "out" / "t").exists() and partial.is_dir()
    assert len(clips.read_done(partial)) == 8

    monkeypatch.setattr(clips, "run_audio_job", unpatched)
    calls = _count_audio_jobs(monkeypatch)
    out = _prepare(tmp_path, root)
    assert len(calls) == 21 - 8 and "resuming an interrupted run: 8 clip(s)" in capsys.readouterr().out
    for name in ("train.jsonl", "eval.jsonl", "dropped.jsonl"):
        assert (out / name).read_text() == (reference / name).read_text()
    assert sorted(p.name for p in (out / "wavs").iterdir()) == sorted(p.name for p in (reference / "wavs").iterdir())
    for wav in (reference / "wavs").iterdir():
        assert (out / "wavs" / wav.name).read_bytes() == wav.read_bytes()
    assert not partial.exists() and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_two_runs_on_one_dataset_at_once_are_refused(tmp_path):
    from xtts_ft.io_utils import FileLock

    root = _resume_corpus(tmp_path)
    with FileLock(tmp_path / "out" / ".t.lock", "held by {holder}"):
        with pytest.raises(RuntimeError, match=r"out/t is being written by another process \(pid \d+"):
            _prepare(tmp_path, root)


def test_a_rebuild_says_which_settings_changed_and_keeps_the_old_dataset_until_done(tmp_path, caplog):
    """Was: `xtts-ft demo` after `prepare validate_transcripts=true` rebuilt the dataset without validation, and
    said nothing (issue 31, item 2)."""
    import logging

    rows = [f"wavs/c{i}.wav|clip number {i}|s{i % 2}" for i in range(4)]
    root = _corpus(tmp_path, rows)
    for i in range(5):
        sf.write(root / "wavs" / f"c{i}.wav", _tone(seconds=0.8 + 0.1 * i), 22050)

    def rebuilding(*overrides):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="xtts_ft.stages.prepare"):
            out = _prepare(tmp_path, root, overrides=("max_text_tokens=0", *overrides))
        return out, [r.getMessage() for r in caplog.records if "rebuilding" in r.getMessage()]

    out, said = rebuilding()
    assert said == []  # a first build has nothing to explain
    stats = json.loads((out / "stats.json").read_text())
    assert stats["inputs"]["records"] == 4 and stats["config"]["seed"] == 0  # the settings themselves, kept
    assert rebuilding() == (out, [])  # up to date: no rebuild
    assert rebuilding("seed=1", "min_seconds=0.4")[1] == [
        f"prepare: rebuilding {out} — settings changed: min_seconds 0.5 → 0.4, seed 0 → 1"
    ]

    (root / "metadata.csv").write_text("\n".join(["audio_file|text|speaker_name", *rows, "wavs/c4.wav|one more|s0"]))
    assert rebuilding("seed=1", "min_seconds=0.4")[1] == [
        f"prepare: rebuilding {out} — the corpus changed (5 records, 4 before)"
    ]

    # A dataset written before stats.json kept `inputs`, by `prepare validate_transcripts=true`: the demo's
    # prepare, with the default, names the setting it undoes.
    stats = json.loads((out / "stats.json").read_text())
    stats["config"]["validate_transcripts"] = True
    stats["input_key"] = "made with other settings"
    del stats["inputs"]
    (out / "stats.json").write_text(json.dumps(stats))
    assert rebuilding("seed=1", "min_seconds=0.4")[1] == [
        f"prepare: rebuilding {out} — settings changed: validate_transcripts true → false"
    ]

    # A rebuild that fails leaves the dataset it would have replaced as it was.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="cannot build both a train and an eval split"):
        rebuilding("seed=1", "min_seconds=5")
    assert caplog.records[0].getMessage() == f"prepare: rebuilding {out} — settings changed: min_seconds 0.4 → 5.0"
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
