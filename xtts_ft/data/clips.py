"""The audio half of `prepare`: decode one clip, check it, resample, trim, normalise, write.

Kept apart from the stage (and light on imports: numpy, soundfile, soxr, pyloudnorm) because
it runs in spawned worker processes, where every import is paid again per process. Settings
travel as a small frozen dataclass, not the Hydra config.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import soxr

from xtts_ft.data.audio import encode_wav, header_seconds, read_mono, trim_bounds
from xtts_ft.errors import RunRefused
from xtts_ft.model.constants import DECODER_SAMPLE_RATE

CLIPS_PER_WORKER = 64
CHUNK = 8  # clips per task sent to a worker: ~0.1 s of work, small enough to balance the end
SILENCE_PEAK = 1e-4  # -80 dBFS: nothing audible
# A file whose header says it is longer than max_seconds + this is dropped as too_long unread: no
# trimming of its ends would make it fit, and decoding it whole (a stray 3-hour recording is
# gigabytes as float32) could take the machine's memory.
UNTRIMMED_SLACK_SECONDS = 30.0


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
    loudness_shortfall: float = 0.0  # LU below loudness_lufs where reaching it would have pushed peaks past -1 dBFS


DC_OFFSET = 0.01  # a mean above this (1 % of full scale) is removed before trimming


def process_audio(path: Path, cfg: AudioSettings) -> Clip:
    """Decode once at the source rate; derive the 22.05 kHz clip and the 24 kHz copy from it."""
    try:
        header = header_seconds(path)
        if header > cfg.max_seconds + UNTRIMMED_SLACK_SECONDS:
            raise Rejected(
                "too_long",
                f"{header:.1f} s by its header > max_seconds={cfg.max_seconds} "
                f"(+{UNTRIMMED_SLACK_SECONDS:.0f} s that trimming could remove): not decoded",
            )
        source, rate = read_mono(path)
    except RuntimeError as err:
        raise Rejected("unreadable_audio", str(err)) from None
    if source.size == 0 or not np.isfinite(source).all():
        raise Rejected("unreadable_audio", f"{path} is empty or holds non-finite samples")
    # Counted as recorded (before the offset goes). A float file above full scale was not clipped,
    # only recorded hot: its samples go past 1.
    magnitude = np.abs(source)
    peak = float(magnitude.max())
    clipped = np.count_nonzero(magnitude >= 0.999) / source.size if peak <= 1.0 else 0.0
    offset = float(source.mean(dtype=np.float64))
    if abs(offset) > DC_OFFSET:  # a constant offset (a faulty recorder) hides the silence trimming looks for
        source = source - np.float32(offset)
        peak = float(np.abs(source).max())
    if peak < SILENCE_PEAK:
        raise Rejected("silent_audio", f"peak below {20 * np.log10(SILENCE_PEAK):.0f} dBFS: nothing to hear")
    if clipped > cfg.max_clipped_fraction:
        raise Rejected(
            "clipped", f"{clipped:.2%} of samples at full scale > max_clipped_fraction={cfg.max_clipped_fraction}"
        )
    if peak > 1.0:  # scaled to fit the 16-bit WAV it is written to, which would clip it
        source = source * np.float32(0.99 / peak)
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
        audio_24k = (
            soxr.resample(span, rate, DECODER_SAMPLE_RATE, quality="HQ") if rate != DECODER_SAMPLE_RATE else span
        )
    shortfall = 0.0
    if cfg.loudness_lufs is not None:
        audio, audio_24k, shortfall = normalize_loudness(audio, audio_24k, cfg)
    return Clip(
        audio.astype(np.float32), None if audio_24k is None else audio_24k.astype(np.float32), rate, clipped, shortfall
    )


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
    """One gain for both copies (measured on the 22.05 kHz one), never pushing peaks past -1 dBFS; returns
    the copies and how many LU the clip stays below the target when that limit holds the gain back."""
    loudness = integrated_loudness(audio, cfg.sample_rate)
    if not np.isfinite(loudness):  # shorter than the meter's 400 ms block, or silent
        return audio, audio_24k, 0.0
    wanted = 10 ** ((cfg.loudness_lufs - loudness) / 20)
    gain = min(wanted, 10 ** (-1 / 20) / max(float(np.abs(audio).max()), 1e-9))
    return audio * gain, None if audio_24k is None else audio_24k * gain, float(20 * np.log10(wanted / gain))


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
    digest: str = ""  # of the clip as written: the same recording under two names has the same one
    loudness_shortfall: float = 0.0  # see Clip


def run_audio_job(job: AudioJob, cfg: AudioSettings, out: Path):
    """Decode, process and write one clip: ClipInfo, or the Rejected reason."""
    try:
        clip = process_audio(job.path, cfg)
    except Rejected as rejected:
        return rejected
    wav = encode_wav(clip.audio, cfg.sample_rate)
    write_clip(out, "wavs", job.name, wav)
    if clip.audio_24k is not None:
        write_clip(out, "wavs_24k", job.name, encode_wav(clip.audio_24k, DECODER_SAMPLE_RATE))
    return ClipInfo(
        clip.audio.size,
        clip.source_rate,
        clip.clipped_fraction,
        clip.audio_24k is not None,
        hashlib.blake2b(wav, digest_size=16).hexdigest(),
        round(clip.loudness_shortfall, 2),
    )


def write_clip(out: Path, folder: str, name: str, data: bytes) -> None:
    """Write `out/folder/name`: created in this process's own staging folder, then renamed in.

    On ext4, processes creating files in one shared folder serialise on it (new inodes are
    allocated beside their folder): 2 processes writing 130 kB files straight into one folder
    took as long as one process, in folders of their own half as long, and created aside then
    renamed in, about the same. A rename allocates nothing. No fsync, and no temp name per file:
    `out` is the stage's output directory, itself moved into place only once complete.
    """
    staging = out / f".staging-{os.getpid()}"
    staged = staging / name
    try:
        staged.write_bytes(data)
    except FileNotFoundError:  # this process's first clip
        staging.mkdir()
        staged.write_bytes(data)
    os.replace(staged, out / folder / name)


_marker: Optional[Path] = None  # this process's `.working-<pid>` file while it runs a chunk


def run_chunk(jobs: List[AudioJob], cfg: AudioSettings, out: Path) -> List[Union[ClipInfo, Rejected]]:
    """Run a chunk's jobs, each noted in this process's marker (`.working-<pid>`) while it runs.

    A process that dies on a clip (killed for memory, a crash in a decoder) leaves its marker
    behind: the caller names that clip, and a resumed run drops it as `worker_crashed` instead of
    dying on it again. Any other way out (done, an exception, Ctrl-C, SIGTERM) removes it."""
    global _marker
    _marker = out / f".working-{os.getpid()}"
    marker = os.open(_marker, os.O_WRONLY | os.O_CREAT, 0o644)
    results = []
    try:
        for job in jobs:
            note_working_on(marker, job)
            results.append(run_audio_job(job, cfg, out))
        record_done(out, jobs, results)
    finally:
        os.close(marker)
        _marker.unlink(missing_ok=True)
        _marker = None
    return results


def note_working_on(marker: int, job: AudioJob) -> None:
    """One line at the start of the open marker file. Rewritten in place (~40 µs; a new file
    renamed in was ~3 ms a clip here): a kill between the write and the truncate leaves the new
    line first, and readers read the first line only."""
    line = (json.dumps({"name": job.name, "path": str(job.path)}) + "\n").encode()
    os.pwrite(marker, line, 0)
    os.ftruncate(marker, len(line))


def worker_init() -> None:
    """In each spawned worker: when the pool stops it because another worker died (SIGTERM), its
    own clip is innocent: remove its marker, so that only the dead worker's clip is blamed."""

    def stop(*_) -> None:
        if _marker is not None:
            _marker.unlink(missing_ok=True)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)


