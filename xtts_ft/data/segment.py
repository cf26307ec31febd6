"""Segmenting a long untranscribed recording (a podcast, an audiobook chapter) into training clips.

An ASR the caller hands in (`transcribe_words`; the prepare stage passes faster-whisper's
from `xtts_ft.evaluation.asr`, data/ runs no model itself) transcribes the recording with word
timestamps; `group_words` (pure, no model) turns the words into segments: a segment ends only
after a word that ends a sentence, consecutive sentences are merged while they fit
`target_seconds`, a sentence longer than `max_seconds` is split at its largest pause (or
dropped), and pieces shorter than `min_seconds` are dropped. Every drop has a reason code,
as in `prepare`'s dropped.jsonl. A segment's text is exactly the words whose timestamps lie
inside its audio: padding never reaches into a neighbouring word, so no clip hears a word its
text lacks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from xtts_ft.data.audio import load_audio, write_wav
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.model.constants import GPT_SAMPLE_RATE

log = logging.getLogger(__name__)

Word = Tuple[str, float, float]  # (text as Whisper wrote it, start s, end s)
Dropped = Tuple[str, List[Word]]  # (reason code, the words of the dropped piece)
# (mono audio at WHISPER_RATE, language) → the words heard, with their timestamps.
Transcriber = Callable[[np.ndarray, str], List[Word]]

WHISPER_RATE = 16000
# Latin, CJK, Arabic, Devanagari, Armenian, Ethiopic sentence ends; Whisper attaches them to the word.
SENTENCE_END = tuple(".!?…。！？؟।॥։።")
CLOSERS = "\"'”’»)]}"  # a sentence may end inside quotes or brackets: `he said "stop."`
# Cutting where words abut (no pause) cuts through speech; Whisper's timestamps step by 20 ms.
MIN_SPLIT_PAUSE = 0.1


def ends_sentence(word: str) -> bool:
    return word.strip().rstrip(CLOSERS).endswith(SENTENCE_END)


def span(words: Sequence[Word]) -> float:
    return words[-1][2] - words[0][1]


def segment_text(words: Sequence[Word]) -> str:
    # Whisper's words carry their own leading space (none in Chinese/Japanese), so join with "".
    return "".join(word for word, _, _ in words).strip()


def split_sentences(words: Sequence[Word]) -> List[List[Word]]:
    """Consecutive runs of words, each ending after a sentence-final word (or at the recording's end)."""
    sentences, current = [], []
    for word in words:
        current.append(word)
        if ends_sentence(word[0]):
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    return sentences


def split_at_pauses(
    words: List[Word], max_seconds: float, min_pause: float = MIN_SPLIT_PAUSE
) -> List[Tuple[Optional[str], List[Word]]]:
    """Split `words` at its largest pause, recursively, until every piece fits `max_seconds`.

    Returns the pieces in order as (None, words) when kept, or ("segment_too_long", words)
    for a piece that still does not fit and has no pause of at least `min_pause`.
    """
    if span(words) <= max_seconds:
        return [(None, words)]
    gaps = [words[i + 1][1] - words[i][2] for i in range(len(words) - 1)]
    if not gaps or max(gaps) < min_pause:
        return [("segment_too_long", words)]
    # Among equal pauses (timestamps are quantised), cut nearest the middle: fewer recursions.
    middle = (len(gaps) - 1) / 2
    cut = max(range(len(gaps)), key=lambda i: (gaps[i], -abs(i - middle))) + 1
    return split_at_pauses(words[:cut], max_seconds, min_pause) + split_at_pauses(words[cut:], max_seconds, min_pause)


def group_words(
    words: Sequence[Word],
    target_seconds: float,
    max_seconds: float,
    min_seconds: float,
    min_pause: float = MIN_SPLIT_PAUSE,
) -> Tuple[List[List[Word]], List[Dropped]]:
    """Words → (segments, dropped pieces), both in recording order; durations are word spans.

    Sentences merge while the merged span stays ≤ target_seconds; a sentence over max_seconds
    is split at pauses (`split_at_pauses`); what is left shorter than min_seconds is dropped.
    """
    groups: List[List[Word]] = []
    dropped: List[Dropped] = []
    can_merge = False
    for sentence in split_sentences([w for w in words if w[0].strip()]):
        for reason, piece in split_at_pauses(sentence, max_seconds, min_pause):
            if reason:
                dropped.append((reason, piece))
                can_merge = False  # a merge across it would put its words' audio in the clip
            elif can_merge and piece[-1][2] - groups[-1][0][1] <= target_seconds:
                groups[-1] = groups[-1] + piece
            else:
                groups.append(piece)
                can_merge = True
    segments = []
    for group in groups:
        if span(group) < min_seconds:
            dropped.append(("segment_too_short", group))
        else:
            segments.append(group)
    return segments, sorted(dropped, key=lambda d: d[1][0][1])


def cut_bounds(
    words: Sequence[Word], first: int, last: int, pad_seconds: float, duration: float
) -> Tuple[float, float]:
    """Padded [start, end) of words[first..last], clamped to the midpoint of the gap to each neighbour."""
    start = max(words[first][1] - pad_seconds, 0.0)
    end = min(words[last][2] + pad_seconds, duration)
    if first > 0:
        start = max(start, (words[first - 1][2] + words[first][1]) / 2)
    if last + 1 < len(words):
        end = min(end, (words[last][2] + words[last + 1][1]) / 2)
    return start, end


def segment_recording(
    audio_path: Path,
    out_dir: Path,
    language: str,
    transcribe_words: Transcriber,
    target_seconds: float = 8.0,
    max_seconds: float = 11.0,
    min_seconds: float = 1.0,
    pad_seconds: float = 0.15,
    sample_rate: int = GPT_SAMPLE_RATE,
    name: Optional[str] = None,
) -> Tuple[List[Dict[str, object]], List[Dict[str, object]]]:
    """Cut one recording into `<name>_<index:04d>.wav` clips in out_dir (`name`: the recording's stem
    unless given); return (segments, dropped).

    `transcribe_words(audio at 16 kHz, language)` gives the words the cuts follow.

    Each segment: `audio` (written wav path), `text`, `start`, `end` (seconds of the recording
    that the wav holds, padding included), `source_line`. Each dropped piece: `text`, `start`,
    `end` (its word span), `source_line`, `reason` (`segment_too_short`/`segment_too_long`),
    `message`. Clips, padding included, are within max_seconds; their speech spans at least
    min_seconds. An empty transcript gives ([], []).
    """
    audio_path, out_dir = Path(audio_path), Path(out_dir)
    check_segmenting(audio_path, target_seconds, max_seconds, min_seconds, pad_seconds)

    words = [w for w in transcribe_words(load_audio(audio_path, WHISPER_RATE), language) if w[0].strip()]
    # Budgets are for the written clip, so leave room for the padding on both sides.
    groups, dropped_pieces = group_words(
        words, target_seconds - 2 * pad_seconds, max_seconds - 2 * pad_seconds, min_seconds
    )
    if not groups:
        log.info("%s: no segment kept (%d words transcribed)", audio_path, len(words))
    # Cut from a load at the target rate (one resampling from the source, not two via 16 kHz).
    audio = load_audio(audio_path, sample_rate) if groups else np.zeros(0, np.float32)
    segments = write_segments(
        audio, sample_rate, words, groups, pad_seconds, out_dir, name or audio_path.stem, audio_path
    )
    dropped = [dropped_entry(reason, piece, audio_path, min_seconds, max_seconds) for reason, piece in dropped_pieces]
    return segments, dropped


def check_segmenting(
    audio_path: Path, target_seconds: float, max_seconds: float, min_seconds: float, pad_seconds: float
) -> None:
    """The recording exists and the lengths asked for leave room for a clip."""
    if not audio_path.is_file():
        raise MissingFile(f"recording {audio_path} does not exist")
    if not 0 < min_seconds <= target_seconds <= max_seconds:
        raise BadValue(
            f"need 0 < min_seconds ({min_seconds}) <= target_seconds ({target_seconds}) <= max_seconds ({max_seconds})"
        )
    if max_seconds - 2 * pad_seconds < min_seconds:
        raise BadValue(f"pad_seconds={pad_seconds} on both sides leaves no room under max_seconds={max_seconds}")


def write_segments(
    audio: np.ndarray,
    sample_rate: int,
    words: List[Word],
    groups: List[List[Word]],
    pad_seconds: float,
    out_dir: Path,
    name: str,
    audio_path: Path,
) -> List[Dict[str, object]]:
    """Write each group's padded audio to `out_dir/<name>_<index:04d>.wav`; return the segments' records."""
    duration = len(audio) / sample_rate
    position = {word: i for i, word in enumerate(words)}  # a dict: list.index would be quadratic
    segments = []
    for index, group in enumerate(groups):
        first, last = position[group[0]], position[group[-1]]
        start, end = cut_bounds(words, first, last, pad_seconds, duration)
        wav = out_dir / f"{name}_{index:04d}.wav"
        write_wav(wav, audio[round(start * sample_rate) : round(end * sample_rate)], sample_rate)
        segments.append(
            {
                "audio": str(wav),
                "text": segment_text(group),
                "start": start,
                "end": end,
                "source_line": f"{audio_path}@{start:.2f}-{end:.2f}",
            }
        )
    return segments


def dropped_entry(
    reason: str, piece: List[Word], audio_path: Path, min_seconds: float, max_seconds: float
) -> Dict[str, object]:
    """The record of a dropped piece, with its reason and the limit it broke (logged too)."""
    start, end = piece[0][1], piece[-1][2]
    limit = (
        f"shorter than min_seconds={min_seconds}"
        if reason == "segment_too_short"
        else (f"longer than max_seconds={max_seconds} with padding and no pause of {MIN_SPLIT_PAUSE} s to split at")
    )
    entry = {
        "text": segment_text(piece),
        "start": start,
        "end": end,
        "source_line": f"{audio_path}@{start:.2f}-{end:.2f}",
        "reason": reason,
        "message": f"{end - start:.2f} s of speech, {limit}",
    }
    log.info("dropped %s (%s): %s", entry["source_line"], reason, entry["message"])
    return entry
