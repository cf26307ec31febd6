"""Corpus formatters: each reads one corpus layout into raw records.

A raw record is a dict with `audio` (absolute path), `text`, `speaker`, `source_line`
(file:line, for error messages and dropped.jsonl), and any extra fields the source had.
Formatters never drop anything: a bad row becomes a record carrying `rejected` (reason,
message) that `prepare` writes to dropped.jsonl — `malformed_row` for a row whose fields do not
fit the layout, `bad_encoding` for a line that is not in the source's encoding. Adding a layout =
one function here + its name in FORMATTERS.
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from xtts_ft.errors import BadValue, MissingFile, MissingPackage, RunRefused, UserError

Record = Dict[str, object]
Cells = List[str]

log = logging.getLogger(__name__)


class UnreadableMetadata(UserError, OSError):
    """A metadata file that is there but cannot be read (permissions, a disk or network error): the
    user's to fix, and an OSError carrying the system's errno as before (`[Errno 13] cannot read ...`)."""

    def __init__(self, errno: Optional[int], message: str):
        OSError.__init__(self, errno, message)
        self.fix = None


def rejected_row(where: str, row: str, reason: str, message: str) -> Record:
    """A record for a row that cannot be read: its raw text, where it is, and why."""
    return {"row": row, "source_line": where, "rejected": [reason, f"{where}: {message}"]}


def source_encoding(source) -> str:
    encoding = getattr(source, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise BadValue(
            f"data.sources[…].encoding={encoding!r} (source {source.path}) is not an encoding Python knows",
            fix="use e.g. utf-8, latin-1, cp1252, utf-16",
        ) from None
    return encoding


def _ascii_compatible(encoding: str) -> bool:
    """Whether a line break is the byte 0x0a and nothing else is (utf-8, latin-1, cp125x: yes; utf-16: no)."""
    return "\n|,\t".encode(encoding) == b"\n|,\t"


def text_lines(path: Path, encoding: str = "utf-8") -> Iterator[Tuple[int, Union[str, Record]]]:
    """(line number, line without its line ending) for every line of a text file.

    Each line is decoded on its own, so one line that is not in `encoding` (a latin-1 `Café` in
    a UTF-8 file) comes as a `bad_encoding` record and costs that row only. A byte-order mark
    (Excel and Notepad write one) is dropped; `\\r\\n` endings are read as `\\n`, and a file
    whose lines all end in `\\r` alone (classic Mac OS) is split on it.
    """
    if not path.is_file():
        raise MissingFile(f"metadata file {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as err:  # permissions, an I/O error: name the file and what to do
        raise UnreadableMetadata(
            err.errno,
            f"cannot read metadata file {path}: {err.strerror or err}; check that it is readable "
            "(permissions, a disk or network error)",
        ) from None
    if not _ascii_compatible(encoding):  # utf-16/32: a 0x0a byte may be half of a character
        try:
            text = data.decode(encoding)
            lines = text.split(
                "\n" if "\n" in text or "\r" not in text else "\r"
            )  # classic Mac OS ends lines with \r alone
        except UnicodeDecodeError as err:
            raise BadValue(
                f"{path}: not valid {encoding} at byte {err.start} ({err.reason})",
                fix="set data.sources[i].encoding to the file's encoding",
            ) from None
        for lineno, line in enumerate(lines[:-1] if lines[-1] == "" else lines, start=1):
            yield lineno, (line.lstrip("\ufeff") if lineno == 1 else line).removesuffix("\r")
        return
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):  # Excel's "Unicode text", Windows Notepad
        raise BadValue(
            f"{path} starts with a UTF-16 byte-order mark: it is not {encoding} — fix: set "
            "data.sources[i].encoding=utf-16"
        )
    if data.startswith(codecs.BOM_UTF8):  # in a latin-1/cp1252 file too: `ï»¿` opening a file is always a BOM
        data = data[len(codecs.BOM_UTF8) :]
    pieces = data.split(
        b"\n" if b"\n" in data or b"\r" not in data else b"\r"
    )  # classic Mac OS ends lines with \r alone
    for lineno, raw in enumerate(
        pieces[:-1] if pieces[-1] == b"" else pieces, start=1
    ):  # no line after the last newline
        raw = raw.removesuffix(b"\r")
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as err:
            yield (
                lineno,
                rejected_row(
                    f"{path}:{lineno}",
                    raw.decode(encoding, errors="backslashreplace"),
                    "bad_encoding",
                    f"not valid {encoding} (byte {raw[err.start]:#04x} at column {err.start + 1}); fix the line, or set "
                    "data.sources[i].encoding to the file's encoding (e.g. latin-1, cp1252) if all of it is in another one",
                ),
            )
            continue
        yield lineno, line.lstrip("\ufeff") if lineno == 1 else line


def _cells(path: Path, delimiter: str, encoding: str, quoted: bool) -> Iterator[Tuple[str, str, Union[Cells, Record]]]:
    """(where, raw text, cells) for each non-blank row, or a rejected record in place of the cells.

    `quoted=False` (pipe files, TSV): a row is one line split at every delimiter, quotes being
    ordinary characters (LJSpeech and Common Voice transcripts hold them). `quoted=True` (CSV):
    the csv module in strict mode, so a stray quote is an error rather than a row that swallows
    the lines after it; a row spanning several lines names them all.
    """
    lines = text_lines(path, encoding)
    if not quoted:
        for lineno, line in lines:
            where = f"{path}:{lineno}"
            if isinstance(line, dict):
                yield where, str(line["row"]), line
            elif line.strip():
                yield where, line, line.split(delimiter)
        return
    consumed: List[Tuple[int, str]] = []  # the lines the csv reader took for the current row
    set_aside: List[Record] = []  # bad_encoding lines met on the way, reported before that row

    def feed() -> Iterator[str]:
        for lineno, line in lines:
            if isinstance(line, dict):
                set_aside.append(line)
                continue
            consumed.append((lineno, line))
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    while True:
        consumed.clear()
        try:
            cells: Union[Cells, Record, None] = next(reader)
        except StopIteration:
            cells = None
        except csv.Error as err:
            cells = {"error": str(err)}
        yield from ((str(bad["source_line"]), str(bad["row"]), bad) for bad in set_aside)
        set_aside.clear()
        if not consumed:
            return
        first, last = consumed[0][0], consumed[-1][0]
        where = f"{path}:{first}" if first == last else f"{path}:{first}-{last}"
        raw = "\n".join(line for _, line in consumed)
        if isinstance(cells, dict):
            span = (
                "" if first == last else f" (lines {first}-{last} read as one row: a quote opened and never closed?)"
            )
            yield (
                where,
                raw,
                rejected_row(
                    where,
                    raw,
                    "malformed_row",
                    f"not a valid CSV row: {cells['error']}{span}; "
                    'quote fields holding the delimiter, double quotes inside them ("")',
                ),
            )
        elif cells and any(cell.strip() for cell in cells):
            yield where, raw, cells
        if cells is None:
            return


def headed_rows(
    path: Path, delimiter: str, encoding: str, quoted: bool
) -> Tuple[List[str], Iterator[Tuple[str, Union[dict, Record]]]]:
    """(header, rows) of a headed file: each row as {column: cell} with its `where` (file:line),
    or a `malformed_row` record when its field count is not the header's (a delimiter inside a
    transcript, a missing field): never a row zipped against the header with cells lost."""
    rows = _cells(path, delimiter, encoding, quoted)
    for where, raw, cells in rows:
        if isinstance(cells, dict):
            raise BadValue(f"{where}: the header cannot be read: {cells['rejected'][1]}")
        header = [cell.strip() for cell in cells]
        break
    else:
        raise BadValue(f"{path}: empty file (no header)")
    name = {"|": "`|`", "\t": "tab", ",": "`,`"}.get(delimiter, repr(delimiter))

    def records() -> Iterator[Tuple[str, Union[dict, Record]]]:
        for where, raw, cells in rows:
            if isinstance(cells, dict):
                yield where, cells
            elif len(cells) != len(header):
                hint = (
                    f"a {name} inside a field" + (" (quote the field)" if quoted else "")
                    if len(cells) > len(header)
                    else "a missing field"
                )
                yield (
                    where,
                    rejected_row(
                        where,
                        raw,
                        "malformed_row",
                        f"{len(cells)} fields where the header has {len(header)} ({'|'.join(header)}): {hint}?",
                    ),
                )
            elif quoted and swallowed_row(raw, delimiter, len(header)):
                # A quote opened in one row and closed in a later one reads, to the csv module, as one
                # row whose field spans lines: the rows between would be lost into its transcript.
                yield (
                    where,
                    rejected_row(
                        where,
                        raw,
                        "malformed_row",
                        f"lines {where.rsplit(':', 1)[1]} were read as one row, but a later line is a row of its "
                        "own: a quote opened in the first is closed only there — close it on its line, or "
                        'double a quote inside a field ("")',
                    ),
                )
            else:
                yield where, dict(zip(header, cells))

    return header, records()


def swallowed_row(raw: str, delimiter: str, width: int) -> bool:
    """Whether a row the csv module read over several lines holds, after its first line, a line that
    is a row of its own: the header's width, and a cell naming an audio file (`b.wav,he left"` after
    `a.wav,"He said hi`). A transcript whose second line only has a comma in it is not one."""

    def a_row(line: str) -> bool:
        cells = next(csv.reader([line], delimiter=delimiter), [])
        return len(cells) == width and any(cell.strip().lower().endswith(AUDIO_EXTENSIONS) for cell in cells)

    return any(a_row(line) for line in raw.split("\n")[1:] if line.strip())


def jsonl_rows(path: Path, encoding: str) -> Iterator[Tuple[str, Union[dict, Record]]]:
    """(where, object) for each line of a JSON-lines file; a line that is not a JSON object is `malformed_row`."""
    for lineno, line in text_lines(path, encoding):
        where = f"{path}:{lineno}"
        if isinstance(line, dict):
            yield where, line
        elif line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                yield (
                    where,
                    rejected_row(where, line, "malformed_row", f"not valid JSON ({err.msg} at column {err.colno})"),
                )
                continue
            if not isinstance(row, dict):
                yield (
                    where,
                    rejected_row(
                        where, line, "malformed_row", f"a JSON {type(row).__name__}, not an object with named fields"
                    ),
                )
            else:
                yield where, row


def table_rows(path: Path, encoding: str, required: Dict[str, str]) -> Iterator[Tuple[str, Union[dict, Record]]]:
    """A headed CSV (`,`, quoted fields), TSV (tab, no quoting: quotes are text) or JSONL file, whose
    header must have the `required` columns (role -> column name)."""
    if path.suffix == ".jsonl":
        checked = False
        for where, row in jsonl_rows(path, encoding):  # no header: the first object must have the columns
            if not checked and not is_rejected(row):
                _require_columns(where, list(row), required)
                checked = True
            nested = [
                f"{role} ({name!r}) is a JSON {type(row[name]).__name__}"
                for role, name in required.items()
                if not is_rejected(row) and isinstance(row.get(name), (list, dict))
            ]
            if nested:  # str() of a list would become the transcript "['a', 'b']"
                row = rejected_row(
                    where,
                    json.dumps(row, ensure_ascii=False),
                    "malformed_row",
                    f"{', '.join(nested)}, not a string or number",
                )
            yield where, row
        return
    tsv = path.suffix == ".tsv"
    header, rows = headed_rows(path, "\t" if tsv else ",", encoding, quoted=not tsv)
    _require_columns(f"{path}:1", header, required)
    yield from rows


def is_rejected(row: dict) -> bool:
    return "rejected" in row


def _require_columns(where: str, header: List[str], columns: Dict[str, str]) -> None:
    missing = [f"{role}={name!r}" for role, name in columns.items() if name and name not in header]
    if missing:
        other = next((d for d in (";", "\t", "|") if len(header) == 1 and d in header[0]), None)
        hint = (
            (
                f"; the header looks {other!r}-separated, and a .csv is read as comma-separated, a .tsv as tab-separated "
                "— fix: save it comma-separated (or tab-separated as .tsv)"
            )
            if other
            else ""
        )
        raise BadValue(
            f"{where}: no column {', '.join(missing)} (columns found: {', '.join(map(repr, header))}){hint}"
        )


def coqui_csv(root: Path, source) -> List[Record]:
    """coqui's CSV: a header `audio_file|text|speaker_name`, then one clip per line."""
    path = root / source.metadata
    header, rows = headed_rows(path, "|", source_encoding(source), quoted=False)
    if not {"audio_file", "text"} <= set(header):
        raise BadValue(
            f"{path}:1: header must name `audio_file|text|speaker_name`, found {'|'.join(map(repr, header))}"
        )
    records = []
    for where, cells in rows:
        if is_rejected(cells):
            records.append(cells)
            continue
        extra = {k: v for k, v in cells.items() if k not in ("audio_file", "text", "speaker_name")}
        records.append(
            {
                **extra,  # columns beyond ours travel into the Sample
                "audio": str(root / cells["audio_file"].strip()),
                "text": cells["text"],
                "speaker": (cells.get("speaker_name") or source.speaker or root.name).strip(),
                "source_line": where,
            }
        )
    return records


