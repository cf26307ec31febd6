"""Corpus formatters: each reads one corpus layout into raw records.

A raw record is a dict with `audio` (absolute path), `text`, `speaker`, `source_line`
(file:line, for error messages and dropped.jsonl), and any extra fields the source had.
Formatters never drop anything: a bad row becomes a record that `prepare` rejects with a
reason. Adding a layout = one function here + its name in FORMATTERS.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

Record = Dict[str, object]


def _pipe_rows(path: Path) -> List[List[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE))


def _table_rows(path: Path, delimiter: str) -> Iterator[Tuple[int, dict]]:
    """(line number, row dict) for a headed CSV/TSV, or a JSON-lines file."""
    if not path.is_file():
        raise FileNotFoundError(f"metadata file {path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".jsonl":
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield lineno, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            return
        reader = csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        for row in reader:
            yield reader.line_num, row


def _require_columns(path: Path, row: dict, columns: Dict[str, str]) -> None:
    missing = [f"{role}={name!r}" for role, name in columns.items() if name and name not in row]
    if missing:
        raise ValueError(f"{path}:1: no column {', '.join(missing)} (columns found: {', '.join(row)})")


def coqui_csv(root: Path, source) -> List[Record]:
    """coqui's CSV: a header `audio_file|text|speaker_name`, then one clip per line."""
    path = root / source.metadata
    rows = _pipe_rows(path)
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
                "speaker": (cells.get("speaker_name") or source.speaker or root.name).strip(),
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


