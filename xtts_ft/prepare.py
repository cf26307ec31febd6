"""Stage `prepare`: corpus → data/processed/<name>/ (wavs, train/eval/dropped.jsonl, stats.json).

Reads every configured source with its formatter, normalises text with the language's
cleaner, checks it against the base model's vocabulary, rejects bad records with a stable
reason code (never silently), writes 22.05 kHz mono trimmed WAVs (and 24 kHz copies from the
source for decoder training when asked), and splits train/eval per speaker with a seed. The
whole output directory is built aside and moved into place at the end, so an interrupted
run never leaves a half-prepared dataset behind.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
import soxr
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.audio import write_wav
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.sample import Sample, write_manifest
from xtts_ft.data.text import clean_text, cleaner_name, token_ids
from xtts_ft.io_utils import atomic_dir, write_json, write_jsonl

log = logging.getLogger(__name__)
DECODER_RATE = 24000
CLIPS_PER_WORKER = 64


class Rejected(Exception):
    """A record that cannot be used: `reason` is the stable code written to dropped.jsonl."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # travels back from worker processes
        return Rejected, (self.reason, str(self))


@dataclass
class Clip:
    audio: np.ndarray  # mono at cfg.sample_rate, trimmed (and loudness-normalised if asked)
    audio_24k: Optional[np.ndarray]  # the same span resampled from the source, for decoder targets
    source_rate: int
    clipped_fraction: float


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.processed_dir) / cfg.data.name


def outputs(cfg: DictConfig) -> List[Path]:
    out = output_dir(cfg)
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


def check_text(raw: str, language: str, cfg: DictConfig, tokenizer) -> str:
    text = clean_text(raw, language)
    if not text:
        raise Rejected("empty_text", "the transcript is empty")
    if len(text) > cfg.max_text_chars:
        raise Rejected("text_too_long", f"{len(text)} characters > max_text_chars={cfg.max_text_chars}")
    if tokenizer is not None:
        ids = token_ids(tokenizer, text, language)
        unk = tokenizer.token_to_id("[UNK]")
        if unk in ids:
            unknown = sorted({ch for ch in text if ch != " " and unk in token_ids(tokenizer, ch, language)[1:]})
            raise Rejected("unknown_characters", f"not in the model's vocabulary: {' '.join(unknown) or '?'}")
        if len(ids) > cfg.max_text_tokens:
            raise Rejected("too_many_tokens", f"{len(ids)} tokens > max_text_tokens={cfg.max_text_tokens}")
    return text


def check_path(record: dict, root: Path, seen: set) -> Path:
    audio_path = Path(str(record["audio"])).resolve()
    if not audio_path.is_relative_to(root.resolve()):
        raise Rejected("outside_root", f"{audio_path} is outside the corpus root {root}")
    if not audio_path.is_file():
        raise Rejected("missing_file", f"{audio_path} does not exist")
    if audio_path in seen:
        raise Rejected("duplicate_audio", f"{audio_path} is already used by an earlier record")
    seen.add(audio_path)
    return audio_path


def process_audio(path: Path, cfg: DictConfig) -> Clip:
    """Decode once at the source rate; derive the 22.05 kHz clip and the 24 kHz copy from it."""
    import librosa

    try:
        source, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types for corrupt or truncated files
        raise Rejected("unreadable_audio", f"cannot read {path}: {err}") from None
    source = source.mean(axis=1)
    if source.size == 0 or not np.isfinite(source).all():
        raise Rejected("unreadable_audio", f"{path} is empty or holds non-finite samples")
    clipped = float(np.mean(np.abs(source) >= 0.999))
    if clipped > cfg.max_clipped_fraction:
        raise Rejected("clipped", f"{clipped:.2%} of samples at full scale > max_clipped_fraction={cfg.max_clipped_fraction}")
    audio = soxr.resample(source, rate, cfg.sample_rate, quality="HQ") if rate != cfg.sample_rate else source
    _, (start, end) = librosa.effects.trim(audio, top_db=cfg.trim_top_db)
    audio = audio[start:end]
    seconds = audio.size / cfg.sample_rate
    if seconds < cfg.min_seconds:
        raise Rejected("too_short", f"{seconds:.2f} s after trimming < min_seconds={cfg.min_seconds}")
    if seconds > cfg.max_seconds:
        raise Rejected("too_long", f"{seconds:.2f} s > max_seconds={cfg.max_seconds}")
    audio_24k = None
    if cfg.decoder_copies:
        # From the source, not from the 22.05 kHz copy, cut at the same instants.
        span = source[int(start / cfg.sample_rate * rate) : int(end / cfg.sample_rate * rate)]
        audio_24k = soxr.resample(span, rate, DECODER_RATE, quality="HQ") if rate != DECODER_RATE else span
    if cfg.loudness_lufs is not None:
        audio, audio_24k = normalize_loudness(audio, audio_24k, cfg)
    return Clip(audio.astype(np.float32), None if audio_24k is None else audio_24k.astype(np.float32), rate, clipped)