def ljspeech(root: Path, source) -> List[Record]:
    """LJSpeech: `id|text|normalized text` (exactly 3 fields; the normalized column wins unless
    empty), audio in wavs/<id>.wav. Any other field count is `malformed_row`: with a `|` inside a
    transcript no reading of the row is safe."""
    path = root / source.metadata
    records = []
    for where, raw, cells in _cells(path, "|", source_encoding(source), quoted=False):
        if isinstance(cells, dict):
            records.append(cells)
            continue
        if len(cells) != 3:
            records.append(
                rejected_row(
                    where,
                    raw,
                    "malformed_row",
                    f"{len(cells)} fields: LJSpeech rows are "
                    "`id|text|normalized text` (3 fields; a `|` inside a transcript is not allowed)",
                )
            )
            continue
        clip_id, text, normalized = cells
        clip_id = clip_id.strip()
        records.append(
            {
                # LJ001-0001, or LJ001-0001.wav as some exports write the id
                "audio": str(root / "wavs" / (clip_id if clip_id.lower().endswith(".wav") else f"{clip_id}.wav")),
                "text": normalized if normalized.strip() else text,
                "speaker": source.speaker or root.name,
                "source_line": where,
            }
        )
    return records


def vctk(root: Path, source) -> List[Record]:
    """VCTK: txt/<spk>/<spk>_<id>.txt beside wav48_silence_trimmed/<spk>/<spk>_<id>_mic1.flac (0.92;
    the _mic2 recording where a copy holds no _mic1 one) or wav48/<spk>/<spk>_<id>.wav (0.80)."""
    txt_dir = root / "txt"
    if not txt_dir.is_dir():
        raise MissingFile(f"{txt_dir} does not exist: not a VCTK layout (txt/<speaker>/*.txt)")
    encoding = source_encoding(source)
    records = []
    for txt in sorted(txt_dir.glob("*/*.txt")):
        speaker, stem = txt.parent.name, txt.stem
        candidates = [
            root / "wav48_silence_trimmed" / speaker / f"{stem}_mic1.flac",
            root / "wav48_silence_trimmed" / speaker / f"{stem}_mic2.flac",  # a copy of the other microphone only
            root / "wav48" / speaker / f"{stem}.wav",
        ]
        audio = next((c for c in candidates if c.is_file()), candidates[0])
        lines = list(text_lines(txt, encoding))
        bad = next((line for _, line in lines if isinstance(line, dict)), None)
        record = {"audio": str(audio), "speaker": speaker, "source_line": f"{txt}:1"}
        if bad is not None:
            records.append({**record, "text": "", **bad})
        else:
            records.append({**record, "text": "\n".join(str(line) for _, line in lines)})
    return records


