"""The corpus as `prepare` reads it, and each record's cheap checks before any audio work.

Owns reading every configured source into records (in corpus order, each with the folder its audio
must lie in), the checks of a record's text (annotation markup, empty, too long, the base model's
vocabulary and token count, as XTTS's tokenizer reads it) and of its audio path (inside the corpus,
present, not used twice), the clip's unique output name, and the sources' language codes. A failed
record check raises `Rejected` with its stable reason; the caller drops the record with it. A source
that gives no rows at all (a header-only metadata file) is named with its file: an error when every
source is empty, a warning when others have rows.

The tokenizer (the base model's `tokenizers` object) and the ASR for long recordings are handed in
by the stage: data/ loads no model.
"""

from __future__ import annotations

import logging
import os
import re
import unicodedata
from functools import partial
from pathlib import Path
from typing import Callable, List

from xtts_ft.data.cleaners import CLEANERS, COQUI_LANGUAGES
from xtts_ft.data.clips import Rejected
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.text import (
    LEADING_TAG,
    as_read,
    base_language,
    clean_text,
    describe_characters,
    language_token,
    token_ids,
    unescape_entities,
    unknown_characters,
)
from xtts_ft.errors import BadValue, ConfigValueError

log = logging.getLogger(__name__)

# Annotation tags of transcribed corpora: <unk>, <noise>, </s>, [laughter], [rires], {breath}. Cleaning
# would strip the brackets and leave the word, and the model would learn to say "unk" or "laughter".
# French quotes typed as <<waaw>> are not tags.
MARKUP = re.compile(r"(?<!<)<[^<>\s]{1,40}>(?!>)|\[[^\[\]]{1,40}\]|\{[^{}]{1,40}\}")


def read_records(cfg, transcribe_words: Callable) -> List[tuple]:
    """Every source's records, in corpus order: (position, source index, source, root, record),
    `root` being the folder the record's audio must lie in. `transcribe_words` (audio, model=...) is
    the ASR a long_recordings source is cut with (its timed words); sets an hf or long_recordings
    source's cache_dir where the config leaves it unset."""
    records: List[tuple] = []
    empty: List[tuple] = []  # (source index, source, root) of the sources that gave no row
    for index, source in enumerate(cfg.data.sources):
        if source.formatter in ("hf", "long_recordings"):
            if source.cache_dir is None:
                source.cache_dir = str(Path(cfg.paths.processed_dir) / "cache" / cfg.data.name / str(index))
            root = Path(source.cache_dir)  # the clips prepare reads: decoded rows, cut segments
        else:
            root = Path(source.path)
        # A long_recordings source is cut on faster-whisper's timed words by its asr_model
        # (data/ runs no ASR itself: the stage hands it one).
        transcribe = (
            partial(transcribe_words, model=source.asr_model) if source.formatter == "long_recordings" else None
        )
        read = read_corpus(Path(source.path), source, transcribe)
        if not read:
            empty.append((index, source, Path(source.path)))
        records += [(len(records) + 1 + i, index, source, root, r) for i, r in enumerate(read)]
    check_rows(empty, len(cfg.data.sources))
    return records


# What one row of each layout looks like: the fix for a metadata file with none.
ROW_EXAMPLES = {
    "coqui_csv": "one line per clip under the header `audio_file|text|speaker_name`, e.g. `wavs/0001.wav|Hello there.|anna`",
    "ljspeech": "one line per clip, `id|text|normalized text`, e.g. `LJ001-0001|Hello there.|Hello there.` (audio in wavs/<id>.wav)",
    "common_voice": "one row per clip under the header (client_id, path, sentence), audio in clips/",
    "table": "one row per clip under the header, with the audio and text columns data.sources[].columns names",
    "audiofolder": "one row per clip under the header, with `file_name` and the text column",
    "vctk": "one transcript per clip, txt/<speaker>/<speaker>_<id>.txt beside its audio",
}