def crashed_clips(out: Path) -> Dict[str, str]:
    """Output name -> source path of each clip a process died on (its marker is still there)."""
    crashed = {}
    for marker in sorted(out.glob(".working-*[0-9]")):
        try:
            entry = json.loads(marker.read_text(encoding="utf-8").split("\n", 1)[0])
        except (OSError, ValueError):  # (empty: it died before its first clip)
            continue
        crashed[entry["name"]] = entry["path"]
    return crashed


def record_done(out: Path, jobs: List[AudioJob], results: list) -> None:
    """Append a chunk's results to this process's ledger in `out`, once its clips are in place:
    what a run resumed after an interruption need not do again (`read_done`)."""
    lines = [
        json.dumps(
            {
                "name": job.name,
                **(
                    {"reason": result.reason, "message": str(result)}
                    if isinstance(result, Rejected)
                    else asdict(result)
                ),
            }
        )
        for job, result in zip(jobs, results)
    ]
    with open(out / f".done-{os.getpid()}.jsonl", "a", encoding="utf-8") as ledger:
        ledger.write("".join(line + "\n" for line in lines))


def read_done(out: Path) -> Dict[str, Union[ClipInfo, Rejected]]:
    """The results an interrupted run recorded in `out` (output name -> result), for clips whose
    files are in place. A line cut short by the interruption is skipped: its clip is redone.
    A clip a process died on is `worker_crashed`; its marker becomes a ledger line (this run's
    processes could reuse the dead one's pid, and so its marker's name)."""
    record_crashes(out)
    done: Dict[str, Union[ClipInfo, Rejected]] = {}
    for ledger in sorted(out.glob(".done-*.jsonl")):
        for line in ledger.read_text(encoding="utf-8").split("\n"):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = entry.pop("name")
            if entry.get("reason") == "worker_crashed":  # read last (.done-crashed sorts after .done-<pid>)
                done.setdefault(name, Rejected(entry["reason"], entry["message"]))  # it finished the clip, then died
                continue
            if "reason" in entry:
                done[name] = Rejected(entry["reason"], entry["message"])
                continue
            info = ClipInfo(**entry)
            if (out / "wavs" / name).is_file() and (not info.has_24k or (out / "wavs_24k" / name).is_file()):
                if not info.digest:  # a ledger line of a version before digests
                    info.digest = hashlib.blake2b((out / "wavs" / name).read_bytes(), digest_size=16).hexdigest()
                done[name] = info
    return done


