"""The serving engine: the requests of concurrent clients batched into one decode, across voices and LoRA
adapters, each request's audio handed back in order as its codes arrive. The HTTP layer (openai_api) turns a
request into a `SpeechJob`, `submit`s it and writes out its `JobHandle.chunks()`; the engine knows no HTTP.

One worker thread owns the models. A job's text is cut into sentences as `synthesize` cuts it; each sentence
is a row of the queue. A batch starts with the rows that arrived within `max_wait_ms` of each other (each
arrival keeps it open `max_wait_ms` more, up to `max_batch_size` rows), whatever their voices, and whatever
their adapters over one base (PEFT's mixed-adapter batch, inference.mixed_adapters); rows of another model (a
full export is its own synthesizer) or other decoding settings wait for a batch of their own. The batch then
runs step by step (inference.continuous.RunningBatch): after each step every row is looked at (`_after_step`):
a streaming row is decoded by the HiFiGAN decoder every few codes (the first chunk short, as `stream` does), a
row that ended is spoken at once, a cancelled row or one whose logits were not finite stops there; ended rows
leave the batch and rows of its group that arrived meanwhile join it, so the batch stays full while clients
keep sending.

A row's codes depend only on its own text, voice, adapter and seed (batched.SeededDraw: sentence k of a job
draws from seed + k), never on what shares its batch or when it joined: under greedy decoding they are the
codes of `XttsSynthesizer.synthesize`, and sampled, those of `synthesize_many` for the same seed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from xtts_ft.errors import BadValue, UserError
from xtts_ft.inference import DECODING_KEYS, Voice, XttsSynthesizer, batched
from xtts_ft.inference.continuous import LiveRow, RunningBatch
from xtts_ft.inference.mixed_adapters import RowAdapters, conditioning_adapters, through_adapter

log = logging.getLogger(__name__)

# The decoding settings a job may set: the model's (config.json's) and the babble guard's rate.
JOB_DECODING_KEYS = DECODING_KEYS + ("max_seconds_per_char",)
SPEED_RANGE = (0.25, 4.0)  # OpenAI's
OVERLAP = 1024  # samples cross-faded between two streamed chunks (coqui's inference_stream default)


@dataclass(frozen=True)
class ServedModel:
    synthesizer: XttsSynthesizer  # one loaded base or full export (several names can share one)
    adapter: Optional[str] = None  # the PEFT adapter name inside that synthesizer; None = the bare model


@dataclass(frozen=True)
class SpeechJob:
    model: str  # a key of the scheduler's models
    text: str
    voice: str  # a voice name added with add_voice (or a named voice of the model's speakers file)
    language: str
    speed: float = 1.0
    emotion: Optional[str] = None
    seed: Optional[int] = None  # None: a fresh random seed
    decoding: Mapping[str, Any] = field(default_factory=dict)  # keys of JOB_DECODING_KEYS
    stream: bool = False  # emit chunks as codes arrive (else one chunk per sentence)
    first_chunk_codes: int = 8  # streaming: the first chunk after this many codes (see XttsSynthesizer.stream)
    chunk_codes: int = 20  # streaming: the next ones every this many


class BadField(BadValue):
    """A job the engine refuses before queueing it; `param` names the field (model, input, voice, ...)."""

    def __init__(self, param: str, message: str, fix: Optional[str] = None):
        super().__init__(message, fix)
        self.param = param


class QueueFull(UserError):
    """More rows are waiting than max_queue allows: come back after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message, fix=f"retry after {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class ShuttingDown(UserError):
    """The engine is draining or stopped: it takes no new job."""


