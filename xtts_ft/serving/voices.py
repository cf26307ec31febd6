"""The speech server's voices: a folder read once at start, and the references clients upload.

A voice is a name, never a path: a request names a voice the server already holds, so no request can make
the server read a file of its choosing. The folder's voices are its audio files (`<name>.wav|.flac|.mp3`)
and saved conditioning latents (`<name>.pt`). An upload is stored under the server's own private folder by
the hash of its bytes (the same clip uploaded twice is one voice), after its size and its header's duration
are checked; as on the web page, only the start of it is decoded (the synthesizer's max_reference_seconds).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.inference import Voice

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3")
SAVED_SUFFIX = ".pt"
# Upload suffixes kept on the stored copy (libsndfile reads by content; the suffix only helps a person reading).
UPLOAD_SUFFIXES = (*AUDIO_SUFFIXES, ".ogg", ".opus")
VOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UPLOAD_PREFIX = "upload-"


def voice_folder(folder: Union[str, Path]) -> Dict[str, Union[Path, Voice]]:
    """{voice name: its reference clip, or its saved Voice} for every voice file of `folder` (not its
    subfolders), in name order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MissingFile(
            f"voices={folder}: {'not a folder' if root.exists() else 'no such folder'}",
            fix="voices=<a folder of <name>.wav|.flac|.mp3 clips (3-10 s each) or saved <name>.pt voices>",
        )
    found: Dict[str, Union[Path, Voice]] = {}
    for path in sorted(root.iterdir()):
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in (*AUDIO_SUFFIXES, SAVED_SUFFIX):
            continue
        name = path.stem
        if not VOICE_NAME.match(name) or name.startswith(UPLOAD_PREFIX):
            raise BadValue(
                f"voice file {path}: {name!r} cannot be a voice name",
                fix=f"rename it: letters, digits, _ . - (64 at most), not starting with {UPLOAD_PREFIX!r}",
            )
        if name in found:
            raise BadValue(f"two voices named {name!r} in {root}", fix="rename or remove one of the two files")
        found[name] = saved_voice(path) if suffix == SAVED_SUFFIX else path
    if not found:
        raise BadValue(
            f"voices={folder} holds no voice file ({', '.join(AUDIO_SUFFIXES)} or {SAVED_SUFFIX})",
            fix="put 3-10 s clips named after their voices there, or leave voices unset",
        )
    return found


def saved_voice(path: Path) -> Voice:
    """A voice saved as conditioning latents: a dict with gpt_cond_latent and speaker_embedding (the shape of
    an export's speakers_xtts.pth entries and emotion presets)."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a tensor dict
        raise BadValue(f"voice file {path} is not a saved voice: {error}") from error
    if not isinstance(data, dict) or not {"gpt_cond_latent", "speaker_embedding"} <= set(data):
        raise BadValue(
            f"voice file {path} is not a saved voice",
            fix="save a dict {'gpt_cond_latent': tensor, 'speaker_embedding': tensor} (XttsSynthesizer.clone_voice's)",
        )
    return Voice(data["gpt_cond_latent"], data["speaker_embedding"])


class UploadRefused(BadValue):
    """An upload this server does not take; `status` is the HTTP status it is answered with."""

    def __init__(self, message: str, fix: Optional[str] = None, status: int = 400):
        super().__init__(message, fix)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    max_seconds: float


def upload_id(data: bytes) -> str:
    """An upload's voice id: the hash of its bytes (the same clip uploaded twice is one voice)."""
    return UPLOAD_PREFIX + hashlib.sha256(data).hexdigest()[:20]


def store_upload(data: bytes, filename: Optional[str], folder: Path, limits: UploadLimits) -> Path:
    """The uploaded bytes written into the server's upload folder as <upload id><suffix>, once their size
    and header duration are checked (a refused upload leaves nothing behind)."""
    from xtts_ft.data.audio import header_seconds
    from xtts_ft.io_utils import atomic_path

    if not data:
        raise UploadRefused("the uploaded file is empty", fix="upload a 3-10 s clip of the voice")
    if len(data) > limits.max_bytes:
        raise UploadRefused(
            f"the upload is {len(data) / 2**20:.1f} MB; this server takes at most {limits.max_bytes / 2**20:g} MB",
            fix="upload 3-10 s of the voice",
            status=413,
        )
    suffix = Path(filename or "").suffix.lower()
    path = folder / f"{upload_id(data)}{suffix if suffix in UPLOAD_SUFFIXES else ''}"
    if not path.is_file():
        with atomic_path(path, need_bytes=len(data)) as tmp:
            tmp.write_bytes(data)
    try:
        seconds = header_seconds(path)
    except RuntimeError as error:
        path.unlink(missing_ok=True)
        raise UploadRefused(
            f"cannot read the upload as audio ({_without_path(error, path, filename)})",
            fix="upload a wav, flac, mp3 or ogg clip",
        ) from None
    if seconds > limits.max_seconds:
        path.unlink(missing_ok=True)
        raise UploadRefused(
            f"the upload is {seconds:.0f} s long; this server takes at most {limits.max_seconds:g} s",
            fix="upload 3-10 s of the voice",
        )
    return path


def _without_path(error: BaseException, path: Path, filename: Optional[str]) -> str:
    """The error's message with the server's own path replaced by the client's file name."""
    return str(error).replace(str(path), repr(filename or "upload"))
