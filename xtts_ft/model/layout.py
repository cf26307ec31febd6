"""The stock XTTS-v2 file layout and our sidecar `xtts_ft.json`.

DVAE hyper-parameters are not in the stock config.json (coqui hard-codes them in its GPT
trainer); the real values are the defaults here, and a tiny model records its own in
xtts_ft.json under "dvae".
"""

from __future__ import annotations

import json
from pathlib import Path

STOCK_FILES = ("config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth")
SIDECAR = "xtts_ft.json"

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
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None


def dvae_kwargs(model_dir: Path) -> dict:
    return {**REAL_DVAE, **read_sidecar(model_dir).get("dvae", {})}


def check_layout(model_dir: Path, required=("config.json", "model.pth", "vocab.json")) -> None:
    missing = [name for name in required if not (Path(model_dir) / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{model_dir} is not an XTTS-v2 model directory: missing {', '.join(missing)} "
            f"(the stock layout is {', '.join(STOCK_FILES)})"
        )