def record_crashes(out: Path) -> None:
    """Turn the markers of processes that died on a clip into `worker_crashed` ledger lines."""
    crashed = crashed_clips(out)
    if crashed:
        with open(out / ".done-crashed.jsonl", "a", encoding="utf-8") as ledger:
            for name, path in crashed.items():
                message = (
                    f"a prepare process died while processing {path} (killed for lack of memory? a crash in "
                    "its decoder?); skipped so that the run can finish — check the file, then `force=true` tries it again"
                )
                ledger.write(json.dumps({"name": name, "reason": "worker_crashed", "message": message}) + "\n")
    for marker in out.glob(".working-*"):
        marker.unlink()


def remove_bookkeeping(out: Path) -> None:
    """The ledgers, markers and staging folders: not part of a finished dataset."""
    for ledger in [*out.glob(".done-*.jsonl"), *out.glob(".working-*")]:
        ledger.unlink()
    for staging in out.glob(".staging-*"):
        shutil.rmtree(staging)  # empty, or holding a clip cut short by an interruption


def warm_up(cfg: AudioSettings) -> None:
    """Pay a worker's imports before its first clip: scipy.signal alone is ~1.1 s (loudness)."""
    if cfg.loudness_lufs is not None:
        integrated_loudness(np.zeros(cfg.sample_rate, np.float32), cfg.sample_rate)


