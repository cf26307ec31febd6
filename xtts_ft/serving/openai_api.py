"""The speech server's HTTP layer: OpenAI's audio API over the serving engine, on FastAPI + uvicorn.

`POST /v1/audio/speech` takes OpenAI's fields (model, input, voice, response_format, speed, stream_format) and
the extra ones OpenAI clients send through `extra_body` (language, emotion, seed, the decoding settings,
stream), turns them into a `SpeechJob` for the scheduler (xtts_ft.serving.scheduler), and writes out the job's
audio: whole, or streamed as it is made (wav: the header first; pcm: raw frames). `GET /v1/models`,
`GET|POST /v1/voices` (also at OpenAI's `/v1/audio/voices`), `GET /health` and `GET /metrics` (Prometheus) go
with it. Every refusal is OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, and the
server goes on serving: a bad request never reaches the model, a failure inside the model fails its own
request only (500), a full queue is 429 with Retry-After, a client that goes away cancels its job's rows.

SIGTERM (or Ctrl-C) drains: new requests get 503, the requests in flight finish, then the process exits 0
(a second signal stops at once). This module knows no synthesis: the engine does that.
"""

from __future__ import annotations

import asyncio
import difflib
import hmac
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import anyio
import numpy as np
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from xtts_ft.errors import BadValue, UserError
from xtts_ft.serving import audio_formats
from xtts_ft.serving.metrics import ServerMetrics
from xtts_ft.serving.scheduler import (
    JOB_DECODING_KEYS,
    BadField,
    JobFailed,
    JobHandle,
    QueueFull,
    ServedModel,
    ShuttingDown,
    SpeechJob,
    SpeechScheduler,
)
from xtts_ft.serving.voices import UploadLimits, UploadRefused, store_upload, upload_id

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")  # the web page's rule: anything else is reachable from outside
API_KEY_ENV = "XTTS_FT_API_KEY"
CHUNK_WAIT_S = 0.25  # how often a request waiting for audio looks whether its client is still there
UPLOAD_FIELDS = ("file", "audio_sample")  # ours, and the field OpenAI's client.audio.voices.create sends


@dataclass
class ServerSettings:
    """What the HTTP layer enforces (conf/serve.yaml holds the values for `xtts-ft serve`)."""

    api_key: Optional[str] = None
    default_language: str = "en"
    response_format: str = "mp3"
    max_input_chars: int = 4096
    max_upload_bytes: int = 20 * 2**20
    max_upload_seconds: float = 120.0
    max_uploaded_voices: int = 256
    drain_seconds: float = 120.0


class ApiError(Exception):
    """A refusal, answered as OpenAI's error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers: Dict[str, str] = {}


def error_body(message: str, type_: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def invalid_message(first: Mapping[str, Any], where: List[str]) -> str:
    """What pydantic found wrong with a request body (its first error), in one line."""
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    return f"{'.'.join(where) or 'body'}: {first.get('msg', 'invalid')}"


def invalid_fix(first: Mapping[str, Any], param: Optional[str]) -> str:
    """What to send instead, for invalid_message's error: the field a misspelt name was likely meant to be."""
    kind = first.get("type")
    if kind == "json_invalid" or param is None:
        return 'send a JSON object, e.g. {"model": "<GET /v1/models>", "voice": "<GET /v1/voices>", "input": "Hello."}'
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(param or "", list(SpeechRequest.model_fields), n=1)
        known = ", ".join(SpeechRequest.model_fields)
        return f"did you mean {near[0]!r}?" if near else f"remove {param!r}; the fields are {known}"
    if kind == "missing":
        return f"add {param!r} to the request"
    return f'give {param} a value of the type the message names (docs/serve.md\'s "The request" lists every field)'


