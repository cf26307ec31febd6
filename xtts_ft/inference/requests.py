"""What to say, read from the user's files: a texts file (.txt, one text per line, or a .csv/.tsv
with columns) as synthesis requests, and a text cut into the sentences the GPT speaks one by one."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from xtts_ft.errors import BadValue, MissingFile

# The package's name, as before inference became a package: log lines (and filters on them) read as they did.
log = logging.getLogger("xtts_ft.inference")

HEADER_LIKE = ("text", "texts", "text,name", "text\tname")  # a .txt's first line that looks like a header


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
    path = Path(path)
    content = _read_utf8(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        rows = _table_rows(path, content)
    else:
        rows = _text_lines(path, content)
    requests = []
    named: Dict[str, int] = {}  # name -> the line that first used it
    for line, row in rows:
        name = _checked_name(path, line, row, named)
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


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise MissingFile(f"texts file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadValue(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}) — fix: save it as UTF-8") from None


def _table_rows(path: Path, content: str) -> List[Tuple[int, dict]]:
    """(line in the file, row) of a CSV/TSV with a `text` column."""
    import csv
    import io

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
        raise BadValue(f"{path}: no `text` column (columns: {', '.join(columns) or 'none: the file is empty'})")
    reader.fieldnames = columns
    rows = []
    try:
        for row in reader:
            if row.get(None):
                quote = (
                    "a tab inside a text is not allowed"
                    if tsv
                    else 'a comma inside a text needs the text in double quotes, e.g. "Hello, world."'
                )
                raise BadValue(
                    f"{path}, line {reader.line_num}: {len(columns) + len(row[None])} fields, the header has "
                    f"{len(columns)} — fix: {quote}"
                )
            rows.append((reader.line_num, {k: (v or "") for k, v in row.items()}))
    except csv.Error as err:
        raise BadValue(f"{path}, line {reader.line_num}: {err}") from None
    return rows


def _text_lines(path: Path, content: str) -> List[Tuple[int, dict]]:
    """(line in the file, row) of a .txt: each non-blank line is a text."""
    rows = [(n, {"text": line.strip()}) for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
    if rows and rows[0][1]["text"].lower() in HEADER_LIKE:
        log.warning(
            "%s, line %d: %r is spoken as a text: a .txt has no header (one text per line) — fix: remove "
            "that line, or write a .csv/.tsv to give columns (text, language, reference, name, ...)",
            path,
            rows[0][0],
            rows[0][1]["text"],
        )
    return rows


def _checked_name(path: Path, line: int, row: dict, named: Dict[str, int]) -> Optional[str]:
    """The row's output name (None: named after its index later), once its text is known not empty; `named`
    (name → the line that first used it) learns it."""
    from xtts_ft.data.sample import stays_inside

    if not str(row.get("text", "")).strip():
        raise BadValue(f"{path}, line {line}: empty text")
    name = row.get("name") or None
    if name is None:
        return None
    if not stays_inside(name):
        raise BadValue(
            f"{path}, line {line}: name {name!r} would write outside out_dir; a name is a file "
            "name (or sub/folder/name) under out_dir, e.g. greeting_01"
        )
    if os.path.normpath(name) in named:
        raise BadValue(
            f"{path}, line {line}: name {name!r} is already used on line {named[os.path.normpath(name)]}; "
            "each name becomes <out_dir>/<name>.wav, so one would overwrite the other",
            fix="make the names unique",
        )
    named[os.path.normpath(name)] = line
    return name