def rows_file(source, root: Path) -> Path:
    """The file (or folder) a source's rows are read from, as its formatter reads them, to name it."""
    if source.formatter == "hf":
        return Path(str(source.path))
    if source.formatter == "vctk":
        return root / "txt"
    if source.formatter == "common_voice":
        return root / (source.metadata if source.metadata.endswith(".tsv") else "validated.tsv")
    if source.formatter == "audiofolder" and source.metadata == "metadata.csv":
        return root / ("metadata.csv" if (root / "metadata.csv").is_file() else "metadata.jsonl")
    if source.formatter == "long_recordings":
        return root
    return root / source.metadata


def check_rows(empty: List[tuple], sources: int) -> None:
    """A source that gave no row at all: with no other source, nothing can be prepared — an error naming the file,
    not the split that could not be made after it; beside sources with rows, said (most likely the wrong file)."""
    if not empty:
        return
    named = [
        (
            f"data.sources[{index}] ({source.formatter}): {rows_file(source, root)} has no rows{why_no_rows(source, root)}",
            source,
        )
        for index, source, root in empty
    ]
    if len(empty) < sources:
        for what, source in named:
            log.warning("%s; prepared from the other sources. To use it, add %s", what, row_example(source))
        return
    raise BadValue(
        f"{'; '.join(what for what, _ in named)}: nothing to prepare",
        fix=f"add {row_example(named[0][1])}, or point data.sources[].path at the corpus",
    )


def why_no_rows(source, root: Path) -> str:
    """What a metadata file without rows holds: only its header, or nothing; "" for a folder or a Hub dataset."""
    path = rows_file(source, root)
    try:
        if not path.is_file():
            return ""
        return (
            " (only its header)" if path.read_bytes().strip() and source.formatter != "ljspeech" else " (it is empty)"
        )
    except OSError:
        return ""


def row_example(source) -> str:
    return ROW_EXAMPLES.get(source.formatter, "one row per clip")


def check_text(raw: str, language: str, cfg, tokenizer) -> str:
    """The record's cleaned text, or `Rejected` with the reason the model cannot learn to say it.
    `tokenizer` (None: no vocabulary check) is the base model's `tokenizers` object."""
    tags = MARKUP.findall(unescape_entities(raw))  # &lt;unk&gt; is <unk>
    if tags:
        raise Rejected(
            "annotation_markup",
            f"the transcript has annotation markup {' '.join(dict.fromkeys(tags))}, which "
            "the model would learn to say; fix: remove the tags from the transcript (an emotion label goes "
            "in the source's emotion column, not in the text)",
        )
    text = clean_text(raw, language)
    if not text:
        raise Rejected("empty_text", "the transcript is empty")
    if not any(ch.isalnum() for ch in LEADING_TAG.sub("", text, count=1)):  # "...", "?!", "-": nothing to say
        raise Rejected(
            "empty_text", f"the transcript {raw.strip()!r} has no letter or digit: nothing for the model to say"
        )
    if len(text) > cfg.max_text_chars:
        raise Rejected("text_too_long", f"{len(text)} characters > max_text_chars={cfg.max_text_chars}")
    # A language the base has no [xx] token for is checked after `xtts-ft extend` adds it (train-gpt
    # skips, with a reason, any clip the extended vocabulary cannot encode).
    if tokenizer is not None and tokenizer.token_to_id(language_token(language)) is not None:
        read = as_read(
            text, language
        )  # zh, ko, ja: what training's tokenizer reads (pinyin, romanized); the manifest keeps the text
        ids = token_ids(tokenizer, read, language)
        unk = tokenizer.token_to_id("[UNK]")
        if unk in ids:
            unknown = unknown_characters(tokenizer, read)
            raise Rejected(
                "unknown_characters", f"not in the model's vocabulary: {describe_characters(unknown) or '?'}"
            )
        if len(ids) > cfg.max_text_tokens:
            raise Rejected("too_many_tokens", f"{len(ids)} tokens > max_text_tokens={cfg.max_text_tokens}")
    return text