def ljspeech(root: Path, source) -> List[Record]:
    """LJSpeech: `id|text[|normalized text]`, audio in wavs/<id>.wav; the normalized column wins."""
    path = root / source.metadata
    records = []
    for lineno, row in enumerate(_pipe_rows(path), start=1):
        if not any(cell.strip() for cell in row):
            continue
        clip_id = row[0].strip()
        text = row[2] if len(row) > 2 and row[2].strip() else (row[1] if len(row) > 1 else "")
        records.append(
            {
                "audio": str(root / "wavs" / f"{clip_id}.wav"),
                "text": text,
                "speaker": source.speaker or root.name,
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


def vctk(root: Path, source) -> List[Record]:
    """VCTK: txt/<spk>/<spk>_<id>.txt beside wav48_silence_trimmed/<spk>/<spk>_<id>_mic1.flac (0.92)
    or wav48/<spk>/<spk>_<id>.wav (0.80)."""
    txt_dir = root / "txt"
    if not txt_dir.is_dir():
        raise FileNotFoundError(f"{txt_dir} does not exist: not a VCTK layout (txt/<speaker>/*.txt)")
    records = []
    for txt in sorted(txt_dir.glob("*/*.txt")):
        speaker, stem = txt.parent.name, txt.stem
        candidates = [
            root / "wav48_silence_trimmed" / speaker / f"{stem}_mic1.flac",
            root / "wav48" / speaker / f"{stem}.wav",
        ]
        audio = next((c for c in candidates if c.is_file()), candidates[0])
        records.append(
            {"audio": str(audio), "text": txt.read_text(encoding="utf-8"), "speaker": speaker, "source_line": f"{txt}:1"}
        )
    return records


def common_voice(root: Path, source) -> List[Record]:
    """Common Voice: <metadata> (e.g. validated.tsv) with client_id, path, sentence; audio in clips/."""
    path = root / (source.metadata if source.metadata.endswith(".tsv") else "validated.tsv")
    records = []
    for lineno, row in _table_rows(path, "\t"):
        if lineno == 2:
            _require_columns(path, row, {"audio": "path", "text": "sentence"})
        extra = {k: v for k, v in row.items() if k not in ("path", "sentence", "client_id") and v}
        records.append(
            {
                **extra,
                "audio": str(root / "clips" / (row.get("path") or "")),
                "text": row.get("sentence") or "",
                "speaker": row.get("client_id") or source.speaker or root.name,
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


def table(root: Path, source) -> List[Record]:
    """Any CSV (`,`), TSV (`\\t`) or JSONL with a header/keys; column names from `source.columns`."""
    path = root / source.metadata
    delimiter = "\t" if path.suffix == ".tsv" else ","
    columns = dict(source.columns)
    records = []
    for lineno, row in _table_rows(path, delimiter):
        if len(records) == 0:
            _require_columns(path, row, {"audio": columns["audio"], "text": columns["text"]})
        ours = {v for v in columns.values() if v}
        record = {k: v for k, v in row.items() if k not in ours}
        record.update(
            audio=str(root / str(row.get(columns["audio"]) or "")),
            text=str(row.get(columns["text"]) or ""),
            speaker=str(row.get(columns.get("speaker") or "") or source.speaker or root.name),
            source_line=f"{path}:{lineno}",
        )
        if columns.get("emotion") and row.get(columns["emotion"]):
            record["emotion"] = row[columns["emotion"]]
        records.append(record)
    return records


def audiofolder(root: Path, source) -> List[Record]:
    """Hugging Face's audiofolder: metadata.csv (or .jsonl) with `file_name` beside the audio."""
    metadata = source.metadata if source.metadata != "metadata.csv" or (root / "metadata.csv").is_file() else "metadata.jsonl"
    path = root / metadata
    columns = {**dict(source.columns), "audio": "file_name"}
    records = []
    for lineno, row in _table_rows(path, "\t" if path.suffix == ".tsv" else ","):
        if not records:
            _require_columns(path, row, {"audio": "file_name", "text": columns["text"]})
        ours = {v for v in columns.values() if v}
        records.append(
            {
                **{k: v for k, v in row.items() if k not in ours},
                "audio": str(root / str(row.get("file_name") or "")),
                "text": str(row.get(columns["text"]) or ""),
                "speaker": str(row.get(columns.get("speaker") or "", "") or source.speaker or root.name),
                "source_line": f"{path}:{lineno}",
            }
        )
    return records


AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")


def long_recordings(root: Path, source) -> List[Record]:
    """Untranscribed recordings under `root`, cut on ASR word timestamps into `source.cache_dir`.

    Segments are cached: a recording already segmented with the same settings (its
    `<stem>.segments.json` records the recording's size and mtime, the ASR model, the language and
    the target length) is not transcribed again; a changed recording or setting re-segments it.
    Pieces the segmenter rejects come back as records carrying their reason.
    """
    from xtts_ft.data.segment import segment_recording
    from xtts_ft.io_utils import write_json

    out_dir = Path(source.cache_dir)
    recordings = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and out_dir not in p.parents)
    if not recordings:
        raise FileNotFoundError(f"no audio ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    stems: Dict[str, Path] = {}
    for recording in recordings:  # segment files are named by stem: two recordings must not share one
        if recording.stem in stems:
            raise ValueError(f"{recording} and {stems[recording.stem]} have the same name; their segments would overwrite "
                             "each other in the cache: rename one, or prepare the folders as separate sources")
        stems[recording.stem] = recording
    records = []
    for recording in recordings:
        index = out_dir / f"{recording.stem}.segments.json"
        stat = recording.stat()
        key = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "asr_model": source.asr_model,
               "language": source.language, "target_seconds": float(source.target_seconds)}
        cached = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
        if cached.get("key") == key:
            segments, dropped = cached["segments"], cached["dropped"]
        else:
            for stale in out_dir.glob(f"{recording.stem}_[0-9][0-9][0-9][0-9].wav"):
                stale.unlink()  # a shorter re-segmentation must not leave old clips looking current
            segments, dropped = segment_recording(recording, out_dir, source.language, model=source.asr_model,
                                                  target_seconds=source.target_seconds)
            write_json(index, {"key": key, "segments": segments, "dropped": dropped})
        speaker = source.speaker or recording.stem
        records += [{**seg, "speaker": speaker, "recording": str(recording)} for seg in segments]
        records += [{"audio": str(recording), "text": d.get("text", ""), "speaker": speaker, "source_line": d["source_line"],
                     "rejected": [d["reason"], d["message"]]} for d in dropped]
    return records


def hf_dataset(path: str, source) -> List[Record]:
    """A Hugging Face dataset: a Hub id, a `save_to_disk` directory, or parquet file(s).

    Audio is read undecoded (`Audio(decode=False)`) and its bytes written to `source.cache_dir`,
    so our own soundfile path decodes it and no extra codec stack is needed.
    """
    from xtts_ft.io_utils import atomic_path, write_json

    try:
        import datasets
    except ImportError as err:
        raise ImportError("formatter hf needs the `datasets` package: pip install 'xtts-ft[hf]'") from err

    local = Path(path)
    if local.is_dir() and any((local / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(local))
        dataset = loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    elif local.suffix == ".parquet" or (local.is_dir() and any(local.glob("*.parquet"))):
        files = [str(local)] if local.is_file() else sorted(str(p) for p in local.glob("*.parquet"))
        dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        try:
            dataset = datasets.load_dataset(path, split=source.split)
        except Exception as err:
            raise RuntimeError(f"cannot load dataset {path!r} split {source.split!r} ({type(err).__name__}: {err})") from err
    columns = dict(source.columns)
    missing = [f"{role}={columns[role]!r}" for role in ("audio", "text") if columns[role] not in dataset.column_names]
    if missing:
        raise ValueError(f"dataset {path}: no column {', '.join(missing)} (columns: {', '.join(dataset.column_names)})")
    dataset = dataset.cast_column(columns["audio"], datasets.Audio(decode=False))
    out_dir = Path(source.cache_dir)
    # The cache holds one dataset version: rows are files named by index, so another version
    # (new rows, changed audio; `datasets` gives it another fingerprint) starts from an empty cache.
    version = {"path": str(path), "split": source.split, "fingerprint": dataset._fingerprint, "audio_column": columns["audio"]}
    version_file = out_dir / "dataset_version.json"
    if out_dir.is_dir() and (not version_file.is_file() or json.loads(version_file.read_text(encoding="utf-8")) != version):
        for stale in out_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9][0-9].*"):  # only the row files this formatter writes
            stale.unlink()
        version_file.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, row in enumerate(dataset):
        audio = row[columns["audio"]] or {}
        suffix = Path(audio.get("path") or "x.wav").suffix or ".wav"
        target = out_dir / f"{i:07d}{suffix}"
        if not target.is_file():
            data = audio.get("bytes")
            if data is None and audio.get("path") and Path(audio["path"]).is_file():
                data = Path(audio["path"]).read_bytes()
            if data is not None:  # atomic: a half-written file would be reused as if complete
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
            # (no data at all: the missing target becomes `missing_file` in dropped.jsonl)
        extra = {k: v for k, v in row.items() if k not in {c for c in columns.values() if c} and isinstance(v, (str, int, float, bool))}
        record = {
            **extra,
            "audio": str(target),
            "text": str(row.get(columns["text"]) or ""),
            "speaker": str(row.get(columns.get("speaker") or "") or source.speaker or "speaker"),
            "source_line": f"{path}[{source.split}][{i}]",
        }
        if columns.get("emotion") and row.get(columns["emotion"]):
            record["emotion"] = row[columns["emotion"]]
        records.append(record)
    write_json(version_file, version)
    return records


FORMATTERS: Dict[str, Callable[[Path, object], List[Record]]] = {
    "coqui_csv": coqui_csv,
    "ljspeech": ljspeech,
    "vctk": vctk,
    "common_voice": common_voice,
    "table": table,
    "audiofolder": audiofolder,
    "long_recordings": long_recordings,
}


def read_corpus(root: Path, source) -> List[Record]:
    if source.formatter == "hf":  # `path` may be a Hub id, not a directory
        return hf_dataset(source.path, source)
    if source.formatter not in FORMATTERS:
        raise ValueError(f"unknown formatter {source.formatter!r}; choose one of {', '.join([*FORMATTERS, 'hf'])}")
    if not root.is_dir():
        hint = f" (relative to the current directory {Path.cwd()})" if not root.is_absolute() else ""
        raise FileNotFoundError(f"corpus directory {root} does not exist{hint}")
    return FORMATTERS[source.formatter](root, source)
