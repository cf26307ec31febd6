"""Transcript validation for `prepare validate_transcripts=true`: does each clip say its text?

Every kept clip is transcribed by the ASR configured for its language (`transcript_asr`, the same
per-language choice as evaluate's `asr`, xtts_ft.evaluation.asr) and its CER against the cleaned transcript
computed with the language's own cleaner on both sides. A language no ASR knows is not validated,
and said so: never scored by a model of another language.

Whisper always hears a 30 s window (shorter audio is padded to it), so transcribing 3 s clips one
by one spends ten times the compute on silence. Clips are packed into windows of up to 30 s (one
voice per window, longest clips first: few, full windows), separated by half a second of silence,
transcribed with timestamps, and each word goes back to the clip its midpoint lies in (a segment
whose timestamps lie within one clip goes to it whole: words are aligned only in windows where a
segment runs over a clip's edge); faster-whisper's batched pipeline encodes and decodes several windows per call, and a batch per
core runs side by side. Other backends (CTC models) cost what the audio lasts, so they take clip
by clip. Transcripts are cached per clip (a hash of its processed WAV)
and model, so a re-run, or a run with another threshold, transcribes nothing again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple

import numpy as np

from xtts_ft.console import progress
from xtts_ft.data.audio import load_audio
from xtts_ft.data.sample import Sample
from xtts_ft.errors import ConfigValueError
from xtts_ft.evaluation import asr, metrics
from xtts_ft.io_utils import file_hash

log = logging.getLogger(__name__)

ACTIONS = ("drop", "flag")
WINDOW_SECONDS = 30.0  # what Whisper's encoder hears at once
GAP_SECONDS = 0.5  # silence between packed clips: word timestamps never straddle two clips
BATCH_WINDOWS = 8  # windows decoded together: on CPU a decoding step for 8 costs about 4 steps for one
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
WORKERS = min(CORES, 8)  # batches heard side by side, one thread each: no core waits on another
FRAMES_PER_SECOND = 100  # Whisper's feature frames, the unit of a segment's `seek`
HEARD_SLACK = 0.1  # s: a closing timestamp may fall this much before the clip's last sound
SEGMENT_SLACK = 0.2  # s: a segment may start or end this much outside its clip's span and still be the clip's alone
WORST_LISTED = 20


@dataclass
class Checked:
    """One clip's check: what the ASR heard, and its CER against the clip's text."""

    asr_text: str
    asr_cer: float


def check_settings(cfg) -> None:
    if cfg.transcript_action not in ACTIONS:
        raise ConfigValueError(
            f"transcript_action={cfg.transcript_action} is not an action",
            fix="transcript_action=drop (clips above max_transcript_cer are dropped as transcript_mismatch) or flag "
            "(kept, marked transcript_mismatch in the manifest)",
        )
    if not cfg.max_transcript_cer > 0:
        raise ConfigValueError(
            f"max_transcript_cer={cfg.max_transcript_cer}: a CER above which a clip's transcript is "
            "taken as wrong, > 0 (e.g. 0.5)"
        )


def check_transcripts(
    samples: Sequence[Sample], root: Path, cfg, cache_dir: Path
) -> Tuple[List[Optional[Checked]], dict]:
    """Each sample's check (None where its language has no ASR) and the summary for stats.json."""
    checks: List[Optional[Checked]] = [None] * len(samples)
    summary: Dict[str, Any] = {
        "action": cfg.transcript_action,
        "max_cer": cfg.max_transcript_cer,
        "asr": {},
        "not_validated": {},
        "clips": 0,
        "audio_seconds": 0.0,
        "transcribed_seconds": 0.0,
        "asr_seconds": 0.0,
    }
    languages = dict.fromkeys(s.language for s in samples)
    for language in languages:
        choice, why_not = asr.choose(cfg.transcript_asr, language, "transcript_asr")
        indices = [i for i, s in enumerate(samples) if s.language == language]
        if choice is None:
            summary["not_validated"][language] = f"{len(indices)} clip(s); {why_not}"
            continue
        summary["asr"][language] = choice.describe()
        started = time.perf_counter()
        for i, check in zip(indices, hear(choice, [samples[i] for i in indices], root, cfg, cache_dir, summary)):
            checks[i] = check
        summary["asr_seconds"] += time.perf_counter() - started
        summary["clips"] += len(indices)
        summary["audio_seconds"] += sum(samples[i].duration for i in indices)
    summary["speed"] = (
        round(summary["transcribed_seconds"] / summary["asr_seconds"], 1) if summary["transcribed_seconds"] else None
    )
    for key in ("audio_seconds", "transcribed_seconds", "asr_seconds"):
        summary[key] = round(summary[key], 2)
    scored = [c.asr_cer for c in checks if c is not None]
    summary["mean_cer"] = round(float(np.mean(scored)), 4) if scored else None
    summary["above_max"] = sum(1 for c in scored if c > cfg.max_transcript_cer)
    return checks, summary


