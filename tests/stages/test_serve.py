"""The speech server (`xtts-ft serve`) driven by the real `openai` client on 127.0.0.1 only: OpenAI's
speech API over the tiny base and a LoRA adapter served side by side, whole and streamed, every format,
concurrent clients, uploads, the metrics, every refusal in OpenAI's error shape with the server serving on,
a client leaving mid-stream, a model failure, a full queue, and SIGTERM draining a real server process.

One server per module (uvicorn in a thread over one engine); every request loop is bounded in count and
time. The untrained tiny GPT never stops by itself, so each sentence is capped at a few codes (the
babble guard, set on the synthesizer as scripts/bench_inference.py does) to keep requests short."""

from __future__ import annotations

import io
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch

openai = pytest.importorskip("openai", reason="the server's tests drive it with the openai client")
pytest.importorskip("fastapi", reason="the speech server needs the `serve` extra")

from tests.helpers.adapters import random_adapter  # noqa: E402
from tests.helpers.settings import DEMO, REPO  # noqa: E402
from xtts_ft.config import compose  # noqa: E402
from xtts_ft.errors import BadValue  # noqa: E402
from xtts_ft.serving import audio_formats, openai_api  # noqa: E402

KEY = "test-key-0123456789"
CODES = 12  # per sentence: ~0.55 s of audio
ALICIA, ANNIE = DEMO / "en" / "wavs" / "alicia_000.flac", DEMO / "fr" / "wavs" / "annie_000.flac"
GREEDY = {"top_k": 1, "seed": 3}
TIMEOUT = 120  # seconds any one request may take on a loaded 2-core machine


def capped(synthesizer, codes: int = CODES) -> None:
    """Every sentence is at most `codes` codes (the babble guard), in every path: engine and synthesize."""
    synthesizer._max_codes = lambda sentence, language, max_seconds_per_char: codes


class RunningServer:
    """A SpeechServer under uvicorn in a thread, on a socket bound to 127.0.0.1 by the OS (port 0)."""

    def __init__(self, speech: openai_api.SpeechServer):
        import uvicorn

        self.speech = speech
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(speech.app, log_level="warning", lifespan="on")
        self.uvicorn = openai_api.DrainingServer(config, speech)
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.uvicorn.started, "the server did not start within 60 s"

    def client(self, key: str = KEY, **kwargs):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT, **kwargs)

    def close(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(60)
        self.sock.close()


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("voices")
    shutil.copy(ALICIA, folder / "alicia.flac")
    shutil.copy(ANNIE, folder / "annie.flac")
    return folder


@pytest.fixture(scope="module")
def served(tiny_model_dir, voices_dir, tmp_path_factory):
    """The tiny base ("demo") and a LoRA adapter over it ("wo") in one process, two voices, a key."""
    from xtts_ft.serving.metrics import ServerMetrics
    from xtts_ft.serving.scheduler import SpeechScheduler
    from xtts_ft.serving.voices import voice_folder

    adapter = random_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "wo", seed=1)
    models = openai_api.load_models(tiny_model_dir, {"wo": str(adapter)}, name="demo", device="cpu")
    capped(models["demo"].synthesizer)
    annie = models["demo"].synthesizer.clone_voice(ANNIE)  # a saved voice: annie's latents as a .pt
    torch.save(
        {"gpt_cond_latent": annie.gpt_cond_latent, "speaker_embedding": annie.speaker_embedding},
        voices_dir / "saved.pt",
    )
    metrics = ServerMetrics()
    scheduler = SpeechScheduler(
        models, max_batch_size=8, max_wait_ms=200, max_queue=64, on_batch=metrics.batch_rows.observe
    )
    for name, reference in voice_folder(voices_dir).items():
        scheduler.add_voice(name, reference)
    settings = openai_api.ServerSettings(api_key=KEY, response_format="wav", max_input_chars=300)
    speech = openai_api.SpeechServer(scheduler, settings, tmp_path_factory.mktemp("uploads"), metrics)
    server = RunningServer(speech)
    yield server
    server.close()


def _pcm(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768


def _wav(data: bytes) -> np.ndarray:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 24000
    return audio


def _metric(server, name: str, **labels) -> float:
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, flags=re.M)
    return float(found.group(1)) if found else 0.0


# --- speech, whole and streamed --------------------------------------------------------------------------


