"""Rows of one batched generate through different LoRA adapters of one PEFT-wrapped GPT (and rows through
none, the bare base), with PEFT's own mixed-batch forward.

PEFT runs a batch whose rows use different adapters when each LoRA layer (and each auxiliary wrapper: a
head kept as `modules_to_save`, an extended vocabulary's trainable token rows) is called with
`adapter_names=[one name per row]` ("__base__" for a row without adapter): `_mixed_batch_forward` adds
each adapter's low-rank update to its own rows only. PeftModel.generate passes that keyword to those
layers by forward pre-hooks, but our batched generate calls coqui's GPT2InferenceModel and its GPT-2
transformer directly, in passes of different row counts (the voices' pass, the texts', the one-code
steps; a text embedding per row). So `RowAdapters` holds the hooks itself, for as long as a batch runs,
and each pass says whose rows it carries (`rows(names)`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Sequence

import torch

BASE = "__base__"  # PEFT's name for a row that goes through no adapter


class RowAdapters:
    """The per-row adapters of a batch through `peft_model`'s layers (a PeftModel over coqui's GPT)."""

    def __init__(self, peft_model):
        self.peft_model = peft_model
        self._names: Optional[List[str]] = None  # the rows of the pass now running

    @property
    def loaded(self) -> List[str]:
        return list(self.peft_model.peft_config)

    def _layers(self) -> Iterator[torch.nn.Module]:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        return (m for m in self.peft_model.modules() if isinstance(m, (LoraLayer, AuxiliaryTrainingWrapper)))

    def _pre_hook(self, module, args, kwargs):
        if self._names is not None:
            kwargs["adapter_names"] = self._names
        return args, kwargs

    @contextlib.contextmanager
    def hooked(self) -> Iterator["RowAdapters"]:
        """Within: every LoRA layer hears the names of the pass now running (see rows). The adapter layers
        are enabled (a synthesizer's use_adapter(None) disables them; a mixed batch names its base rows
        instead) and put back as they were after."""
        layers = list(self._layers())
        disabled = [(m, m.disable_adapters) for m in layers if hasattr(m, "disable_adapters")]
        handles = [m.register_forward_pre_hook(self._pre_hook, with_kwargs=True) for m in layers]
        try:
            self.peft_model.base_model.enable_adapter_layers()
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._names = None
            if any(was for _, was in disabled):
                self.peft_model.base_model.disable_adapter_layers()

    @contextlib.contextmanager
    def rows(self, names: Sequence[Optional[str]]):
        """Within: the pass carries one row per name (None: the base), in this order."""
        before, self._names = self._names, [BASE if name is None else name for name in names]
        try:
            yield
        finally:
            self._names = before


def conditioning_adapters(peft_model) -> List[str]:
    """The loaded adapters with LoRA layers on the conditioning path (coqui's conditioning encoder and perceiver,
    which turn a reference clip into a voice's latents; `lora.targets` may name their layers): under these a
    voice's latents differ from the base's, so a server computes them once per such adapter. Our default
    targets (the GPT-2 blocks' layers) leave the path alone: none."""
    from peft.tuners.lora import LoraLayer

    names: set = set()
    for module_name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and "conditioning" in module_name:
            names.update(module.lora_A.keys())
            names.update(getattr(module, "lora_embedding_A", {}).keys())
    return sorted(names)


@contextlib.contextmanager
def through_adapter(synthesizer, name: Optional[str]) -> Iterator[None]:
    """Within: `synthesizer` (with a PEFT model) runs through adapter `name` alone (None: the bare base), e.g. to
    compute a voice's latents as `synthesize` would under it; its adapter state (which one is active, layers
    enabled or not: a running mixed batch enables them) is put back after."""
    from peft.tuners.lora import LoraLayer

    peft_model = synthesizer._peft
    disabled = any(m.disable_adapters for m in peft_model.modules() if isinstance(m, LoraLayer))
    active = peft_model.active_adapter
    active = active[0] if isinstance(active, (list, tuple)) else active
    synthesizer.use_adapter(name)
    try:
        yield
    finally:
        peft_model.base_model.enable_adapter_layers()
        peft_model.set_adapter(active)
        if disabled:
            peft_model.base_model.disable_adapter_layers()
        synthesizer._voices.clear()  # its cached latents came through `name`