def hear(
    choice: asr.Asr, samples: Sequence[Sample], root: Path, cfg, cache_dir: Path, summary: dict
) -> List[Optional[Checked]]:
    """Each sample checked: packed with its neighbours first (fast); one that looks mismatched is heard
    again alone and judged by the better of the two hearings, so only a clip both find wrong is."""

    def checked(subset: List[int], solo: bool) -> List[Optional[Checked]]:
        paths, seconds = [root / samples[i].audio for i in subset], [samples[i].duration for i in subset]
        voices = [samples[i].speaker for i in subset]
        texts, fresh = transcribe_clips(choice, paths, seconds, TranscriptCache(cache_dir, choice, solo), voices)
        summary["transcribed_seconds"] += fresh
        return [score(samples[i], text) for i, text in zip(subset, texts)]

    checks = checked(list(range(len(samples))), solo=False)
    suspects = [i for i, c in enumerate(checks) if is_mismatch(c, cfg)] if choice.backend == "whisper" else []
    for i, again in zip(suspects, checked(suspects, solo=True) if suspects else []):
        checks[i] = min(checks[i], again, key=lambda c: c.asr_cer)
    return checks


def score(sample: Sample, heard: str) -> Optional[Checked]:
    """CER with the text's own language cleaning both sides, whatever code the ASR was given ("wol"
    for MMS); None for a text with nothing to score once punctuation is gone ("...")."""
    if not metrics.normalize_for_scoring(sample.text, sample.language):
        return None
    return Checked(heard, round(metrics.cer(sample.text, heard, sample.language), 4))


def is_mismatch(check: Optional[Checked], cfg) -> bool:
    return check is not None and check.asr_cer > cfg.max_transcript_cer


# --- transcribing ------------------------------------------------------------------------------