def common_voice(root: Path, source) -> List[Record]:
    """Common Voice: <metadata> (e.g. validated.tsv) with client_id, path, sentence; audio in clips/."""
    path = root / (source.metadata if source.metadata.endswith(".tsv") else "validated.tsv")
    records = []
    for where, row in table_rows(path, source_encoding(source), {"audio": "path", "text": "sentence"}):
        if is_rejected(row):
            records.append(row)
            continue
        extra = {k: v for k, v in row.items() if k not in ("path", "sentence", "client_id") and v}
        records.append(
            {
                **extra,
                "audio": str(root / "clips" / (row.get("path") or "")),
                "text": row.get("sentence") or "",
                "speaker": row.get("client_id") or source.speaker or root.name,
                "source_line": where,
            }
        )
    return records


def table(root: Path, source) -> List[Record]:
    """Any CSV (`,`), TSV (`\\t`) or JSONL with a header/keys; column names from `source.columns`."""
    path = root / source.metadata
    columns = dict(source.columns)
    ours = {v for v in columns.values() if v}
    records = []
    for where, row in table_rows(path, source_encoding(source), {"audio": columns["audio"], "text": columns["text"]}):
        if is_rejected(row):
            records.append(row)
            continue
        record = {k: v for k, v in row.items() if k not in ours}
        record.update(
            audio=str(root / str(row.get(columns["audio"]) or "")),
            text=str(row.get(columns["text"]) or ""),
            speaker=str(row.get(columns.get("speaker") or "") or source.speaker or root.name),
            source_line=where,
        )
        if columns.get("emotion") and str(row.get(columns["emotion"]) or "").strip():
            record["emotion"] = str(row[columns["emotion"]]).strip()  # " sad " is the label sad
        records.append(record)
    if not source.speaker:  # (a speaker named in the source is the user's word that it is one voice)
        warn_one_voice(path, records, columns.get("speaker"), root.name)
    return records