def test_a_response_is_synthesize_with_the_same_seed(served):
    synthesizer = served.speech.scheduler.models["demo"].synthesizer
    speech = served.client().audio.speech.create(
        model="demo", voice="alicia", input="Hello there. How are you?", response_format="wav", extra_body=GREEDY
    )
    audio = _wav(speech.content)
    alone = synthesizer.synthesize(
        "Hello there. How are you?", "en", reference=ALICIA, decoding={"top_k": 1}, seed=GREEDY["seed"]
    ).wav
    assert audio.size == alone.size and audio.size > 2 * 1024  # two sentences of 12 codes
    assert np.abs(audio - np.clip(alone, -1, 1)).max() < 2e-4  # 16-bit rounding


def test_every_format_decodes_to_the_same_audio(served):
    client = served.client()
    request = dict(model="demo", voice="alicia", input="The birch canoe.", extra_body=GREEDY)
    pcm = _pcm(client.audio.speech.create(response_format="pcm", **request).content)
    wav = _wav(client.audio.speech.create(response_format="wav", **request).content)
    assert pcm.size == wav.size > 0 and np.abs(pcm - wav).max() < 1e-6
    flac = client.audio.speech.create(response_format="flac", **request)
    assert flac.response.headers["content-type"] == "audio/flac"
    assert np.abs(_wav(flac.content) - wav).max() < 1e-4
    for name in ("mp3", "opus"):
        if name in audio_formats.FORMATS:  # libsndfile with LAME / libopus (the soundfile wheel's)
            lossy = _wav(client.audio.speech.create(response_format=name, **request).content)
            assert abs(lossy.size - wav.size) < 4096, name


def test_streaming_sends_the_wav_header_first_then_frames(served):
    client = served.client()
    text = "One small step. Another small step. A third one."
    with client.audio.speech.with_streaming_response.create(
        model="demo", voice="annie", input=text, response_format="wav", extra_body={**GREEDY, "stream": True}
    ) as response:
        assert response.headers["content-type"] == "audio/wav" and "content-length" not in response.headers
        pieces = list(response.iter_bytes())
    data = b"".join(pieces)
    assert data[:4] == b"RIFF" and data[36:40] == b"data" and data[40:44] == b"\xff\xff\xff\xff"
    streamed = _pcm(data[44:])
    whole = _pcm(
        client.audio.speech.create(
            model="demo", voice="annie", input=text, response_format="pcm", extra_body=GREEDY
        ).content
    )
    # Streamed chunks are decoded as their codes arrive and cross-faded (as `stream` does): the same length,
    # and the same audio but at the seams.
    assert streamed.size == whole.size and np.abs(streamed - whole).max() < 0.02
    assert np.corrcoef(streamed, whole)[0, 1] > 0.99
    with client.audio.speech.with_streaming_response.create(
        model="demo", voice="annie", input=text, response_format="pcm", stream_format="audio", extra_body=GREEDY
    ) as response:
        raw = b"".join(response.iter_bytes())
    assert raw[:4] != b"RIFF" and len(raw) == 2 * whole.size


def test_adapter_and_base_side_by_side_and_concurrent_clients_share_batches(served):
    client = served.client()
    batches_before = _metric(served, "xtts_ft_batch_rows_count")
    jobs = [("demo" if i % 2 else "wo", "alicia" if i % 3 else "annie", f"Sentence number {i}.") for i in range(6)]

    def one(job):
        model, voice, text = job
        return client.audio.speech.create(
            model=model, voice=voice, input=text, response_format="pcm", extra_body=GREEDY
        ).content

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, jobs, timeout=4 * TIMEOUT))
    assert all(len(r) > 0 for r in results)
    batches = _metric(served, "xtts_ft_batch_rows_count") - batches_before
    assert 1 <= batches < len(jobs)  # several requests shared a generate
    # The adapter changes the model: the same request through "wo" differs from the base's.
    base, adapted = (one((model, "alicia", "Sentence number 1.")) for model in ("demo", "wo"))
    assert base != adapted
    alone = _pcm(one(("demo", "alicia", "Sentence number 1.")))
    assert np.abs(alone - _pcm(results[1])).max() <= 2 / 32768  # sharing a batch changed nothing but rounding
    listed = {m.id for m in client.models.list().data}
    assert listed == {"demo", "wo"}