class JobFailed(Exception):
    """The model failed for this job only (e.g. a non-finite logit in one of its rows); the others went on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class JobHandle:
    """A submitted job: its audio, in order, as it is made (`chunks`), or whole (`audio`)."""

    def __init__(self, job: SpeechJob, sample_rate: int, rows: int):
        self.job, self.sample_rate = job, sample_rate
        self.submitted_at = time.monotonic()
        self.first_audio_at: Optional[float] = None  # time.monotonic() of the first chunk
        self.finished_at: Optional[float] = None
        self.error: Optional[JobFailed] = None
        self._events: "queue.Queue[Tuple[str, Any]]" = queue.Queue()
        self._cancelled = threading.Event()
        self._closed = False  # finished, failed or cancelled: its rows have nothing more to do
        # Reassembly: the sentences' audio goes out in text order, whichever row finishes first.
        self._rows, self._next = rows, 0
        self._buffers: Dict[int, List[np.ndarray]] = {}
        self._complete: set = set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._closed

    def cancel(self) -> None:
        """Its rows leave the queue, and the batch they are in at its next step; `chunks` ends."""
        self._cancelled.set()
        self._events.put(("end", None))

    def chunks(self, timeout_s: Optional[float] = None) -> Iterator[np.ndarray]:
        """float32 mono chunks at `sample_rate`, in order; raises JobFailed if the model failed for this job,
        TimeoutError if no chunk came within `timeout_s`. Once cancelled it ends, chunks made before the cancel
        but not yet read included."""
        while True:
            try:
                kind, value = self._events.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"no audio for {timeout_s} s") from None
            if kind == "chunk":
                if not self.cancelled:
                    yield value
                continue
            self._events.put((kind, value))  # the end stays readable for another reader
            if kind == "error":
                raise value
            return

    def audio(self, timeout_s: Optional[float] = None) -> np.ndarray:
        """The whole audio, concatenated (waits for the job to end)."""
        pieces = list(self.chunks(timeout_s))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    # --- the worker's side ---------------------------------------------------------------------------------

    def _add(self, k: int, wav: np.ndarray, final: bool) -> None:
        """Audio of sentence k (`final`: its last); it goes out once every sentence before k's has."""
        if self._closed:
            return
        if wav.size:
            self._buffers.setdefault(k, []).append(wav)
        if final:
            self._complete.add(k)
        while self._next < self._rows:
            for piece in self._buffers.pop(self._next, []):
                if self.first_audio_at is None:
                    self.first_audio_at = time.monotonic()
                self._events.put(("chunk", piece))
            if self._next not in self._complete:
                break
            self._next += 1
        if self._next == self._rows:
            self._close(("end", None))

    def _fail(self, error: JobFailed) -> None:
        if not self._closed:
            self.error = error
            self._close(("error", error))

    def _close(self, event: Tuple[str, Any]) -> None:
        self._closed, self.finished_at = True, time.monotonic()
        self._events.put(event)


@dataclass(eq=False)
class _Row:
    """One sentence of one job, waiting or in a batch."""

    handle: JobHandle
    index: int  # the sentence's place in its job's text
    sentence: batched.Sentence
    synthesizer: XttsSynthesizer
    settings: dict
    group: tuple  # rows of one group may share a batch: the same synthesizer and decoding settings
    enqueued: float
    new: int = 0  # streaming: codes since its last chunk
    previous: Any = None  # streaming: coqui's handle_chunks state (the audio so far, the held-back overlap)
    held: Any = None

    @property
    def live(self) -> bool:
        return not (self.handle.cancelled or self.handle.done)


