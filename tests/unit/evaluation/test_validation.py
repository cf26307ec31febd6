"""Transcript validation in prepare (xtts_ft.evaluation.validation): swapped transcripts are found by the
bundled English ASR on the demo corpus, languages without ASR are said to be not validated."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers.settings import DEMO
from xtts_ft.config import compose
from xtts_ft.data.sample import read_manifest
from xtts_ft.evaluation import validation
from xtts_ft.stages import prepare

SWAPS = [("andy_002", "andy_009"), ("andy_004", "andy_011")]


@pytest.fixture(scope="module")
def swapped_corpus(tmp_path_factory) -> Path:
    """The demo's English speaker `andy` with two pairs of transcripts swapped."""
    root = tmp_path_factory.mktemp("swapped")
    (root / "wavs").symlink_to(DEMO / "en" / "wavs")
    header, *rows = (DEMO / "en" / "metadata.csv").read_text().splitlines()
    rows = [r.split("|") for r in rows if r.endswith("|andy")]
    by_clip = {Path(r[0]).stem: r for r in rows}
    for a, b in SWAPS:
        by_clip[a][1], by_clip[b][1] = by_clip[b][1], by_clip[a][1]
    (root / "metadata.csv").write_text("\n".join([header, *("|".join(r) for r in rows)]) + "\n")
    return root


def _validate(tmp_path: Path, corpus: Path, *overrides) -> Path:
    return prepare.run(
        compose(
            "prepare",
            [
                "data.name=checked",
                f"data.sources=[{{path: {corpus}, formatter: coqui_csv, language: en}}, "
                f"{{path: {DEMO / 'fr'}, formatter: coqui_csv, language: fr}}]",
                f"paths.processed_dir={tmp_path}",
                "max_text_tokens=0",
                "validate_transcripts=true",
                *overrides,
            ],
        )
    )


@pytest.fixture(scope="module")
def validated(tmp_path_factory, swapped_corpus) -> Path:
    return _validate(tmp_path_factory.mktemp("processed"), swapped_corpus)


