"""A LoRA adapter over a base in seconds, for tests that serve or batch adapters: PEFT's own files, its
LoRA weights random so that it changes the model as much as a trained one would (no training run)."""

from __future__ import annotations

from pathlib import Path

import torch


def random_adapter(model_dir: Path, out_dir: Path, seed: int, rank: int = 4) -> Path:
    """A PEFT LoRA adapter folder (our lora_config, PEFT's save_pretrained) over the base at `model_dir`."""
    from peft import get_peft_model

    from xtts_ft.model import lora
    from xtts_ft.model.loading import load_xtts

    _, xtts = load_xtts(model_dir, "cpu", for_inference=False)
    cfg = {
        "rank": rank,
        "alpha": 2 * rank,
        "dropout": 0.0,
        "targets": ["c_attn", "c_proj", "c_fc"],
        "train_heads": False,
    }
    model = get_peft_model(xtts.gpt, lora.lora_config(cfg, []))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)