def warn_one_voice(path: Path, records: List[Record], column: Optional[str], fallback: str) -> None:
    """A table whose speaker column is absent (or always empty) makes every clip one voice, silently
    merging a multi-speaker corpus: said once."""
    if column and records and not any(str(r.get("speaker") or "") != fallback for r in records if not is_rejected(r)):
        log.warning(
            "%s: no speaker in column %r, so every clip is speaker %r — if the corpus has several voices, "
            "name their column (columns: {speaker: <column>}); for one voice, speaker: <name> names it",
            path,
            column,
            fallback,
        )


def audiofolder(root: Path, source) -> List[Record]:
    """Hugging Face's audiofolder: metadata.csv (or .jsonl) with `file_name` beside the audio."""
    metadata = (
        source.metadata if source.metadata != "metadata.csv" or (root / "metadata.csv").is_file() else "metadata.jsonl"
    )
    path = root / metadata
    columns = {**dict(source.columns), "audio": "file_name"}
    ours = {v for v in columns.values() if v}
    records = []
    for where, row in table_rows(path, source_encoding(source), {"audio": "file_name", "text": columns["text"]}):
        if is_rejected(row):
            records.append(row)
            continue
        records.append(
            {
                **{k: v for k, v in row.items() if k not in ours},
                "audio": str(root / str(row.get("file_name") or "")),
                "text": str(row.get(columns["text"]) or ""),
                "speaker": str(row.get(columns.get("speaker") or "", "") or source.speaker or root.name),
                "source_line": where,
            }
        )
    return records


AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")


def long_recordings(root: Path, source, transcribe_words: Optional[Callable]) -> List[Record]:
    """Untranscribed recordings under `root`, cut on ASR word timestamps into `source.cache_dir`.

    `transcribe_words` (16 kHz audio, language → timed words; see xtts_ft.data.segment) is the
    ASR the caller built for this source's `asr_model`.

    Segments are cached: a recording already segmented with the same settings (its
    `<stem>.segments.json` records the recording's size and mtime, the ASR model, the language and
    the target length) is not transcribed again; a changed recording or setting re-segments it.
    Pieces the segmenter rejects come back as records carrying their reason.
    """
    out_dir = Path(source.cache_dir)
    recordings = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and out_dir not in p.parents
    )
    if not recordings:
        raise MissingFile(f"no audio ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
    names = segment_names(root, recordings)
    if transcribe_words is None:
        raise ValueError(
            f"{source.path}: the long_recordings formatter needs an ASR to cut on "
            "(read_corpus(..., transcribe_words=...), as the prepare stage passes it)"
        )
    records = []
    for recording in recordings:
        records += recording_records(recording, names[recording], source, out_dir, transcribe_words)
    return records


def segment_names(root: Path, recordings: List[Path]) -> Dict[Path, str]:
    """The name each recording's segment files take: its stem, unless another recording has that stem."""
    # Segment files are named by the recording's stem; recorders reuse names in each day's folder
    # (day1/take.wav, day2/take.wav): such recordings are named by their path in the corpus instead.
    stems = Counter(recording.stem for recording in recordings)
    names = {
        recording: recording.stem
        if stems[recording.stem] == 1
        else recording.relative_to(root).with_suffix("").as_posix().replace("/", "__")
        for recording in recordings
    }
    taken = Counter(names.values())
    clashes = [r for r in recordings if taken[names[r]] > 1]
    if clashes:  # a path-made name that another recording has as its own (a/take.wav beside a__take.wav)
        raise BadValue(
            f"{clashes[0]} and {clashes[1]} would both be segmented as {names[clashes[0]]!r}: their segments "
            "would overwrite each other in the cache — fix: rename one, or prepare the folders as separate sources"
        )
    return names


def recording_records(recording: Path, name: str, source, out_dir: Path, transcribe_words: Callable) -> List[Record]:
    """One recording's segments and dropped pieces as records, from its cached segmentation when that
    was made with the same settings; an unreadable recording is one `unreadable_audio` record."""
    from xtts_ft.data.audio import UnreadableAudio
    from xtts_ft.data.segment import segment_recording
    from xtts_ft.io_utils import write_json

    index = out_dir / f"{name}.segments.json"
    stat = recording.stat()
    key = {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "asr_model": source.asr_model,
        "language": source.language,
        "target_seconds": float(source.target_seconds),
    }
    cached = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    if cached.get("key") == key:
        segments, dropped = cached["segments"], cached["dropped"]
    else:
        for stale in out_dir.glob(f"{glob.escape(name)}_[0-9][0-9][0-9][0-9].wav"):
            stale.unlink()  # a shorter re-segmentation must not leave old clips looking current
        try:
            segments, dropped = segment_recording(
                recording,
                out_dir,
                source.language,
                transcribe_words,
                target_seconds=source.target_seconds,
                name=name,
            )
        except UnreadableAudio as error:  # dropped with its reason, as any formatter's unreadable clip; not cached
            return [
                {
                    "audio": str(recording),
                    "text": "",
                    "speaker": source.speaker or name,
                    "source_line": str(recording),
                    "rejected": ["unreadable_audio", str(error)],
                }
            ]
        write_json(index, {"key": key, "segments": segments, "dropped": dropped})
    speaker = source.speaker or name
    records = [{**seg, "speaker": speaker, "recording": str(recording)} for seg in segments]
    records += [
        {
            "audio": str(recording),
            "text": d.get("text", ""),
            "speaker": speaker,
            "source_line": d["source_line"],
            "rejected": [d["reason"], d["message"]],
        }
        for d in dropped
    ]
    return records


def hf_dataset(path: str, source) -> List[Record]:
    """A Hugging Face dataset: a Hub id, a `save_to_disk` directory, or parquet file(s).

    Audio is read undecoded (`Audio(decode=False)`) and its bytes written to `source.cache_dir`,
    so our own soundfile path decodes it and no extra codec stack is needed.
    """
    from xtts_ft.io_utils import write_json

    try:
        import datasets
    except ImportError as err:
        raise MissingPackage("formatter hf needs the `datasets` package", fix="pip install 'xtts-ft[hf]'") from err

    dataset = load_hf_dataset(datasets, path, source)
    columns = dict(source.columns)
    missing = [f"{role}={columns[role]!r}" for role in ("audio", "text") if columns[role] not in dataset.column_names]
    if missing:
        raise BadValue(f"dataset {path}: no column {', '.join(missing)} (columns: {', '.join(dataset.column_names)})")
    dataset = dataset.cast_column(columns["audio"], datasets.Audio(decode=False))
    out_dir = Path(source.cache_dir)
    # The cache holds one dataset version: rows are files named by index, so another version
    # (new rows, changed audio; `datasets` gives it another fingerprint) starts from an empty cache.
    version = {
        "path": str(path),
        "split": source.split,
        "fingerprint": dataset._fingerprint,
        "audio_column": columns["audio"],
    }
    version_file = out_dir / "dataset_version.json"
    if out_dir.is_dir() and (
        not version_file.is_file() or json.loads(version_file.read_text(encoding="utf-8")) != version
    ):
        for stale in out_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9][0-9].*"):  # only the row files this formatter writes
            stale.unlink()
        version_file.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [
        hf_record(i, row, columns, out_dir, f"{path}[{source.split}][{i}]", source) for i, row in enumerate(dataset)
    ]
    write_json(version_file, version)
    return records


