"""A prepared dataset's folder as a whole: its files, whether it is up to date, whether it may be replaced.

Owns the digest of everything a prepared dataset depends on (`input_key`, kept in its stats.json),
the test that a folder holds a finished dataset made from the same inputs (`up_to_date`: the
pipeline's and a re-run's skip), and the checks before `prepare` replaces a folder: never one that
holds a corpus it reads, one it did not write, or a dataset made from other corpora (without force).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import List, Optional

from xtts_ft import __version__
from xtts_ft.data.records import on_disk
from xtts_ft.data.sample import read_manifest
from xtts_ft.errors import ConfigValueError, FileInTheWay
from xtts_ft.io_utils import file_hash


def outputs_of(out: Path) -> List[Path]:
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


def input_key(config: dict, records: List[tuple], vocab: Optional[Path]) -> str:
    """A digest of everything the prepared dataset depends on: the settings (`config`, the resolved
    stage config; not where outputs go, nor how many workers), the vocabulary, and every record with
    its audio file's size and mtime."""
    settings = {k: v for k, v in config.items() if k not in ("paths", "num_workers", "force")}
    digest = hashlib.sha256(
        json.dumps(
            {"xtts_ft": __version__, "settings": settings, "vocab": file_hash(vocab) if vocab else None},
            sort_keys=True,
            default=str,
        ).encode()
    )
    for _, index, _, _, record in records:
        try:
            found = os.stat(on_disk(Path(str(record["audio"])))) if record.get("audio") else None
            audio = [found.st_size, found.st_mtime_ns] if found and stat.S_ISREG(found.st_mode) else None
        except OSError:
            audio = None  # missing: dropped as such, and re-checked if it appears
        digest.update(json.dumps([index, record, audio], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def up_to_date(out: Path, key: str) -> bool:
    """`out` holds a finished dataset prepared from the inputs `key` digests, every clip still there."""
    if not all(p.is_file() for p in outputs_of(out)):
        return False
    try:
        same = json.loads((out / "stats.json").read_text(encoding="utf-8")).get("input_key") == key
    except ValueError:  # an unreadable stats.json: rebuild
        return False
    return same and clips_present(out)


def clips_present(out: Path) -> bool:
    """Whether every clip the manifests name is still in the dataset folder (one deleted by hand: rebuild)."""
    try:
        samples = read_manifest(out / "train.jsonl") + read_manifest(out / "eval.jsonl")
    except (OSError, ValueError):  # unreadable: rebuild
        return False
    return all((out / path).is_file() for s in samples for path in (s.audio, s.extra.get("audio_24k")) if path)


def check_output_dir(cfg, out: Path) -> None:
    """prepare replaces <processed_dir>/<data.name> whole when it rebuilds it: never a folder that
    holds a corpus or a cache it reads, nor one it did not write."""
    resolved = out.resolve()
    for index, source in enumerate(cfg.data.sources):
        for key in ("path", "cache_dir"):
            value = source.get(key)
            if value and Path(value).resolve().is_relative_to(resolved):
                raise ConfigValueError(
                    f"data.sources[{index}].{key}={value} lies inside the dataset folder {out}, which prepare replaces "
                    "whole when it rebuilds it — fix: write the dataset elsewhere (paths.processed_dir=... or data.name=...)"
                )
    if out.is_dir() and any(out.iterdir()) and not (out / "stats.json").is_file():
        raise FileInTheWay(
            f"{out} exists and is not a dataset prepare wrote (no stats.json); prepare replaces only its own datasets — "
            "fix: choose another data.name or paths.processed_dir, or move that folder away yourself"
        )
    if out.exists() and not out.is_dir():
        raise FileInTheWay(
            f"{out} exists and is a file, not a dataset folder — fix: choose another data.name or paths.processed_dir"
        )
    # A dataset prepared from other corpora altogether: most likely data.sources was given without its own
    # data.name (the default's, e.g. demo). A rebuild that keeps any of its sources (one added, settings
    # changed) goes ahead; this one needs force=true.
    before = previous_sources(out)
    now = source_paths(cfg)
    if before and not before & now and not cfg.force:
        raise FileInTheWay(
            f"{out} holds the dataset {out.name!r} prepared from {', '.join(sorted(before))}; these sources are "
            f"{', '.join(sorted(now))}, and a rebuild would replace it — fix: give the new dataset its own name, "
            f"data.name=<name>, or prepare's force=true to replace this one"
        )


def source_paths(cfg) -> set:
    """Each source as written and, for a path that exists here, resolved (a Hub id stays as written)."""
    paths = set()
    for source in cfg.data.sources:
        paths.add(str(source.path))
        if Path(str(source.path)).exists():
            paths.add(str(Path(str(source.path)).resolve()))
    return paths


def previous_sources(out: Path) -> set:
    """The sources a prepared dataset's stats.json records, as `source_paths` gives them (empty when it has none)."""
    try:
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
        if "source_paths" in stats:
            return set(stats["source_paths"])
        return {str(source["path"]) for source in stats["config"]["data"]["sources"]}  # written before source_paths
    except (OSError, ValueError, KeyError, TypeError):
        return set()
