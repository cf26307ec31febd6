"""Stage `serve`: an OpenAI-compatible speech server (`POST /v1/audio/speech`) over one base and its fine-tunes.

The stage checks who may reach the server (a key beyond loopback), loads the base, its LoRA adapters and full
exports (`xtts_ft.serving.openai_api.load_models`), reads the voices folder once, starts the engine that
batches concurrent requests (`xtts_ft.serving.scheduler`) and serves the HTTP layer
(`xtts_ft.serving.openai_api`) until SIGTERM or Ctrl-C, which drain it: the requests in flight finish, new
ones get 503, and the process exits 0.

fastapi and uvicorn are the `serve` extra (`pip install 'xtts-ft[serve]'`), imported only when the stage runs,
so importing this module (or the CLI) never needs them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from xtts_ft.errors import MissingPackage

log = logging.getLogger(__name__)
INSTALL_HINT = "pip install 'xtts-ft[serve]' (fastapi, uvicorn, prometheus-client, python-multipart)"


def api_key(cfg: DictConfig) -> Optional[str]:
    """The key clients must send: api_key=, else the env XTTS_FT_API_KEY (a key kept out of the shell's
    history and of Hydra's saved config); None: no key is asked."""
    from xtts_ft.serving.openai_api import API_KEY_ENV

    return (cfg.api_key or os.environ.get(API_KEY_ENV) or "").strip() or None


def run(cfg: DictConfig) -> None:
    try:
        from xtts_ft.serving import openai_api
        from xtts_ft.serving.scheduler import SpeechScheduler
        from xtts_ft.serving.voices import voice_folder
    except ImportError as error:
        raise MissingPackage(f"the speech server needs {error.name}", fix=INSTALL_HINT) from error

    key = api_key(cfg)
    openai_api.check_exposure(cfg.host, key, cfg.allow_unauthenticated)  # before the model loads: a refusal is free
    voices = voice_folder(cfg.voices) if cfg.voices else {}  # a bad folder, too, before the model loads
    models = openai_api.load_models(
        cfg.checkpoint,
        OmegaConf.to_container(cfg.adapters) if isinstance(cfg.adapters, DictConfig) else cfg.adapters,
        name=cfg.name,
        device=cfg.device,
        revision=cfg.revision,
        max_reference_seconds=cfg.max_reference_seconds,
    )
    settings = openai_api.ServerSettings(
        api_key=key,
        default_language=cfg.default_language,
        response_format=cfg.response_format,
        max_input_chars=cfg.max_input_chars,
        max_upload_bytes=int(cfg.max_upload_mb * 2**20),
        max_upload_seconds=cfg.max_upload_seconds,
        max_uploaded_voices=cfg.max_uploaded_voices,
        drain_seconds=cfg.drain_seconds,
    )
    openai_api.check_settings(settings, models)
    metrics = openai_api.ServerMetrics()
    scheduler = SpeechScheduler(
        models,
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
        max_queue=cfg.max_queue,
        on_batch=metrics.batch_rows.observe,
    )
    for name, reference in voices.items():  # each voice's conditioning, once per loaded model
        scheduler.add_voice(name, reference)
    uploads = tempfile.mkdtemp(prefix="xtts-ft-serve-uploads-")  # private (0700), removed at exit
    server = openai_api.SpeechServer(scheduler, settings, uploads, metrics)
    log.info(
        "serving %s with %d voice(s) on http://%s:%d/v1 (OpenAI(base_url=...)); SIGTERM or Ctrl-C drains",
        ", ".join(models),
        len(scheduler.voice_names()),
        cfg.host,
        cfg.port,
    )
    openai_api.serve(server, cfg.host, cfg.port)
