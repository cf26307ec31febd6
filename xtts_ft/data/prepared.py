"""A prepared dataset's folder as a whole: its files, whether it is up to date, whether it may be replaced.

Owns the digest of everything a prepared dataset depends on (`input_key`, kept in its stats.json
beside the settings themselves and the parts of the digest, `dataset_inputs`), the test that a folder
holds a finished dataset made from the same inputs (`up_to_date`: the pipeline's and a re-run's skip),
what changed since a dataset was made (`rebuild_reason`: each setting old → new, the corpus, the
vocabulary), and the checks before `prepare` replaces a folder: never one that holds a corpus it reads,
one it did not write, or a dataset made from other corpora (without force).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Dict, List, Optional

from xtts_ft import __version__
from xtts_ft.data.records import on_disk
from xtts_ft.data.sample import read_manifest
from xtts_ft.errors import ConfigValueError, FileInTheWay
from xtts_ft.io_utils import file_hash


def outputs_of(out: Path) -> List[Path]:
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


NOT_SETTINGS = ("paths", "num_workers", "force")  # where outputs go, how fast, whether to rebuild: not the dataset's


def settings_of(config: dict) -> dict:
    """The settings a dataset depends on, of a resolved prepare config (the one stats.json keeps as `config`)."""
    return {k: v for k, v in config.items() if k not in NOT_SETTINGS}


def input_key(config: dict, records: List[tuple], vocab: Optional[Path]) -> str:
    """A digest of everything the prepared dataset depends on: the settings (`config`, the resolved
    stage config; not where outputs go, nor how many workers), the vocabulary, and every record with
    its audio file's size and mtime."""
    return dataset_inputs(config, records, vocab)["key"]


def dataset_inputs(config: dict, records: List[tuple], vocab: Optional[Path]) -> Dict[str, object]:
    """`input_key` (as `key`) and its parts, kept in stats.json (`inputs`) so that a rebuild can say what changed:
    the xtts_ft version, the vocabulary's hash, the number of records and a digest of the corpus alone."""
    vocab_hash = file_hash(vocab) if vocab else None
    digest = hashlib.sha256(
        json.dumps(
            {"xtts_ft": __version__, "settings": settings_of(config), "vocab": vocab_hash},
            sort_keys=True,
            default=str,
        ).encode()
    )
    corpus = hashlib.sha256()
    for _, index, _, _, record in records:
        try:
            found = os.stat(on_disk(Path(str(record["audio"])))) if record.get("audio") else None
            audio = [found.st_size, found.st_mtime_ns] if found and stat.S_ISREG(found.st_mode) else None
        except OSError:
            audio = None  # missing: dropped as such, and re-checked if it appears
        line = json.dumps([index, record, audio], sort_keys=True, default=str).encode()
        digest.update(line)
        corpus.update(line)
    return {
        "key": digest.hexdigest()[:32],
        "xtts_ft": __version__,
        "vocab": vocab_hash,
        "records": len(records),
        "corpus": corpus.hexdigest()[:32],
    }


def rebuild_reason(out: Path, inputs: Dict[str, object], config: dict, force: bool = False) -> Optional[str]:
    """Why the dataset in `out` is being replaced, in words: "settings changed: seed 0 → 1", the corpus, the
    vocabulary, files gone, or force; None when `out` holds no dataset yet (a first build needs no reason)."""
    try:
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "its stats.json cannot be read"
    if force:
        return "force=true"
    before = stats.get("inputs") or {}  # a dataset written before `inputs` was kept: its settings only
    changes = []
    changed = settings_diff(settings_of(stats.get("config") or {}), settings_of(config))
    if changed:
        changes.append(f"settings changed: {changed}")
    if before.get("corpus") not in (None, inputs["corpus"]):
        count = f"{inputs['records']} records, {before.get('records')} before"
        if inputs["records"] == before.get("records"):
            count = f"the same {inputs['records']} records; a row or an audio file was edited"
        changes.append(f"the corpus changed ({count})")
    if before.get("vocab", inputs["vocab"]) != inputs["vocab"]:
        changes.append("the base model's vocab.json changed")
    if before.get("xtts_ft", inputs["xtts_ft"]) != inputs["xtts_ft"]:
        changes.append(f"xtts_ft {before['xtts_ft']} → {inputs['xtts_ft']}")
    if changes:
        return "; ".join(changes)
    if stats.get("input_key") == inputs["key"]:  # same inputs: not up to date because files are gone
        return "files of it are missing (a manifest, or a clip it names)"
    if not before:
        return "the corpus or the base model's vocabulary changed (same settings)"
    return "its inputs changed"


def settings_diff(before: dict, now: dict, limit: int = 6) -> str:
    """Each changed setting as `key old → new` (dotted keys, list items by index), at most `limit` of them."""
    old, new = flat(before), flat(now)
    changed = [
        f"{key} {shown(old.get(key, UNSET))} → {shown(new.get(key, UNSET))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, UNSET) != new.get(key, UNSET)
    ]
    more = f", and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


UNSET = object()


def flat(value, prefix: str = "") -> dict:
    """{dotted key: leaf value} of nested dicts and lists (`data.sources[0].path`)."""
    if isinstance(value, dict) and value:
        return {
            k: v
            for key, item in value.items()
            for k, v in flat(item, f"{prefix}.{key}" if prefix else str(key)).items()
        }
    if isinstance(value, list) and value:
        return {k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}[{i}]").items()}
    return {prefix: value}


def shown(value) -> str:
    """A setting's value as it is written on the command line: true, null, 0.5, a/path."""
    if value is UNSET:
        return "(unset)"
    if isinstance(value, str):
        return value if value else "''"
    return json.dumps(value, default=str)


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