def test_a_voice_folder_holds_clips_and_saved_voices(served, voices_dir, tmp_path):
    from xtts_ft.serving.voices import voice_folder

    client = served.client()
    assert {v.get("id") for v in client.get("/voices", cast_to=object)["data"]} >= {"alicia", "annie", "saved"}
    request = dict(model="demo", input="Saved.", response_format="pcm", extra_body=GREEDY)
    saved, clip = (client.audio.speech.create(voice=voice, **request).content for voice in ("saved", "annie"))
    assert saved == clip  # the .pt holds annie's latents
    (tmp_path / "two").mkdir()
    shutil.copy(ALICIA, tmp_path / "two" / "alicia.flac")
    shutil.copy(ANNIE, tmp_path / "two" / "alicia.wav")
    with pytest.raises(BadValue, match="two voices named 'alicia'"):
        voice_folder(tmp_path / "two")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "nope.pt").write_bytes(b"not a tensor file")
    with pytest.raises(BadValue, match="is not a saved voice"):
        voice_folder(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        voice_folder(tmp_path / "missing")


# --- refusals: OpenAI's error shape, and the server serves on ----------------------------------------------


@pytest.mark.parametrize(
    "change, status, param",
    [
        ({"input": "x" * 301}, 400, "input"),
        ({"input": "   "}, 400, "input"),
        ({"input": "?! ..."}, 400, "input"),
        ({"voice": "nobody"}, 400, "voice"),
        ({"voice": str(ALICIA)}, 400, "voice"),  # a path is not a voice: the server reads no file a request names
        ({"model": "tts-9"}, 404, "model"),
        ({"response_format": "aac"}, 400, "response_format"),
        ({"speed": 9.0}, 400, "speed"),
        ({"extra_body": {"language": "xx"}}, 400, "language"),
        ({"extra_body": {"temprature": 0.5}}, 400, "temprature"),
    ],
)
def test_bad_requests_get_openai_errors(served, change, status, param):
    request = {"model": "demo", "voice": "alicia", "input": "Hello.", "response_format": "wav", **change}
    with pytest.raises(openai.APIStatusError) as raised:
        served.client().audio.speech.create(**request)
    error = raised.value
    assert error.status_code == status, error.body
    assert set(error.body) >= {"message", "type", "param", "code"} and error.body["param"] == param
    assert " — fix: " in error.body["message"], error.body  # every refusal says what to send instead
    if param == "temprature":  # a misspelt extra field is named with the one it was likely meant to be
        assert error.body["message"].endswith("— fix: did you mean 'temperature'?"), error.body


def test_keys_json_and_unknown_routes_are_refused_and_the_server_serves_on(served):
    with pytest.raises(openai.AuthenticationError) as raised:
        served.client(key="wrong").audio.speech.create(model="demo", voice="alicia", input="Hi.")
    assert raised.value.body["type"] == "authentication_error"
    missing = httpx.post(f"{served.url}/v1/audio/speech", json={"model": "demo", "voice": "a", "input": "Hi."})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for body in ('{"model": "demo", "input": ', "[1, 2]", '{"model": "demo"}'):
        answer = httpx.post(f"{served.url}/v1/audio/speech", content=body, headers=headers, timeout=30)
        assert answer.status_code in (400, 422) and " — fix: " in answer.json()["error"]["message"], body
    assert httpx.get(f"{served.url}/v1/nothing", headers=headers).json()["error"]["type"] == "invalid_request_error"
    health = httpx.get(f"{served.url}/health").json()  # no key needed: load balancers probe it
    assert health["ready"] is True and health["models"] == ["demo", "wo"]
    ok = served.client().audio.speech.create(model="demo", voice="alicia", input="Still here.", response_format="pcm")
    assert len(ok.content) > 0


def test_a_full_queue_is_429_with_retry_after(served):
    scheduler = served.speech.scheduler
    limits = scheduler.max_queue, scheduler.max_batch_size
    scheduler.max_queue, scheduler.max_batch_size = 1, 1
    try:
        client = served.client()

        def one(i):
            try:
                client.audio.speech.create(model="demo", voice="alicia", input=f"Number {i}.", response_format="pcm")
                return 200, None
            except openai.RateLimitError as error:
                return 429, error

        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(one, range(5), timeout=5 * TIMEOUT))
    finally:
        scheduler.max_queue, scheduler.max_batch_size = limits
    refused = [error for status, error in answers if status == 429]
    assert refused and any(status == 200 for status, _ in answers)
    assert int(refused[0].response.headers["retry-after"]) >= 1 and refused[0].body["code"] == "queue_full"


