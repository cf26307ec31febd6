"""An on-disk cache of per-clip tensors computed by a frozen model (DVAE audio codes; decoder
latents), kept next to the manifest it belongs to.

Each entry is keyed by the clip's path, size and modification time (hashing every clip's bytes
at every start would read the whole corpus again: 16 GB for 100 h), the whole file by the hash of
the model that produced it: a rewritten clip is recomputed alone, a changed model recomputes
everything. The file is written atomically and read with weights_only loading.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

import torch
from tqdm import tqdm

from xtts_ft.data.audio import load_audio
from xtts_ft.io_utils import torch_save
from xtts_ft.model.constants import GPT_SAMPLE_RATE

if TYPE_CHECKING:
    from xtts_ft.model.features import GptFeatures
    from xtts_ft.train.runtime import Runtime

log = logging.getLogger(__name__)


def cached_features(
    cache_path: Path,
    model_hash: str,
    clips: Sequence[Path],
    compute: Callable[[Path], Any],
    desc: str = "caching features",
    inputs: Optional[Sequence[str]] = None,
    save: bool = True,
) -> tuple[List[Any], int]:
    """One value (a tensor or a dict of tensors) per clip, from the cache where valid; returns
    (values, how many were computed). `inputs`, one string per clip, names whatever else a clip's
    value depends on (e.g. its reference clip and text): an entry is recomputed when it changes.
    save=False: what was computed stays in memory (a training rank other than 0 never writes)."""
    cache_path = Path(cache_path)
    entries: Dict[str, dict] = {}
    if cache_path.is_file():
        try:
            stored = torch.load(cache_path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated or foreign: rebuild rather than fail
            log.warning("ignoring unreadable feature cache %s (%s)", cache_path, err)
            stored = {}
        if stored.get("model_hash") == model_hash:
            entries = stored["entries"]
        elif stored:
            log.info("%s was computed by another model: recomputing every clip", cache_path)
    tensors, computed, fresh = [], 0, {}
    for clip in tqdm(clips, desc=desc, unit="clip", leave=False, disable=len(clips) < 50):
        # Relative to the cache: the processed directory can move with its cache.
        stat = Path(clip).stat()
        key, version = (
            os.path.relpath(Path(clip).resolve(), cache_path.parent.resolve()),
            f"{stat.st_size}:{stat.st_mtime_ns}",
        )
        if inputs is not None:
            version += f"|{inputs[len(tensors)]}"
        entry = entries.get(key)
        if entry is None or entry.get("version") != version:
            entry = {"version": version, "value": compute(clip)}
            computed += 1
        fresh[key] = entry
        tensors.append(entry["value"])
    if save and (computed or set(fresh) != set(entries)):
        torch_save({"model_hash": model_hash, "entries": fresh}, cache_path)
    return tensors, computed


def cached_features_on_ranks(
    runtime: "Runtime",
    cache_path: Path,
    model_hash: str,
    clips: Sequence[Path],
    compute: Callable[[Path], Any],
    desc: str,
    inputs: Optional[Sequence[str]] = None,
) -> tuple[List[Any], int]:
    """`cached_features` in a distributed run: global rank 0 fills the cache first, the other ranks
    then read it. Only rank 0 writes it: a rank that finds an entry stale or missing (on a node whose
    copy of the dataset differs) computes it for itself and leaves the file alone, so no other rank
    (a second node's local rank 0 included) writes beside rank 0 or over it."""
    computed = 0
    if runtime.is_main:
        values, computed = cached_features(cache_path, model_hash, clips, compute, desc, inputs)
    runtime.barrier()
    if not runtime.is_main:
        values, _ = cached_features(cache_path, model_hash, clips, compute, desc, inputs, save=False)
    return values, computed


def attach_codes(
    items, features: "GptFeatures", cache_path: Path, dvae_hash: str, device, runtime: "Runtime", desc: str
):
    """Each item (GPT or decoder training) with its DVAE codes, computed once per clip and cached
    in `cache_path` (rank 0 fills the cache first, the other ranks then read it)."""

    @torch.no_grad()
    def compute(clip: Path) -> torch.Tensor:
        wav = torch.from_numpy(load_audio(clip, GPT_SAMPLE_RATE)).unsqueeze(0).to(device)
        return features.audio_codes(wav).squeeze(0).to(torch.int16).cpu()

    codes, computed = cached_features_on_ranks(runtime, cache_path, dvae_hash, [i.audio for i in items], compute, desc)
    return [item.with_codes(c) for item, c in zip(items, codes)], computed