def api_error(error: BaseException) -> ApiError:
    """The HTTP answer to an engine or upload refusal."""
    fix = getattr(error, "fix", None)
    message = f"{error} — fix: {fix}" if fix else str(error)
    if isinstance(error, QueueFull):
        refused = ApiError(429, message, "rate_limit_error", code="queue_full")
        refused.headers["Retry-After"] = str(max(1, int(np.ceil(error.retry_after_s))))
        return refused
    if isinstance(error, ShuttingDown):
        return ApiError(503, message, "server_error", code="shutting_down")
    if isinstance(error, JobFailed):
        return ApiError(500, f"the model failed on this request: {error.message}", "server_error", code="model_failed")
    if isinstance(error, UploadRefused):
        return ApiError(error.status, message, param="file", code="upload_refused")
    if isinstance(error, BadField):
        if error.param == "model":
            return ApiError(404, message, param="model", code="model_not_found")
        return ApiError(400, message, param=error.param, code=f"invalid_{error.param}")
    return ApiError(400, message)


class SpeechRequest(BaseModel):
    """OpenAI's speech request, and the extra fields its clients send through extra_body."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    voice: Union[str, Dict[str, str]]  # a name, or OpenAI's custom-voice object {"id": ...}
    response_format: Optional[str] = None
    speed: float = 1.0
    stream_format: Optional[str] = None  # "audio": stream the bytes ("sse" is not served)
    instructions: Optional[str] = None  # OpenAI's steering text: XTTS takes none (use emotion); ignored
    # Extras (extra_body=...):
    stream: bool = False
    language: Optional[str] = None
    emotion: Optional[str] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    length_penalty: Optional[float] = None
    max_seconds_per_char: Optional[float] = None
    first_chunk_codes: int = Field(8, ge=1)
    chunk_codes: int = Field(20, ge=1)


class SpeechServer:
    """The engine, the settings and the server's state (draining, requests in flight, uploads), shared by the
    routes; `app` is the FastAPI application."""

    def __init__(
        self,
        scheduler: SpeechScheduler,
        settings: ServerSettings,
        upload_dir: Path,
        metrics: Optional[ServerMetrics] = None,
    ):
        self.scheduler, self.settings, self.upload_dir = scheduler, settings, Path(upload_dir)
        self.metrics = metrics or ServerMetrics()
        self.metrics.watch_queue(scheduler.queue_depth)
        self.draining = False
        self.in_flight = 0
        self.uploads: Dict[str, dict] = {}  # voice id → its /v1/voices entry (changed on the event loop only)
        self.app = build_app(self)

    @property
    def ready(self) -> bool:
        return not self.draining

    def drain(self, then=None) -> threading.Thread:
        """Refuse new requests (503), let the engine finish the jobs it has and the requests in flight send
        their last byte (up to drain_seconds), then call `then` (the uvicorn server's exit)."""
        self.draining = True

        def wait() -> None:
            deadline = time.monotonic() + self.settings.drain_seconds
            self.scheduler.drain(self.settings.drain_seconds)
            while self.in_flight and time.monotonic() < deadline:
                time.sleep(0.05)
            log.info("drained: %d request(s) still in flight", self.in_flight)
            if then is not None:
                then()

        thread = threading.Thread(target=wait, name="speech-drain", daemon=True)
        thread.start()
        return thread

    def check_key(self, request: Request) -> None:
        key = self.settings.api_key
        if not key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key — fix: send `Authorization: Bearer <the server's api_key>` "
                "(OpenAI(api_key=...))",
                "authentication_error",
                code="invalid_api_key",
            )


