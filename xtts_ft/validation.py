"""Transcript validation for `prepare validate_transcripts=true`: does each clip say its text?

Every kept clip is transcribed by the ASR configured for its language (`transcript_asr`, the same
per-language choice as evaluate's `asr`, xtts_ft.asr) and its CER against the cleaned transcript
computed with the language's own cleaner on both sides. A language no ASR knows is not validated,
and said so: never scored by a model of another language.

Whisper always hears a 30 s window (shorter audio is padded to it), so transcribing 3 s clips one
by one spends ten times the compute on silence. Clips are packed, in corpus order, into windows of
up to 30 s separated by half a second of silence, transcribed once with word timestamps, and each
word goes back to the clip its midpoint lies in. Other backends (CTC models) cost what the audio
lasts, so they take clip by clip. Transcripts are cached per clip (a hash of its processed WAV)
and model, so a re-run, or a run with another threshold, transcribes nothing again.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from xtts_ft import asr, metrics
from xtts_ft.data.audio import load_audio
from xtts_ft.data.sample import Sample
from xtts_ft.io_utils import file_hash

log = logging.getLogger(__name__)

ACTIONS = ("drop", "flag")
WINDOW_SECONDS = 30.0  # what Whisper's encoder hears at once
GAP_SECONDS = 0.5  # silence between packed clips: word timestamps never straddle two clips
WORST_LISTED = 20


@dataclass
class Checked:
    """One clip's check: what the ASR heard, and its CER against the clip's text."""

    asr_text: str
    asr_cer: float


def check_settings(cfg) -> None:
    if cfg.transcript_action not in ACTIONS:
        raise ValueError(f"transcript_action={cfg.transcript_action}: choose drop (clips above max_transcript_cer are "
                         "dropped as transcript_mismatch) or flag (kept, marked transcript_mismatch in the manifest)")
    if not cfg.max_transcript_cer > 0:
        raise ValueError(f"max_transcript_cer={cfg.max_transcript_cer}: a CER above which a clip's transcript is "
                         "taken as wrong, > 0 (e.g. 0.5)")


def check_transcripts(samples: Sequence[Sample], root: Path, cfg, cache_dir: Path) -> Tuple[List[Optional[Checked]], dict]:
    """Each sample's check (None where its language has no ASR) and the summary for stats.json."""
    checks: List[Optional[Checked]] = [None] * len(samples)
    summary: Dict[str, Any] = {"action": cfg.transcript_action, "max_cer": cfg.max_transcript_cer, "asr": {}, "not_validated": {},
                               "clips": 0, "audio_seconds": 0.0, "transcribed_seconds": 0.0, "asr_seconds": 0.0}
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
    summary["speed"] = round(summary["transcribed_seconds"] / summary["asr_seconds"], 1) if summary["transcribed_seconds"] else None
    for key in ("audio_seconds", "transcribed_seconds", "asr_seconds"):
        summary[key] = round(summary[key], 2)
    scored = [c.asr_cer for c in checks if c is not None]
    summary["mean_cer"] = round(float(np.mean(scored)), 4) if scored else None
    summary["above_max"] = sum(1 for c in scored if c > cfg.max_transcript_cer)
    return checks, summary


def hear(choice: asr.Asr, samples: Sequence[Sample], root: Path, cfg, cache_dir: Path, summary: dict) -> List[Optional[Checked]]:
    """Each sample checked: packed with its neighbours first (fast); one that looks mismatched is heard
    again alone and judged by the better of the two hearings, so only a clip both find wrong is."""
    def checked(subset: List[int], solo: bool) -> List[Optional[Checked]]:
        paths, seconds = [root / samples[i].audio for i in subset], [samples[i].duration for i in subset]
        texts, fresh = transcribe_clips(choice, paths, seconds, TranscriptCache(cache_dir, choice, solo))
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
        packing = None if solo else [WINDOW_SECONDS, GAP_SECONDS]
        key = hashlib.sha256(json.dumps([str(model), choice.backend, choice.language, packing]).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"{choice.language}-{key}.jsonl"
        self.texts: Dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.texts[row["clip"]] = row["text"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, entries: Dict[str, str]) -> None:
        self.texts.update(entries)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps({"clip": clip, "text": text}, ensure_ascii=False) + "\n" for clip, text in entries.items())


def transcribe_clips(choice: asr.Asr, paths: Sequence[Path], seconds: Sequence[float], cache: TranscriptCache) -> Tuple[List[str], float]:
    """Transcripts of the clips (from the cache where it has them) and the seconds of audio transcribed now.
    Audio is read one window at a time: a large corpus never sits in memory."""
    hashes = [file_hash(p) for p in paths]
    todo = [i for i, h in enumerate(hashes) if h not in cache.texts]
    packed = choice.backend == "whisper" and not cache.solo
    windows = pack([seconds[i] for i in todo]) if packed else [[k] for k in range(len(todo))]
    for window in windows:
        clips = [load_audio(paths[todo[k]], asr.ASR_RATE) for k in window]
        texts = transcribe_window(choice.load(), clips, choice.language) if choice.backend == "whisper" \
            else [choice.transcribe(clip, asr.ASR_RATE) for clip in clips]
        cache.add({hashes[todo[k]]: text for k, text in zip(window, texts)})
    return [cache.texts[h] for h in hashes], sum(seconds[i] for i in todo)