class TranscriptCache:
    """Transcripts by clip hash for one model and language: an append-only JSONL file (a line torn by
    a crash is skipped), so an interrupted run keeps what it transcribed."""

    def __init__(self, cache_dir: Path, choice: asr.Asr, solo: bool = False):
        import hashlib

        self.solo = solo  # each clip heard alone, not packed with others
        model = asr.bundled_whisper_path() if choice.model == asr.BUNDLED else choice.model
        packing = None if solo else [WINDOW_SECONDS, GAP_SECONDS, "one voice per window, longest first"]
        key = hashlib.sha256(json.dumps([str(model), choice.backend, choice.language, packing]).encode()).hexdigest()[
            :16
        ]
        self.path = Path(cache_dir) / f"{choice.language}-{key}.jsonl"
        self.texts: Dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").split("\n"):
                try:
                    row = json.loads(line)
                    self.texts[row["clip"]] = row["text"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, entries: Dict[str, str]) -> None:
        self.texts.update(entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(
                json.dumps({"clip": clip, "text": text}, ensure_ascii=False) + "\n" for clip, text in entries.items()
            )


def transcribe_clips(
    choice: asr.Asr,
    paths: Sequence[Path],
    seconds: Sequence[float],
    cache: TranscriptCache,
    voices: Optional[Sequence[str]] = None,
) -> Tuple[List[str], float]:
    """Transcripts of the clips (from the cache where it has them) and the seconds of audio transcribed now;
    `voices` (each clip's speaker) keeps one voice per packed window.
    Audio is read a batch of windows at a time: a large corpus never sits in memory."""
    hashes = [file_hash(p) for p in paths]
    todo = [i for i, h in enumerate(hashes) if h not in cache.texts]
    what = f"{choice.language}, each clip alone" if cache.solo else choice.language
    with progress(total=len(todo), desc=f"validate transcripts ({what})", unit="clip") as bar:

        def store(texts: Dict[int, str]) -> None:  # clips k of `todo`, heard
            cache.add({hashes[todo[k]]: text for k, text in texts.items()})
            bar.update(len(texts))

        if choice.backend == "whisper":
            model = asr.whisper_model(choice.model, cpu_threads=1, num_workers=WORKERS)  # a worker per core
            transcribe_packed(
                model,
                lambda k: load_audio(paths[todo[k]], asr.ASR_RATE),
                [seconds[i] for i in todo],
                choice.language,
                cache.solo,
                store,
                [voices[i] for i in todo] if voices is not None else None,
            )
        else:
            for k, i in enumerate(todo):
                store({k: choice.transcribe(load_audio(paths[i], asr.ASR_RATE), asr.ASR_RATE)})
    return [cache.texts[h] for h in hashes], sum(seconds[i] for i in todo)


def pack(
    seconds: Sequence[float], alone: Collection[int] = (), voices: Optional[Sequence[str]] = None
) -> List[List[int]]:
    """Clips grouped into windows whose clips and gaps fit WINDOW_SECONDS, one voice per window where
    a voice fills one (Whisper skips ahead at a change of voice): each voice's clips, longest first,
    go into the first of its windows with room (first-fit decreasing: fuller windows than corpus
    order, so fewer 30 s encodes). Windows a voice leaves less than half full (a speaker with a few
    clips: most of a Common Voice corpus) are then packed together, whole, the same way, so many
    speakers cost no more encodes than one. A longer clip, and each clip in `alone`, has a window
    of its own. Clips keep corpus order within a window; windows come in the order of their first clip."""
    voices = list(voices) if voices is not None else [""] * len(seconds)
    single: List[List[int]] = []
    per_voice: Dict[str, List[int]] = {}
    for i, length in enumerate(seconds):
        if i in alone or length + GAP_SECONDS > WINDOW_SECONDS:
            single.append([i])
        else:
            per_voice.setdefault(voices[i], []).append(i)
    windows: List[Tuple[float, List[int]]] = []
    for clips in per_voice.values():
        windows += first_fit_decreasing(
            [(seconds[i] + GAP_SECONDS, [i]) for i in clips]
        )  # each clip is followed by its gap
    full = [clips for used, clips in windows if used >= WINDOW_SECONDS / 2]
    mixed = [clips for _, clips in first_fit_decreasing([w for w in windows if w[0] < WINDOW_SECONDS / 2])]
    return sorted((sorted(w) for w in single + full + mixed), key=lambda w: w[0])


def first_fit_decreasing(items: List[Tuple[float, List[int]]]) -> List[Tuple[float, List[int]]]:
    """Items (seconds, clips) into windows of WINDOW_SECONDS: each, longest first, into the first
    window with room; returns (seconds used, clips) per window."""
    windows: List[List[Any]] = []
    for used, clips in sorted(items, key=lambda item: (-item[0], min(item[1]))):
        fits = next((w for w in windows if w[0] + used <= WINDOW_SECONDS), None)
        if fits is None:
            fits = [0.0, []]
            windows.append(fits)
        fits[0] += used
        fits[1] += clips
    return [(used, clips) for used, clips in windows]


def transcribe_packed(
    model,
    load: Callable[[int], np.ndarray],
    seconds: Sequence[float],
    language: str,
    solo: bool,
    done: Callable[[Dict[int, str]], None],
    voices: Optional[Sequence[str]] = None,
) -> None:
    """Whisper's transcripts of clips 0..n-1 (`load(k)` reads clip k), handed to `done` a batch at a time.

    Clips are packed into windows, one voice (`voices`) per window (`pack`; each alone with `solo`); batches of up to BATCH_WINDOWS
    windows are decoded at once, WORKERS batches side by side. Whisper sometimes stops before a
    window's end, or skips part of it (it jumps ahead at a change of voice): the clips a window did
    not hear whole are packed again among themselves after the pass, and a clip two windows did not
    hear whole is heard alone. A clip alone that was not heard whole, or longer than a window, goes
    through faster-whisper's own loop, which decodes again from where it stopped (so every clip is
    in at most three windows)."""
    pending = list(range(len(seconds)))
    alone = set(pending) if solo else set()
    partial: Dict[int, str] = {}  # what a window heard of a clip it did not hear whole
    misses: Dict[int, int] = {}  # windows that did not hear a clip whole

    def hear(batch: List[List[int]]) -> List[List[Tuple[str, bool]]]:
        fits = [
            w for w in batch if seconds[w[0]] <= WINDOW_SECONDS - GAP_SECONDS
        ]  # the pipeline cuts a window at 30 s
        heard = dict(
            zip(
                map(tuple, fits),
                hear_windows(whisper_pipeline(model), [[load(k) for k in w] for w in fits], language) if fits else [],
            )
        )
        return [heard.get(tuple(w), [("", False)] * len(w)) for w in batch]

    with ThreadPoolExecutor(WORKERS) as workers:
        while pending:
            windows = [
                [pending[i] for i in w]
                for w in pack(
                    [seconds[k] for k in pending],
                    {i for i, k in enumerate(pending) if k in alone},
                    [voices[k] for k in pending] if voices is not None else None,
                )
            ]
            size = min(BATCH_WINDOWS, math.ceil(len(windows) / WORKERS))  # every worker busy, even on a few windows
            batches = [windows[first : first + size] for first in range(0, len(windows), size)]
            pending = []
            for batch, heard in zip(batches, workers.map(hear, batches)):
                final: Dict[int, str] = {}
                for window, clips in zip(batch, heard):
                    for k, (text, whole) in zip(window, clips):
                        if whole:
                            final[k] = text
                        elif len(window) == 1:  # alone and not heard whole, or too long for one window
                            final[k] = hear_alone(model, load(k), language) or text or partial.get(k, "")
                        else:
                            partial[k] = text or partial.get(k, "")
                            misses[k] = misses.get(k, 0) + 1
                            if misses[k] == 2:
                                alone.add(k)
                            pending.append(k)
                done(final)


def whisper_pipeline(model):
    """faster-whisper's batched pipeline over `model` (several windows per encode and decode), noting
    for each window whether Whisper ended it (its last words closed by a timestamp) or stopped early,
    and where its last closing timestamp lies (s from the window's start; None before any).

    Word timestamps (a cross-attention alignment per window, a fifth of the validation's CPU time)
    are computed only for the windows where a segment runs over a clip's edge: set `bounds`, for
    each window, to its start and its clips' ends (s in the joined audio). A segment within one
    clip's span becomes one word, with the segment's text and times, so it goes to that clip whole,
    as its words would."""
    import ctranslate2
    from faster_whisper import BatchedInferencePipeline

    class Pipeline(BatchedInferencePipeline):
        ended: List[bool]
        closed: List[Optional[float]]
        bounds: List[np.ndarray]
        encoder_output: Any = None

        def forward(self, features, tokenizer, chunks_metadata, options):
            outputs = super().forward(features, tokenizer, chunks_metadata, replace(options, word_timestamps=False))
            if not options.word_timestamps:
                return outputs
            starts = np.array([b[0] for b in self.bounds])
            straddling = []
            for i, (chunk, segments) in enumerate(zip(chunks_metadata, outputs)):
                bounds = self.bounds[int(np.argmin(np.abs(starts - chunk["offset"])))]
                if all(within_one_clip(s["start"], s["end"], bounds) for s in segments):
                    for s in segments:
                        s["words"] = [
                            {"word": s["text"], "start": s["start"], "end": s["end"], "probability": math.nan}
                        ]
                else:
                    straddling.append(i)
            if straddling:  # faster-whisper's own alignment, over those windows' encoder outputs
                encoded = np.asarray(self.encoder_output)
                subset = encoded if len(straddling) == len(outputs) else np.ascontiguousarray(encoded[straddling])
                frames = [
                    int(math.ceil(chunks_metadata[i]["duration"]) * self.model.frames_per_second) for i in straddling
                ]
                self.last_speech_timestamp = self.model.add_word_timestamps(
                    [outputs[i] for i in straddling],
                    tokenizer,
                    ctranslate2.StorageView.from_array(subset),
                    frames,
                    options.prepend_punctuations,
                    options.append_punctuations,
                    self.last_speech_timestamp,
                )
            return outputs

        def generate_segment_batched(self, features, tokenizer, options):
            encoder_output, outputs = super().generate_segment_batched(features, tokenizer, options)
            self.encoder_output = encoder_output
            begin = tokenizer.timestamp_begin  # tokens from here on are timestamps
            for o in outputs:
                tokens = o["tokens"]
                self.ended.append(len(tokens) >= 2 and tokens[-2] < begin <= tokens[-1])
                # A closing timestamp follows text (an opening one follows a timestamp or starts the output).
                closing = [t for prev, t in zip(tokens, tokens[1:]) if prev < begin <= t]
                self.closed.append(
                    (closing[-1] - begin) * self.model.time_precision if closing else None
                )  # 0.02 s a step
            return encoder_output, outputs

    pipeline = Pipeline(model)
    pipeline.ended, pipeline.closed = [], []
    return pipeline


def within_one_clip(start: float, end: float, bounds: np.ndarray) -> bool:
    """Whether a segment (start, end s) lies within the span of the clip its midpoint is in: from the
    previous clip's end (its gap included) to this clip's end with its gap. SEGMENT_SLACK is allowed
    before the start (the gap before a clip is silence) and after the window's last clip, never past
    a clip's gap into the next clip's speech."""
    k = min(int(np.searchsorted(bounds[1:], (start + end) / 2)), len(bounds) - 2)
    last = k == len(bounds) - 2
    return bounds[k] - SEGMENT_SLACK <= start and end <= bounds[k + 1] + (SEGMENT_SLACK if last else 0.0)


def speech_end(clip: np.ndarray) -> float:
    """Seconds from a clip's start to its last sound: its last sample above 5 % of its peak (a clip's
    trailing silence or low noise is not speech Whisper could have missed)."""
    loud = np.flatnonzero(np.abs(clip) >= 0.05 * float(np.max(np.abs(clip), initial=0.0)))
    return (loud[-1] + 1) / asr.ASR_RATE if loud.size else 0.0


def hear_windows(pipeline, windows: Sequence[Sequence[np.ndarray]], language: str) -> List[List[Tuple[str, bool]]]:
    """One batched Whisper pass over windows of clips joined by silence: for each clip, what was heard
    in it (each word goes to the clip its midpoint is in) and whether it was heard whole (the words
    went on into a later clip, Whisper ended the window after them rather than stopping early, or it
    stopped early but its last closing timestamp lies after the clip's last sound, in the silence after it)."""
    gap = np.zeros(int(GAP_SECONDS * asr.ASR_RATE), np.float32)
    starts, ends, offset = (
        [],
        [],
        0,
    )  # each window's start; each clip's end, with the gap after it (s in the joined audio)
    for clips in windows:
        sizes = np.cumsum([clip.size + gap.size for clip in clips])
        starts.append(offset / asr.ASR_RATE)
        ends.append((offset + sizes) / asr.ASR_RATE)
        offset += int(sizes[-1])
    # Greedy, no temperature fallback, no conditioning: the same transcript every run, and a
    # mismatch is not hidden by decoding again until something fits.
    joined = np.concatenate([part for clips in windows for clip in clips for part in (clip, gap)])
    pipeline.bounds = [np.concatenate([[start], clip_ends]) for start, clip_ends in zip(starts, ends)]
    segments, _ = pipeline.transcribe(
        joined,
        language=language,
        beam_size=1,
        temperature=0.0,
        without_timestamps=False,
        word_timestamps=True,
        vad_filter=False,
        batch_size=len(windows),
        clip_timestamps=[{"start": s, "end": e[-1]} for s, e in zip(starts, ends)],
    )
    words: List[List[List[str]]] = [[[] for _ in clips] for clips in windows]
    for segment in segments:
        w = int(np.argmin(np.abs(np.array(starts) - segment.seek / FRAMES_PER_SECOND)))  # seek: its window's start
        for word in segment.words or []:
            words[w][min(int(np.searchsorted(ends[w], (word.start + word.end) / 2)), len(ends[w]) - 1)].append(
                word.word
            )
    heard = []
    for clips, clip_words, clip_ends, start, ended, closed in zip(
        windows, words, ends, starts, pipeline.ended, pipeline.closed
    ):
        last = max((k for k, w in enumerate(clip_words) if w), default=-1)  # the last clip anything was heard in
        closed_at = start + closed if closed is not None else -math.inf

        # Whole: words went on into a later clip, Whisper ended the window, or it stopped early but its last
        # closing timestamp lies between the clip's last sound and the end of the silence after it (one
        # further on, in the next clip's audio, is misplaced: the words before it are often cut short).
        def whole(k: int, clip: np.ndarray, end: float) -> bool:
            sound_end = end - GAP_SECONDS - clip.size / asr.ASR_RATE + speech_end(clip)  # in the joined audio
            return k < last or ended or sound_end - HEARD_SLACK <= closed_at <= end

        heard.append(
            [
                ("".join(w).strip(), bool(w) and whole(k, clip, end))  # words carry their leading space
                for k, (clip, w, end) in enumerate(zip(clips, clip_words, clip_ends))
            ]
        )
    return heard


def hear_alone(model, clip: np.ndarray, language: str) -> str:
    """One clip through faster-whisper's own loop, which decodes again from where the decoder stopped."""
    segments, _ = model.transcribe(
        clip,
        language=language,
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=True,
        vad_filter=False,
    )
    return "".join(word.word for segment in segments for word in segment.words or []).strip()


# --- the report --------------------------------------------------------------------------------


def report(
    samples: Sequence[Sample], checks: Sequence[Optional[Checked]], summary: dict, skipped_sources: Dict[str, str]
) -> str:
    """validation.md: the settings, what was and was not validated, and the worst clips."""
    action = (
        "dropped as `transcript_mismatch`"
        if summary["action"] == "drop"
        else "kept, marked `transcript_mismatch: true`"
    )
    lines = [
        "# Transcript validation",
        "",
        f"Every kept clip transcribed by its language's ASR; CER against its cleaned transcript (the language's cleaner on "
        f"both sides). Clips above `max_transcript_cer={summary['max_cer']}` are {action}.",
        "",
        f"- validated: {summary['clips']} clip(s), {summary['audio_seconds'] / 60:.1f} min of audio; mean CER "
        f"{summary['mean_cer'] if summary['mean_cer'] is not None else '–'}; above the limit: {summary['above_max']}",
        f"- ASR: {summary['transcribed_seconds']:.0f} s of audio transcribed now in {summary['asr_seconds']:.1f} s"
        + (f" ({summary['speed']}× real time)" if summary["speed"] else " (all from the cache)"),
    ]
    lines += [f"- `{language}`: {name}" for language, name in summary["asr"].items()]
    lines += [f"- `{language}`: not validated — {why}" for language, why in summary["not_validated"].items()]
    lines += [f"- {source}: not validated — {why}" for source, why in skipped_sources.items()]
    worst = sorted((i for i, c in enumerate(checks) if c is not None), key=lambda i: -checks[i].asr_cer)[:WORST_LISTED]
    lines += ["", f"## The {len(worst)} worst clips", ""]
    if worst:
        lines += ["| CER | audio | speaker | text | ASR heard |", "|---|---|---|---|---|"]
        lines += [
            f"| {checks[i].asr_cer:.2f} | {samples[i].audio} | {samples[i].speaker} | {cell(samples[i].text)} | {cell(checks[i].asr_text)} |"
            for i in worst
        ]
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