def test_a_model_failure_fails_its_request_alone(served):
    scheduler = served.speech.scheduler
    scheduler._nan_logits_for = lambda job: job.text.startswith("Poison")
    try:
        client = served.client()
        with ThreadPoolExecutor(2) as pool:
            good = pool.submit(client.audio.speech.create, model="demo", voice="alicia", input="Fine.")
            bad = pool.submit(client.audio.speech.create, model="demo", voice="alicia", input="Poison here.")
            with pytest.raises(openai.InternalServerError) as raised:
                bad.result(TIMEOUT)
            assert len(good.result(TIMEOUT).content) > 0
    finally:
        scheduler._nan_logits_for = lambda job: False
    assert raised.value.body["code"] == "model_failed" and "model failed" in raised.value.body["message"]


def test_a_client_leaving_mid_stream_cancels_its_job(served, monkeypatch):
    scheduler = served.speech.scheduler
    handles = []
    submit = scheduler.submit
    monkeypatch.setattr(scheduler, "submit", lambda job: handles.append(submit(job)) or handles[-1])
    text = " ".join(f"Sentence {i} of a text." for i in range(10))
    with served.client().audio.speech.with_streaming_response.create(
        model="demo", voice="alicia", input=text, response_format="pcm", extra_body={"stream": True, "seed": 1}
    ) as response:
        next(response.iter_bytes())  # the first audio, then the client goes
    deadline = time.monotonic() + TIMEOUT
    while not (handles and handles[0].cancelled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handles and handles[0].cancelled
    while scheduler.queue_depth() and time.monotonic() < deadline:  # its waiting rows left the queue
        time.sleep(0.1)
    assert scheduler.queue_depth() == 0


# --- voices, metrics, the README -------------------------------------------------------------------------


def test_uploaded_voices_are_checked_and_usable(served, tmp_path):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{served.url}/v1/voices"
    answer = httpx.post(url, files={"file": ("me.flac", ALICIA.read_bytes())}, headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    voice = answer.json()["id"]
    assert voice.startswith("upload-") and voice in {v["id"] for v in httpx.get(url, headers=headers).json()["data"]}
    speech = served.client().audio.speech.create(model="wo", voice={"id": voice}, input="Hi.", response_format="pcm")
    assert len(speech.content) > 0
    not_audio = httpx.post(url, files={"file": ("x.wav", b"not audio" * 100)}, headers=headers, timeout=30)
    assert not_audio.status_code == 400 and str(served.speech.upload_dir) not in not_audio.text
    settings = served.speech.settings
    limits = settings.max_upload_bytes, settings.max_upload_seconds
    settings.max_upload_seconds = 1.0
    try:
        for cap in (10_000, ALICIA.stat().st_size - 1000):  # refused by its Content-Length, then by its bytes
            settings.max_upload_bytes = cap
            big = httpx.post(url, files={"file": ("big.flac", ALICIA.read_bytes())}, headers=headers, timeout=30)
            assert big.status_code == 413 and big.json()["error"]["param"] == "file", big.text
        settings.max_upload_bytes = limits[0]
        long = httpx.post(url, files={"file": ("long.flac", ANNIE.read_bytes())}, headers=headers, timeout=30)
        assert long.status_code == 400 and "at most 1 s" in long.json()["error"]["message"]
    finally:
        settings.max_upload_bytes, settings.max_upload_seconds = limits


def test_metrics_move(served):
    labels = {"endpoint": "/v1/audio/speech", "status": "200"}
    before = _metric(served, "xtts_ft_requests_total", **labels)
    ttfa = _metric(served, "xtts_ft_time_to_first_audio_seconds_count", stream="true")
    with served.client().audio.speech.with_streaming_response.create(
        model="demo", voice="alicia", input="Counted.", response_format="pcm", extra_body={"stream": True}
    ) as response:
        response.read()
    assert _metric(served, "xtts_ft_requests_total", **labels) == before + 1
    assert _metric(served, "xtts_ft_time_to_first_audio_seconds_count", stream="true") == ttfa + 1
    assert _metric(served, "xtts_ft_speech_request_seconds_count", stream="true") >= 1
    assert _metric(served, "xtts_ft_queue_depth") == 0 and _metric(served, "xtts_ft_requests_in_flight") >= 1


def test_the_readme_client_snippet_runs_against_the_server(served, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Serve", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert "OpenAI(" in snippet and "http://127.0.0.1:8000/v1" in snippet
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XTTS_FT_API_KEY", KEY)
    exec(compile(snippet.replace("http://127.0.0.1:8000", served.url), "README.md", "exec"), {})
    written = [p for p in tmp_path.iterdir() if p.suffix in (".wav", ".mp3")]
    assert written and all(p.stat().st_size > 44 for p in written)


# --- the stage: who may reach it, and SIGTERM --------------------------------------------------------------


def test_serving_beyond_loopback_needs_a_key(monkeypatch):
    from xtts_ft.stages import serve

    monkeypatch.delenv("XTTS_FT_API_KEY", raising=False)
    monkeypatch.setattr(openai_api, "load_models", lambda *a, **k: pytest.fail("the model loads before the check"))
    cfg = compose("serve", ["checkpoint=exports/demo", "host=0.0.0.0"])
    with pytest.raises(BadValue, match="host=0.0.0.0 serves the API beyond this machine") as raised:
        serve.run(cfg)
    assert "api_key=" in raised.value.fix and "XTTS_FT_API_KEY" in raised.value.fix
    monkeypatch.setenv("XTTS_FT_API_KEY", "from-env")
    assert serve.api_key(cfg) == "from-env"
    openai_api.check_exposure("0.0.0.0", "from-env", False)
    openai_api.check_exposure("0.0.0.0", None, True)
    openai_api.check_exposure("127.0.0.1", None, False)


def test_the_stage_serves_what_its_settings_say(served, voices_dir, monkeypatch):
    from xtts_ft.stages import serve

    seen = {}

    def load_models(checkpoint, adapters, **kwargs):
        seen.update(checkpoint=checkpoint, adapters=adapters, **kwargs)
        return served.speech.scheduler.models

    monkeypatch.setattr(openai_api, "load_models", load_models)
    monkeypatch.setattr(
        openai_api, "serve", lambda speech, host, port: seen.update(speech=speech, host=host, port=port)
    )
    monkeypatch.setenv("XTTS_FT_API_KEY", "from-env")
    overrides = ["checkpoint=exports/x", f"voices={voices_dir}", "adapters={wo: exports/wo-lora}", "host=0.0.0.0"]
    serve.run(compose("serve", overrides + ["port=8123", "max_input_chars=99", "response_format=flac"]))
    speech = seen["speech"]
    shutil.rmtree(speech.upload_dir)  # the lifespan that removes it never ran
    assert (seen["checkpoint"], seen["adapters"], seen["host"], seen["port"]) == (
        "exports/x",
        {"wo": "exports/wo-lora"},
        "0.0.0.0",
        8123,
    )
    assert seen["max_reference_seconds"] == 30.0 and seen["name"] is None
    settings = speech.settings
    assert (settings.api_key, settings.max_input_chars, settings.response_format) == ("from-env", 99, "flac")
    assert {"alicia", "annie", "saved"} <= set(speech.scheduler.voice_names())
    for bad, message in (("response_format=aac", "response_format=aac is not one"), ("default_language=xx", "xx")):
        with pytest.raises(BadValue, match=message):
            serve.run(compose("serve", ["checkpoint=exports/x", bad]))


SERVER_SCRIPT = """
import sys
from xtts_ft.serving import openai_api
from xtts_ft.serving.scheduler import SpeechScheduler
models = openai_api.load_models(sys.argv[1], {}, name="demo", device="cpu")
models["demo"].synthesizer._max_codes = lambda *args: 12
scheduler = SpeechScheduler(models, max_batch_size=1)
scheduler.add_voice("alicia", sys.argv[2])
settings = openai_api.ServerSettings(api_key=None, response_format="pcm", drain_seconds=120)
openai_api.serve(openai_api.SpeechServer(scheduler, settings, sys.argv[3]), "127.0.0.1", int(sys.argv[4]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # a second process loads the model: ~20 s on 2 idle cores, a minute on busy ones
def test_sigterm_drains_a_real_server_process(tiny_model_dir, tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-c", SERVER_SCRIPT, str(tiny_model_dir), str(ALICIA), str(tmp_path / "up"), str(port)]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)
        text = " ".join(f"Sentence {i} in flight." for i in range(6))
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.audio.speech.create, model="demo", voice="alicia", input=text)
            while httpx.get(f"{url}/health", timeout=5).json()["queue_depth"] == 0 and not in_flight.done():
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(openai.APIStatusError) as refused:
                client.audio.speech.create(model="demo", voice="alicia", input="Too late.")
            assert refused.value.status_code == 503 and refused.value.body["code"] == "shutting_down"
            assert httpx.get(f"{url}/health", timeout=5).status_code == 503
            audio = _pcm(in_flight.result(TIMEOUT).content)
        assert audio.size >= 6 * 1024  # six sentences, all of them
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert "Traceback" not in output, output
