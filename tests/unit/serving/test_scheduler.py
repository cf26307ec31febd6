"""The serving engine (xtts_ft.serving.scheduler) on the tiny model: concurrent jobs batched into one generate
across voices and LoRA adapters with each job's audio that of `synthesize` whatever shares its batch, order,
streaming, the queue's bound, cancel, a job failing alone, drain."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.helpers.settings import DEMO
from xtts_ft.serving.scheduler import (
    BadField,
    JobFailed,
    QueueFull,
    ServedModel,
    ShuttingDown,
    SpeechJob,
    SpeechScheduler,
)

ALICIA, ANNIE = DEMO / "en" / "wavs" / "alicia_000.flac", DEMO / "fr" / "wavs" / "annie_000.flac"
# The untrained tiny GPT never stops: a short babble guard keeps each sentence at a few dozen codes.
SHORT = {"max_seconds_per_char": 0.02}
GREEDY = {**SHORT, "top_k": 1}


def _random_adapter(model_dir, out_dir, seed: int, targets=("c_attn", "c_proj", "c_fc")):
    """A real PEFT LoRA adapter folder over the tiny base (our lora_config, PEFT's save_pretrained), its LoRA
    weights random so that it changes the model as much as a trained one would."""
    from peft import get_peft_model

    from xtts_ft.model import lora
    from xtts_ft.model.loading import load_xtts

    _, xtts = load_xtts(model_dir, "cpu", for_inference=False)
    cfg = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": list(targets), "train_heads": False}
    model = get_peft_model(xtts.gpt, lora.lora_config(cfg, []))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The tiny base with two LoRA adapters loaded side by side: models base, a, b."""
    from xtts_ft.inference import XttsSynthesizer

    folder = tmp_path_factory.mktemp("adapters")
    synthesizer = XttsSynthesizer(
        tiny_model_dir, device="cpu", adapter=_random_adapter(tiny_model_dir, folder / "a", 1)
    )
    synthesizer.load_adapter(_random_adapter(tiny_model_dir, folder / "b", 2), name="b")
    synthesizer.use_adapter(None)
    models = {
        "base": ServedModel(synthesizer),
        "a": ServedModel(synthesizer, "default"),
        "b": ServedModel(synthesizer, "b"),
    }
    return synthesizer, models


def _scheduler(models, **kwargs) -> SpeechScheduler:
    scheduler = SpeechScheduler(models, **kwargs)
    scheduler.add_voice("alicia", ALICIA)
    scheduler.add_voice("annie", ANNIE)
    return scheduler


@pytest.fixture
def engine(served):
    """A started scheduler (stopped after the test); batch sizes recorded."""
    made = []

    def make(**kwargs):
        sizes = []
        scheduler = _scheduler(served[1], on_batch=sizes.append, **kwargs)
        scheduler.batch_sizes = sizes
        scheduler.start()
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop()


JOBS = [  # mixed voices, adapters, languages and lengths; one text said through the base and both adapters
    SpeechJob("base", "Hello there.", "alicia", "en", seed=1),
    SpeechJob("a", "Hello there.", "alicia", "en", seed=1),
    SpeechJob("b", "Hello there.", "alicia", "en", seed=1),
    SpeechJob("a", "The birch canoe slid on the smooth planks of the old dock.", "annie", "en", seed=2),
    SpeechJob("b", "Bonjour. Encore!", "annie", "fr", seed=3),
]


def _with(job: SpeechJob, **changes) -> SpeechJob:
    from dataclasses import replace

    return replace(job, **changes)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


@pytest.mark.slow  # ~40 s on 2 cores: 20 decoder passes
def test_a_jobs_audio_is_that_of_synthesize_whatever_shares_its_batch(served, engine):
    """Greedy: five jobs (two voices, two languages, the base and two adapters, texts of 1 to 12 words, one of
    two sentences) in ONE batch each get synthesize()'s audio (coqui's Xtts.inference under that adapter) to
    float rounding; the adapters do change it. Sampled, jobs in one batch get the audio each gets alone."""
    synthesizer, models = served
    scheduler = engine(max_batch_size=8, max_wait_ms=2000)
    together = [h.audio(timeout_s=120) for h in [scheduler.submit(_with(job, decoding=GREEDY)) for job in JOBS]]
    assert scheduler.batch_sizes == [6]  # all six sentences in one batch
    references = {"alicia": ALICIA, "annie": ANNIE}
    for job, audio in zip(JOBS, together):
        synthesizer.use_adapter(models[job.model].adapter)
        alone = synthesizer.synthesize(job.text, job.language, reference=references[job.voice], decoding=GREEDY)
        assert _close(audio, alone.wav), job
    synthesizer.use_adapter(None)
    base, a, b = together[:3]  # one text and voice through the base, adapter a and adapter b
    assert not _close(base, a) and not _close(base, b) and not _close(a, b)

    sampled = [_with(job, decoding=SHORT) for job in JOBS[2:]]
    mixed = [h.audio(timeout_s=120) for h in [scheduler.submit(job) for job in sampled]]
    assert scheduler.batch_sizes[-1] == 4
    solo = engine(max_batch_size=1, max_wait_ms=0)
    for job, audio in zip(sampled, mixed):
        assert _close(audio, solo.submit(job).audio(timeout_s=120)), job
    assert set(solo.batch_sizes) == {1}


def test_an_adapter_on_the_conditioning_path_gets_its_own_voice_latents(tiny_model_dir, tmp_path):
    """An adapter whose LoRA layers reach the conditioning path (lora.targets naming the perceiver's layers, which
    turn a reference clip into a voice's latents): its rows and the base's, sharing one batch and one voice, each
    get synthesize()'s audio under their own adapter (the voice's latents computed per such adapter, not once
    under whichever adapter was active)."""
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.inference.mixed_adapters import conditioning_adapters

    adapter = _random_adapter(tiny_model_dir, tmp_path / "c", 3, targets=("c_attn", "to_q", "to_kv"))
    synthesizer = XttsSynthesizer(tiny_model_dir, device="cpu", adapter=adapter)  # loaded last: the active one
    assert conditioning_adapters(synthesizer._peft) == ["default"]
    models = {"base": ServedModel(synthesizer), "c": ServedModel(synthesizer, "default")}
    sizes = []
    scheduler = _scheduler(models, max_batch_size=4, max_wait_ms=1000, on_batch=sizes.append)
    scheduler.start()
    try:
        jobs = [SpeechJob(model, "Hello there.", "alicia", "en", seed=1, decoding=GREEDY) for model in models]
        together = [handle.audio(timeout_s=60) for handle in [scheduler.submit(job) for job in jobs]]
    finally:
        scheduler.stop()
    assert sizes == [2]  # one batch
    for job, audio in zip(jobs, together):
        synthesizer.use_adapter(models[job.model].adapter)
        alone = synthesizer.synthesize(job.text, job.language, reference=ALICIA, decoding=GREEDY)
        assert _close(audio, alone.wav), job.model
    assert not _close(*together)


def test_concurrent_clients_share_batches_and_get_their_audio_in_order(engine):
    """Jobs submitted from several threads at once run in batches of more than one row; a job of three
    sentences gets its sentences' audio in text order (each as synthesize would speak it alone), whichever
    row ends first."""
    scheduler = engine(max_batch_size=4, max_wait_ms=300)
    three = SpeechJob(
        "base", "Hi. The birch canoe slid on the smooth planks. Go!", "alicia", "en", seed=7, decoding=GREEDY
    )
    handles = {}

    def client(k):
        handles[k] = scheduler.submit(_with(JOBS[k % len(JOBS)], decoding=GREEDY))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = scheduler.submit(three)
    for handle in handles.values():
        assert handle.audio(timeout_s=60).size > 0
    pieces = list(ordered.chunks(timeout_s=60))
    assert max(scheduler.batch_sizes) > 1
    assert len(pieces) == 3  # one chunk per sentence, not streamed
    for piece, sentence in zip(pieces, ["Hi.", "The birch canoe slid on the smooth planks.", "Go!"]):
        alone = scheduler.submit(_with(three, text=sentence)).audio(timeout_s=60)
        assert _close(piece, alone), sentence
    assert ordered.first_audio_at is not None and ordered.done


def test_jobs_arriving_within_max_wait_of_each_other_start_one_batch(engine):
    """The window is counted from the latest arrival, not the oldest: three jobs 0.6 s apart with max_wait_ms=1000
    (1.2 s from first to last) start as ONE batch, none joining it after its first step (a late joiner is
    prefilled on its own and ends a step later than the rest)."""
    scheduler = engine(max_batch_size=8, max_wait_ms=1000)
    handles = []
    for k in range(3):
        if k:
            time.sleep(0.6)
        handles.append(scheduler.submit(_with(JOBS[k], decoding=SHORT)))
    for handle in handles:
        assert handle.audio(timeout_s=60).size > 0
    assert scheduler.batch_sizes == [3]


def test_the_end_of_a_batch_opens_the_window_for_the_next(engine):
    """A batch's end counts as an arrival: a job that waited through another group's batch does not start alone
    the moment it ends, and the job sent right after (a client just answered, back with its next request)
    shares its first step."""
    scheduler = engine(max_batch_size=2, max_wait_ms=400)
    # Each step of the first batch made slower (through the test seam the engine calls at every step): ~1 s.
    scheduler._nan_logits_for = lambda job: time.sleep(0.04) or False
    long = SpeechJob("a", "The birch canoe slid on the smooth planks of the old dock.", "annie", "en", decoding=SHORT)
    first = scheduler.submit(long)
    deadline = time.monotonic() + 60
    while not scheduler.batch_sizes and time.monotonic() < deadline:
        time.sleep(0.01)
    waited = scheduler.submit(_with(JOBS[0], decoding=GREEDY))  # other decoding settings: it cannot join
    assert first.audio(timeout_s=60).size > 0
    time.sleep(0.1)  # the client's round trip
    sent_after = scheduler.submit(_with(JOBS[1], decoding=GREEDY))
    for handle in (waited, sent_after):
        assert handle.audio(timeout_s=60).size > 0
    assert scheduler.batch_sizes == [1, 2]


def test_the_wait_for_company_is_bounded_by_max_batch_size_windows(served):
    """A trickle of arrivals keeps a batch open only up to max_batch_size windows after its oldest row."""
    from types import SimpleNamespace

    scheduler = _scheduler(served[1], max_batch_size=4, max_wait_ms=100)  # not started
    now = time.monotonic()
    alone = SimpleNamespace(enqueued=now)
    assert 0.08 <= scheduler._wait_left(alone, alone) <= 0.1  # one window
    oldest, newest = SimpleNamespace(enqueued=now - 0.35), SimpleNamespace(enqueued=now - 0.01)
    assert 0.03 <= scheduler._wait_left(oldest, newest) <= 0.05  # 4 windows (0.4 s) from the oldest, not 0.09
    assert scheduler._wait_left(oldest, SimpleNamespace(enqueued=now - 0.2)) < 0  # quiet for a window: go


def test_a_streaming_job_gets_chunks_as_its_codes_arrive(engine):
    """stream=True: a short first chunk after first_chunk_codes codes, then one every chunk_codes, before the
    row ends; they add up to the whole sentence's length (the non-streamed audio's)."""
    scheduler = engine(max_batch_size=4, max_wait_ms=0)
    job = SpeechJob("a", "The birch canoe slid on the smooth planks.", "annie", "en", seed=3, decoding=GREEDY)
    whole = scheduler.submit(job).audio(timeout_s=60)
    handle = scheduler.submit(_with(job, stream=True, first_chunk_codes=4, chunk_codes=8))
    chunks = list(handle.chunks(timeout_s=60))
    assert len(chunks) >= 3 and chunks[0].size < chunks[1].size
    assert sum(c.size for c in chunks) == whole.size
    streamed = np.concatenate(chunks)
    tail = chunks[-1].size - 1024  # past the last cross-fade: the same samples
    assert np.abs(streamed[-tail:] - whole[-tail:]).max() <= 1e-4 * max(1.0, np.abs(whole).max())


def test_bad_jobs_are_refused_before_queueing_naming_the_field(engine):
    scheduler = engine()
    cases = [
        (SpeechJob("nope", "Hi.", "alicia", "en"), "model"),
        (SpeechJob("base", "  ", "alicia", "en"), "input"),
        (SpeechJob("base", "?!...", "alicia", "en"), "input"),
        (SpeechJob("base", "Hi.", "nobody", "en"), "voice"),
        (SpeechJob("base", "Hi.", "alicia", "xx"), "language"),
        (SpeechJob("base", "Hi.", "alicia", "en", emotion="angry"), "emotion"),
        (SpeechJob("base", "Hi.", "alicia", "en", speed=9.0), "speed"),
        (SpeechJob("base", "Hi.", "alicia", "en", decoding={"beam": 3}), "decoding"),
        (SpeechJob("base", "Hi.", "alicia", "en", decoding={"temperature": "hot"}), "temperature"),
    ]
    for job, param in cases:
        with pytest.raises(BadField) as err:
            scheduler.submit(job)
        assert err.value.param == param, job
    assert scheduler.queue_depth() == 0 and scheduler.batch_sizes == []
    assert scheduler.voice_names()[:2] == ["alicia", "annie"]


def test_a_full_queue_refuses_with_retry_after(served):
    """max_queue rows waiting: the next job is QueueFull (with a retry delay), and is taken once rows leave."""
    scheduler = _scheduler(served[1], max_queue=3)  # not started: nothing leaves the queue
    first = scheduler.submit(SpeechJob("base", "One. Two.", "alicia", "en", decoding=SHORT))
    scheduler.submit(SpeechJob("a", "Three.", "alicia", "en", decoding=SHORT))
    with pytest.raises(QueueFull) as err:
        scheduler.submit(SpeechJob("b", "Four.", "alicia", "en", decoding=SHORT))
    assert err.value.retry_after_s >= 1 and scheduler.queue_depth() == 3
    first.cancel()
    scheduler.start()
    try:
        assert scheduler.submit(SpeechJob("b", "Four.", "alicia", "en", decoding=SHORT)).audio(timeout_s=60).size
        assert list(first.chunks(timeout_s=1)) == []
    finally:
        scheduler.stop()


def test_cancel_mid_stream_frees_its_row_at_the_next_step_and_the_batch_goes_on(engine, served):
    """A streaming client that goes away after its first chunk: its row leaves the generate at the next step
    (fewer rows in the later steps), the other row of its batch completes with its usual audio. A voice added
    while the batch runs does not wait for it to end."""
    scheduler = engine(max_batch_size=2, max_wait_ms=1000)
    long = {**GREEDY, "max_seconds_per_char": 0.2}  # long enough that the cancel lands mid-generate
    other = SpeechJob("a", "Hello there.", "annie", "en", seed=1, decoding=long)
    expected = scheduler.submit(other).audio(timeout_s=60)
    rows_per_step = []
    gpt = served[0].model.gpt
    hook = gpt.gpt_inference.final_norm.register_forward_hook(lambda m, i, out: rows_per_step.append(out.shape[0]))
    try:
        leaving = scheduler.submit(_with(other, model="b", stream=True, first_chunk_codes=2, chunk_codes=2))
        staying = scheduler.submit(other)
        next(leaving.chunks(timeout_s=60))
        # A voice added meanwhile (an upload) is taken between two steps, not after the batch.
        scheduler.add_voice("annie again", scheduler._voice(served[0], "annie"))
        assert not staying.done and "annie again" in scheduler.voice_names()
        leaving.cancel()
        kept = staying.audio(timeout_s=60)
    finally:
        hook.remove()
    assert _close(kept, expected) and leaving.cancelled and scheduler.batch_sizes[-1] == 2
    assert rows_per_step[0] == 2 and rows_per_step[-1] == 1  # the cancelled row left the batch's tensors
    assert list(leaving.chunks(timeout_s=1)) == []


def test_a_job_whose_logits_are_not_finite_fails_alone(engine):
    """NaN logits in one job's row: that job fails with JobFailed naming it, the other jobs of the batch
    complete with their usual audio, and the engine serves the next batch."""
    scheduler = engine(max_batch_size=4, max_wait_ms=500)
    scheduler._nan_logits_for = lambda job: job.text.startswith("Poison")
    good = [_with(JOBS[1], decoding=GREEDY), _with(JOBS[4], text="Bonjour.", decoding=GREEDY)]
    expected = [scheduler.submit(job).audio(timeout_s=60) for job in good]
    handles = [
        scheduler.submit(good[0]),
        scheduler.submit(_with(good[0], text="Poison. Pill.")),
        scheduler.submit(good[1]),
    ]
    with pytest.raises(JobFailed, match="not finite"):
        handles[1].audio(timeout_s=60)
    assert _close(handles[0].audio(timeout_s=60), expected[0]) and _close(handles[2].audio(timeout_s=60), expected[1])
    assert scheduler.batch_sizes[-1] == 4
    assert scheduler.submit(good[0]).audio(timeout_s=60).size


def test_drain_finishes_what_was_taken_and_refuses_new_jobs(served):
    scheduler = _scheduler(served[1], max_batch_size=2, max_wait_ms=0)
    scheduler.start()
    handles = [scheduler.submit(_with(job, decoding=SHORT)) for job in JOBS[:3]]
    drained = threading.Thread(target=scheduler.drain, kwargs={"timeout_s": 60})
    drained.start()
    time.sleep(0.05)
    with pytest.raises(ShuttingDown):
        scheduler.submit(_with(JOBS[0], decoding=SHORT))
    drained.join(timeout=90)
    assert not drained.is_alive() and all(h.done and h.error is None and h.audio(timeout_s=1).size for h in handles)