class SpeechScheduler:
    """The engine: `models` (name → ServedModel), `max_batch_size` rows per generate, a batch started once
    no row of its group has arrived for `max_wait_ms` (or it is full), at most `max_queue` rows waiting (then
    QueueFull), `on_batch(rows)` called as each batch starts (metrics)."""

    def __init__(
        self,
        models: Dict[str, ServedModel],
        *,
        max_batch_size: int = 8,
        max_wait_ms: float = 20.0,
        max_queue: int = 64,
        on_batch: Optional[Callable[[int], None]] = None,
    ):
        if not models:
            raise BadValue("the scheduler needs at least one model")
        for name, served in models.items():
            loaded = list(getattr(getattr(served.synthesizer, "_peft", None), "peft_config", {}) or {})
            if served.adapter is not None and served.adapter not in loaded:
                raise BadValue(f"model {name!r}: adapter {served.adapter!r} is not loaded in its synthesizer")
        for name, value in (("max_batch_size", max_batch_size), ("max_queue", max_queue)):
            if int(value) < 1:
                raise BadValue(f"{name}={value} — fix: {name}=<an integer ≥ 1>")
        self.models = dict(models)
        self._conditioning_keys = {name: _conditioning_key(served) for name, served in self.models.items()}
        self.max_batch_size, self.max_queue = int(max_batch_size), int(max_queue)
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000
        self.on_batch = on_batch
        self._lock = threading.Condition()
        self._queue: Deque[_Row] = deque()
        self._active: List[_Row] = []  # the batch now running
        self._model_lock = threading.Lock()  # the models are used by one thread at a time (voices, batches)
        self._references: Dict[str, Union[Path, Voice]] = {}
        # (synthesizer id, adapter on the conditioning path or None, voice name) → its conditioning
        self._voices: Dict[Tuple[int, Optional[str], str], Voice] = {}
        self._kernels: Dict[int, "_Kernels"] = {}
        self._accepting, self._stopping = True, False
        self._thread: Optional[threading.Thread] = None
        self._tasks: Deque[Tuple[Callable[[], Any], Any]] = deque()  # (task, its Future) for the worker
        self._rows_done: Deque[float] = deque(maxlen=64)  # when rows left their batch: the engine's pace
        self._batch_ended = -math.inf  # time.monotonic() when the last batch's last rows left it
        # A test seam, not reachable from a request: jobs for which the model's logits are made NaN.
        self._nan_logits_for: Callable[[SpeechJob], bool] = lambda job: False

    # --- voices ------------------------------------------------------------------------------------------

    def _synthesizers(self) -> List[XttsSynthesizer]:
        distinct: Dict[int, XttsSynthesizer] = {}
        for served in self.models.values():
            distinct.setdefault(id(served.synthesizer), served.synthesizer)
        return list(distinct.values())

    def add_voice(self, name: str, reference: Union[str, Path, Voice]) -> None:
        """A voice named `name`: a reference clip (its conditioning computed once per synthesizer, now, and once
        more per served adapter on the conditioning path) or a Voice (e.g. a saved .pt). A name already there is
        replaced."""
        if not name or not isinstance(name, str):
            raise BadValue(f"voice name {name!r} — fix: give a non-empty name")
        keys = {(id(s.synthesizer), self._conditioning_keys[n]): s.synthesizer for n, s in self.models.items()}

        def conditioning() -> Dict[Tuple[int, Optional[str]], Voice]:
            computed = {}
            for (synthesizer_id, adapter), synthesizer in keys.items():
                if isinstance(reference, Voice):
                    device = synthesizer.device
                    voice = Voice(reference.gpt_cond_latent.to(device), reference.speaker_embedding.to(device))
                elif any(k == synthesizer_id and a is not None for k, a in keys):  # adapters differ on this path
                    with through_adapter(synthesizer, adapter):
                        voice = synthesizer.clone_voice(reference)
                else:
                    voice = synthesizer.clone_voice(reference)
                computed[(synthesizer_id, adapter)] = voice
            return computed

        computed = self._in_worker(conditioning)
        with self._lock:
            self._references[name] = reference if isinstance(reference, Voice) else Path(reference)
            for key, voice in computed.items():
                self._voices[(*key, name)] = voice

    def _in_worker(self, task: Callable[[], Any]) -> Any:
        """`task()` run by the worker between two steps of its batch (the models are its own), or here when no
        worker runs; its result, or its exception raised here."""
        from concurrent.futures import Future

        with self._lock:
            running = self._thread is not None and not self._stopping
            if running:
                future: Future = Future()
                self._tasks.append((task, future))
                self._lock.notify_all()
        if not running:
            with self._model_lock:
                return task()
        return future.result()

    def _run_tasks(self) -> None:
        while True:
            with self._lock:
                if not self._tasks:
                    return
                task, future = self._tasks.popleft()
            try:
                future.set_result(task())
            except Exception as err:  # the caller's to handle (e.g. a bad reference clip)
                future.set_exception(err)

    def voice_names(self) -> List[str]:
        """The voices added, then the named voices of the models' speakers files."""
        named = [n for s in self._synthesizers() for n in s.voice_names if n not in self._references]
        return list(self._references) + sorted(set(named))

    def _voice(self, synthesizer: XttsSynthesizer, name: str, adapter: Optional[str] = None) -> Voice:
        """Voice `name` for rows of `synthesizer` through `adapter` (a _conditioning_key)."""
        voice = self._voices.get((id(synthesizer), adapter, name))
        if voice is not None:
            return voice
        if name in synthesizer.voice_names:  # stored latents: the same under every adapter
            voice = self._voices[(id(synthesizer), adapter, name)] = synthesizer.named_voice(name)
            return voice
        known = self.voice_names()
        raise BadField(
            "voice",
            f"unknown voice {name!r}; known: {', '.join(known[:20]) or 'none'}",
            fix="voice=<one of those> (GET /v1/voices lists them)",
        )

    # --- jobs --------------------------------------------------------------------------------------------

    def check(self, job: SpeechJob) -> None:
        """A BadField (naming the field: model, input, voice, language, emotion, speed, seed, decoding) for
        a job that cannot be synthesized, before anything is queued."""
        self._rows(job, None)

    def _rows(self, job: SpeechJob, handle: Optional[JobHandle]) -> List[_Row]:
        served = self.models.get(job.model)
        if served is None:
            raise BadField("model", f"unknown model {job.model!r}; served: {', '.join(self.models)}")
        synthesizer = served.synthesizer
        text = job.text or ""
        if not text.strip():
            raise BadField("input", "the input is empty", fix='give something to say, e.g. "Hello there."')
        if not any(ch.isalnum() for ch in text):  # the model would babble until its guard stops it
            raise BadField(
                "input",
                f"the input {text.strip()[:40]!r} has no words, only punctuation or symbols",
                fix='give words to say, e.g. "Hello there."',
            )
        language = job.language.split("-")[0] if job.language != "zh-cn" else job.language
        if language not in synthesizer.languages:
            raise BadField(
                "language",
                f"language {job.language!r} is not one of model {job.model!r}'s: {', '.join(synthesizer.languages)}",
                fix="language=<one of those> (GET /v1/models lists each model's languages)",
            )
        speed = float(job.speed)
        if not (SPEED_RANGE[0] <= speed <= SPEED_RANGE[1]):
            raise BadField(
                "speed",
                f"speed {job.speed} is out of range",
                fix=f"speed between {SPEED_RANGE[0]} and {SPEED_RANGE[1]}",
            )
        decoding = self._decoding(job)
        voice = self._voice(synthesizer, job.voice, self._conditioning_keys[job.model])
        try:
            voice, token = synthesizer.with_emotion(voice, job.emotion)
            sentences = synthesizer._tokenized_sentences(text, language, f"[{token}]" if token else "")
        except BadValue as err:
            raise BadField("emotion" if "emotion" in str(err) else "input", str(err), err.fix) from None
        settings = synthesizer.decoding_settings(decoding)
        max_seconds_per_char = float(decoding.get("max_seconds_per_char") or 0.25)
        seed = int(job.seed) if job.seed is not None else secrets.randbits(62)
        group = (id(synthesizer), tuple(sorted((k, settings[k]) for k in DECODING_KEYS)))
        now, rows = time.monotonic(), []
        for k, (sentence, tokens) in enumerate(sentences):
            max_codes = synthesizer._max_codes(sentence, language, max_seconds_per_char)
            tokens = torch.tensor(tokens, dtype=torch.int32, device=synthesizer.device).unsqueeze(0)
            row = batched.Sentence(0, tokens, voice, max_codes, seed + k, served.adapter)
            rows.append(_Row(handle, k, row, synthesizer, settings, group, now))
        return rows

    @staticmethod
    def _decoding(job: SpeechJob) -> dict:
        decoding = dict(job.decoding or {})
        unknown = sorted(set(decoding) - set(JOB_DECODING_KEYS))
        if unknown:
            raise BadField(
                "decoding", f"unknown decoding setting(s) {', '.join(unknown)}; known: {', '.join(JOB_DECODING_KEYS)}"
            )
        for key, value in decoding.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise BadField(key, f"{key}={value!r} is not a number")
        if job.seed is not None and (isinstance(job.seed, bool) or not isinstance(job.seed, int)):
            raise BadField("seed", f"seed={job.seed!r} is not an integer")
        return decoding

    def submit(self, job: SpeechJob) -> JobHandle:
        """Queue the job's sentences; QueueFull when max_queue rows would be waiting, ShuttingDown once
        draining. A bad job is a BadField (see check)."""
        if not self._accepting:
            raise ShuttingDown("the server is shutting down", fix="retry on another instance, or later")
        sample_rate = self.models[job.model].synthesizer.sample_rate if job.model in self.models else 24000
        rows = self._rows(job, None)
        handle = JobHandle(job, sample_rate, len(rows))
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down", fix="retry on another instance, or later")
            waiting = len(self._queue)
            if waiting and waiting + len(rows) > self.max_queue:
                raise QueueFull(
                    f"the queue is full ({waiting} sentences waiting, max_queue={self.max_queue})",
                    self._retry_after(waiting + len(rows)),
                )
            for row in rows:
                row.handle = handle
                self._queue.append(row)
            self._lock.notify_all()
        return handle

    def _retry_after(self, rows: int) -> float:
        """Seconds until `rows` more rows could be taken, at the pace rows have been leaving batches lately."""
        done = list(self._rows_done)
        if len(done) < 2 or done[-1] <= done[0]:
            return 1.0
        per_second = (len(done) - 1) / (done[-1] - done[0])
        return float(min(60, max(1, math.ceil(rows / per_second))))

    def queue_depth(self) -> int:
        """Rows (sentences) waiting for a batch."""
        with self._lock:
            return len(self._queue)

    # --- the worker ----------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="speech-scheduler", daemon=True)
            self._thread.start()

    def drain(self, timeout_s: float = 60) -> None:
        """Take no new job (submit raises ShuttingDown); let the jobs already taken finish (for up to
        `timeout_s`), then stop."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._accepting = False
            self._lock.notify_all()
            while (self._queue or self._active) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "drain: %d sentences left after %.0f s", len(self._queue) + len(self._active), timeout_s
                    )
                    break
                self._lock.wait(left)
        self.stop()

    def stop(self) -> None:
        """Stop the worker (after the step it is in); every job not finished fails."""
        with self._lock:
            self._accepting, self._stopping = False, True
            for row in list(self._queue) + list(self._active):
                row.handle._fail(JobFailed("the server stopped before this request was done"))
            self._queue.clear()
            self._lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._model_lock:
            self._run_tasks()  # asked for while the worker was stopping

    def _work(self) -> None:
        while True:
            with self._model_lock:
                self._run_tasks()
            rows = self._next_batch()
            if rows is None:
                return
            if not rows:  # a task came
                continue
            try:
                self._run_batch(rows)
            finally:
                with self._lock:
                    self._active = []
                    self._lock.notify_all()

    def _next_batch(self) -> Optional[List[_Row]]:
        """The rows a batch starts with: the oldest row's group, up to max_batch_size rows in arrival order, once
        that many wait or none of the group has arrived for max_wait_ms (see _wait_left); None once stopping."""
        with self._lock:
            while True:
                if self._stopping:
                    return None
                if self._tasks:
                    return []
                live = [row for row in self._queue if row.live]
                if len(live) != len(self._queue):
                    self._queue = deque(live)
                if not self._queue:
                    self._lock.wait()
                    continue
                oldest = self._queue[0]
                group = [row for row in self._queue if row.group == oldest.group]
                wait = self._wait_left(oldest, group[-1])
                if len(group) >= self.max_batch_size or wait <= 0 or not self._accepting:
                    return self._take(oldest.group, self.max_batch_size)
                self._lock.wait(wait)

    def _wait_left(self, oldest: _Row, newest: _Row) -> float:
        """Seconds a batch not yet full still waits for company: rows that arrive within max_wait_ms of each
        other share it, each arrival keeping it open max_wait_ms more. Clients that send together reach the
        queue spread out (HTTP parsing, tens of ms apart on a busy CPU); a row that misses the start joins
        after the first step, prefilled on its own, and ends a step later than the rest: with a window counted
        from the oldest row alone, that cost 8 clients a few % of synthesize_many's requests/s. It never
        waits more than max_batch_size windows from the oldest row (each arrival adds a row, and a full
        batch starts at once). The end of the last batch counts as an arrival: its clients, just answered,
        send their next requests now (one that sends request after request is back within a window), where
        the rows already waiting would start without the last of them."""
        opened, latest = max(oldest.enqueued, self._batch_ended), max(newest.enqueued, self._batch_ended)
        return min(latest + self.max_wait_s, opened + self.max_batch_size * self.max_wait_s) - time.monotonic()

    def _take(self, group: tuple, most: int) -> List[_Row]:
        """Up to `most` waiting rows of `group`, in arrival order, up to the first row of another group (that
        one waits for this batch to end, not for ever); they join the active rows. Called under the lock."""
        taken: List[_Row] = []
        for row in self._queue:
            if len(taken) >= most or row.group != group:
                break
            if row.live:
                taken.append(row)
        gone = set(map(id, taken))
        self._queue = deque(row for row in self._queue if id(row) not in gone)
        self._active = self._active + taken
        return taken

    def _joining(self, group: tuple, free: int) -> List[_Row]:
        if free <= 0 or self._stopping:
            return []
        with self._lock:
            return self._take(group, free) if self._queue and self._queue[0].group == group else []

    def _run_batch(self, rows: List[_Row]) -> None:
        """Decode `rows`, and the rows of their group that arrive meanwhile, in one running batch: after each
        step every row's audio goes out as due, ended rows leave, waiting rows join (up to max_batch_size)."""
        synthesizer, group = rows[0].synthesizer, rows[0].group
        batch = None
        try:
            with self._model_lock, contextlib.ExitStack() as stack:
                stack.enter_context(torch.no_grad())  # inference only: no autograd graph (the weights require grad)
                adapters = None
                if getattr(synthesizer, "_peft", None) is not None:
                    adapters = stack.enter_context(RowAdapters(synthesizer._peft).hooked())
                kernels = self._kernels.setdefault(id(synthesizer), _Kernels(synthesizer, self.max_batch_size))
                batch = RunningBatch(synthesizer.model.gpt, rows[0].settings, synthesizer.device, adapters)
                stack.enter_context(_nan_logits(synthesizer, batch, self._nan_logits_for))
                joining, leaving = rows, []
                while True:
                    batch.retire(leaving)
                    with self._lock:
                        self._rows_done.extend([time.monotonic()] * len(leaving))
                        gone = set(id(live.tag) for live in leaving)
                        self._active = [row for row in self._active if id(row) not in gone]
                    if joining:  # their prompts' pass with the batch kernels too (GELU fused), as synthesize_many's
                        rows_after = len(batch.rows) + len(joining)
                        with synthesizer._batch_kernels(kernels.packed(rows_after), rows_after):
                            batch.admit([row.sentence for row in joining], joining)
                        if self.on_batch is not None:
                            self.on_batch(len(batch.rows))
                    if not batch.rows:
                        self._batch_ended = time.monotonic()
                        break
                    with batch.kernels(synthesizer, kernels.packed(len(batch.rows))):
                        leaving, joining = self._steps(batch, group, synthesizer.model)
        except Exception as err:  # a bug or a fault of the whole batch: its jobs fail, the server goes on
            log.exception("a batch failed")
            with self._lock:
                failed = list(self._active)
            for row in failed:
                row.handle._fail(JobFailed(f"synthesis failed: {type(err).__name__}: {err}"))

    def _steps(self, batch: RunningBatch, group: tuple, model) -> Tuple[List[LiveRow], List[_Row]]:
        """Step the batch as it is until rows should join it, or half of it has ended: (the ended rows, to
        leave; the rows to join). An ended row stays in the tensors until then (its audio has gone out): taking
        it out copies the whole cache, which costs about what a few steps of an extra row do. Once every row has
        ended none joins: the next batch starts in _next_batch, with its wait for company (see _wait_left)."""
        ended: set = set()
        while True:
            self._run_tasks()  # e.g. a voice uploaded meanwhile: its conditioning does not wait for the batch
            batch.step()
            for live in batch.rows:
                if id(live) not in ended and _after_step(model, live):
                    ended.add(id(live))
            if len(ended) == len(batch.rows):  # the next batch starts afresh, after its own wait for company
                return list(batch.rows), []
            joining = self._joining(group, self.max_batch_size - len(batch.rows) + len(ended))
            if joining or 2 * len(ended) >= len(batch.rows):
                return [live for live in batch.rows if id(live) in ended], joining