def pack(seconds: Sequence[float]) -> List[List[int]]:
    """Consecutive clips grouped into windows whose clips and gaps fit WINDOW_SECONDS (a longer clip alone)."""
    windows: List[List[int]] = []
    used = math.inf
    for i, length in enumerate(seconds):
        if used + length + GAP_SECONDS > WINDOW_SECONDS:  # each clip is followed by its gap
            windows.append([])
            used = 0.0
        windows[-1].append(i)
        used += length + GAP_SECONDS
    return windows


def transcribe_window(model, clips: Sequence[np.ndarray], language: str) -> List[str]:
    """Transcripts of clips packed into one window. Whisper sometimes skips part of a window (it
    ends early, or jumps ahead at a change of voice): the clips it heard nothing in are heard again
    without the others (fewer each time, so this ends; a clip alone that gives nothing is empty)."""
    words = heard_words(model, clips, language)
    texts = ["".join(w).strip() for w in words]  # Whisper's words carry their leading space
    missed = [i for i, w in enumerate(words) if not w]
    if len(clips) > 1 and missed:
        groups = [missed] if len(missed) < len(clips) else [[i] for i in missed]
        for group in groups:
            for i, text in zip(group, transcribe_window(model, [clips[i] for i in group], language)):
                texts[i] = text
    return texts


def heard_words(model, clips: Sequence[np.ndarray], language: str) -> List[List[str]]:
    """One Whisper pass over clips joined by silence; each word goes to the clip its midpoint is in."""
    gap = np.zeros(int(GAP_SECONDS * asr.ASR_RATE), np.float32)
    ends = np.cumsum([c.size + gap.size for c in clips]) / asr.ASR_RATE  # each clip's end, with the gap after it
    joined = np.concatenate([part for clip in clips for part in (clip, gap)])
    # Greedy, no temperature fallback, no conditioning: the same transcript every run, and a
    # mismatch is not hidden by decoding again until something fits.
    segments, _ = model.transcribe(joined, language=language, beam_size=1, temperature=0.0, condition_on_previous_text=False,
                                   word_timestamps=True, vad_filter=False)
    words: List[List[str]] = [[] for _ in clips]
    for segment in segments:
        for word in segment.words or []:
            index = min(int(np.searchsorted(ends, (word.start + word.end) / 2)), len(clips) - 1)
            words[index].append(word.word)
    return words


# --- the report --------------------------------------------------------------------------------


def report(samples: Sequence[Sample], checks: Sequence[Optional[Checked]], summary: dict, skipped_sources: Dict[str, str]) -> str:
    """validation.md: the settings, what was and was not validated, and the worst clips."""
    action = "dropped as `transcript_mismatch`" if summary["action"] == "drop" else "kept, marked `transcript_mismatch: true`"
    lines = ["# Transcript validation", "",
             f"Every kept clip transcribed by its language's ASR; CER against its cleaned transcript (the language's cleaner on "
             f"both sides). Clips above `max_transcript_cer={summary['max_cer']}` are {action}.", "",
             f"- validated: {summary['clips']} clip(s), {summary['audio_seconds'] / 60:.1f} min of audio; mean CER "
             f"{summary['mean_cer'] if summary['mean_cer'] is not None else '–'}; above the limit: {summary['above_max']}",
             f"- ASR: {summary['transcribed_seconds']:.0f} s of audio transcribed now in {summary['asr_seconds']:.1f} s"
             + (f" ({summary['speed']}× real time)" if summary["speed"] else " (all from the cache)")]
    lines += [f"- `{language}`: {name}" for language, name in summary["asr"].items()]
    lines += [f"- `{language}`: not validated — {why}" for language, why in summary["not_validated"].items()]
    lines += [f"- {source}: not validated — {why}" for source, why in skipped_sources.items()]
    worst = sorted((i for i, c in enumerate(checks) if c is not None), key=lambda i: -checks[i].asr_cer)[:WORST_LISTED]
    lines += ["", f"## The {len(worst)} worst clips", ""]
    if worst:
        lines += ["| CER | audio | speaker | text | ASR heard |", "|---|---|---|---|---|"]
        lines += [f"| {checks[i].asr_cer:.2f} | {samples[i].audio} | {samples[i].speaker} | {cell(samples[i].text)} | {cell(checks[i].asr_text)} |"
                  for i in worst]
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
