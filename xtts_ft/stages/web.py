"""Stage `web`: a small Gradio page to try an export in the browser.

The stage checks who may reach the page (`login`), loads the export into the one inference path
(`XttsSynthesizer`) and serves the page `xtts_ft.serving.web` builds, until Ctrl-C.

gradio is an optional extra (`pip install 'xtts-ft[web]'`), imported only when the stage runs, so
importing this module (or the CLI) never needs it.
"""

from __future__ import annotations

from typing import Optional, Tuple

from omegaconf import DictConfig

from xtts_ft.errors import BadValue
from xtts_ft.serving.web import build_app, import_gradio, launch

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def login(cfg: DictConfig) -> Optional[Tuple[str, str]]:
    """Gradio's (user, password) from `auth=user:password`; refuses to serve beyond this machine
    (share=true, or a host other than this one's loopback) without a login, unless the user said
    allow_unauthenticated=true: anyone who finds the address could spend the machine's GPU."""
    if cfg.auth is not None:
        user, _, password = str(cfg.auth).partition(":")
        if not user or not password:
            raise BadValue("auth must be user:password (both non-empty) — fix: auth=alice:a-long-password")
        return user, password
    public = "share=true" if cfg.share else f"host={cfg.host}" if cfg.host not in LOCAL_HOSTS else None
    if public and not cfg.allow_unauthenticated:
        raise BadValue(
            f"{public} serves the page beyond this machine, and no login is set "
            "— fix: auth=user:password (or allow_unauthenticated=true to serve it to anyone)"
        )
    return None


def run(cfg: DictConfig) -> None:
    auth = login(cfg)  # before the model loads: a refused launch costs nothing
    import_gradio()  # fail before the model loads, not after
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(
        cfg.checkpoint,
        device=cfg.device,
        revision=cfg.revision,
        voice_cache_size=cfg.voice_cache_size,
        max_reference_seconds=cfg.max_reference_seconds,
    )
    app = build_app(synthesizer, max_text_chars=cfg.max_text_chars, max_upload_mb=cfg.max_upload_mb)
    # Blocks until Ctrl-C; says where, in our words (gradio's own start-up lines name its `share=True`).
    # max_file_size: gradio refuses a larger upload before storing it.
    launch(app, cfg.host, cfg.port, cfg.share, auth=auth, max_file_size=int(cfg.max_upload_mb * 2**20))