class AudioWorkers:
    """Runs AudioJobs in this process and `num_workers - 1` spawned ones; results in job order
    (so manifests do not depend on scheduling).

        with AudioWorkers(settings, out, num_workers, expected_jobs=len(records)) as workers:
            for job in ...: workers.submit(job)      # while the caller checks its records
            results = workers.results()               # this process works too, from the end

    Spawned workers start when the block opens, so their start-up (~0.2 s; ~1.3 s with loudness
    on, importing scipy.signal) overlaps the caller's text checks; jobs reach them in chunks as
    they are submitted.
    When the caller asks for the results, it takes chunks from the end of the queue that no
    worker has claimed yet and runs them itself, until it meets the workers coming from the
    front: no core idles while work is left, and a late-starting worker costs only its own core.
    `caller_works=False` leaves every chunk to `num_workers` spawned processes (tests use it to
    be sure the workers' path runs).
    """

    def __init__(
        self, cfg: AudioSettings, out: Path, num_workers: int = 0, expected_jobs: int = 0, caller_works: bool = True
    ):
        self.cfg, self.out, self.caller_works = cfg, out, caller_works
        # Below CLIPS_PER_WORKER clips each, a spawned worker's start-up costs more than it saves.
        processes = min(num_workers or os.cpu_count() or 1, max(1, expected_jobs // CLIPS_PER_WORKER))
        self.spawned = processes - 1 if caller_works else processes
        self.jobs: List[AudioJob] = []
        self.chunks: List[Tuple[int, int, Future]] = []  # (first job, end job, future) sent to workers
        self.pool: Optional[ProcessPoolExecutor] = None

    def __enter__(self) -> "AudioWorkers":
        (self.out / "wavs").mkdir(parents=True, exist_ok=True)
        if self.cfg.decoder_copies:
            (self.out / "wavs_24k").mkdir(exist_ok=True)
        if self.spawned:
            # spawn, not fork: the parent may hold torch/OpenMP or tokenizer threads whose locks a
            # forked child would inherit. An executor (not a Pool) raises if a worker dies instead
            # of hanging, and lets us cancel chunks no worker has claimed.
            self.pool = ProcessPoolExecutor(
                self.spawned, mp_context=multiprocessing.get_context("spawn"), initializer=worker_init
            )
            for _ in range(self.spawned):  # each submit starts one process (they start on demand)
                self.pool.submit(warm_up, self.cfg)
        return self

    def __exit__(self, error_type, *_) -> None:
        if self.pool is not None:
            # After results() every chunk is done: the workers' exits (~0.3 s of interpreter
            # teardown) need not be waited for. On an error, wait, so that no worker still writes
            # into the output directory while it is being removed.
            self.pool.shutdown(wait=error_type is not None, cancel_futures=True)

    def submit(self, job: AudioJob) -> None:
        self.jobs.append(job)
        if self.pool is not None and len(self.jobs) % CHUNK == 0:
            self._send(len(self.jobs) - CHUNK, len(self.jobs))

    def _send(self, first: int, end: int) -> None:
        try:
            future = self.pool.submit(run_chunk, self.jobs[first:end], self.cfg, self.out)
        except BrokenProcessPool:  # a worker died while jobs were still being submitted
            raise self._worker_died() from None
        self.chunks.append((first, end, future))

    def results(self) -> List[Union[ClipInfo, Rejected]]:
        """Every job's result, in job order. This process runs the chunks no worker has claimed.
        A worker that dies is an error naming the clip it was on (the next run skips that clip)."""
        try:
            return self._results()
        except BrokenProcessPool:
            raise self._worker_died() from None

    def _worker_died(self) -> RunRefused:
        self.pool.shutdown(wait=True)  # the other workers stop, and un-mark their clips, first
        crashed = crashed_clips(self.out)
        if not crashed:
            return RunRefused(
                "an audio worker process died between clips (killed for lack of memory?)",
                fix="run prepare again: it continues with the clips not done yet",
            )
        return RunRefused(
            f"an audio worker process died while processing {', '.join(crashed.values())} (killed for lack of "
            "memory? a crash in its decoder?)",
            fix="run prepare again: it keeps the clips already done and skips this one as `worker_crashed` "
            "(listed in dropped.jsonl)",
        )

    def _results(self) -> List[Union[ClipInfo, Rejected]]:
        from tqdm import tqdm  # here: the workers, which import this module, never show a bar

        total = len(self.jobs)
        sent = self.chunks[-1][1] if self.chunks else 0
        if not self.caller_works and sent < total:
            self._send(sent, total)
            sent = total
        unsent = [(first, min(first + CHUNK, total)) for first in range(sent, total, CHUNK)]
        results: List[Union[ClipInfo, Rejected, None]] = [None] * total
        stored: set = set()  # indices of sent chunks whose results are in `results`
        front = 0  # the workers finish chunks from the front: the first one not yet stored
        with tqdm(total=total, desc="prepare audio", unit="clip", disable=total == 0) as progress:

            def store(first: int, end: int, values: list) -> None:
                results[first:end] = values
                progress.update(end - first)

            def store_finished() -> None:  # keeps the bar moving with the workers' progress
                nonlocal front
                while front < len(self.chunks) and self.chunks[front][2].done() and front not in stored:
                    first, end, future = self.chunks[front]
                    if not future.cancelled():
                        store(first, end, future.result())
                        stored.add(front)
                    front += 1

            if self.caller_works:
                # From the end backwards (with workers): the unsent tail, then sent chunks that no
                # worker has claimed, until one has; it and every chunk before it are theirs.
                for first, end in reversed(unsent) if self.pool else unsent:
                    store(first, end, run_chunk(self.jobs[first:end], self.cfg, self.out))
                    store_finished()
                for index in reversed(range(len(self.chunks))):
                    first, end, future = self.chunks[index]
                    if not future.cancel():
                        break
                    store(first, end, run_chunk(self.jobs[first:end], self.cfg, self.out))
                    stored.add(index)
                    store_finished()
            for index, (first, end, future) in enumerate(self.chunks):
                if index not in stored:
                    store(first, end, future.result())  # raises if a worker died
        return results
