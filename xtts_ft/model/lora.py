"""LoRA adapters on the XTTS GPT, built on 🤗 PEFT (never a hand-written LoRA).

`train-gpt method=lora` wraps coqui's GPT with PEFT: LoRA on the GPT-2 blocks' transformers
`Conv1D` layers (`c_attn`, `c_proj` of attention and MLP, `c_fc`; PEFT's fan_in_fan_out), the
rest frozen. With an extended vocabulary the rows `extend` added must still learn while the base
rows stay bit-identical: the text embedding's new rows through PEFT's `trainable_token_indices`,
the text head (a Linear with a bias, which PEFT's token layer cannot carry) as a PEFT
`modules_to_save` copy whose base rows get no gradient and no weight decay.

A LoRA training state holds only the trainable tensors (adapter, token rows, head copy) under the
GPT module's own names; `load_trained_gpt` turns any train-gpt state (full or LoRA) into plain
GPT weights, merging the adapter (PEFT's merge_and_unload), so export, the decoder's latents and
coqui-tts downstream see an ordinary GPT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List

import torch

from xtts_ft.errors import BadValue, MissingFile, RunRefused
from xtts_ft.model.layout import ADAPTER_FILES, SIDECAR, read_sidecar
from xtts_ft.model.loading import looks_like_hub_id

HEADS = ("text_head", "mel_head")


def is_lora_state(state: dict) -> bool:
    """A train-gpt state or checkpoint made with method=lora (its weights are an adapter, not a GPT)."""
    return (state.get("config") or {}).get("method", "full") == "lora"


def new_text_rows(model_dir: Path) -> List[int]:
    """Token ids `xtts-ft extend` added to the base (its record in xtts_ft.json): the rows of the
    text embedding and head that must train under LoRA; [] for a base that was not extended."""
    tokens = read_sidecar(model_dir).get("extension", {}).get("text_tokens")
    return list(range(tokens["before"], tokens["after"])) if tokens else []


def lora_config(lora_cfg, new_rows: Iterable[int]):
    """PEFT's LoraConfig for `lora.*` of TrainGptConfig and the extended vocabulary's rows."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    new_rows = list(new_rows)
    heads = list(HEADS) if lora_cfg["train_heads"] else (["text_head"] if new_rows else [])
    config = LoraConfig(
        r=int(lora_cfg["rank"]),
        lora_alpha=float(lora_cfg["alpha"]),
        lora_dropout=float(lora_cfg["dropout"]),
        target_modules=list(lora_cfg["targets"]),
        fan_in_fan_out=True,  # GPT-2's Conv1D stores (in, out); PEFT corrects it per module for any nn.Linear target
        trainable_token_indices={"text_embedding": new_rows} if new_rows else None,
        modules_to_save=heads or None,
    )
    # PEFT's own extension point for a layer type: GPT-2's Conv1D gets PEFT's LoRA Linear with one
    # fused product (see OneProductLoraLinear); adapter files, merging and loading are PEFT's.
    config._register_custom_module({Conv1D: one_product_lora_linear()})
    return config


_ONE_PRODUCT_CLASS = None