def _conditioning_key(served: ServedModel) -> Optional[str]:
    """Whose latents a voice has for `served`'s rows: its adapter's if that adapter is on the conditioning path
    (mixed_adapters.conditioning_adapters), else the base's (None)."""
    peft_model = getattr(served.synthesizer, "_peft", None)
    if served.adapter is None or peft_model is None:
        return None
    return served.adapter if served.adapter in conditioning_adapters(peft_model) else None


@contextlib.contextmanager
def _nan_logits(synthesizer: XttsSynthesizer, batch: RunningBatch, poisoned: Callable[[SpeechJob], bool]):
    """Within: the GPT's logits of the rows whose job `poisoned` names are NaN (the test seam of a model
    failing for one job)."""

    def poison(_module, _inputs, logits):
        rows = [k for k, live in enumerate(batch.rows) if poisoned(live.tag.handle.job)]
        if not rows or logits.shape[0] != len(batch.rows):
            return logits
        logits = logits.clone()
        logits[rows] = float("nan")
        return logits

    handle = synthesizer.model.gpt.gpt_inference.lm_head[-1].register_forward_hook(poison)
    try:
        yield
    finally:
        handle.remove()


class _Kernels:
    """cpu_kernels' packed weights for one synthesizer's batches, packed once and kept while it serves
    (packing takes 0.7-1.5 s at full size; the row count changes as rows come and go): the copy is the same
    for every row count, only which products go through it is decided per row count."""

    def __init__(self, synthesizer: XttsSynthesizer, max_rows: int):
        self.synthesizer, self.max_rows = synthesizer, max_rows
        self._full: Optional[dict] = None
        self._by_rows: Dict[int, dict] = {}

    def packed(self, rows: int) -> dict:
        from xtts_ft.inference.cpu_kernels import plain_kernels

        if rows < 2 or plain_kernels():
            return {}
        if self._full is None:
            synthesizer = self.synthesizer
            gpt2 = synthesizer.model.gpt.gpt
            self._full = synthesizer._packed_products.packed_weights(gpt2, max(2, self.max_rows), synthesizer.device)
        if rows not in self._by_rows:
            products = self.synthesizer._packed_products
            self._by_rows[rows] = {
                layer: entry._replace(for_steps=products.packed_is_faster(layer.weight, rows, entry.weight))
                for layer, entry in self._full.items()
            }
        return self._by_rows[rows]


