"""Corpus formatters: each reads one corpus layout into raw records.

A raw record is a dict with `audio` (absolute path), `text`, `speaker`, and `source_line`
(file:line, for error messages and dropped.jsonl). Formatters never drop anything: a bad
row becomes a record that `prepare` rejects with a reason.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable, Dict, List, Optional

Record = Dict[str, object]


def _read_rows(path: Path) -> List[List[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))


def coqui_csv(root: Path, metadata: str = "metadata.csv", speaker: Optional[str] = None) -> List[Record]:
    """coqui's CSV: a header `audio_file|text|speaker_name`, then one clip per line."""
    path = root / metadata
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path}: empty file")
    header = [h.strip() for h in rows[0]]
    for column in ("audio_file", "text"):
        if column not in header:
            raise ValueError(f"{path}:1: header must name `audio_file|text|speaker_name`, found {'|'.join(header)}")
    records = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = dict(zip(header, row))
        extra = {k: v for k, v in cells.items() if k not in ("audio_file", "text", "speaker_name")}
        records.append(
            {
                **extra,  # columns beyond ours travel into the Sample
                "audio": str(root / cells.get("audio_file", "").strip()),
                "text": cells.get("text", ""),
                "speaker": (cells.get("speaker_name") or speaker or root.name).strip(),
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


def ljspeech(root: Path, metadata: str = "metadata.csv", speaker: Optional[str] = None) -> List[Record]:
    """LJSpeech: `id|text[|normalized text]`, audio in wavs/<id>.wav; the normalized column wins."""
    path = root / metadata
    records = []
    for lineno, row in enumerate(_read_rows(path), start=1):
        if not any(cell.strip() for cell in row):
            continue
        clip_id = row[0].strip()
        text = row[2] if len(row) > 2 and row[2].strip() else (row[1] if len(row) > 1 else "")
        records.append(
            {
                "audio": str(root / "wavs" / f"{clip_id}.wav"),
                "text": text,
                "speaker": speaker or root.name,
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


FORMATTERS: Dict[str, Callable[..., List[Record]]] = {"coqui_csv": coqui_csv, "ljspeech": ljspeech}


def read_corpus(root: Path, formatter: str, metadata: str, speaker: Optional[str]) -> List[Record]:
    if formatter not in FORMATTERS:
        raise ValueError(f"unknown formatter {formatter!r}; choose one of {', '.join(FORMATTERS)}")
    if not root.is_dir():
        hint = f" (relative to the current directory {Path.cwd()})" if not root.is_absolute() else ""
        raise FileNotFoundError(f"corpus directory {root} does not exist{hint}")
    return FORMATTERS[formatter](root, metadata=metadata, speaker=speaker)
