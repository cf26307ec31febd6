"""Every trick by which a batched generate patches torch or transformers for speed on CPU, in one place:

- `PackedProducts`: a batch's products by the GPT-2 Conv1D weights go through oneDNN with each weight
  packed ahead for it, where timing on this machine says that is faster (instance `forward`s, put back
  after each generate);
- `cache_grown_in_place`: each layer of transformers' DynamicCache grows into a buffer instead of
  concatenating its whole keys and values at every step (instance `update`s, put back);
- `fused_gelu`: GPT-2's tanh-approximated GELU through torch's fused kernel (instance `forward`s, put back);
- `batch_kernels`: the context a batch's generate runs in (packed products and the fused GELU);
- the instance-attribute patch helpers they share.

Each gives the same results as the plain code to float rounding (the codes of a seeded batch are the same:
tests/unit/inference/test_inference.py checks it). Each can be switched off: with the environment variable
`XTTS_FT_PLAIN_KERNELS=1` (read when a batch runs, not at import, so it may be set or unset between
batches), nothing is packed, timed or patched: torch's and transformers' own code runs, e.g. to rule the
tricks out when looking for a bug or to compare against them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

PLAIN_KERNELS_ENV = "XTTS_FT_PLAIN_KERNELS"


def plain_kernels() -> bool:
    """Whether the tricks of this module are switched off (XTTS_FT_PLAIN_KERNELS set, other than "" or "0")."""
    return os.environ.get(PLAIN_KERNELS_ENV, "").strip() not in ("", "0")


class _PackedLayer(NamedTuple):
    weight: torch.Tensor  # oneDNN's packed copy of the layer's weight
    version: int  # the layer's weight as packed: its version counter and data pointer (a change means: unpacked)
    pointer: int
    for_steps: bool  # the batch's one-code steps (one row per sentence) go through the packed weight
    for_prompt: bool  # and its prompt's pass (rows × the prompt's length)


class PackedProducts:
    """Whether a batch's products by the GPT-2 Conv1D weights are faster through oneDNN with each weight
    packed ahead for it, decided once per weight shape and kind of product on this machine, and the
    context that runs a batch's generate so.

    A batched generate multiplies by every weight of the GPT in two kinds of product: its prompt's pass
    (one row per position of every prompt: a few hundred rows) and its one-code steps (one row per
    sentence, 4-16). MKL's fp32 kernels are slow for so few rows on some CPUs: on the AMD EPYC of our
    benchmarks, 8 rows × (1024, 4096) took 1.5-6.6 ms against 0.4-0.8 ms for one row, whereas oneDNN's
    inner product over a weight reordered once for it (torch's `mkldnn._reorder_linear_weight`, what
    Inductor's CPU freezing uses) took 0.3-0.9 ms; a step of all 30 layers at 8 rows, 60-120 ms against
    160-300. On the AVX-512 EPYC, oneDNN is also faster for a prompt's hundreds of rows (304 × (1024,
    4096): 12 ms against 16 ms for MKL, whose kernels there run at AVX2 width); on the AVX2 EPYC of earlier
    benchmarks it was not. Which wins depends on the CPU and the BLAS, so it is timed, not assumed: each
    weight shape, both ways, a few products at the batch's row count and at PROMPT_ROWS, once per
    (shape, rows) and synthesizer. The sums are the same up to float rounding (~1e-6 of the outputs).
    Products on other devices, or where torch has no oneDNN, stay as they are."""

    # The row count timed for a prompt's pass: its text pass (rows × the text's length, a few hundred rows) costs
    # most; oneDNN's lead over MKL shrinks as rows grow (on the AVX2 EPYC, MKL led from ~100 rows).
    PROMPT_ROWS = 128

    def __init__(self):
        self.faster_packed: Dict[Tuple[Tuple[int, ...], int], bool] = {}  # (weight shape, rows) → decision

    @staticmethod
    def available() -> bool:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

    @staticmethod
    def pack(weight: torch.Tensor) -> torch.Tensor:
        """A Conv1D weight (in, out) as oneDNN's packed (out, in) inner-product weight."""
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().t().contiguous(), None)

    @staticmethod
    def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

    def packed_is_faster(self, weight: torch.Tensor, rows: int, packed: Optional[torch.Tensor] = None) -> bool:
        """Decided on first asking, per (weight shape, rows); `packed`: the weight already packed, if it is."""
        key = (tuple(weight.shape), rows)
        if key not in self.faster_packed:
            # Its own generator: timing must not move torch's global RNG, which unseeded synthesis follows.
            x = torch.randn(rows, weight.shape[0], dtype=weight.dtype, generator=torch.Generator().manual_seed(0))
            bias = torch.zeros(weight.shape[1], dtype=weight.dtype)

            def seconds(product) -> float:
                product()  # warm-up
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    product()
                    times.append(time.perf_counter() - start)
                return min(times)

            try:
                packed = self.pack(weight) if packed is None else packed
                faster = seconds(lambda: self.packed_product(x, packed, bias)) < 0.8 * seconds(
                    lambda: torch.addmm(bias, x, weight)
                )
            except RuntimeError:  # this torch build's oneDNN refuses the shape or dtype: MKL it is
                faster = False
            # Only a clear win counts: whole batches run on its strength.
            self.faster_packed[key] = faster
        return self.faster_packed[key]

    def packed_weights(
        self, module: torch.nn.Module, rows: int, device: torch.device
    ) -> Dict[torch.nn.Module, _PackedLayer]:
        """The Conv1D layers of `module` whose products in a batch of `rows` sentences (its steps, its prompt's
        pass, or both) are faster packed on this machine, each with its packed weight; empty on other devices,
        for one row, without oneDNN, or with plain kernels asked for (XTTS_FT_PLAIN_KERNELS: nothing is timed or
        packed). The copy costs the weights' size (1.5 GB for XTTS-v2's GPT) while it is held."""
        from transformers.pytorch_utils import Conv1D

        if plain_kernels() or not (device.type == "cpu" and rows > 1 and self.available()):
            return {}
        packed = {}
        for m in module.modules():
            if not (isinstance(m, Conv1D) and m.weight.dtype == torch.float32):
                continue
            # Decided per weight shape (GPT-2 has four): attention's square projection may gain less. The first
            # layer of a shape is timed with its own packed weight.
            undecided = any((tuple(m.weight.shape), r) not in self.faster_packed for r in (rows, self.PROMPT_ROWS))
            weight = self.pack(m.weight) if undecided else None
            for_steps = self.packed_is_faster(m.weight, rows, weight)
            for_prompt = self.packed_is_faster(m.weight, self.PROMPT_ROWS, weight)
            if for_steps or for_prompt:
                weight = self.pack(m.weight) if weight is None else weight
                packed[m] = _PackedLayer(weight, m.weight._version, m.weight.data_ptr(), for_steps, for_prompt)
        return packed

    @contextlib.contextmanager
    def products_through(self, packed: Dict[torch.nn.Module, _PackedLayer], rows: int):
        """Within: a batch of `rows` sentences' products by a layer of `packed` go through its packed weight,
        its one-code steps (products of exactly `rows` rows) and its prompt's pass (any other count) as that
        layer's entry says (an instance attribute shadows Conv1D.forward; hooks still run). Meant around one
        generate, which never yields to other code, so no other call sees the layers patched; each is
        restored on the way out. With plain kernels asked for (XTTS_FT_PLAIN_KERNELS), none is patched."""
        patched = []
        try:
            for layer, entry in ({} if plain_kernels() else packed).items():
                before = vars(layer).get("forward", _NOTHING)  # e.g. another library's hook: the fallback calls it
                usual = before if before is not _NOTHING else functools.partial(layer.__class__.forward, layer)
                layer.forward = self._packed_forward(layer, entry, rows, usual)
                patched.append((layer, before))
            yield
        finally:
            for layer, before in patched:
                _restore_instance_attribute(layer, "forward", before)

    @staticmethod
    def _packed_forward(layer: torch.nn.Module, entry: _PackedLayer, rows: int, usual):
        def forward(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            through_packed = entry.for_steps if flat.shape[0] == rows else entry.for_prompt
            # Not this kind of product, or the weight was replaced or changed in place (that autograd saw)
            # since packing: the usual product.
            if (
                not through_packed
                or layer.weight._version != entry.version
                or layer.weight.data_ptr() != entry.pointer
            ):
                return usual(x)
            return PackedProducts.packed_product(flat, entry.weight, layer.bias).view(*x.shape[:-1], layer.nf)

        return forward


_NOTHING = object()  # no instance attribute was there before a patch


def _set_instance_attribute(obj, name: str, value):
    """Shadow `obj.name` with an instance attribute; returns what to put back (see _restore_instance_attribute)."""
    before = vars(obj).get(name, _NOTHING)
    setattr(obj, name, value)
    return before


def _restore_instance_attribute(obj, name: str, before) -> None:
    if before is _NOTHING:
        vars(obj).pop(name, None)
    else:
        setattr(obj, name, before)


@contextlib.contextmanager
def cache_grown_in_place(cache, most_positions: int, first_reserve: int = 128):
    """Within: each layer of a transformers DynamicCache grows into a buffer instead of concatenating at every
    step. DynamicLayer.update copies the whole layer's keys and values into new tensors per generated code (at
    full size and 8 rows, ~200 MB a step read and written); here a step writes its one position, and the layer's
    keys and values are views of the buffer's first positions, the values `cat` would give. A buffer holds the
    positions so far plus `first_reserve` more (at most `most_positions` in all) and doubles when full, so it is
    never more than twice what the cache holds. A layer whose tensors were replaced (reorder_cache,
    batch_select_indices, reset) goes back to the usual update; only plain DynamicLayers are touched (another
    layer kind, or another transformers version's cache, is left as it is). On the way out each layer gets its
    own update back; its keys and values stay valid (views of its last buffers). With plain kernels asked for
    (XTTS_FT_PLAIN_KERNELS), every layer keeps transformers' own update."""
    patched = []
    try:
        for layer in [] if plain_kernels() else getattr(cache, "layers", []):
            if type(layer).__name__ != "DynamicLayer":
                continue
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not (
                isinstance(keys, torch.Tensor)
                and isinstance(values, torch.Tensor)
                and keys.dim() == 4
                and keys.shape == values.shape
            ):
                continue
            grower = _InPlaceGrowth(layer, max(keys.shape[2], min(most_positions, keys.shape[2] + first_reserve)))
            patched.append((layer, _set_instance_attribute(layer, "update", grower.update)))
        yield
    finally:
        for layer, before in patched:
            _restore_instance_attribute(layer, "update", before)


class _InPlaceGrowth:
    """One layer's buffers and its in-place update (see cache_grown_in_place). It refers to its layer weakly: the
    layer holds this object's update, and a cycle would keep every batch's buffers alive until Python's garbage
    collector ran."""

    def __init__(self, layer, capacity: int):
        import weakref

        self.layer = weakref.ref(layer)
        self.usual_update = type(layer).update
        self.key_buffer = self.value_buffer = None
        self._move_to_buffers(layer, capacity)

    def _move_to_buffers(self, layer, capacity: int) -> None:
        keys, values = layer.keys, layer.values
        length = keys.shape[2]
        self.key_buffer = keys.new_empty((*keys.shape[:2], capacity, keys.shape[3]))
        self.value_buffer = values.new_empty(self.key_buffer.shape)
        self.key_buffer[:, :, :length] = keys
        self.value_buffer[:, :, :length] = values
        layer.keys, layer.values = self.key_buffer[:, :, :length], self.value_buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        layer = self.layer()
        keys = getattr(layer, "keys", None)
        if (
            not getattr(layer, "is_initialized", True)
            or not isinstance(keys, torch.Tensor)
            or keys.dim() != 4
            or keys.data_ptr() != self.key_buffer.data_ptr()
            or layer.values.data_ptr() != self.value_buffer.data_ptr()
            or keys.shape[:2] != key_states.shape[:2]
            or keys.shape[3] != key_states.shape[3]
        ):
            return self.usual_update(layer, key_states, value_states, *args, **kwargs)
        length, new = keys.shape[2], key_states.shape[2]
        if length + new > self.key_buffer.shape[2]:
            self._move_to_buffers(layer, max(2 * self.key_buffer.shape[2], length + new))
        self.key_buffer[:, :, length : length + new] = key_states
        self.value_buffer[:, :, length : length + new] = value_states
        layer.keys, layer.values = self.key_buffer[:, :, : length + new], self.value_buffer[:, :, : length + new]
        return layer.keys, layer.values


@contextlib.contextmanager
def fused_gelu(module: torch.nn.Module):
    """Within: GPT-2's tanh-approximated GELU ("gelu_new", transformers' NewGELUActivation: five elementwise
    passes over the MLP's widest activations) computed by torch's fused kernel, the same formula
    (F.gelu(approximate="tanh"); transformers' own GELUTanh) to float rounding. Meant around a batched
    generate, as PackedProducts.products_through; each activation is restored on the way out. With plain
    kernels asked for (XTTS_FT_PLAIN_KERNELS), transformers' own GELU runs."""
    patched = []
    try:
        activations = [] if plain_kernels() else module.modules()
        for act in (m for m in activations if type(m).__name__ == "NewGELUActivation"):
            patched.append((act, _set_instance_attribute(act, "forward", _tanh_gelu)))
        yield
    finally:
        for act, before in patched:
            _restore_instance_attribute(act, "forward", before)


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@contextlib.contextmanager
def batch_kernels(products: PackedProducts, module: torch.nn.Module, packed: dict, rows: int):
    """Within: a batched generate of `rows` sentences through `module` (the GPT-2) runs its products as
    `products` decided (`packed`: its packed_weights), and GPT-2's GELU through torch's fused kernel."""
    with products.products_through(packed, rows), fused_gelu(module):
        yield