def normalize_loudness(audio: np.ndarray, audio_24k: Optional[np.ndarray], cfg: DictConfig):
    """One gain for both copies (measured on the 22.05 kHz one), never pushing peaks past -1 dBFS."""
    import pyloudnorm

    loudness = pyloudnorm.Meter(cfg.sample_rate).integrated_loudness(audio)
    if not np.isfinite(loudness):  # shorter than the meter's 400 ms block, or silent
        return audio, audio_24k
    gain = 10 ** ((cfg.loudness_lufs - loudness) / 20)
    gain = min(gain, 10 ** (-1 / 20) / max(float(np.abs(audio).max()), 1e-9))
    return audio * gain, None if audio_24k is None else audio_24k * gain


@dataclass
class AudioJob:
    path: Path  # source file, already checked to exist inside the corpus root
    name: str  # output file name under wavs/ (and wavs_24k/)


@dataclass
class ClipInfo:
    """What travels back from a worker: numbers, not audio."""

    samples: int
    source_rate: int
    clipped_fraction: float
    has_24k: bool


def run_audio_job(job: AudioJob, cfg: DictConfig, out: Path):
    """Decode, process and write one clip (in a worker process): ClipInfo, or the Rejected reason."""
    try:
        clip = process_audio(job.path, cfg)
    except Rejected as rejected:
        return rejected
    write_wav(out / "wavs" / job.name, clip.audio, cfg.sample_rate)
    if clip.audio_24k is not None:
        write_wav(out / "wavs_24k" / job.name, clip.audio_24k, DECODER_RATE)
    return ClipInfo(clip.audio.size, clip.source_rate, clip.clipped_fraction, clip.audio_24k is not None)


def _worker(args):
    return run_audio_job(*args)