def build_app(server: SpeechServer) -> FastAPI:
    """The FastAPI application over `server` (its routes, errors and middleware)."""
    app = FastAPI(title="xtts-ft speech server", lifespan=_lifespan(server), docs_url=None, redoc_url=None)

    def authorized(request: Request) -> None:
        server.check_key(request)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError):
        return JSONResponse(
            error_body(error.message, error.type, error.param, error.code), error.status, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = where[0] if where and first.get("type") != "json_invalid" else None
        message = f"{invalid_message(first, where)} — fix: {invalid_fix(first, param)}"
        return JSONResponse(error_body(message, "invalid_request_error", param, "invalid_request"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, error: StarletteHTTPException):
        return JSONResponse(error_body(str(error.detail), "invalid_request_error"), error.status_code)

    app.add_middleware(_Bookkeeping, server=server)
    _routes(app, server, Depends(authorized))
    return app


def _lifespan(server: SpeechServer):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.scheduler.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(server.scheduler.stop)
            shutil.rmtree(server.upload_dir, ignore_errors=True)

    return lifespan


ENDPOINTS = ("/v1/audio/speech", "/v1/models", "/v1/voices", "/v1/audio/voices", "/health", "/metrics")


class _Bookkeeping:
    """Every request: 503 while draining (but /health and /metrics), counted in flight until its last byte
    went, and counted by endpoint and status (an ASGI middleware: a streamed body is part of its request)."""

    def __init__(self, app, server: SpeechServer):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        server, path = self.server, scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        if server.draining and path.startswith("/v1/"):
            body = error_body(
                "the server is shutting down — fix: retry on another instance, or later",
                "server_error",
                code="shutting_down",
            )
            server.metrics.requests.labels(endpoint, "503").inc()
            return await JSONResponse(body, 503)(scope, receive, send)
        status = {"code": 500}  # what an exception before the status line went out becomes

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        server.in_flight += 1
        server.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, sending)
        finally:
            server.in_flight -= 1
            server.metrics.in_flight.dec()
            server.metrics.requests.labels(endpoint, str(status["code"])).inc()


def _routes(app: FastAPI, server: SpeechServer, auth) -> None:
    @app.get("/health")
    async def health():
        body = {
            "status": "draining" if server.draining else "ok",
            "live": True,
            "ready": server.ready,
            "models": list(server.scheduler.models),
            "queue_depth": server.scheduler.queue_depth(),
        }
        return JSONResponse(body, 200 if server.ready else 503)

    @app.get("/metrics", dependencies=[auth])
    async def metrics():
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get("/v1/models", dependencies=[auth])
    async def models():
        return {
            "object": "list",
            "data": [_model_entry(name, served) for name, served in server.scheduler.models.items()],
        }

    @app.get("/v1/models/{name}", dependencies=[auth])
    async def model(name: str):
        served = server.scheduler.models.get(name)
        if served is None:
            raise ApiError(404, f"unknown model {name!r}", param="model", code="model_not_found")
        return _model_entry(name, served)

    async def list_voices():
        named = [v for v in server.scheduler.voice_names() if v not in server.uploads]
        entries = [{"id": v, "object": "audio.voice", "name": v, "type": "named"} for v in named]
        return {"object": "list", "data": entries + list(server.uploads.values())}

    async def upload_voice(request: Request):
        return await _upload(server, request)

    for path in ("/v1/voices", "/v1/audio/voices"):
        app.get(path, dependencies=[auth])(list_voices)
        app.post(path, dependencies=[auth])(upload_voice)

    @app.post("/v1/audio/speech", dependencies=[auth])
    async def speech(body: SpeechRequest, request: Request):
        return await _speech(server, body, request)


def _model_entry(name: str, served: ServedModel) -> dict:
    source = served.synthesizer.model_dir
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": "xtts-ft",
        "adapter": served.adapter,
        "source": source.name if source else None,
        "languages": served.synthesizer.languages,
    }


