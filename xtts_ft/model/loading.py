"""Load an XTTS-v2 model: a local directory in the stock layout or a Hugging Face Hub id.

Tiny and real models go through the same `load_xtts`; only `resolve_model_dir` differs
(building the tiny model on first use, or downloading from the Hub when asked).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from xtts_ft.model.layout import STOCK_FILES, check_layout, dvae_kwargs, read_sidecar

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def download_from_hub(repo_id: str, revision: Optional[str] = None) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(STOCK_FILES) + ["*.md"]))
    except Exception as err:  # offline, unknown repo, gated repo: all end the same way for the user
        raise RuntimeError(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"If this machine is offline, download it where you have network "
            f"(`huggingface-cli download {repo_id}`) and pass the local directory, e.g. model.source=/path/to/XTTS-v2"
        ) from err


def resolve_model_dir(source: str, revision: Optional[str] = None, build_tiny: bool = False, tiny_seed: int = 0) -> Path:
    """A local directory holding the stock files, building or downloading it if asked."""
    path = Path(source).expanduser()
    if path.is_dir():
        check_layout(path)
        return path
    if build_tiny:
        from xtts_ft.model.tiny import build_tiny_xtts

        log.info("building a tiny random XTTS at %s", path)
        return build_tiny_xtts(path, seed=tiny_seed)
    if looks_like_hub_id(source):
        return download_from_hub(source, revision)
    raise FileNotFoundError(f"model source {source!r} is neither a directory nor a Hub id (owner/name)")


def resolve_vocab(model_cfg) -> Path:
    """The model's vocab.json, without downloading the whole model from the Hub."""
    path = Path(model_cfg.source).expanduser()
    if path.is_dir() or model_cfg.build_tiny:
        return resolve_model_cfg(model_cfg) / "vocab.json"
    if looks_like_hub_id(model_cfg.source):
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(model_cfg.source, "vocab.json", revision=model_cfg.get("revision")))
        except Exception as err:
            raise RuntimeError(
                f"cannot fetch vocab.json of {model_cfg.source!r} from the Hub ({type(err).__name__}); "
                "pass a local model directory (model.source=/path/to/XTTS-v2) or max_text_tokens=0 to skip token checks"
            ) from err
    raise FileNotFoundError(f"model source {model_cfg.source!r} is neither a directory nor a Hub id (owner/name)")


def resolve_model_cfg(model_cfg) -> Path:
    return resolve_model_dir(model_cfg.source, model_cfg.get("revision"), model_cfg.build_tiny, model_cfg.tiny_seed)


def load_xtts(model_dir: Path, device: str | torch.device = "cpu", for_inference: bool = True) -> Tuple[object, object]:
    """(XttsConfig, Xtts) loaded with coqui-tts's own loader, exactly as its users load it."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    model_dir = Path(model_dir)
    check_layout(model_dir)
    for name in ("model.pth", "mel_stats.pth", "speakers_xtts.pth"):
        check_weights_file(model_dir / name)
    config = XttsConfig()
    config.load_json(str(model_dir / "config.json"))
    model = Xtts(config)
    try:  # coqui-tts loads weights-only (no arbitrary unpickling) on torch >= 2.4
        model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=for_inference)
    except Exception as err:
        raise ValueError(f"coqui-tts could not load {model_dir / 'model.pth'} ({type(err).__name__}: {err})") from err
    # Languages coqui does not know (and emotion tokens) through our cleaner registry: for this
    # model instance only, nothing in coqui-tts is patched.
    from xtts_ft.model.tokenizer import tokenizer_for

    model.tokenizer = tokenizer_for(model_dir, read_sidecar(model_dir))
    model.to(pick_device(device) if isinstance(device, str) else device)
    return config, model


def check_weights_file(path: Path) -> None:
    """A torch file that is truncated or altered fails here, naming it, instead of deep in a loader.

    torch.save writes a zip archive with a CRC per tensor: reading it back checks every byte.
    """
    path = Path(path)
    if not path.is_file():
        return  # optional files (speakers_xtts.pth) may be absent; check_layout covers required ones
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            if f.read(2) != b"\x80\x02":  # the pre-1.6 torch format starts with a pickle protocol-2 header
                raise ValueError(f"{path} is truncated or corrupted (not a complete torch weights file)")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is truncated or corrupted ({err})") from None
    if bad is not None:
        raise ValueError(f"{path} is corrupted: its entry {bad} fails its checksum (altered or partly written)")


def load_dvae(model_dir: Path):
    """The frozen DVAE (mel → audio codes) and its mel normalisation, for training only."""
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    dvae = DiscreteVAE(**dvae_kwargs(model_dir))
    check_weights_file(Path(model_dir) / "dvae.pth")
    state = torch.load(Path(model_dir) / "dvae.pth", map_location="cpu", weights_only=True)
    # Not strict: extra (unused) keys are tolerated as in coqui's trainer; missing ones are not.
    missing = dvae.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"{Path(model_dir) / 'dvae.pth'} lacks DVAE weights: {', '.join(missing[:5])} ...")
    dvae.eval().requires_grad_(False)
    mel_stats = torch.load(Path(model_dir) / "mel_stats.pth", map_location="cpu", weights_only=True)
    return dvae, mel_stats