def map_audio_jobs(jobs: List[AudioJob], cfg: DictConfig, out: Path):
    """Results in job order (so manifests do not depend on scheduling), over `num_workers` processes."""
    # A spawned worker costs seconds of imports: below CLIPS_PER_WORKER clips each, fewer workers win.
    workers = min(cfg.num_workers or os.cpu_count() or 1, -(-len(jobs) // CLIPS_PER_WORKER))
    tasks = [(job, cfg, out) for job in jobs]
    if workers <= 1:
        yield from map(_worker, tasks)
        return
    # spawn, not fork: the parent may hold torch/OpenMP or tokenizer threads whose locks a forked
    # child would inherit. An executor (not a Pool) raises if a worker dies instead of hanging.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        yield from pool.map(_worker, tasks, chunksize=4)


def output_name(source_index: int, audio: Path, root: Path, used: set) -> str:
    """Unique names: spk1/0001.wav and spk2/0001.wav, or x.wav and x.flac, must not overwrite each other."""
    relative = audio.resolve().relative_to(root.resolve())
    name = f"{source_index}_{relative.with_suffix('').as_posix().replace('/', '__')}.wav"
    if name in used:
        name = f"{source_index}_{relative.as_posix().replace('/', '__').replace('.', '_')}.wav"
    used.add(name)
    return name


def split_by_speaker(samples: List[Sample], cfg: DictConfig) -> Tuple[List[Sample], List[Sample]]:
    """Per speaker: a seeded shuffle, then eval_fraction (at least min_eval_per_speaker) to eval."""
    by_speaker: Dict[str, List[Sample]] = defaultdict(list)
    for s in samples:
        by_speaker[s.speaker].append(s)
    train, evaluation = [], []
    for speaker in sorted(by_speaker):
        clips = sorted(by_speaker[speaker], key=lambda s: s.audio)
        random.Random(f"{cfg.seed}:{speaker}").shuffle(clips)
        n_eval = max(cfg.min_eval_per_speaker, round(cfg.eval_fraction * len(clips))) if len(clips) >= 2 else 0
        n_eval = min(n_eval, len(clips) - 1)
        evaluation += clips[:n_eval]
        train += clips[n_eval:]
    if not evaluation or not train:
        raise ValueError(
            f"cannot build both a train and an eval split from {len(samples)} kept clip(s): "
            "each split needs a speaker with at least 2 clips; add data or check dropped.jsonl"
        )
    return train, evaluation


def load_tokenizer(cfg: DictConfig):
    if cfg.max_text_tokens <= 0:
        return None
    from tokenizers import Tokenizer

    from xtts_ft.model.loading import resolve_vocab

    return Tokenizer.from_file(str(resolve_vocab(cfg.model)))


def run(cfg: DictConfig) -> Path:
    out = output_dir(cfg)
    if not cfg.data.sources:
        raise ValueError(f"data.sources is empty for dataset {cfg.data.name!r}: nothing to prepare")
    tokenizer = load_tokenizer(cfg)
    kept: List[Sample] = []
    dropped: List[Tuple[int, dict]] = []  # (position in the corpus, entry): written in corpus order

    def drop(position: int, record: dict, language: str, rejected: Rejected) -> None:
        dropped.append((position, {**record, "language": language, "reason": rejected.reason, "message": str(rejected)}))
        log.info("dropped %s (%s): %s", record["source_line"], rejected.reason, rejected)

    with atomic_dir(out) as tmp:
        # Cheap checks (text, paths, duplicates) in order here; audio work in parallel below.
        seen: set = set()
        used_names: set = set()
        pending: List[Tuple[int, dict, object, str, AudioJob]] = []
        position = 0
        for index, source in enumerate(cfg.data.sources):
            root = Path(source.path)
            for record in read_corpus(root, source):
                position += 1
                try:
                    text = check_text(str(record["text"]), source.language, cfg, tokenizer)
                    path = check_path(record, root, seen)
                except Rejected as rejected:
                    drop(position, record, source.language, rejected)
                    continue
                job = AudioJob(path, output_name(index, Path(str(record["audio"])), root, used_names))
                pending.append((position, record, source, text, job))

        results = map_audio_jobs([job for *_, job in pending], cfg, tmp)
        for (position, record, source, text, job), clip in tqdm(zip(pending, results), total=len(pending), desc="prepare audio", unit="clip"):
            if isinstance(clip, Rejected):
                drop(position, record, source.language, clip)
                continue
            extra = {k: v for k, v in record.items() if k not in ("audio", "text", "speaker", "emotion")}
            extra.update(raw_text=str(record["text"]), source_rate=clip.source_rate)
            if clip.has_24k:
                extra["audio_24k"] = f"wavs_24k/{job.name}"
                extra["band_limited"] = clip.source_rate < DECODER_RATE  # no content above source_rate/2
            if clip.clipped_fraction > 0:
                extra["clipped_fraction"] = round(clip.clipped_fraction, 6)
            kept.append(
                Sample(
                    audio=f"wavs/{job.name}",
                    text=text,
                    speaker=str(record["speaker"]),
                    language=source.language,
                    duration=round(clip.samples / cfg.sample_rate, 4),
                    emotion=record.get("emotion") or None,
                    extra=extra,
                )
            )
        dropped = [entry for _, entry in sorted(dropped, key=lambda pair: pair[0])]
        train, evaluation = split_by_speaker(kept, cfg)
        write_manifest(tmp / "train.jsonl", train)
        write_manifest(tmp / "eval.jsonl", evaluation)
        write_jsonl(tmp / "dropped.jsonl", dropped)
        write_json(tmp / "stats.json", dataset_stats(train, evaluation, dropped, cfg))
    print(f"prepared {len(train)} train + {len(evaluation)} eval clips, dropped {len(dropped)} → {out}")
    return out


def dataset_stats(train: List[Sample], evaluation: List[Sample], dropped: List[dict], cfg: DictConfig) -> dict:
    def summary(samples: List[Sample]) -> dict:
        return {
            "clips": len(samples),
            "hours": round(sum(s.duration for s in samples) / 3600, 5),
            "languages": dict(Counter(s.language for s in samples)),
            "speakers": dict(Counter(s.speaker for s in samples)),
        }

    languages = sorted({source.language for source in cfg.data.sources})
    return {
        "name": cfg.data.name,
        "sample_rate": cfg.sample_rate,
        "train": summary(train),
        "eval": summary(evaluation),
        "dropped": {"clips": len(dropped), "reasons": dict(Counter(d["reason"] for d in dropped))},
        "text_cleaners": {language: cleaner_name(language) for language in languages},
        "band_limited_clips": sum(1 for s in train + evaluation if s.extra.get("band_limited")),
        "config": to_container(cfg),
    }
