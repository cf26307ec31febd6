"""The audio half of `prepare`: decode one clip, check it, resample, trim, normalise, write.

Kept apart from the stage (and light on imports: numpy, soundfile, soxr, pyloudnorm) because
it runs in spawned worker processes, where every import is paid again per process. Settings
travel as a small frozen dataclass, not the Hydra config.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np
import soxr

from xtts_ft.data.audio import read_mono, trim_bounds, write_wav

DECODER_RATE = 24000
CLIPS_PER_WORKER = 64
SILENCE_PEAK = 1e-4  # -80 dBFS: nothing audible


@dataclass(frozen=True)
class AudioSettings:
    sample_rate: int
    min_seconds: float
    max_seconds: float
    trim_top_db: float
    max_clipped_fraction: float
    loudness_lufs: Optional[float]
    decoder_copies: bool

    @classmethod
    def from_config(cls, cfg) -> "AudioSettings":
        return cls(**{name: cfg[name] for name in cls.__dataclass_fields__})


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


def process_audio(path: Path, cfg: AudioSettings) -> Clip:
    """Decode once at the source rate; derive the 22.05 kHz clip and the 24 kHz copy from it."""
    try:
        source, rate = read_mono(path)
    except RuntimeError as err:
        raise Rejected("unreadable_audio", str(err)) from None
    if source.size == 0 or not np.isfinite(source).all():
        raise Rejected("unreadable_audio", f"{path} is empty or holds non-finite samples")
    if np.abs(source).max() < SILENCE_PEAK:
        raise Rejected("silent_audio", f"peak below {20 * np.log10(SILENCE_PEAK):.0f} dBFS: nothing to hear")
    clipped = np.count_nonzero(np.abs(source) >= 0.999) / source.size
    if clipped > cfg.max_clipped_fraction:
        raise Rejected("clipped", f"{clipped:.2%} of samples at full scale > max_clipped_fraction={cfg.max_clipped_fraction}")
    audio = soxr.resample(source, rate, cfg.sample_rate, quality="HQ") if rate != cfg.sample_rate else source
    start, end = trim_bounds(audio, cfg.trim_top_db)
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


@lru_cache(maxsize=4)
def loudness_meter(rate: int):
    import pyloudnorm

    return pyloudnorm.Meter(rate)  # ITU-R BS.1770 K-weighting filters, built once per rate


@lru_cache(maxsize=4)
def k_weighting(rate: int):
    """The meter's two K-weighting biquads (shelf, then high-pass) as one second-order-sections
    filter and its gain: one sosfilt pass costs a third of pyloudnorm's two lfilter passes."""
    stages = list(loudness_meter(rate)._filters.values())
    sos = np.array([np.concatenate([stage.b, stage.a]) for stage in stages])
    return sos, float(np.prod([stage.passband_gain for stage in stages]))


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """Integrated loudness (LUFS) of mono `audio`: pyloudnorm's Meter, with its gating vectorised.

    pyloudnorm gates its 400 ms blocks in a Python loop after two lfilter passes: the costliest
    step of preparing a clip (~3-5 ms of ~17). Same filters (the meter's own coefficients), same
    block bounds and thresholds (BS.1770-4: -70 LUFS absolute, -10 LU relative); tests compare the
    two. -inf for audio shorter than one block or silent, where pyloudnorm raises or gives -inf.
    """
    meter = loudness_meter(rate)
    block = meter.block_size * rate
    if audio.size < block:
        return float("-inf")
    import scipy.signal  # here, not at the top: ~1.4 s of imports a worker pays only if loudness is on

    sos, gain = k_weighting(rate)
    weighted = gain * scipy.signal.sosfilt(sos, audio)
    step = 1.0 - meter.overlap
    count = int(np.round((audio.size / rate - meter.block_size) / (meter.block_size * step))) + 1
    blocks = np.arange(count)  # bounds as pyloudnorm computes them (same float expression, truncated)
    starts = (meter.block_size * (blocks * step) * rate).astype(int)
    ends = np.minimum((meter.block_size * (blocks * step + 1) * rate).astype(int), audio.size)
    energy = np.concatenate([[0.0], np.cumsum(np.square(weighted, dtype=np.float64))])
    power = (energy[ends] - energy[starts]) / block
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10 * np.log10(power)
        above_absolute = power[block_loudness >= -70.0]
        if above_absolute.size == 0:
            return float("-inf")
        relative = -0.691 + 10 * np.log10(above_absolute.mean()) - 10
        gated = power[(block_loudness > relative) & (block_loudness > -70.0)]
        return float(-0.691 + 10 * np.log10(gated.mean())) if gated.size else float("-inf")


def normalize_loudness(audio: np.ndarray, audio_24k: Optional[np.ndarray], cfg: AudioSettings):
    """One gain for both copies (measured on the 22.05 kHz one), never pushing peaks past -1 dBFS."""
    loudness = integrated_loudness(audio, cfg.sample_rate)
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


def run_audio_job(job: AudioJob, cfg: AudioSettings, out: Path):
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


def map_audio_jobs(jobs: List[AudioJob], cfg: AudioSettings, out: Path, num_workers: int = 0) -> Iterator[Union["ClipInfo", "Rejected"]]:
    """Results in job order (so manifests do not depend on scheduling), over `num_workers` processes
    (0: one per CPU core)."""
    # A spawned worker costs about a second of imports: below CLIPS_PER_WORKER clips each, fewer workers win.
    workers = min(num_workers or os.cpu_count() or 1, -(-len(jobs) // CLIPS_PER_WORKER))
    tasks = [(job, cfg, out) for job in jobs]
    if workers <= 1:
        yield from map(_worker, tasks)
        return
    # spawn, not fork: the parent may hold torch/OpenMP or tokenizer threads whose locks a forked
    # child would inherit. An executor (not a Pool) raises if a worker dies instead of hanging.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        yield from pool.map(_worker, tasks, chunksize=max(1, len(tasks) // (workers * 32)))