def _rows(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_swapped_transcripts_are_dropped_exactly(validated):
    mismatched = [d for d in _rows(validated / "dropped.jsonl") if d["reason"] == "transcript_mismatch"]
    assert sorted(Path(d["audio"]).stem for d in mismatched) == sorted(clip for pair in SWAPS for clip in pair)
    for entry in mismatched:  # what the ASR heard, beside the transcript it contradicts
        assert entry["asr_cer"] > 0.5 and entry["asr_text"] and "max_transcript_cer=0.5" in entry["message"]
    swapped = {d["audio"].split("/")[-1]: d for d in mismatched}
    # andy_002's row carries andy_009's text ("The juice of lemons ..."); the ASR hears what andy_002 says.
    assert "sea shore" in swapped["andy_002.flac"]["asr_text"].lower() and swapped["andy_002.flac"]["text"].startswith(
        "The juice"
    )
    kept = read_manifest(validated / "train.jsonl") + read_manifest(validated / "eval.jsonl")
    english = [s for s in kept if s.language == "en"]
    assert len(english) == 10 and all(0 <= s.extra["asr_cer"] <= 0.5 and s.extra["asr_text"] for s in english)
    assert not any("asr_cer" in s.extra for s in kept if s.language == "fr")  # never scored by an English model


def test_validation_summary_and_report(validated):
    summary = json.loads((validated / "stats.json").read_text())["transcript_validation"]
    assert summary["clips"] == 14 and summary["above_max"] == 4 and summary["dropped"] == 4
    assert summary["asr"] == {"en": "faster-whisper `Whisper tiny.en, bundled` (en)"}
    assert summary["not_validated"] == {
        "fr": "12 clip(s); no ASR for fr: transcript_asr=bundled is an English-only Whisper"
    }
    assert summary["speed"] > 0 and summary["transcribed_seconds"] >= summary["audio_seconds"] > 30
    stats = json.loads((validated / "stats.json").read_text())
    assert stats["dropped"]["reasons"]["transcript_mismatch"] == 4
    report = (validated / "validation.md").read_text()
    assert (
        "- `fr`: not validated — 12 clip(s); no ASR for fr: transcript_asr=bundled is an English-only Whisper"
        in report
    )
    worst = [line for line in report.splitlines() if line.startswith("| 0.") or line.startswith("| 1.")]
    assert len(worst) == 14 and all(stem in "".join(worst[:4]) for pair in SWAPS for stem in pair)


def test_flag_keeps_the_clips_and_the_cache_transcribes_nothing_again(tmp_path, swapped_corpus, validated):
    cache = validated.parent / "cache"
    (tmp_path / "cache").symlink_to(cache)  # the first run's transcripts, by clip and model
    out = _validate(tmp_path, swapped_corpus, "transcript_action=flag")
    kept = read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")
    flagged = sorted(s.audio.split("__")[-1][: -len(".wav")] for s in kept if s.extra.get("transcript_mismatch"))
    assert flagged == sorted(clip for pair in SWAPS for clip in pair) and not any(
        d["reason"] == "transcript_mismatch" for d in _rows(out / "dropped.jsonl")
    )
    summary = json.loads((out / "stats.json").read_text())["transcript_validation"]
    assert summary["flagged"] == 4 and summary["transcribed_seconds"] == 0 and summary["speed"] is None


def test_a_bad_action_is_refused_before_any_work(tmp_path, swapped_corpus):
    with pytest.raises(ValueError, match="transcript_action=keep is not an action"):
        _validate(tmp_path, swapped_corpus, "transcript_action=keep")
    assert not (tmp_path / "checked").exists()


def test_clips_are_packed_into_30_second_windows():
    assert validation.pack([3.0] * 10) == [list(range(8)), [8, 9]]  # 8 x (3 s + 0.5 s gap) = 28 s
    assert validation.pack([31.0, 2.0]) == [[0], [1]]  # a clip longer than a window goes alone
    # Longest first into the first window with room: 2 windows where corpus order needs 3 ([0], [1], [2, 3]).
    assert validation.pack([10.0, 25.0, 10.0, 5.0]) == [[0, 2, 3], [1]]
    # One voice per window (Whisper skips ahead at a change of voice), whatever the corpus order...
    assert validation.pack([10.0, 10.0, 10.0, 10.0], voices=["a", "b", "a", "b"]) == [[0, 2], [1, 3]]
    # ...but voices with too little audio to fill half a window share one: many speakers with a few
    # clips each (Common Voice) cost about the windows their audio needs, not a window per speaker.
    assert validation.pack([3.0] * 40, voices=[f"speaker{i}" for i in range(40)]) == [
        list(range(k, k + 8)) for k in range(0, 40, 8)
    ]


class SkippingWhisper:
    """A stand-in for faster-whisper's batched pipeline that, in a window of several clips, hears only
    the last (as Whisper sometimes jumps ahead at a change of voice) and, alone, hears each clip."""

    def __init__(self, stop_early_in=(), closed_after=(), closed_late=()):
        self.calls = []  # each window heard
        self.stop_early_in = stop_early_in  # clips whose window Whisper stops before their end
        self.closed_after = closed_after  # ...or stops early, but after a timestamp closed past their sound
        self.closed_late = closed_late  # ...or after a closing timestamp that lies in the next clip's audio
        self.ended = []
        self.model = self

    def transcribe(self, audio, **options):
        assert options["temperature"] == 0.0 and options["word_timestamps"] and not options["without_timestamps"]
        segments, self.ended, self.closed = [], [], []
        for span in options["clip_timestamps"]:
            start = span["start"]
            window = audio[round(start * 16000) : round(span["end"] * 16000)]
            self.calls.append(window.size)
            clips = [int(v) for v in np.unique(window[window > 0])]  # each fake clip is a constant value
            ends = start + np.cumsum([np.count_nonzero(window == v) + 8000 for v in clips]) / 16000
            heard = clips[-1:] if len(clips) > 1 else clips
            words = [
                SimpleNamespace(word=f" clip{v}", start=ends[clips.index(v)] - 1.0, end=ends[clips.index(v)] - 0.9)
                for v in heard
            ]
            self.ended.append(not (len(clips) > 1 and heard[-1] in self.stop_early_in))
            closed = words[-1].end  # the last closing timestamp: after the last word heard...
            if (
                heard[-1] in self.closed_after or heard[-1] in self.closed_late
            ):  # ...or after the clip's sound (ends - gap)
                closed = ends[clips.index(heard[-1])] + (1.0 if heard[-1] in self.closed_late else -0.45)
            self.closed.append(closed - start)  # from the window's start
            segments.append(SimpleNamespace(words=words, seek=int(start * 100)))
        return segments, None


def _transcribe(model, clips, monkeypatch) -> list:
    monkeypatch.setattr(validation, "whisper_pipeline", lambda _: model)
    texts = {}
    validation.transcribe_packed(model, clips.__getitem__, [c.size / 16000 for c in clips], "en", False, texts.update)
    return [texts[k] for k in range(len(clips))]


def test_clips_whisper_skipped_are_heard_again(monkeypatch):
    model = SkippingWhisper()
    clips = [np.full(16000, v, np.float32) for v in (1, 2, 3)]
    assert _transcribe(model, clips, monkeypatch) == ["clip1", "clip2", "clip3"]
    assert len(model.calls) == 3  # 1-3 packed (hears 3), 1-2 packed (hears 2), then 1 alone


def test_a_clip_whisper_stopped_in_is_heard_again(monkeypatch):
    model = SkippingWhisper(stop_early_in=[2])
    clips = [np.full(16000, v, np.float32) for v in (1, 2)]
    assert _transcribe(model, clips, monkeypatch) == ["clip1", "clip2"]
    assert len(model.calls) == 4  # 1-2 packed (stops in 2) twice, then each alone


def test_a_clip_whose_timestamp_closed_before_whisper_stopped_is_not_heard_again(monkeypatch):
    """Whisper stopped early in the window, but its last closing timestamp lies after clip 2's last sound
    (clip 2 was heard to its end): only clip 1, which it skipped, is heard again."""
    model = SkippingWhisper(stop_early_in=[2], closed_after=[2])
    clips = [np.full(16000, v, np.float32) for v in (1, 2)]
    assert _transcribe(model, clips, monkeypatch) == ["clip1", "clip2"]
    assert len(model.calls) == 2  # 1-2 packed (hears 2 whole), then 1 alone

    # A closing timestamp a second past the clip and its gap is not trusted: clip 2 is heard again.
    model = SkippingWhisper(stop_early_in=[2], closed_late=[2])
    assert _transcribe(model, clips, monkeypatch) == ["clip1", "clip2"]
    assert len(model.calls) == 4


def test_clips_heard_alone_are_packed_alone():
    assert validation.pack([3.0] * 4, alone=[1]) == [[0, 2, 3], [1]]


def test_each_clips_speaker_reaches_the_packing(monkeypatch, tmp_path):
    """hear() → transcribe_clips → transcribe_packed → pack: the manifest's speakers decide the windows."""
    from xtts_ft.data.sample import Sample
    from xtts_ft.evaluation import asr

    model, seen = SkippingWhisper(), []
    packing = validation.pack
    monkeypatch.setattr(
        validation,
        "pack",
        lambda seconds, alone=(), voices=None: seen.append(voices) or packing(seconds, alone, voices),
    )
    monkeypatch.setattr(validation, "whisper_pipeline", lambda _: model)
    monkeypatch.setattr(asr, "whisper_model", lambda *a, **k: model)
    monkeypatch.setattr(
        validation, "load_audio", lambda path, rate: np.full(10 * 16000, int(Path(path).stem), np.float32)
    )
    samples = []
    for k, voice in enumerate(["a", "b", "a", "b"], start=1):
        (tmp_path / f"{k}.wav").write_bytes(bytes([k]))  # hashed for the cache; load_audio above makes the sound
        samples.append(Sample(audio=f"{k}.wav", text=f"clip{k}", speaker=voice, language="en", duration=10.0))
    choice = asr.Asr(model="stand-in", backend="whisper", language="en")
    summary = {"transcribed_seconds": 0.0}
    checks = validation.hear(
        choice, samples, tmp_path, SimpleNamespace(max_transcript_cer=0.5), tmp_path / "cache", summary
    )
    assert seen[0] == ["a", "b", "a", "b"]
    assert model.calls[:2] == [2 * (10 + 0.5) * 16000] * 2  # first pass: clips 1+3 (voice a), 2+4 (voice b)
    assert [c.asr_text for c in checks] == ["clip1", "clip2", "clip3", "clip4"]


def test_a_segment_within_one_clips_span_belongs_to_it_whole():
    bounds = np.array([0.0, 3.5, 7.0])  # a window's start, then each clip's end with the 0.5 s gap after it
    assert validation.within_one_clip(0.1, 3.2, bounds) and validation.within_one_clip(3.6, 6.8, bounds)
    assert validation.within_one_clip(3.3, 7.1, bounds)  # timestamps a little early, or late at the window's end
    assert not validation.within_one_clip(0.1, 3.7, bounds)  # past clip 1's gap: into clip 2's first word
    assert not validation.within_one_clip(2.0, 5.0, bounds)  # runs over clip 1's end into clip 2
    assert not validation.within_one_clip(0.5, 6.5, bounds)


def _hear_demo_windows(monkeypatch, straddles) -> tuple:
    """Two windows of the demo's real speech through the bundled tiny.en, with `straddles(bounds)`
    saying which windows' segments run over a clip's edge; the texts and the windows aligned."""
    from faster_whisper import WhisperModel

    from xtts_ft.data.audio import load_audio
    from xtts_ft.evaluation import asr

    aligned = []
    find_alignment = WhisperModel.find_alignment
    monkeypatch.setattr(
        WhisperModel,
        "find_alignment",
        lambda self, tokenizer, tokens, *a, **k: (
            aligned.append(len(tokens)) or find_alignment(self, tokenizer, tokens, *a, **k)
        ),
    )
    if straddles is not None:  # None: the real rule decides
        monkeypatch.setattr(validation, "within_one_clip", lambda start, end, bounds: not straddles(bounds))
    clips = [load_audio(DEMO / "en" / "wavs" / f"andy_00{k}.flac", asr.ASR_RATE) for k in range(4)]
    model = asr.whisper_model(asr.BUNDLED, cpu_threads=1)
    heard = validation.hear_windows(validation.whisper_pipeline(model), [clips[:2], clips[2:]], "en")
    return heard, aligned


def test_words_are_aligned_only_in_windows_where_a_segment_runs_over_a_clips_edge(monkeypatch):
    every, aligned_every = _hear_demo_windows(monkeypatch, lambda bounds: True)
    assert aligned_every == [2]  # both windows in one alignment call, as faster-whisper does it
    second, aligned_second = _hear_demo_windows(monkeypatch, lambda bounds: bounds[0] > 0)
    assert aligned_second == [1]  # the second window only
    none, aligned_none = _hear_demo_windows(monkeypatch, lambda bounds: False)
    assert aligned_none == []
    # Whisper put a segment boundary in each gap between these clips, so the real rule aligns nothing,
    # and words and whole segments go to the same clips: the texts are the same whichever windows were aligned.
    real, aligned_real = _hear_demo_windows(monkeypatch, None)
    assert aligned_real == []
    assert every == second == none == real
    assert all(text and whole for window in every for text, whole in window)