def one_product_lora_linear():
    """PEFT's LoRA `Linear` for GPT-2's Conv1D whose forward adds the low-rank update with one BLAS
    call, `addmm(W x + b, A x, B^T, alpha=scaling)`, where PEFT writes `result + B(A(x)) * scaling`:
    the same sum, without a layer-sized scaling product and a layer-sized addition forward and
    again in backward (LoRA without checkpointing went from 0.81x to 0.72x the full fine-tune's
    seconds per sample at full size on CPU: BENCHMARKS.md). Anything else
    (several or disabled adapters, LoRA dropout, DoRA and other variants, merged weights, extra
    arguments, base and adapter weights of different dtypes) runs PEFT's own forward unchanged. Built on
    first use: PEFT is imported lazily."""
    global _ONE_PRODUCT_CLASS
    if _ONE_PRODUCT_CLASS is not None:
        return _ONE_PRODUCT_CLASS
    from peft.tuners.lora.layer import Linear

    class OneProductLoraLinear(Linear):
        def __init__(self, base_layer, adapter_name, **kwargs):
            kwargs["is_target_conv_1d_layer"] = True  # what PEFT's own dispatch sets for Conv1D,
            kwargs["fan_in_fan_out"] = True  # which stores its weight (in, out): merging must transpose
            super().__init__(base_layer, adapter_name, **kwargs)

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            adapters = self.active_adapters
            name = adapters[0] if len(adapters) == 1 else None
            plain = (
                name is not None
                and not args
                and not kwargs
                and not self.disable_adapters
                and not self.merged
                and name in self.lora_A
                and name not in self.lora_variant
                and isinstance(self.lora_dropout[name], torch.nn.Identity)
                and self.lora_B[name].bias is None
                and self.get_base_layer().weight.dtype == self.lora_B[name].weight.dtype  # else PEFT's casts
            )
            if not plain:
                return super().forward(x, *args, **kwargs)
            result = self.base_layer(x)
            low = torch.nn.functional.linear(
                self._cast_input_dtype(x, self.lora_A[name].weight.dtype), self.lora_A[name].weight
            )
            summed = torch.addmm(
                result.reshape(-1, result.shape[-1]),
                low.reshape(-1, low.shape[-1]),
                self.lora_B[name].weight.t(),
                alpha=self.scaling[name],
            )
            return summed.view(result.shape).to(result.dtype)

    # A module-level name (built on demand by __getattr__ below), so that a wrapped model pickles.
    OneProductLoraLinear.__module__, OneProductLoraLinear.__qualname__ = __name__, "OneProductLoraLinear"
    _ONE_PRODUCT_CLASS = OneProductLoraLinear
    return OneProductLoraLinear


def __getattr__(name: str):
    if name == "OneProductLoraLinear":
        return one_product_lora_linear()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def apply_lora(gpt: torch.nn.Module, lora_cfg, new_rows: Iterable[int]):
    """Wrap coqui's GPT with PEFT in place (its LoRA layers are then part of `gpt` itself; forward
    calls on `gpt` go through them) and return the PeftModel. Only adapter parameters, the new
    token rows and the chosen heads require grad."""
    from peft import get_peft_model

    new_rows = list(new_rows)
    model = get_peft_model(gpt, lora_config(lora_cfg, new_rows))
    if new_rows and not lora_cfg["train_heads"]:
        keep_base_rows_frozen(gpt.text_head.modules_to_save["default"], first_new_row=new_rows[0])
    return model


def keep_base_rows_frozen(head: torch.nn.Linear, first_new_row: int) -> None:
    """Only the new rows of the text head learn: a gradient hook zeroes the base rows' gradient
    (AdamW then moves them by exactly 0, given no weight decay: see `no_decay_parameters`)."""
    mask = torch.zeros(head.out_features, 1, device=head.weight.device)
    mask[first_new_row:] = 1
    head.weight.register_hook(lambda grad: grad * mask.to(grad.dtype))
    head.bias.register_hook(lambda grad: grad * mask[:, 0].to(grad.dtype))
    head._xtts_ft_masked = True  # read by no_decay_parameters


def no_decay_parameters(gpt: torch.nn.Module) -> List[torch.nn.Parameter]:
    """Trainable parameters weight decay must spare under LoRA: the new token rows (embeddings,
    as in coqui's recipe) and a row-masked text head, whose base rows decay would otherwise move."""
    spared = []
    for name, param in gpt.named_parameters():
        if param.requires_grad and "trainable_tokens_delta" in name:
            spared.append(param)
    for module in gpt.modules():
        if getattr(module, "_xtts_ft_masked", False):
            spared += [module.weight, module.bias]
    return spared


