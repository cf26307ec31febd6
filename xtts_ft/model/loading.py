"""Load an XTTS-v2 model: a local directory in the stock layout or a Hugging Face Hub id.

Tiny and real models go through the same `load_xtts`; only `resolve_model_dir` differs
(building the tiny model on first use, or downloading from the Hub when asked).
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import urlsplit

import torch

from xtts_ft.errors import BadValue, MissingFile, RunRefused
from xtts_ft.io_utils import file_hash
from xtts_ft.model.layout import EXPORT_FILES, check_layout, dvae_kwargs, read_sidecar
from xtts_ft.model.quiet import unused_gpt2_token_ids_unreported

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # where plain http keeps a token on this machine


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def hub_endpoint(
    endpoint: Optional[str],
    fix: str = "Use an https endpoint (endpoint= or HF_ENDPOINT), or an http one on localhost.",
) -> str:
    """The endpoint the token will go to (endpoint=, else HF_ENDPOINT, else huggingface.co); plain
    http is refused unless it stays on this machine, since the token would travel in clear text."""
    from huggingface_hub import constants

    url = (endpoint or constants.ENDPOINT).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOCAL_HOSTS):
        raise BadValue(f"Hub endpoint {url} is not https: the token would be sent in clear text. {fix}")
    return url


def download_from_hub(repo_id: str, revision: Optional[str] = None) -> Path:
    from huggingface_hub import get_token, snapshot_download

    if get_token():  # with a token, the download sends it: not in clear text to another machine
        hub_endpoint(
            None,
            fix=f"Use an https HF_ENDPOINT to download {repo_id!r}, or, for a public model on a plain-http "
            "mirror, download without a token (unset HF_TOKEN, `hf auth logout`).",
        )
    try:
        # Every file an export may hold (sidecar, presets, card), not only the stock ones: what
        # was pushed comes back whole. (A stock release simply lacks the extra ones.)
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(EXPORT_FILES)))
    except Exception as err:  # offline, unknown repo, gated repo: all end the same way for the user
        raise RunRefused(
            f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(err).__name__}: {err})",
            fix=f"if this machine is offline, download it where you have network (`hf download {repo_id} "
            f"--local-dir XTTS-v2`) and pass the local directory instead (checkpoint=/path/to/XTTS-v2, or "
            f"model.source=/path/to/XTTS-v2 for the training stages)",
        ) from err


def resolve_model_dir(
    source: str, revision: Optional[str] = None, build_tiny: bool = False, tiny_seed: int = 0
) -> Path:
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
        try:
            return download_from_hub(source, revision)
        except RuntimeError as err:
            if path.parent.is_dir() and str(path.parent) not in (".", ""):  # exports/nope: most likely a local folder
                raise MissingFile(
                    f"{source}: no such folder here ({path.parent} has no {path.name!r}), and no model "
                    f"of that name could be fetched from the Hub — fix: the path of an export or model "
                    f"folder, e.g. {path.parent}/<name>"
                ) from err
            raise
    raise MissingFile(f"model source {source!r} is neither a directory nor a Hub id (owner/name)")


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
            raise RunRefused(
                f"cannot fetch vocab.json of {model_cfg.source!r} from the Hub ({type(err).__name__})",
                fix="pass a local model directory (model.source=/path/to/XTTS-v2) or max_text_tokens=0 to skip "
                "token checks",
            ) from err
    raise MissingFile(f"model source {model_cfg.source!r} is neither a directory nor a Hub id (owner/name)")


def resolve_model_cfg(model_cfg) -> Path:
    return resolve_model_dir(model_cfg.source, model_cfg.get("revision"), model_cfg.build_tiny, model_cfg.tiny_seed)


def load_xtts(
    model_dir: Path, device: str | torch.device = "cpu", for_inference: bool = True
) -> Tuple[object, object]:
    """(XttsConfig, Xtts) loaded with coqui-tts's own loader, exactly as its users load it."""
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    model_dir = Path(model_dir)
    check_layout(model_dir)
    for name in ("model.pth", "mel_stats.pth", "speakers_xtts.pth"):
        check_weights_file(model_dir / name)
    config = XttsConfig()
    config.load_json(str(model_dir / "config.json"))
    with unused_gpt2_token_ids_unreported():
        model = Xtts(config)
        try:  # coqui-tts loads weights-only (no arbitrary unpickling) on torch >= 2.4
            # eval=False: the inference wrapper is built below, with valid token ids.
            model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=False)
        except Exception as err:
            failure = BadValue(f"coqui-tts could not load {model_dir / 'model.pth'} ({type(err).__name__}: {err})")
            if not for_inference:
                raise failure from err
            try:  # a checkpoint saved with the wrapper's keys (coqui's trainer) loads only through coqui's eval path
                model.load_checkpoint(config, checkpoint_dir=str(model_dir), eval=True)
            except Exception:
                raise failure from err
    if for_inference:
        init_gpt_for_inference(model.gpt, kv_cache=model.args.kv_cache)
        model.gpt.eval()
        model.hifigan_decoder.eval()
    # Languages coqui does not know (and emotion tokens) through our cleaner registry: for this
    # model instance only, nothing in coqui-tts is patched.
    from xtts_ft.model.tokenizer import tokenizer_for

    model.tokenizer = tokenizer_for(model_dir, read_sidecar(model_dir))
    model.to(pick_device(device) if isinstance(device, str) else device)
    return config, model