def load_hf_dataset(datasets, path: str, source):
    """The split of a `save_to_disk` directory, the parquet file(s) at `path`, or the Hub dataset `path`."""
    local = Path(path)
    if local.is_dir() and any(
        (local / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    ):
        loaded = datasets.load_from_disk(str(local))
        return loaded[source.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if local.suffix == ".parquet" or (local.is_dir() and any(local.glob("*.parquet"))):
        files = [str(local)] if local.is_file() else sorted(str(p) for p in local.glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train")
    try:
        return datasets.load_dataset(path, split=source.split)
    except Exception as err:
        raise RunRefused(f"cannot load dataset {path!r} split {source.split!r} ({type(err).__name__}: {err})") from err


def hf_record(index: int, row: dict, columns: Dict[str, str], out_dir: Path, where: str, source) -> Record:
    """One dataset row as a record, its audio bytes written to `out_dir/<index>.<suffix>` (once)."""
    from xtts_ft.io_utils import atomic_path

    audio = row[columns["audio"]] or {}
    suffix = Path(audio.get("path") or "x.wav").suffix or ".wav"
    target = out_dir / f"{index:07d}{suffix}"
    if not target.is_file():
        data = audio.get("bytes")
        if data is None and audio.get("path") and Path(audio["path"]).is_file():
            data = Path(audio["path"]).read_bytes()
        if data is not None:  # atomic: a half-written file would be reused as if complete
            with atomic_path(target) as tmp:
                tmp.write_bytes(data)
        # (no data at all: the missing target becomes `missing_file` in dropped.jsonl)
    extra = {
        k: v
        for k, v in row.items()
        if k not in {c for c in columns.values() if c} and isinstance(v, (str, int, float, bool))
    }
    record = {
        **extra,
        "audio": str(target),
        "text": str(row.get(columns["text"]) or ""),
        "speaker": str(row.get(columns.get("speaker") or "") or source.speaker or "speaker"),
        "source_line": where,
    }
    if columns.get("emotion") and str(row.get(columns["emotion"]) or "").strip():
        record["emotion"] = str(row[columns["emotion"]]).strip()
    return record


# Each called as formatter(root, source); long_recordings also takes the ASR (read_corpus passes it).
FORMATTERS: Dict[str, Callable[..., List[Record]]] = {
    "coqui_csv": coqui_csv,
    "ljspeech": ljspeech,
    "vctk": vctk,
    "common_voice": common_voice,
    "table": table,
    "audiofolder": audiofolder,
    "long_recordings": long_recordings,
}


def read_corpus(root: Path, source, transcribe_words: Optional[Callable] = None) -> List[Record]:
    """The source's records. `transcribe_words` is the ASR a long_recordings source is cut with
    (data/ runs no ASR of its own); the other formatters ignore it."""
    if source.formatter == "hf":  # `path` may be a Hub id, not a directory
        return hf_dataset(source.path, source)
    if source.formatter not in FORMATTERS:
        raise BadValue(
            f"unknown formatter {source.formatter!r}", fix=f"choose one of {', '.join([*FORMATTERS, 'hf'])}"
        )
    if not root.is_dir():
        hint = f" (relative to the current directory {Path.cwd()})" if not root.is_absolute() else ""
        raise MissingFile(f"corpus directory {root} does not exist{hint}")
    if source.formatter == "long_recordings":
        return long_recordings(root, source, transcribe_words)
    return FORMATTERS[source.formatter](root, source)