def speech_job(settings: ServerSettings, body: SpeechRequest) -> tuple:
    """(SpeechJob, response format, stream) for a request, refused (ApiError) where the HTTP layer can
    tell alone: its format, its length, its voice's form."""
    response_format = (body.response_format or settings.response_format).lower()
    if response_format not in audio_formats.FORMATS:
        raise ApiError(
            400,
            f"response_format {body.response_format!r} is not served — fix: one of {', '.join(audio_formats.FORMATS)}",
            param="response_format",
            code="unsupported_response_format",
        )
    if body.stream_format not in (None, "audio"):
        raise ApiError(
            400,
            f"stream_format {body.stream_format!r} is not served — fix: stream_format=audio (raw audio bytes)",
            param="stream_format",
            code="unsupported_stream_format",
        )
    if len(body.input) > settings.max_input_chars:
        raise ApiError(
            400,
            f"the input is {len(body.input)} characters; this server takes at most {settings.max_input_chars} "
            "— fix: send it in several requests",
            param="input",
            code="input_too_long",
        )
    voice = body.voice if isinstance(body.voice, str) else body.voice.get("id")
    if not isinstance(voice, str) or not voice:
        raise ApiError(400, 'voice must be a voice name or {"id": <voice id>}', param="voice", code="invalid_voice")
    decoding = {key: getattr(body, key) for key in JOB_DECODING_KEYS if getattr(body, key) is not None}
    job = SpeechJob(
        model=body.model,
        text=body.input,
        voice=voice,
        language=body.language or settings.default_language,
        speed=body.speed,
        emotion=body.emotion,
        seed=body.seed,
        decoding=decoding,
        stream=body.stream or body.stream_format == "audio",
        first_chunk_codes=body.first_chunk_codes,
        chunk_codes=body.chunk_codes,
    )
    return job, response_format, job.stream


async def _speech(server: SpeechServer, body: SpeechRequest, request: Request):
    received = time.monotonic()
    job, response_format, stream = speech_job(server.settings, body)
    if job.model not in server.scheduler.models:
        raise ApiError(
            404,
            f"unknown model {job.model!r} — fix: one of {', '.join(server.scheduler.models)} (GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    try:
        handle = await anyio.to_thread.run_sync(server.scheduler.submit, job)
    except (UserError, JobFailed) as error:
        raise api_error(error) from None
    reader = _ChunkReader(handle, request)
    try:
        first = await reader.next()
    except ClientGone:
        return _client_gone(handle)
    except JobFailed as error:
        raise api_error(error) from None
    except BaseException:  # this request was cancelled (the server stopping): its rows go too
        handle.cancel()
        raise
    labels = {"stream": str(stream).lower()}
    if first is not None:
        server.metrics.first_audio_seconds.labels(**labels).observe(time.monotonic() - received)
    media_type = audio_formats.MEDIA_TYPES[response_format]
    if stream and response_format in audio_formats.STREAMABLE:
        chunks = _streamed(reader, first, response_format, handle.sample_rate)
        # No proxy buffering (nginx reads X-Accel-Buffering): each chunk goes out as it is made.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_timed(chunks, server, labels, received), media_type=media_type, headers=headers)
    try:
        pieces = [first] if first is not None else []
        while (chunk := await reader.next()) is not None:
            pieces.append(chunk)
    except ClientGone:
        return _client_gone(handle)
    except JobFailed as error:
        raise api_error(error) from None
    finally:
        handle.cancel()  # a no-op once the job is done; if this request was cancelled, its rows go
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    data = await anyio.to_thread.run_sync(audio_formats.encode, audio, handle.sample_rate, response_format)
    server.metrics.request_seconds.labels(**labels).observe(time.monotonic() - received)
    return Response(data, media_type=media_type)


def _client_gone(handle: JobHandle) -> Response:
    """The answer nobody reads: the client closed its connection; its job was cancelled (its rows leave
    their batch at the next step)."""
    handle.cancel()
    log.info("client gone before its audio was done: its job is cancelled")
    return Response(status_code=499)


class ClientGone(Exception):
    """The client closed its connection while its audio was being made."""


class _ChunkReader:
    """A job's chunks, read from its handle in a worker thread without blocking the event loop; while it
    waits, it looks every CHUNK_WAIT_S whether the client is still there (ClientGone if not)."""

    def __init__(self, handle: JobHandle, request: Request):
        self.handle, self.request = handle, request
        self.chunks = handle.chunks()
        self.lock = threading.Lock()  # the generator is advanced by one thread at a time

    def _next(self) -> Optional[np.ndarray]:
        with self.lock:
            return next(self.chunks, None)

    async def next(self) -> Optional[np.ndarray]:
        waiting = asyncio.ensure_future(anyio.to_thread.run_sync(self._next, abandon_on_cancel=True))
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=CHUNK_WAIT_S)
            if done:
                return waiting.result()
            if await self.request.is_disconnected():
                waiting.cancel()
                self.handle.cancel()
                raise ClientGone()


