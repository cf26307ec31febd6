import json

import pytest
import soundfile as sf

from tests.conftest import demo_overrides
from xtts_ft import prepare
from xtts_ft.config import compose
from xtts_ft.data.sample import read_manifest


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


def _prepare(tmp_path, root, formatter="coqui_csv"):
    overrides = [
        "data.name=t",
        f"data.sources=[{{path: {root}, formatter: {formatter}, language: en}}]",
        f"paths.processed_dir={tmp_path / 'out'}",
    ]
    return prepare.run(compose("prepare", overrides))


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


def test_bad_header_names_the_file(tmp_path):
    root = _corpus(tmp_path, ["wavs/a.wav|x|s1"], header="file|transcript")
    with pytest.raises(ValueError, match=r"metadata.csv:1"):
        _prepare(tmp_path, root)


def test_ljspeech_prefers_the_normalized_column(tmp_path):
    import numpy as np

    root = tmp_path / "lj"
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("LJ001|Dr. Smith, 1st|Doctor Smith, first\nLJ002|Plain text\n")
    for name in ("LJ001", "LJ002"):
        sf.write(root / "wavs" / f"{name}.wav", 0.3 * np.sin(np.linspace(0, 3000, 33075)).astype("float32"), 22050)
    out = _prepare(tmp_path, root, formatter="ljspeech")
    texts = sorted(s.text for s in read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl"))
    assert texts == ["Doctor Smith, first", "Plain text"]


def test_same_file_names_in_different_folders_do_not_collide(tmp_path):
    import numpy as np

    root = _corpus(tmp_path, ["s1/0001.wav|first speaker|s1", "s2/0001.wav|second speaker|s2",
                              "s1/0002.wav|first again|s1", "s2/0002.wav|second again|s2"])
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
    assert sample.extra["style"] == "calm" and sample.extra["source_line"].endswith(("metadata.csv:2", "metadata.csv:3"))