# --- after each step: a row's audio as its codes arrive ----------------------------------------------------


def _after_step(model, live: LiveRow) -> bool:
    """Row `live` after a step: its streamed chunk if one is due, its audio if it ended; True if it leaves the
    batch (ended, failed, cancelled, or its job failed)."""
    row: _Row = live.tag
    if not row.live:
        return True
    if live.failed:
        row.handle._fail(JobFailed(f"the model's logits were not finite in sentence {row.index + 1} of this request"))
        return True
    job = row.handle.job
    if job.stream:
        row.new += 1
        due = job.first_chunk_codes if row.previous is None else job.chunk_codes
        if row.new >= due and not live.ended:
            _stream_chunk(model, live, final=False)
    if not live.ended:
        return False
    if not job.stream:
        row.handle._add(row.index, _numpy(_decode(model, live)), final=True)
    elif row.new == 0 and row.held is not None:
        row.handle._add(row.index, _numpy(row.held), final=True)  # only the held-back overlap is left
    else:
        _stream_chunk(model, live, final=True)
    return True


def _decode(model, live: LiveRow) -> torch.Tensor:
    """The row's codes so far spoken by the HiFiGAN decoder, its latents stretched for its speed as
    Xtts.inference stretches them."""
    latents = torch.stack(live.latents)[None]
    speed = float(live.tag.handle.job.speed)
    if speed != 1.0:
        latents = F.interpolate(latents.transpose(1, 2), scale_factor=1.0 / speed, mode="linear").transpose(1, 2)
    with torch.no_grad():
        return model.hifigan_decoder(latents, g=live.sentence.voice.speaker_embedding)


def _stream_chunk(model, live: LiveRow, final: bool) -> None:
    """streaming.decode_chunk for one row: its audio so far decoded, the part past its last chunk out, the
    seam cross-faded over OVERLAP samples (coqui's handle_chunks)."""
    row: _Row = live.tag
    wav = _decode(model, live)
    chunk, row.previous, row.held = model.handle_chunks(wav.squeeze(), row.previous, row.held, OVERLAP, is_final=final)
    row.new = 0
    if chunk.numel() or final:
        row.handle._add(row.index, _numpy(chunk), final)


def _numpy(wav: torch.Tensor) -> np.ndarray:
    return wav.detach().float().cpu().numpy().reshape(-1)
