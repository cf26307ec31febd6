"""The Sample: one line of train.jsonl / eval.jsonl, and reading/writing manifests.

`audio` is stored relative to the manifest's directory so a prepared dataset can be moved
as a whole; `resolve_audio` turns it back into a path.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional

from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.io_utils import write_jsonl


@dataclass
class Sample:
    audio: str
    text: str
    speaker: str
    language: str
    duration: float
    emotion: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields the source had beyond ours

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        extra = row.pop("extra")
        if row["emotion"] is None:
            row.pop("emotion")
        return {**row, **extra}

    @classmethod
    def from_json(cls, row: dict[str, Any], where: str = "") -> "Sample":
        missing = [k for k in ("audio", "text", "speaker", "language", "duration") if k not in row]
        if missing:
            raise BadValue(f"{where}: missing field(s) {', '.join(missing)}")
        known = {"audio", "text", "speaker", "language", "duration", "emotion"}
        try:
            duration = float(row["duration"])
        except (TypeError, ValueError):
            raise BadValue(
                f"{where}: duration {row['duration']!r} is not a number of seconds — fix: the clip's length, "
                "e.g. 3.2 (prepare writes it)"
            ) from None
        return cls(
            audio=str(row["audio"]),
            text=str(row["text"]),
            speaker=str(row["speaker"]),
            language=str(row["language"]),
            duration=duration,
            emotion=row.get("emotion"),
            extra={k: v for k, v in row.items() if k not in known},
        )


def read_manifest(path: Path) -> List[Sample]:
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"manifest {path} does not exist", fix="run `xtts-ft prepare` first")
    samples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), start=1):  # -sig: a BOM is dropped
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadValue(f"{where}: not valid JSON ({err.msg})") from None
        samples.append(Sample.from_json(row, where))
    return samples


def write_manifest(path: Path, samples: Iterable[Sample]) -> None:
    write_jsonl(path, (s.to_json() for s in samples))


def stays_inside(relative: str) -> bool:
    """Whether `relative` names something under the folder it is relative to: not absolute, not
    empty, no `..` that climbs out (judged on the text: a symlink inside the folder is fine)."""
    normal = os.path.normpath(relative) if relative else ".."
    return not os.path.isabs(relative) and normal != "." and normal != ".." and not normal.startswith(".." + os.sep)


def resolve_audio(manifest: Path, sample: Sample) -> Path:
    """The sample's audio file: a path inside the manifest's folder (a row naming any other file is an error)."""
    if not stays_inside(sample.audio):
        raise BadValue(
            f"{manifest}: audio {sample.audio!r} is not inside the manifest's folder {Path(manifest).parent}; "
            "manifest rows name their clips relative to it (e.g. wavs/x.wav)",
            fix="correct the row, or prepare the data again",
        )
    return (Path(manifest).parent / sample.audio).resolve()