async def _streamed(reader: _ChunkReader, first: Optional[np.ndarray], response_format: str, sample_rate: int):
    """A streamed response's bytes: the WAV header first (wav), then each chunk's frames as it comes. The
    job is cancelled if the client goes (its rows leave the batch at the next step)."""
    try:
        if response_format == "wav":
            yield audio_formats.wav_header(sample_rate)
        chunk = first
        while chunk is not None:
            yield audio_formats.pcm16(chunk)
            chunk = await reader.next()
    except ClientGone:
        log.info("client gone mid-stream: its job is cancelled")
    except JobFailed as error:  # the status line went out already: the stream is cut, and the log says why
        log.error("the model failed mid-stream: %s", error.message)
        raise
    finally:
        reader.handle.cancel()


async def _timed(chunks, server: SpeechServer, labels: dict, received: float):
    async for piece in chunks:
        yield piece
    server.metrics.request_seconds.labels(**labels).observe(time.monotonic() - received)


async def _upload(server: SpeechServer, request: Request) -> dict:
    """POST /v1/voices: a multipart upload (field `file`, or OpenAI's `audio_sample`; optional `name`) → a
    voice id, its conditioning computed once by the engine."""
    settings = server.settings
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
        raise api_error(UploadRefused(f"the upload is {int(declared) / 2**20:.1f} MB", _upload_fix(settings), 413))
    async with request.form(max_files=1, max_fields=8) as form:
        return await _voice_from_form(server, form)


async def _voice_from_form(server: SpeechServer, form) -> dict:
    settings = server.settings
    upload = next((form[field] for field in UPLOAD_FIELDS if field in form and hasattr(form[field], "read")), None)
    if upload is None:
        raise ApiError(400, "no audio file in the form — fix: send it as the multipart field `file`", param="file")
    data = await upload.read(settings.max_upload_bytes + 1)
    limits = UploadLimits(settings.max_upload_bytes, settings.max_upload_seconds)
    voice_id = upload_id(data)
    if voice_id in server.uploads:
        return server.uploads[voice_id]
    if len(server.uploads) >= settings.max_uploaded_voices:
        raise ApiError(
            429,
            f"this server holds {len(server.uploads)} uploaded voices already (max_uploaded_voices)",
            "rate_limit_error",
            code="too_many_voices",
        )
    try:
        path = await anyio.to_thread.run_sync(store_upload, data, upload.filename, server.upload_dir, limits)
        await anyio.to_thread.run_sync(server.scheduler.add_voice, voice_id, path)
    except UploadRefused as error:  # too large, too long, not audio: its own status and message
        raise api_error(error) from None
    except (UserError, RuntimeError, ValueError) as error:  # e.g. too short to clone
        message = str(error).replace(str(server.upload_dir), "<upload>")
        raise api_error(UploadRefused(f"cannot use this upload as a voice: {message}")) from None
    name = str(form.get("name") or upload.filename or voice_id)[:128]
    entry = {
        "id": voice_id,
        "object": "audio.voice",
        "name": name,
        "type": "audio_sample",
        "created_at": int(time.time()),
    }
    server.uploads[voice_id] = entry
    return entry


def _upload_fix(settings: ServerSettings) -> str:
    return f"upload 3-10 s of the voice (at most {settings.max_upload_bytes / 2**20:g} MB)"