def init_gpt_for_inference(gpt, kv_cache: bool = True) -> None:
    """coqui's `GPT.init_gpt_for_inference`, with a GPT-2 config that describes the audio vocabulary.

    coqui's sizes the config by the audio *length* limit and leaves GPT-2's text ids (50256) as
    bos/eos, outside it: transformers then warns at every model load. Here the vocabulary is the
    mel head's and bos/eos/pad are the audio start/stop tokens, the ids coqui passes to generate()
    anyway, so generation is unchanged (the same samples for a seed).
    """
    from transformers import GPT2Config
    from TTS.tts.layers.xtts.gpt_inference import GPT2InferenceModel

    seq_length = gpt.max_prompt_tokens + gpt.max_mel_tokens + gpt.max_text_tokens + 1
    config = GPT2Config(
        vocab_size=gpt.mel_head.out_features,
        n_positions=seq_length,
        n_ctx=seq_length,
        n_embd=gpt.model_dim,
        n_layer=gpt.layers,
        n_head=gpt.heads,
        gradient_checkpointing=False,
        use_cache=True,
        bos_token_id=gpt.start_audio_token,
        eos_token_id=gpt.stop_audio_token,
        pad_token_id=gpt.stop_audio_token,
    )
    gpt.gpt_inference = GPT2InferenceModel(
        config, gpt.gpt, gpt.mel_pos_embedding, gpt.mel_embedding, gpt.final_norm, gpt.mel_head, kv_cache=kv_cache
    )
    gpt.gpt.wte = gpt.mel_embedding


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
                raise BadValue(f"{path} is truncated or corrupted (not a complete torch weights file)")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise BadValue(f"{path} is truncated or corrupted ({err})") from None
    if bad is not None:
        raise BadValue(f"{path} is corrupted: its entry {bad} fails its checksum (altered or partly written)")


def dvae_hash(dvae_dir: Path) -> str:
    """The identity of a DVAE: a digest of its dvae.pth and mel_stats.pth (the mel normalisation
    its encoder reads). Code caches are keyed by it; a GPT run records the one whose codes it
    trained on, and export refuses to pair a GPT with another (issue 34)."""
    return file_hash(Path(dvae_dir) / "dvae.pth", Path(dvae_dir) / "mel_stats.pth")


def load_dvae(model_dir: Path, num_audio_tokens: int | None = None):
    """The frozen DVAE (mel → audio codes) and its mel normalisation, for training only.

    Its shape comes from dvae.pth itself. `num_audio_tokens` (the GPT's, codes + start + stop)
    is checked against the codebook: a DVAE with more codes than the GPT has rows cannot work.
    """
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    path = Path(model_dir) / "dvae.pth"
    if not path.is_file():
        raise MissingFile(f"{path} is missing: training needs the base's DVAE (the stock layout has dvae.pth)")
    check_weights_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    kwargs = dvae_kwargs(state, where=str(path))
    if num_audio_tokens is not None and kwargs["num_tokens"] > num_audio_tokens - 2:
        raise BadValue(
            f"{path} has {kwargs['num_tokens']} codes but the GPT "
            f"{'in ' + str(Path(model_dir) / 'config.json') + ' ' if (Path(model_dir) / 'config.json').is_file() else ''}"
            f"has gpt_num_audio_tokens={num_audio_tokens} (codes + start + stop): they belong to different models",
            fix=f"use the dvae.pth released with this model (or set gpt_num_audio_tokens={kwargs['num_tokens'] + 2})",
        )
    dvae = DiscreteVAE(**kwargs)
    # Not strict: extra (unused) keys are tolerated as in coqui's trainer; missing ones are not.
    missing = dvae.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise BadValue(f"{path} lacks DVAE weights: {', '.join(missing[:5])} ...")
    dvae.eval().requires_grad_(False)
    mel_stats = torch.load(Path(model_dir) / "mel_stats.pth", map_location="cpu", weights_only=True)
    return dvae, mel_stats