def on_disk(path: Path) -> Path:
    """`path`, or the file it names with a part in the other Unicode form (macOS writes é as e +
    U+0301 on disk where metadata has é): folder by folder, as each part exists. `path` itself if
    no such file exists."""
    if path.exists():
        return path
    found = Path(path.anchor)
    for part in path.parts[1:] if path.anchor else path.parts:
        found = next(
            (
                found / p
                for p in dict.fromkeys((part, unicodedata.normalize("NFC", part), unicodedata.normalize("NFD", part)))
                if (found / p).exists()
            ),
            None,
        )
        if found is None:
            return path
    return found


def check_path(record: dict, root: Path, seen: set) -> Path:
    """The record's audio file as it is on disk, or `Rejected`: outside `root`, missing, a folder, or
    a file an earlier record (its resolved path in `seen`, which this adds to) already used."""
    # Contained by the path as written (`..` resolved, symlinks not): a row must not climb out of
    # the corpus, but a symlink the user put inside it (a symlinked wavs/ on another disk) is followed.
    audio_path = Path(os.path.abspath(str(record["audio"])))
    if not audio_path.is_relative_to(os.path.abspath(root)):
        raise Rejected(
            "outside_root",
            f"{audio_path} is outside the corpus root {root} (the source's path); fix: set the "
            "source's path to a folder holding both the metadata and the audio, or move the audio inside it",
        )
    audio_path = on_disk(audio_path)
    if audio_path.is_dir():  # the row's audio field is empty, or names a folder
        what = (
            "the row names no audio file (its audio field is empty)"
            if audio_path == Path(os.path.abspath(root))
            else f"{audio_path} is a folder, not an audio file"
        )
        raise Rejected("missing_file", what)
    if not audio_path.is_file():
        hint = " (a Windows path? write / between folders, not \\)" if "\\" in str(record["audio"]) else ""
        raise Rejected("missing_file", f"{audio_path} does not exist{hint}")
    real = audio_path.resolve()  # the same file reached through a symlink is a duplicate too
    if real in seen:
        raise Rejected("duplicate_audio", f"{audio_path} is already used by an earlier record")
    seen.add(real)
    return audio_path


def output_name(source_index: int, audio: Path, root: Path, used: set) -> str:
    """Unique names: spk1/0001.wav and spk2/0001.wav, or x.wav and x.flac, must not overwrite each other."""
    relative = Path(os.path.abspath(audio)).relative_to(os.path.abspath(root))  # as check_path: symlinks kept
    name = f"{source_index}_{relative.with_suffix('').as_posix().replace('/', '__')}.wav"
    if name in used:
        stem = f"{source_index}_{relative.as_posix().replace('/', '__').replace('.', '_')}"
        name, number = f"{stem}.wav", 1
        while name in used:  # x_flac.wav, x.wav, x.flac: the fallback can be taken too
            number += 1
            name = f"{stem}_{number}.wav"
    used.add(name)
    return name


def check_languages(cfg, tokenizer) -> None:
    """A source's language code, checked before any work: an upper-case code of a known language is
    an error (`EN` would get the basic cleaner and skip the vocabulary check); a code neither the
    base model nor a cleaner knows is said once (a new language is fine, a typo is not)."""

    def known(code: str) -> bool:
        has_token = tokenizer is not None and tokenizer.token_to_id(language_token(code)) is not None
        return has_token or base_language(code) in CLEANERS or base_language(code) in COQUI_LANGUAGES

    for language in dict.fromkeys(str(source.language) for source in cfg.data.sources):
        base = base_language(language)  # a region may be written in capitals: en-US, pt-BR
        if base != base.lower() and known(base.lower()):
            fixed = base.lower() + language[len(base) :]
            raise ConfigValueError(
                f"data.sources[].language={language!r}: language codes are lower case — fix: language: {fixed}"
            )
        if not known(language):
            log.warning(
                "language %r is not one of the base model's languages and has no cleaner of its own: its text gets the "
                "basic cleaner (numbers are not spelled out), and its characters are checked only after `xtts-ft extend "
                "languages=[%s]` adds it. A new language is fine; if it is a typo, correct data.sources[].language.",
                language,
                language,
            )
