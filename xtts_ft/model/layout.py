"""The stock XTTS-v2 file layout and our sidecar `xtts_ft.json`.

DVAE hyper-parameters are not in the stock config.json (coqui hard-codes the released ones in
its GPT trainer): `dvae_kwargs` reads them off the shapes in dvae.pth itself, so a base with
another codebook (coqui's `XttsConfig()` default of 8192 codes, a tiny model) loads as it is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from xtts_ft.errors import BadValue, MissingFile

STOCK_FILES = ("config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth")
SIDECAR = "xtts_ft.json"
EMOTIONS_FILE = "emotions_xtts.pth"  # an export's emotion presets (name → conditioning latents)
# Every file an export may hold: export writes nothing else, push sends these and a Hub download
# fetches them, so an export comes back from the Hub whole.
ADAPTER_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
)  # a LoRA export's adapter, PEFT's format (adapter=true)
EXPORT_FILES = (*STOCK_FILES, EMOTIONS_FILE, SIDECAR, "README.md", "model.safetensors", *ADAPTER_FILES)
EXPORT_KIND = "export"  # the sidecar's "kind" in an export (a tiny or extended base has its own)

# coqui-tts 0.28, TTS/tts/layers/xtts/trainer/gpt_trainer.py: the released XTTS-v2 DVAE.
REAL_DVAE = dict(
    channels=80,
    normalization=None,
    positional_dims=1,
    num_tokens=1024,
    codebook_dim=512,
    hidden_dim=512,
    num_resnet_blocks=3,
    kernel_size=3,
    num_layers=2,
    use_transposed_convs=False,
)


def read_sidecar(model_dir: Path) -> dict:
    path = Path(model_dir) / SIDECAR
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadValue(f"{path}: not valid JSON ({err.msg})") from None


def is_export(model_dir: Path) -> bool:
    """Whether a directory is an xtts-ft export (its sidecar says so; exports made before the
    sidecar had a kind are known by their export time)."""
    try:
        sidecar = read_sidecar(model_dir)
    except ValueError:
        return False
    return sidecar.get("kind", EXPORT_KIND if "exported_at" in sidecar else None) == EXPORT_KIND


def dvae_kwargs(state: dict, where: str = "dvae.pth") -> dict:
    """DiscreteVAE(**kwargs) that fits a DVAE state dict, read off its tensor shapes.

    Encoder layout (coqui's DiscreteVAE): `num_layers` strided convs `encoder.i.0`, then
    `num_resnet_blocks` ResBlocks `encoder.j.net`, then a 1x1 conv to the codebook; the codebook
    `embed` is (codebook_dim, num_tokens); the decoder's upsampling layers are `UpsampledConv`
    (a `.conv` inside) unless transposed convolutions were used.
    """
    try:
        codebook_dim, num_tokens = state["codebook.embed"].shape
        first = state["encoder.0.0.weight"]
    except KeyError as err:
        raise BadValue(
            f"{where} is not an XTTS DVAE state dict: it has no {err.args[0]} (keys: {', '.join(list(state)[:5])} ...)"
        ) from None
    strided = {int(m.group(1)) for k in state if (m := re.fullmatch(r"encoder\.(\d+)\.0\.weight", k))}
    resblocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.(\d+)\.net\.", k))}
    return {
        **REAL_DVAE,
        "channels": first.shape[1],
        "positional_dims": first.dim() - 2,
        "kernel_size": first.shape[-1],
        "hidden_dim": first.shape[0],
        "num_layers": len(strided),
        "num_resnet_blocks": len(resblocks),
        "codebook_dim": codebook_dim,
        "num_tokens": num_tokens,
        "use_transposed_convs": not any(re.fullmatch(r"decoder\.\d+\.0\.conv\.weight", k) for k in state),
    }


def check_layout(model_dir: Path, required=("config.json", "model.pth", "vocab.json")) -> None:
    missing = [name for name in required if not (Path(model_dir) / name).is_file()]
    if missing:
        raise MissingFile(
            f"{model_dir} is not an XTTS-v2 model directory: missing {', '.join(missing)} "
            f"(the stock layout is {', '.join(STOCK_FILES)})"
        )
