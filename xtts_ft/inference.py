"""The one inference path: CLI, notebooks, evaluation and tests all synthesize through here.

`XttsSynthesizer` loads the released base, an export or a Hub id with coqui-tts's own
loader, clones voices from reference audio it loads itself (soundfile + soxr, never
torchaudio.load), caches conditioning latents per reference file, splits long text into
sentences, and applies the decoding settings of the model's config.json unless overridden.
One text goes through coqui's Xtts.inference (`synthesize`), or, streamed, through our loop over
coqui's streaming generator (`stream`: a short first chunk, then longer ones); many texts through our
batched generate (`iter_synthesize`: several sentences, each with its own voice, language, babble
guard and seed, in one transformers generate; the same codes as one at a time).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import numbers
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from xtts_ft.data.audio import load_audio
from xtts_ft.data.text import clean_text
from xtts_ft.model.constants import CODES_PER_SECOND, GPT_SAMPLE_RATE
from xtts_ft.model.layout import EMOTIONS_FILE  # an export's emotion presets (name → conditioning latents)
from xtts_ft.model.loading import load_xtts, pick_device, resolve_model_dir

log = logging.getLogger(__name__)

DECODING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "length_penalty")


@dataclass
class Voice:
    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


@dataclass
class Synthesis:
    wav: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    seconds_to_generate: float
    stopped: List[bool]  # per sentence: the GPT emitted its stop token (False: cut by the babble guard)

    @property
    def duration(self) -> float:
        return self.wav.size / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        return self.seconds_to_generate / max(self.duration, 1e-9)


@dataclass
class AudioChunk:
    wav: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    seconds_since_start: float  # of the stream() call: the first chunk's is the time to first audio


class _Generated(NamedTuple):
    """One row of a batched generate."""

    codes: torch.Tensor  # (n,) as Xtts.inference keeps them: up to and with the stop token, or all if cut
    stopped: bool  # ended by its own stop token, not by its babble guard
    latents: (
        torch.Tensor
    )  # (1, n, width): the GPT's final-normed hidden state at each code's step: what the decoder speaks


@dataclass
class _Sentence:
    """One sentence of one request, as the batched GPT decodes it."""

    request: int  # index of its request
    tokens: torch.Tensor  # (1, T) text tokens, as coqui's Xtts.inference encodes them
    voice: Voice
    max_codes: int  # its babble guard
    seed: int  # its own sampling stream (see SeededDraw)


class SeededDraw:
    """The sampling step of a batched decode, one random stream per row: the argmax of
    log p - log E, E ~ Exp(1) drawn from the row's own generator, is a draw from p (the
    exponential race). Run as the last logits processor of a greedy generate, it makes a row's
    codes depend on its seed only, never on which rows share its batch or how many."""

    def __init__(self, seeds: List[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Every row draws at every step, finished or not, so its k-th draw is always its k-th code's.
        race = torch.stack(
            [torch.empty(scores.shape[1], device=scores.device).exponential_(generator=g) for g in self.generators]
        )
        return scores.float().log_softmax(-1) - race.clamp_min(torch.finfo(race.dtype).tiny).log()


class CodeLimits:
    """The babble guard per row: row i is done after `max_codes[i]` codes (transformers' own
    max_length is one number for the whole batch)."""

    def __init__(self, prompt_length: int, max_codes: List[int], device: torch.device):
        self.prompt_length = prompt_length
        self.max_codes = torch.tensor(max_codes, device=device)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.max_codes


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
        for one row, or without oneDNN. The copy costs the weights' size (1.5 GB for XTTS-v2's GPT) while it is held."""
        from transformers.pytorch_utils import Conv1D

        if not (device.type == "cpu" and rows > 1 and self.available()):
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
        restored on the way out."""
        patched = []
        try:
            for layer, entry in packed.items():
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
    own update back; its keys and values stay valid (views of its last buffers)."""
    patched = []
    try:
        for layer in getattr(cache, "layers", []):
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
    generate, as PackedProducts.products_through; each activation is restored on the way out."""
    patched = []
    try:
        for act in (m for m in module.modules() if type(m).__name__ == "NewGELUActivation"):
            patched.append((act, _set_instance_attribute(act, "forward", _tanh_gelu)))
        yield
    finally:
        for act, before in patched:
            _restore_instance_attribute(act, "forward", before)


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def split_sentences(text: str, language: str) -> List[str]:
    import pysbd

    try:
        segmenter = pysbd.Segmenter(language=language.split("-")[0], clean=False)
    except ValueError:  # a language pysbd does not know: its English rules split on . ! ? too
        segmenter = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for s in segmenter.segment(text) if s.strip()]


def read_requests(
    path: Union[str, Path],
    language: str,
    reference: Optional[str],
    voice: Optional[str],
    emotion: Optional[str] = None,
) -> List[dict]:
    """Texts to synthesize from a .txt (one per line) or a CSV/TSV with a `text` column and
    optional `language`, `reference`, `voice`, `emotion`, `name` columns (missing ones take the defaults).
    A `name` (the output file's) must stay inside out_dir and be used once."""
    import csv
    import io
    import os

    from xtts_ft.data.sample import stays_inside

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"texts file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}) — fix: save it as UTF-8"
        ) from None
    rows: List[Tuple[int, dict]] = []  # (line in the file, row)
    if path.suffix.lower() in (".csv", ".tsv"):
        # The csv module, not pandas: it knows each row's line (blank lines and quoted line breaks counted),
        # and a row with more fields than the header is an error, not a text cut at its comma.
        tsv = path.suffix.lower() == ".tsv"  # a TSV has no quoting: a text's own quotes are kept
        reader = csv.DictReader(
            io.StringIO(content, newline=""),
            delimiter="\t" if tsv else ",",
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
        )
        columns = [c.strip() for c in reader.fieldnames or []]
        if "text" not in columns:
            raise ValueError(f"{path}: no `text` column (columns: {', '.join(columns) or 'none: the file is empty'})")
        reader.fieldnames = columns
        try:
            for row in reader:
                if row.get(None):
                    quote = (
                        "a tab inside a text is not allowed"
                        if tsv
                        else 'a comma inside a text needs the text in double quotes, e.g. "Hello, world."'
                    )
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {len(columns) + len(row[None])} fields, the header has "
                        f"{len(columns)} — fix: {quote}"
                    )
                rows.append((reader.line_num, {k: (v or "") for k, v in row.items()}))
        except csv.Error as err:
            raise ValueError(f"{path}, line {reader.line_num}: {err}") from None
    else:
        rows = [(n, {"text": line.strip()}) for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
        if rows and rows[0][1]["text"].lower() in ("text", "texts", "text,name", "text\tname"):
            log.warning(
                "%s, line %d: %r is spoken as a text: a .txt has no header (one text per line) — fix: remove "
                "that line, or write a .csv/.tsv to give columns (text, language, reference, name, ...)",
                path,
                rows[0][0],
                rows[0][1]["text"],
            )
    requests = []
    named: Dict[str, int] = {}  # name -> the line that first used it
    for line, row in rows:
        if not str(row.get("text", "")).strip():
            raise ValueError(f"{path}, line {line}: empty text")
        name = row.get("name") or None
        if name is not None and not stays_inside(name):
            raise ValueError(
                f"{path}, line {line}: name {name!r} would write outside out_dir; a name is a file "
                "name (or sub/folder/name) under out_dir, e.g. greeting_01"
            )
        if name is not None and os.path.normpath(name) in named:
            raise ValueError(
                f"{path}, line {line}: name {name!r} is already used on line {named[os.path.normpath(name)]}; "
                "each name becomes <out_dir>/<name>.wav, so one would overwrite the other: make them unique"
            )
        if name is not None:
            named[os.path.normpath(name)] = line
        request = {
            "text": row["text"],
            "language": row.get("language") or language,
            "reference": row.get("reference") or None,
            "voice": row.get("voice") or None,
            "emotion": row.get("emotion") or emotion,
            "name": name,
            "where": f"{path}, line {line}",
        }
        if request["reference"] is None and request["voice"] is None:
            request["reference"], request["voice"] = reference, voice
        requests.append(request)
    return requests


class XttsSynthesizer:
    """`voice_cache_size`: reference clips whose latents are kept (the least recently used go first:
    a server taking uploads must not grow without bound). `max_reference_seconds`: how much of the
    start of a reference clip is read (default: the model's max_ref_len; the rest is never decoded)."""

    def __init__(
        self,
        checkpoint: Union[str, Path],
        device: str = "auto",
        revision: Optional[str] = None,
        voice_cache_size: int = 32,
        max_reference_seconds: Optional[float] = None,
        adapter: Union[str, Path, None] = None,
    ):
        self.model_dir = resolve_model_dir(str(checkpoint), revision)
        self.device = pick_device(device)
        self.config, self.model = load_xtts(self.model_dir, self.device, for_inference=True)
        self.sample_rate = int(self.config.model_args.output_sample_rate)
        self._voices: "OrderedDict[Tuple[str, int, int], Voice]" = OrderedDict()
        self.voice_cache_size, self.max_reference_seconds = voice_cache_size, max_reference_seconds
        self._packed_products = PackedProducts()
        if adapter is not None:  # `checkpoint` is then the base the LoRA adapter was trained on
            self.load_adapter(adapter)

    def load_adapter(self, adapter: Union[str, Path], name: str = "default", revision: Optional[str] = None) -> None:
        """Apply a LoRA adapter (PEFT's files: an `export adapter=true` directory, a PEFT adapter folder
        or a Hub id) to the GPT, unmerged, and use it. Several adapters over one base stay loaded
        side by side: `use_adapter(name)` switches per request without reloading."""
        from peft import PeftModel

        from xtts_ft.model import lora
        from xtts_ft.model.loading import init_gpt_for_inference

        adapter_dir = lora.resolve_adapter_dir(str(adapter), revision)
        lora.check_adapter_base(adapter_dir, self.model_dir)
        gpt = self.model.gpt
        # The generation wrapper is a second path to the same blocks: PEFT would look for adapter
        # weights under both names. It is rebuilt below, over the adapted GPT.
        if hasattr(gpt, "gpt_inference"):
            del gpt.gpt_inference
        if getattr(self, "_peft", None) is None:
            self._peft = PeftModel.from_pretrained(gpt, str(adapter_dir), adapter_name=name)
        else:
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
        self._peft.eval()
        init_gpt_for_inference(gpt, kv_cache=self.model.args.kv_cache)  # the generation wrapper must see PEFT's heads
        self.use_adapter(name)

    def use_adapter(self, name: Optional[str]) -> None:
        """Synthesize with the loaded adapter `name`, or with the bare base (None)."""
        peft_model = getattr(self, "_peft", None)
        if peft_model is None:
            if name is None:
                return
            raise ValueError(
                f"adapter {name!r}: no adapter is loaded (XttsSynthesizer(base, adapter=...) or load_adapter)"
            )
        if name is None:
            peft_model.base_model.disable_adapter_layers()
        elif name not in peft_model.peft_config:
            raise ValueError(f"adapter {name!r} is not loaded (loaded: {', '.join(peft_model.peft_config)})")
        else:
            peft_model.base_model.enable_adapter_layers()
            peft_model.set_adapter(name)
        self._voices.clear()  # cached latents came through the conditioning path of the previous adapter

    @classmethod
    def from_model(cls, config, model, model_dir: Optional[Path] = None) -> "XttsSynthesizer":
        """Wrap a model already in memory (e.g. the GPT being trained, for in-loop eval audio)."""
        self = cls.__new__(cls)
        self.model_dir = Path(model_dir) if model_dir else None
        self.device = next(model.parameters()).device
        self.config, self.model = config, model
        self.sample_rate = int(config.model_args.output_sample_rate)
        self._voices = OrderedDict()
        self.voice_cache_size, self.max_reference_seconds = 32, None
        self._packed_products = PackedProducts()
        return self

    @property
    def languages(self) -> List[str]:
        return list(self.config.languages)

    @property
    def emotion_tokens(self) -> List[str]:
        """Emotion tokens the model was extended with (`xtts-ft extend emotions=[...]`)."""
        return list(getattr(self.model.tokenizer, "emotion_tokens", []))

    @property
    def emotion_presets(self) -> Dict[str, dict]:
        """Emotion presets of an export (`xtts-ft export +emotions={happy: clip.wav}`)."""
        if not hasattr(self, "_emotion_presets"):
            path = self.model_dir / EMOTIONS_FILE if self.model_dir else None
            self._emotion_presets = (
                torch.load(path, map_location="cpu", weights_only=True) if path and path.is_file() else {}
            )
        return self._emotion_presets

    def with_emotion(self, voice: Voice, emotion: Optional[str]) -> Tuple[Voice, Optional[str]]:
        """(voice, emotion token to put before the text). An emotion token of the model is used as
        such; a preset replaces the GPT conditioning (prosody) and keeps the voice's timbre."""
        if emotion is None:
            return voice, None
        token = emotion if emotion in self.emotion_tokens else None
        preset = self.emotion_presets.get(emotion)
        if token is None and preset is None:
            raise ValueError(
                f"this model has no emotion {emotion!r}: emotion tokens: {', '.join(self.emotion_tokens) or 'none'}; "
                f"emotion presets: {', '.join(self.emotion_presets) or 'none'} — fix: emotion=<one of those>, or no emotion"
            )
        if preset is not None:
            voice = Voice(preset["gpt_cond_latent"].to(self.device), voice.speaker_embedding)
        return voice, token

    def unknown_characters(self, text: str, language: str) -> List[str]:
        """The characters of `text`, cleaned as synthesis cleans it, that this model's vocabulary
        lacks (synthesis reads each as [UNK], and the tokenizer logs a warning)."""
        tokenizer = self.model.tokenizer
        return tokenizer.unknown_characters(tokenizer.preprocess_text(text.strip().lower(), language))

    @property
    def voice_names(self) -> List[str]:
        manager = self.model.speaker_manager
        return manager.speaker_names if manager is not None else []

    def clone_voice(self, reference: Union[str, Path]) -> Voice:
        """Conditioning latents for a reference clip, computed once per file version."""
        path = Path(reference)
        if not path.is_file():
            what = "is a folder, not an audio file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(
                f"reference audio {path} {what} — fix: reference=<an audio file of the voice, 3-10 s>"
            )
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in self._voices:
            self._voices.move_to_end(key)
            return self._voices[key]
        max_seconds = min(float(self.config.max_ref_len), self.max_reference_seconds or float("inf"))
        audio = torch.from_numpy(load_audio(path, GPT_SAMPLE_RATE, max_seconds=max_seconds)).unsqueeze(0)
        if audio.shape[1] < GPT_SAMPLE_RATE * 0.5:
            raise ValueError(
                f"reference audio {path} is {audio.shape[1] / GPT_SAMPLE_RATE:.2f} s long — fix: give at least 0.5 s (3-10 s is best)"
            )
        gpt_cond_latent = self.model.get_gpt_cond_latents(
            audio,
            GPT_SAMPLE_RATE,
            length=int(self.config.gpt_cond_len),
            chunk_length=int(self.config.gpt_cond_chunk_len),
        )
        speaker_embedding = self.model.get_speaker_embedding(audio.to(self.device), GPT_SAMPLE_RATE)
        self._voices[key] = Voice(gpt_cond_latent, speaker_embedding)
        while len(self._voices) > self.voice_cache_size:
            self._voices.popitem(last=False)
        return self._voices[key]

    def named_voice(self, name: str) -> Voice:
        if name not in self.voice_names:
            raise KeyError(
                f"no voice named {name!r} in {self.model_dir / 'speakers_xtts.pth'}; known: {', '.join(self.voice_names) or 'none'} — fix: voice=<one of those>, or reference=<an audio file to clone>"
            )
        latents = self.model.speaker_manager.speakers[name]
        return Voice(latents["gpt_cond_latent"], latents["speaker_embedding"])

    def decoding_settings(self, overrides: Optional[dict] = None) -> dict:
        settings = {key: getattr(self.config, key) for key in DECODING_KEYS}
        settings.update({k: v for k, v in (overrides or {}).items() if k in DECODING_KEYS and v is not None})
        return settings

    def _request(
        self, text: str, language: str, reference, voice, decoding: Optional[dict], emotion: Optional[str] = None
    ):
        """Validate a request: (language, voice latents, decoding settings, babble-guard rate, text prefix, its
        sentences with the token ids XTTS's GPT reads for each)."""
        if not text.strip():
            raise ValueError('text is empty — fix: give something to say, e.g. text="Hello there."')
        if not any(ch.isalnum() for ch in text):  # "?!" or "...": the model would babble until its guard stops it
            raise ValueError(
                f"text {text.strip()[:40]!r} has no words to say, only punctuation or symbols — fix: give words, "
                'e.g. text="Hello there."'
            )
        language = language.split("-")[0] if language != "zh-cn" else language
        if language not in self.languages:
            raise ValueError(
                f"language {language!r} is not in this model's config.languages: {', '.join(self.languages)} "
                f"— fix: language=<one of those> (a new language is added with `xtts-ft extend`)"
            )
        if (reference is None) == (voice is None):
            raise ValueError(
                "a voice is needed: exactly one of reference= or voice= "
                "— fix: reference=<an audio file to clone> or voice=<a named voice of the export>"
            )
        chosen = self.clone_voice(reference) if reference is not None else self.named_voice(voice)
        chosen, emotion_token = self.with_emotion(chosen, emotion)
        prefix = f"[{emotion_token}]" if emotion_token else ""  # the tokenizer reads it as the emotion token
        limit = int(self.model.args.gpt_max_text_tokens)
        # What Xtts.inference feeds its GPT: the lower-cased sentence, the emotion token before it; too many
        # tokens is refused here (coqui asserts it deep inside its inference).
        sentences = [
            (sentence, self.model.tokenizer.encode((prefix + sentence).strip().lower(), lang=language))
            for sentence in split_sentences(text, language)
        ]
        for sentence, tokens in sentences:
            if len(tokens) >= limit:
                raise ValueError(
                    f"the sentence {sentence[:60]!r}... is {len(tokens)} text tokens; the model takes fewer than {limit} "
                    "— fix: split it into shorter sentences (each ending in . ! or ?)"
                )
        decoding = dict(decoding or {})
        settings = self.decoding_settings(decoding)
        max_seconds_per_char = float(decoding.get("max_seconds_per_char") or 0.25)
        if decoding.get("seed") is not None:
            torch.manual_seed(int(decoding["seed"]))
        return language, chosen, settings, max_seconds_per_char, prefix, sentences

    def _max_codes(self, sentence: str, language: str, max_seconds_per_char: float) -> int:
        # Babble guard: a sentence cannot need more than ~max_seconds_per_char per character of its text as
        # said: cleaned, numbers as words (Wolof "1 987 654" is 9 characters written, 120 said).
        characters = max(len(sentence), len(clean_text(sentence, language)))
        max_codes = int((2.0 + max_seconds_per_char * characters) * CODES_PER_SECOND)
        return min(max_codes, int(self.model.args.gpt_max_audio_tokens) - 3)

    @contextlib.contextmanager
    def _babble_guard(self, max_codes: int):
        """At most `max_codes` codes for the sentence generated inside. coqui's generate() caps the
        codes with max_length = gpt.max_gen_mel_tokens + prompt, so the guard goes there: passing
        max_new_tokens on top makes transformers warn at every sentence."""
        gpt = self.model.gpt
        default, gpt.max_gen_mel_tokens = gpt.max_gen_mel_tokens, max_codes
        try:
            yield
        finally:
            gpt.max_gen_mel_tokens = default

    def synthesize(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        emotion: Optional[str] = None,
    ) -> Synthesis:
        language, chosen, settings, max_seconds_per_char, prefix, sentences = self._request(
            text, language, reference, voice, decoding, emotion
        )
        started = time.perf_counter()
        pieces, stopped = [], []
        for sentence, _ in sentences:
            max_codes = self._max_codes(sentence, language, max_seconds_per_char)
            with self._babble_guard(max_codes):
                out = self.model.inference(
                    prefix + sentence,
                    language,
                    chosen.gpt_cond_latent,
                    chosen.speaker_embedding,
                    enable_text_splitting=False,
                    **settings,
                )
            codes = out["gpt_latents"].shape[1]
            stopped.append(codes < max_codes)
            pieces.append(np.asarray(out["wav"], dtype=np.float32).reshape(-1))
        elapsed = time.perf_counter() - started
        return Synthesis(np.concatenate(pieces), self.sample_rate, elapsed, stopped)

    def stream(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        chunk_codes: int = 20,
        emotion: Optional[str] = None,
        first_chunk_codes: int = 8,
    ) -> Iterator[AudioChunk]:
        """Audio as it is generated, each chunk with the seconds since audio was first asked for (the
        first one's is the time to first audio): a sentence's first chunk after `first_chunk_codes` GPT codes, the
        next ones every `chunk_codes` (a code is 1024 samples at 22.05 kHz, ~0.046 s of audio).

        The first chunk is the latency: its codes are generated one by one before anything plays.
        8 codes (~0.37 s of audio, ~0.33 s once the 1024-sample cross-fade overlap is held back) is
        a syllable or two, not a click, and puts the first audio near a quarter of a 48-code
        sentence's synthesis time (full size on 2 CPU cores: 2.8-3.0 s of 13.8-15.4 s, 0.18-0.22,
        BENCHMARKS.md; 20 codes took 0.47). Fewer codes buy little (the prompt pass and a decoder
        call are paid anyway) and leave the decoder almost no context. Later chunks are longer (20:
        ~0.93 s) because each chunk re-decodes all of the sentence's latents so far: fewer, longer
        chunks cost less in all. Bad sizes, text or voice are refused here, before any audio."""
        for name, value in (("first_chunk_codes", first_chunk_codes), ("chunk_codes", chunk_codes)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(
                    f"{name}={value!r} — fix: {name}=<an integer ≥ 1> (GPT codes per chunk, ~0.046 s of audio each)"
                )
        language, chosen, settings, max_seconds_per_char, _, sentences = self._request(
            text, language, reference, voice, decoding, emotion
        )
        return self._stream_chunks(
            sentences, language, chosen, settings, max_seconds_per_char, first_chunk_codes, chunk_codes
        )

    def _stream_chunks(
        self,
        sentences: List[Tuple[str, List[int]]],
        language: str,
        chosen: Voice,
        settings: dict,
        max_seconds_per_char: float,
        first_chunk_codes: int,
        chunk_codes: int,
    ) -> Iterator[AudioChunk]:
        """`stream`'s chunks, sentence by sentence (with the token ids `_request` made), timed from the first
        request for audio."""
        started = time.perf_counter()
        for sentence, tokens in sentences:
            max_codes = self._max_codes(sentence, language, max_seconds_per_char)
            for wav in self._stream_sentence(tokens, chosen, settings, max_codes, first_chunk_codes, chunk_codes):
                yield AudioChunk(
                    wav.detach().float().cpu().numpy().reshape(-1), self.sample_rate, time.perf_counter() - started
                )

    @torch.inference_mode()
    def _stream_sentence(
        self,
        tokens: List[int],
        voice: Voice,
        settings: dict,
        max_codes: int,
        first_chunk_codes: int,
        chunk_codes: int,
        overlap: int = 1024,
    ) -> Iterator[torch.Tensor]:
        """One sentence's audio chunks: coqui's Xtts.inference_stream step for step (its building
        blocks, its decoding arguments), except when a chunk is cut: after `first_chunk_codes` codes
        for the first, every `chunk_codes` after (inference_stream has one fixed size). `overlap` is
        inference_stream's overlap_wav_len, at its default; its speed stays 1 (as in `synthesize`)."""
        gpt = self.model.gpt
        # The text as inference_stream (and Xtts.inference) feeds the GPT, stripped and lower-cased: `_request`
        # encoded it and checked its length.
        tokens = torch.tensor(tokens, dtype=torch.int32, device=self.device).unsqueeze(0)
        speaker = voice.speaker_embedding.to(self.device)
        # get_generator fixes the cap (max_length = gpt.max_gen_mel_tokens + prompt) when it is called,
        # so the babble guard need only hold while the generator is built, not while the caller listens.
        with self._babble_guard(max_codes):
            steps = gpt.get_generator(
                fake_inputs=gpt.compute_embeddings(voice.gpt_cond_latent.to(self.device), tokens),
                top_k=settings["top_k"],
                top_p=settings["top_p"],
                temperature=settings["temperature"],
                do_sample=True,
                num_beams=1,
                num_return_sequences=1,
                length_penalty=float(settings["length_penalty"]),
                repetition_penalty=float(settings["repetition_penalty"]),
                output_attentions=False,
                output_hidden_states=True,
                return_dict_in_generate=True,
            )
        latents: List[torch.Tensor] = []  # the GPT's last hidden state at each code: what the decoder speaks
        new, previous, held = 0, None, None  # codes since the last chunk; handle_chunks' previous audio and overlap
        for _code, latent in steps:  # the codes up to and with the stop token, or up to the guard's cap
            latents.append(latent)
            new += 1
            if new >= (first_chunk_codes if previous is None else chunk_codes):
                chunk, previous, held = self._decode_chunk(latents, speaker, previous, held, overlap, final=False)
                new = 0
                if (
                    chunk.numel()
                ):  # 1 code decodes to 1024 samples, all held back: no empty chunk (a false first audio)
                    yield chunk
        if new == 0 and held is not None:
            # Nothing new since the last chunk: only the held-back overlap is left. inference_stream
            # decodes the whole sentence again to cross-fade these samples with themselves.
            yield held
        else:
            yield self._decode_chunk(latents, speaker, previous, held, overlap, final=True)[0]

    def _decode_chunk(
        self, latents: List[torch.Tensor], speaker: torch.Tensor, previous, held, overlap: int, final: bool
    ):
        """(new audio, all audio so far, overlap held back) as inference_stream makes them. The decoder
        hears every latent so far, not only the new ones: its convolutions look both ways, so the
        end of a chunk changes once later codes are known; handle_chunks keeps the audio past the
        previous chunk and cross-fades the seam over `overlap` samples (the last ones, held back)."""
        wav = self.model.hifigan_decoder(torch.cat(latents, dim=0)[None, :], g=speaker)
        return self.model.handle_chunks(wav.squeeze(), previous, held, overlap, is_final=final)

    def synthesize_many(
        self, requests: List[dict], decoding: Optional[dict] = None, batch_size: int = 8
    ) -> List[Synthesis]:
        """Each request (text, language, reference or voice, optional emotion) → its Synthesis, in order;
        see iter_synthesize."""
        results: List[Optional[Synthesis]] = [None] * len(requests)
        for i, result in self.iter_synthesize(requests, decoding, batch_size):
            results[i] = result
        return results

    def iter_synthesize(
        self, requests: List[dict], decoding: Optional[dict] = None, batch_size: int = 8
    ) -> Iterator[Tuple[int, Synthesis]]:
        """(request index, Synthesis) as each request is done. The GPT decodes up to `batch_size`
        sentences — of any requests, voices and languages — in one generate, then the decoder speaks
        each from the latents that generate computed (see _generate). Under greedy decoding (top_k=1)
        a sentence's codes are those of `synthesize`, its audio the same up to float rounding (~1e-7
        of full scale); sampling draws each sentence from its own stream (sentence k of a request:
        seed + k), so the codes do not depend on batch_size or on the other requests, and the audio
        only to float rounding (another row's padding changes the order of a few sums). Every request
        is checked before any is synthesized. A Synthesis's seconds_to_generate holds its share of
        its batches' decode time."""
        if batch_size < 1:
            raise ValueError(
                f"batch_size={batch_size} — fix: batch_size=<an integer ≥ 1> (1 decodes one sentence at a time)"
            )
        sentences = [s for i, request in enumerate(requests) for s in self._sentences(i, request, decoding)]
        settings = self.decoding_settings(decoding)
        left = Counter(s.request for s in sentences)  # sentences still to do, per request
        pieces: Dict[int, Dict[int, Tuple[np.ndarray, bool, float]]] = {}
        # Similar text lengths together: less padding, and fewer rows idle while a long one finishes.
        order = sorted(range(len(sentences)), key=lambda k: sentences[k].tokens.shape[-1])
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

        def run(batch: List[int], packed: dict) -> Iterator[Tuple[int, Synthesis]]:
            started = time.perf_counter()
            with self._batch_kernels(packed, len(batch)):
                rows = self._generate([sentences[k] for k in batch], settings)
            shared = (time.perf_counter() - started) / len(batch)
            for k, row in zip(batch, rows):
                started = time.perf_counter()
                wav = self._speak(sentences[k], row)
                request = sentences[k].request
                pieces.setdefault(request, {})[k] = (wav, row.stopped, shared + time.perf_counter() - started)
                left[request] -= 1
                if left[request] == 0:  # its last sentence: the request's audio, sentences in text order
                    done = [piece for _, piece in sorted(pieces.pop(request).items())]
                    yield (
                        request,
                        Synthesis(
                            np.concatenate([p[0] for p in done]),
                            self.sample_rate,
                            sum(p[2] for p in done),
                            [p[1] for p in done],
                        ),
                    )

        # Each batch's products (its prompt's pass, its one-code steps) the way that is fastest on this CPU
        # (see PackedProducts): the full batches with one packed copy of the weights, then the last, smaller
        # one (packing takes 0.7-1.5 s at full size, so not once per batch). The copy is held until that row
        # count's batches are done, the caller's work between results included; the layers are patched only
        # inside each generate, so another call in between (or a caller that stops early) sees them as usual.
        for rows in sorted({len(batch) for batch in batches}, reverse=True):
            packed = self._packed_products.packed_weights(self.model.gpt.gpt, rows, self.device)
            for batch in (b for b in batches if len(b) == rows):
                yield from run(batch, packed)
            del packed

    @contextlib.contextmanager
    def _batch_kernels(self, packed: dict, rows: int):
        """Within: a batched generate of `rows` sentences runs its products as PackedProducts decided, and
        GPT-2's GELU through torch's fused kernel (see fused_gelu)."""
        with self._packed_products.products_through(packed, rows), fused_gelu(self.model.gpt.gpt):
            yield

    def _sentences(self, index: int, request: dict, decoding: Optional[dict]) -> List[_Sentence]:
        """A request checked (as `synthesize` checks it) and cut into sentences with their tokens; a bad one's
        error names its file and line (read_requests' `where`) or its index."""
        try:
            language, voice, _, max_seconds_per_char, _, tokenized = self._request(
                request["text"],
                request["language"],
                request.get("reference"),
                request.get("voice"),
                decoding,
                request.get("emotion"),
            )
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"{request.get('where') or f'request {index}'}: {err}") from None
        voice = Voice(voice.gpt_cond_latent.to(self.device), voice.speaker_embedding.to(self.device))
        seed = (decoding or {}).get("seed")
        seed = int(seed) if seed is not None else int(torch.randint(2**62, ()))  # unseeded: follows torch's global RNG
        sentences = []
        for k, (sentence, tokens) in enumerate(tokenized):
            tokens = torch.tensor(tokens, dtype=torch.int32, device=self.device).unsqueeze(0)
            sentences.append(
                _Sentence(index, tokens, voice, self._max_codes(sentence, language, max_seconds_per_char), seed + k)
            )
        return sentences

    def _text_embedding(self, sentence: _Sentence) -> torch.Tensor:
        """(length, width): the text between its start and stop tokens, embedded — what coqui's
        GPT.compute_embeddings puts after the conditioning latents for one row."""
        gpt = self.model.gpt
        text = F.pad(F.pad(sentence.tokens, (0, 1), value=gpt.stop_text_token), (1, 0), value=gpt.start_text_token)
        return (gpt.text_embedding(text) + gpt.text_pos_embedding(text))[0]

    def _prefill(self, sentences: List[_Sentence]):
        """The GPT's pass over every row's prompt, each distinct voice's conditioning latents computed once.

        A row's prompt is its voice's conditioning latents (32 of the 70-odd positions of a short
        sentence), then its text. The GPT-2 inside XTTS has no position embeddings of its own (coqui's
        are added to the text and codes before it), so a position's hidden states depend only on the
        unmasked positions before it: the latents' keys and values are the same in every row that
        speaks in that voice, whatever its text. Each row is laid out as its voice's latents (padded
        after them to the longest voice's), then its text padded before it to the longest text; the
        voices go through the GPT once each, their cache is copied to the rows that use them, and the
        texts go through after. Returns (the rows' prompts embedded, attention mask with a last column
        for the start-of-audio token, the cache)."""
        gpt = self.model.gpt
        voices: List[torch.Tensor] = []  # each distinct voice's latents, (length, width)
        voice_of_row = []
        for sentence in sentences:
            latents = sentence.voice.gpt_cond_latent  # (1, length, width)
            same = (
                k
                for k, v in enumerate(voices)
                if v is latents or (v.shape == latents.shape and torch.equal(v, latents))
            )
            k = next(same, None)
            if k is None:
                voices.append(latents)
                k = len(voices) - 1
            voice_of_row.append(k)
        voices = [v[0] for v in voices]
        texts = [self._text_embedding(s) for s in sentences]
        voice_width, text_width = max(v.shape[0] for v in voices), max(t.shape[0] for t in texts)
        device, rows = self.device, torch.tensor(voice_of_row, device=self.device)
        voice_block = torch.stack([F.pad(v, (0, 0, 0, voice_width - v.shape[0])) for v in voices])
        voice_mask = (
            torch.arange(voice_width, device=device)[None, :]
            < torch.tensor([v.shape[0] for v in voices], device=device)[:, None]
        ).long()
        text_block = torch.stack([F.pad(t, (0, 0, text_width - t.shape[0], 0)) for t in texts])
        text_mask = (
            torch.arange(text_width, device=device)[None, :]
            >= torch.tensor([text_width - t.shape[0] for t in texts], device=device)[:, None]
        ).long()
        mask = torch.cat(
            [voice_mask[rows], text_mask, torch.ones((len(sentences), 1), dtype=torch.long, device=device)], dim=1
        )
        transformer = gpt.gpt_inference.transformer
        cache = transformer(inputs_embeds=voice_block, attention_mask=voice_mask, use_cache=True).past_key_values
        if voice_of_row != list(range(len(sentences))):
            cache.reorder_cache(rows)  # each row gets its voice's keys and values
        transformer(inputs_embeds=text_block, attention_mask=mask[:, :-1], past_key_values=cache, use_cache=True)
        return torch.cat([voice_block[rows], text_block], dim=1), mask, cache

    @torch.no_grad()
    def _generate(self, sentences: List[_Sentence], settings: dict) -> List[_Generated]:
        """One transformers generate for all rows: codes, stopped by itself, and latents per row.

        The prompts are padded to one length (see _prefill) and the padding masked out, so every row's
        audio codes start at the same column; the GPT's positions are its own learned embeddings (text
        from 0 per row, audio from the start-of-audio token), so the padding shifts nothing. A row ends
        at its stop token or its own babble guard; the others go on.

        The latents are the hidden states the generate computes anyway, read at the GPT's final norm
        (coqui's inference_stream speaks these too). Xtts.inference instead runs the GPT over the text
        and codes once more: the same positions and weights, so the same latents up to float rounding
        (≤ 2e-6 at full size, BENCHMARKS.md), for a pass that cost a quarter of a batch's time on CPU.
        Not thread-safe (nor is the rest of this class): the hook hears every forward of the GPT."""
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            StoppingCriteriaList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        gpt = self.model.gpt
        prompts, mask, cache = self._prefill(sentences)
        width = prompts.shape[1]
        max_codes = [s.max_codes for s in sentences]
        # coqui's forward reads the prompt's length from the stored prefix (the codes' positions count from it).
        gpt.gpt_inference.store_prefix_emb(prompts)
        # Token ids of the prompt are placeholders (coqui's are 1s): the cache holds the prompt; the generate
        # goes on from the start-of-audio token.
        inputs = torch.ones((len(sentences), width + 1), dtype=torch.long, device=self.device)
        inputs[:, -1] = gpt.start_audio_token
        # transformers' sampling processors in its own order and on its own conditions, then the
        # per-row draw. The repetition penalty sees which ids a row holds: its padding's placeholders are
        # the prompt's own (1s), so a padded row penalises what it would alone.
        processors = LogitsProcessorList()
        if settings["repetition_penalty"] not in (None, 1.0):
            processors.append(RepetitionPenaltyLogitsProcessor(float(settings["repetition_penalty"])))
        if settings["temperature"] not in (None, 1.0):
            processors.append(TemperatureLogitsWarper(float(settings["temperature"])))
        if settings["top_k"]:
            processors.append(TopKLogitsWarper(int(settings["top_k"])))
        if settings["top_p"] is not None and settings["top_p"] < 1.0:
            processors.append(TopPLogitsWarper(float(settings["top_p"])))
        processors.append(SeededDraw([s.seed for s in sentences], self.device))
        # Each forward of the generate passes its hidden states through the final norm (the first
        # of lm_head's two layers) once; the last position's is the latent of the code it predicts.
        steps: List[torch.Tensor] = []
        hook = gpt.gpt_inference.final_norm.register_forward_hook(
            lambda _norm, _inputs, out: steps.append(out[:, -1].clone())
        )
        try:
            # The cache holds at most the prompt, the start-of-audio token and the longest babble guard's codes.
            with cache_grown_in_place(cache, width + 1 + max(max_codes)):
                generated = gpt.gpt_inference.generate(
                    inputs,
                    attention_mask=mask,
                    past_key_values=cache,
                    do_sample=False,
                    num_beams=1,
                    logits_processor=processors,
                    stopping_criteria=StoppingCriteriaList([CodeLimits(width + 1, max_codes, self.device)]),
                    bos_token_id=gpt.start_audio_token,
                    pad_token_id=gpt.stop_audio_token,
                    eos_token_id=gpt.stop_audio_token,
                    max_length=width + 1 + max(max_codes),
                )
        finally:
            hook.remove()
        generated = generated[:, width + 1 :]
        new_tokens = generated.shape[1]
        # One forward per new code, the start-of-audio token's first (the prompt is in the cache). Any other count (a chunked prefill, a change in
        # transformers' generate) would shift every latent against its code: same shapes, wrong audio.
        if len(steps) not in (new_tokens, new_tokens + 1):
            raise RuntimeError(
                f"the GPT ran {len(steps)} forwards for {new_tokens} new codes: this transformers "
                "version's generate does not step as XttsSynthesizer expects (one forward per code)"
            )
        latents = torch.stack(steps[:new_tokens], dim=1)  # (rows, steps, width): step k's latent belongs to code k
        rows = []
        for row, (codes, limit) in enumerate(zip(generated, max_codes)):
            codes = codes[:limit]
            stops = (codes == gpt.stop_audio_token).nonzero()
            # As Xtts.inference keeps them: the codes up to and with the stop token, or all, if cut.
            codes, stopped = (codes[: int(stops[0]) + 1], True) if len(stops) else (codes, False)
            rows.append(_Generated(codes, stopped, latents[row : row + 1, : codes.shape[-1]]))
        return rows

    @torch.no_grad()
    def _speak(self, sentence: _Sentence, row: _Generated) -> np.ndarray:
        """A row's latents → audio: the HiFiGAN decoder with the voice's speaker embedding, as
        Xtts.inference calls it."""
        wav = self.model.hifigan_decoder(row.latents, g=sentence.voice.speaker_embedding)
        return wav.detach().float().cpu().numpy().reshape(-1)

    def synthesize_batch(
        self, requests: List[dict], out_dir: Union[str, Path], decoding: Optional[dict] = None, batch_size: int = 8
    ) -> List[dict]:
        """Each request (text, language, reference or voice, optional name) → <out_dir>/<name>.wav,
        `batch_size` sentences per GPT generate (iter_synthesize), each file written as soon as its
        request is done, with a progress bar; returns one row per request, in request order (file,
        duration, RTF, stopped)."""
        import os
        from collections import Counter

        from tqdm import tqdm

        from xtts_ft.data.audio import write_wav
        from xtts_ft.data.sample import stays_inside

        out_dir = Path(out_dir)
        # Every name checked before any synthesis: inside out_dir, and one file per request.
        names = [str(request.get("name") or f"{i:04d}") for i, request in enumerate(requests)]
        outside = [name for name in names if not stays_inside(name)]
        if outside:
            raise ValueError(
                f"name(s) {', '.join(map(repr, outside))} would write outside out_dir {out_dir}: "
                "a name is a file name (or sub/folder/name) under out_dir"
            )
        repeated = sorted(name for name, count in Counter(os.path.normpath(n) for n in names).items() if count > 1)
        if repeated:
            raise ValueError(
                f"name(s) {', '.join(map(repr, repeated))} are given to more than one request (an unnamed "
                "request i is named after its index, e.g. 0003); each becomes <out_dir>/<name>.wav: make them unique"
            )
        rows: List[Optional[dict]] = [None] * len(requests)
        done = self.iter_synthesize(requests, decoding, batch_size)
        for i, result in tqdm(done, total=len(requests), desc="synth", unit="text"):
            name, request = names[i], requests[i]
            path = out_dir / f"{name}.wav"
            write_wav(path, result.wav, result.sample_rate)
            rows[i] = {
                "name": name,
                "file": str(path),
                "text": request["text"],
                "language": request["language"],
                "emotion": request.get("emotion"),
                "seconds": round(result.duration, 3),
                "rtf": round(result.real_time_factor, 3),
                "stopped": all(result.stopped),
            }
        return rows

    def synthesize_to_file(self, out: Union[str, Path], **kwargs) -> Synthesis:
        from xtts_ft.data.audio import write_wav

        result = self.synthesize(**kwargs)
        write_wav(Path(out), result.wav, result.sample_rate)
        return result