def load_adapter_weights(gpt: torch.nn.Module, weights: dict, where: str) -> None:
    """Load a LoRA state's trainable tensors into a GPT already wrapped by `apply_lora`."""
    result = gpt.load_state_dict(weights, strict=False)
    trainable = {n for n, p in gpt.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if result.unexpected_keys or missing:
        raise BadValue(
            f"{where} does not fit this LoRA set-up (lora.* or the base model changed since it was saved): "
            f"unexpected {', '.join(result.unexpected_keys[:3]) or 'none'}; missing {', '.join(missing[:3]) or 'none'}",
            fix="resume with the run's own lora settings and base, or use another run_name",
        )


def trained_adapter(gpt: torch.nn.Module, state: dict, base_dir: Path, where: str = "the training state"):
    """Wrap `gpt` (the base's) with a LoRA state's adapter, unmerged: the PeftModel."""
    model = apply_lora(gpt, state["config"]["lora"], new_text_rows(base_dir))
    load_adapter_weights(gpt, state["gpt"], where)
    return model


def load_trained_gpt(
    gpt: torch.nn.Module, state: dict, base_dir: Path, where: str = "the training state"
) -> torch.nn.Module:
    """Put a train-gpt state's (or checkpoint's) GPT into coqui's `gpt`: full weights as they are; a
    LoRA adapter merged into the base weights (PEFT's merge_and_unload: stock keys again)."""
    if is_lora_state(state):
        return trained_adapter(gpt, state, base_dir, where).merge_and_unload()
    gpt.load_state_dict(state["gpt"])
    return gpt


def adapter_files(model, base_source: str) -> Dict[str, bytes]:
    """The adapter in PEFT's own format ({adapter_config.json, adapter_model.safetensors: bytes}),
    written by PEFT's save_pretrained; held in memory because merging (export) consumes the
    adapter before the export directory is written. PEFT's own README.md is not ours to ship."""
    import tempfile

    model.peft_config["default"].base_model_name_or_path = base_source
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch)
        return {name: (Path(scratch) / name).read_bytes() for name in ADAPTER_FILES}


def resolve_adapter_dir(source: str, revision: str | None = None) -> Path:
    """A local folder holding PEFT's adapter files (an `export adapter=true` directory or a plain
    PEFT adapter), or a Hub id whose adapter files (and sidecar) alone are fetched."""
    path = Path(source).expanduser()
    if not path.is_dir() and looks_like_hub_id(str(source)):
        from huggingface_hub import snapshot_download

        try:
            path = Path(
                snapshot_download(repo_id=str(source), revision=revision, allow_patterns=[*ADAPTER_FILES, SIDECAR])
            )
        except Exception as err:  # offline, unknown or gated repo
            raise RunRefused(
                f"cannot fetch the adapter {source!r} from the Hugging Face Hub ({type(err).__name__}: {err})",
                fix=f"download it where you have network (`hf download {source} --local-dir <folder>`) and pass "
                "the local folder",
            ) from err
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise MissingFile(
            f"adapter {source}: no {', '.join(missing)} there (a LoRA adapter is PEFT's "
            f"{' + '.join(ADAPTER_FILES)}: `xtts-ft export adapter=true` writes them)"
        )
    return path


def check_adapter_base(adapter_dir: Path, model_dir: Path) -> None:
    """An adapter applies to the weights it was trained on: the export's xtts_ft.json names the base's
    model.pth hash; another base is refused (a plain PEFT adapter without our sidecar is trusted)."""
    import hashlib

    expected = read_sidecar(adapter_dir).get("adapter", {}).get("base_model", {})
    if not expected.get("model_sha256"):
        return
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.pth", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected["model_sha256"]:
        raise BadValue(
            f"adapter {adapter_dir} was trained on {expected.get('source')} (model.pth sha256 "
            f"{expected['model_sha256'][:12]}…), not on {model_dir}",
            fix="load it over that base",
        )