def check_exposure(host: str, api_key: Optional[str], allow_unauthenticated: bool) -> None:
    """The web page's rule: a host beyond this machine's loopback without an API key is refused, unless the
    user said allow_unauthenticated=true (anyone who finds the address could spend the machine's GPU)."""
    if host not in LOCAL_HOSTS and not api_key and not allow_unauthenticated:
        raise BadValue(
            f"host={host} serves the API beyond this machine, and no API key is set",
            fix=f"api_key=<a long secret> (or the env {API_KEY_ENV}; or allow_unauthenticated=true to serve it to anyone)",
        )


def check_settings(settings: ServerSettings, models: Mapping[str, ServedModel]) -> None:
    """Refuse a server default no request could use (before the server listens)."""
    if settings.response_format not in audio_formats.FORMATS:
        raise BadValue(
            f"response_format={settings.response_format} is not one this server can write",
            fix=f"response_format=<one of {', '.join(audio_formats.FORMATS)}>",
        )
    languages = sorted({language for served in models.values() for language in served.synthesizer.languages})
    if settings.default_language not in languages:
        raise BadValue(
            f"default_language={settings.default_language} is not a language of the models served",
            fix=f"default_language=<one of {', '.join(languages)}>",
        )


def load_models(
    checkpoint: str,
    adapters: Mapping[str, str],
    name: Optional[str] = None,
    **synthesizer_args: Any,
) -> Dict[str, ServedModel]:
    """{model name: ServedModel}: the base (named `name`, or its folder's name), each LoRA adapter (a folder
    with adapter_config.json) over it, each other entry of `adapters` a full export loaded on its own."""
    from xtts_ft.inference import XttsSynthesizer

    if adapters is not None and not (
        isinstance(adapters, Mapping) and all(isinstance(v, (str, Path)) for v in adapters.values())
    ):
        raise BadValue(
            f"adapters={adapters!r} is not a mapping of model names to folders",
            fix="adapters='{wo: exports/wolof-lora, fr: exports/french}'",
        )
    base = XttsSynthesizer(checkpoint, **synthesizer_args)
    base_name = name or Path(str(checkpoint).rstrip("/")).name
    models: Dict[str, ServedModel] = {base_name: ServedModel(base)}
    for adapter_name, source in dict(adapters or {}).items():
        adapter_name = str(adapter_name)
        if adapter_name in models:
            raise BadValue(
                f"two models named {adapter_name!r}", fix="rename the adapter, or name the base: name=<another>"
            )
        if (Path(str(source)).expanduser() / "adapter_config.json").is_file():
            base.load_adapter(Path(str(source)).expanduser(), name=adapter_name)
            models[adapter_name] = ServedModel(base, adapter_name)
        else:
            models[adapter_name] = ServedModel(XttsSynthesizer(source, **synthesizer_args))
    if len(models) > 1 and getattr(base, "_peft", None) is not None:
        base.use_adapter(None)  # load_adapter leaves the last one on: the base's rows use none
    return models


class DrainingServer(uvicorn.Server):
    """uvicorn's Server, whose first SIGTERM/SIGINT drains (`SpeechServer.drain`) before it exits, and a
    second one exits at once. It exits 0: the signal is not raised again once the server is down (uvicorn's
    own handler would, and the process would die of it)."""

    def __init__(self, config: uvicorn.Config, speech: SpeechServer):
        super().__init__(config)
        self.speech = speech

    def handle_exit(self, sig, frame) -> None:
        if self.speech.draining:
            self.should_exit = self.force_exit = True
            return
        log.info("%s: draining (new requests get 503; send it again to stop now)", signal.Signals(sig).name)
        self.speech.drain(then=self.exit_now)

    def exit_now(self) -> None:
        self.should_exit = True


def serve(speech: SpeechServer, host: str, port: int, sockets: Optional[List] = None, log_level: str = "info") -> None:
    """Serve until SIGTERM / Ctrl-C (drained) — in this thread; `sockets`: listen on these instead."""
    config = uvicorn.Config(speech.app, host=host, port=port, log_level=log_level, lifespan="on")
    DrainingServer(config, speech).run(sockets=sockets)
