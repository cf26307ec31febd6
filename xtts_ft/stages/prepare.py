"""Stage `prepare`: corpus → data/processed/<name>/ (wavs, train/eval/dropped.jsonl, stats.json).

Reads every configured source with its formatter, normalises text with the language's
cleaner, checks it against the base model's vocabulary, rejects bad records with a stable
reason code (never silently), writes 22.05 kHz mono trimmed WAVs (and 24 kHz copies from the
source for decoder training when asked), and splits train/eval per speaker with a seed.

The output directory is built aside (`.<name>.partial`) and moved into place at the end, so
an interrupted run never leaves a dataset that looks complete; the next run on the same
inputs continues from the clips already done. A run whose corpus and settings have not changed
since the last one (`input_key` in stats.json) does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import stat
import time
import unicodedata
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from xtts_ft import __version__
from xtts_ft.config import to_container
from xtts_ft.data.cleaners import CLEANERS, COQUI_LANGUAGES
from xtts_ft.data.clips import AudioJob, AudioSettings, AudioWorkers, Rejected, read_done, remove_bookkeeping
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.sample import Sample, read_manifest, write_manifest
from xtts_ft.data.text import (
    LEADING_TAG,
    as_read,
    base_language,
    clean_text,
    cleaner_name,
    describe_characters,
    language_token,
    token_ids,
    unescape_entities,
    unknown_characters,
)
from xtts_ft.evaluation.asr import transcribe_words
from xtts_ft.io_utils import file_hash, resumable_dir, write_json, write_jsonl, write_text
from xtts_ft.model.constants import DECODER_SAMPLE_RATE, GPT_SAMPLE_RATE

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.processed_dir) / cfg.data.name


# Annotation tags of transcribed corpora: <unk>, <noise>, </s>, [laughter], [rires], {breath}. Cleaning
# would strip the brackets and leave the word, and the model would learn to say "unk" or "laughter".
# French quotes typed as <<waaw>> are not tags.
MARKUP = re.compile(r"(?<!<)<[^<>\s]{1,40}>(?!>)|\[[^\[\]]{1,40}\]|\{[^{}]{1,40}\}")


def check_text(raw: str, language: str, cfg: DictConfig, tokenizer) -> str:
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


def split_by_speaker(samples: List[Sample], cfg: DictConfig) -> Tuple[List[Sample], List[Sample]]:
    """Per speaker: a seeded shuffle, then eval_fraction (at least min_eval_per_speaker) to eval. With
    min_eval_per_speaker=0, eval_fraction holds for the corpus as a whole: where each speaker's share rounds
    to none (many speakers with few clips, as in Common Voice), speakers that can spare a clip give one,
    in a seeded order, until it does."""
    by_speaker: Dict[str, List[Sample]] = defaultdict(list)
    for s in samples:
        by_speaker[s.speaker].append(s)
    shuffled, n_eval = {}, {}
    for speaker in sorted(by_speaker):
        clips = sorted(by_speaker[speaker], key=lambda s: s.audio)
        random.Random(f"{cfg.seed}:{speaker}").shuffle(clips)
        shuffled[speaker] = clips
        wanted = max(cfg.min_eval_per_speaker, round(cfg.eval_fraction * len(clips))) if len(clips) >= 2 else 0
        n_eval[speaker] = min(wanted, len(clips) - 1)
    target = round(cfg.eval_fraction * len(samples))
    total = sum(n_eval.values())
    if cfg.min_eval_per_speaker == 0 and total < target:
        order = sorted(shuffled, key=lambda speaker: random.Random(f"{cfg.seed}:order:{speaker}").random())
        spared = True
        while total < target and spared:  # a round: one more clip from each speaker that can spare one
            spared = False
            for speaker in order:
                if total < target and n_eval[speaker] < len(shuffled[speaker]) - 1:
                    n_eval[speaker], total, spared = n_eval[speaker] + 1, total + 1, True
    train = [clip for speaker in shuffled for clip in shuffled[speaker][n_eval[speaker] :]]
    evaluation = [clip for speaker in shuffled for clip in shuffled[speaker][: n_eval[speaker]]]
    if not evaluation or not train:
        why = (
            "each split needs a speaker with at least 2 clips"
            if all(len(c) < 2 for c in shuffled.values())
            else f"eval_fraction={cfg.eval_fraction} with min_eval_per_speaker={cfg.min_eval_per_speaker} gives no clip to eval"
        )
        raise ValueError(f"cannot build both a train and an eval split from {len(samples)} kept clip(s): {why}")
    if len(evaluation) > max(2 * target, target + 2):
        log.warning(
            "eval takes %d of %d clips (eval_fraction=%s asks for about %d): min_eval_per_speaker=%d gives each speaker "
            "with 2 clips or more that many; set min_eval_per_speaker=0 to take eval_fraction of the whole corpus",
            len(evaluation),
            len(samples),
            cfg.eval_fraction,
            target,
            cfg.min_eval_per_speaker,
        )
    return train, evaluation


def drop_summary(dropped: List[dict], written_to: Path) -> str:
    """Why records were dropped, for an error that leaves no dataset: counts per reason, one example."""
    if not dropped:
        return "; no record was dropped: add data"
    reasons = Counter(d["reason"] for d in dropped)
    common = reasons.most_common(1)[0][0]
    example = next(d for d in dropped if d["reason"] == common)
    counts = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    where = "" if example["message"].startswith(example["source_line"]) else f"{example['source_line']}: "
    return (
        f"; {len(dropped)} record(s) were dropped ({counts}), e.g. {where}{example['message']} "
        f"— every dropped record and its reason: {written_to}"
    )


def vocab_file(cfg: DictConfig) -> Optional[Path]:
    """The base model's vocab.json the texts are checked against (None: token checks are off)."""
    if cfg.max_text_tokens <= 0:
        return None
    from xtts_ft.model.loading import resolve_vocab

    return resolve_vocab(cfg.model)


def read_records(cfg: DictConfig) -> List[tuple]:
    """Every source's records, in corpus order: (position, source index, source, root, record),
    `root` being the folder the record's audio must lie in."""
    records: List[tuple] = []
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
        records += [
            (len(records) + 1 + i, index, source, root, r)
            for i, r in enumerate(read_corpus(Path(source.path), source, transcribe))
        ]
    return records


def input_key(cfg: DictConfig, records: List[tuple], vocab: Optional[Path]) -> str:
    """A digest of everything the prepared dataset depends on: the settings (not where outputs go,
    nor how many workers), the vocabulary, and every record with its audio file's size and mtime."""
    settings = {k: v for k, v in to_container(cfg).items() if k not in ("paths", "num_workers", "force")}
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


def outputs_of(out: Path) -> List[Path]:
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


def is_done(cfg: DictConfig) -> bool:
    """Prepared from the corpus as it is now, with these settings (the pipeline's skip test)."""
    out = output_dir(cfg)
    if not all(p.is_file() for p in outputs_of(out)):
        return False  # (without reading the corpus)
    return up_to_date(out, input_key(cfg, read_records(cfg), vocab_file(cfg)))


def load_tokenizer(vocab: Optional[Path]):
    """The `tokenizers` object of the base's vocab.json (None: token checks are off)."""
    if vocab is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(vocab))


def check_output_dir(cfg: DictConfig, out: Path) -> None:
    """prepare replaces <processed_dir>/<data.name> whole when it rebuilds it: never a folder that
    holds a corpus or a cache it reads, nor one it did not write."""
    resolved = out.resolve()
    for index, source in enumerate(cfg.data.sources):
        for key in ("path", "cache_dir"):
            value = source.get(key)
            if value and Path(value).resolve().is_relative_to(resolved):
                raise ValueError(
                    f"data.sources[{index}].{key}={value} lies inside the dataset folder {out}, which prepare replaces "
                    "whole when it rebuilds it — fix: write the dataset elsewhere (paths.processed_dir=... or data.name=...)"
                )
    if out.is_dir() and any(out.iterdir()) and not (out / "stats.json").is_file():
        raise FileExistsError(
            f"{out} exists and is not a dataset prepare wrote (no stats.json); prepare replaces only its own datasets — "
            "fix: choose another data.name or paths.processed_dir, or move that folder away yourself"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(
            f"{out} exists and is a file, not a dataset folder — fix: choose another data.name or paths.processed_dir"
        )
    # A dataset prepared from other corpora altogether: most likely data.sources was given without its own
    # data.name (the default's, e.g. demo). A rebuild that keeps any of its sources (one added, settings
    # changed) goes ahead; this one needs force=true.
    before = previous_sources(out)
    now = source_paths(cfg)
    if before and not before & now and not cfg.force:
        raise FileExistsError(
            f"{out} holds the dataset {out.name!r} prepared from {', '.join(sorted(before))}; these sources are "
            f"{', '.join(sorted(now))}, and a rebuild would replace it — fix: give the new dataset its own name, "
            f"data.name=<name>, or prepare's force=true to replace this one"
        )


def source_paths(cfg: DictConfig) -> set:
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


def check_languages(cfg: DictConfig, tokenizer) -> None:
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
            raise ValueError(
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


def run(cfg: DictConfig) -> Path:
    out = output_dir(cfg)
    if not cfg.data.sources:
        raise ValueError(f"data.sources is empty for dataset {cfg.data.name!r}: nothing to prepare")
    check_output_dir(cfg, out)
    vocab = vocab_file(cfg)
    tokenizer = load_tokenizer(vocab)
    check_languages(cfg, tokenizer)
    records = read_records(cfg)
    key = input_key(cfg, records, vocab)
    if not cfg.force and up_to_date(out, key):
        print(f"{out} is up to date: same corpus, same settings (force=true rebuilds it)")
        return out

    if cfg.validate_transcripts:
        from xtts_ft.evaluation.validation import check_settings

        check_settings(cfg)  # a bad setting fails before any audio work
    if cfg.sample_rate != GPT_SAMPLE_RATE:
        log.warning(
            "sample_rate=%d: the clips are written at %d Hz, but XTTS's GPT, DVAE and speaker encoder hear %d Hz, so "
            "training resamples every clip%s — fix: sample_rate=%d (the default)",
            cfg.sample_rate,
            cfg.sample_rate,
            GPT_SAMPLE_RATE,
            f" (nothing above {cfg.sample_rate // 2} Hz survives)" if cfg.sample_rate < GPT_SAMPLE_RATE else "",
            GPT_SAMPLE_RATE,
        )
    dropped: List[Tuple[int, dict]] = []  # (position in the corpus, entry): written in corpus order

    def drop(position: int, record: dict, language: str, rejected: Rejected, **details) -> None:
        dropped.append(
            (
                position,
                {**record, "language": language, "reason": rejected.reason, "message": str(rejected), **details},
            )
        )
        log.info("dropped %s (%s): %s", record["source_line"], rejected.reason, rejected)

    # Built aside; an interrupted run's clips are kept there and reused by the next run on the
    # same inputs (any change to them starts afresh). `out` only ever holds a finished dataset.
    with resumable_dir(out, key if not cfg.force else f"{key}:{time.time_ns()}") as tmp:
        checked = check_and_process(records, tmp, cfg, tokenizer, drop)
        kept, origins = kept_samples(checked, cfg, drop)
        validation = validate_transcripts(kept, origins, tmp, cfg, drop) if cfg.validate_transcripts else None
        if validation and cfg.transcript_action == "drop":
            kept = [s for s in kept if not s.extra.get("transcript_mismatch")]
        in_order = [entry for _, entry in sorted(dropped, key=lambda pair: pair[0])]
        train, evaluation = write_dataset(tmp, kept, in_order, validation, key, cfg)
        remove_bookkeeping(tmp)
    print(f"prepared {len(train)} train + {len(evaluation)} eval clips, dropped {len(in_order)} → {out}")
    return out


def check_and_process(records: List[tuple], tmp: Path, cfg: DictConfig, tokenizer, drop) -> List[tuple]:
    """Each record's cheap checks (text, path, duplicates), in corpus order, then its audio work;
    `drop` gets every record that fails a check. Returns (position, record, source, text, job, clip)
    for each record that passed, `clip` being the audio worker's ClipInfo, or its Rejected."""
    done = read_done(tmp)
    if done:
        print(f"resuming an interrupted run: {len(done)} clip(s) already processed")
    settings = AudioSettings.from_config(cfg)
    with AudioWorkers(settings, tmp, cfg.num_workers, expected_jobs=len(records) - len(done)) as workers:
        # Cheap checks here while the audio workers start; each record that passes goes to them at once.
        seen: set = set()
        used_names: set = set()
        pending: List[Tuple[int, dict, object, str, AudioJob]] = []
        for position, index, source, root, record in records:
            if "rejected" in record:  # the formatter could not make a clip of it (e.g. a too-long sentence)
                reason, message = record.pop("rejected")
                drop(position, record, source.language, Rejected(reason, message))
                continue
            try:
                text = check_text(str(record["text"]), source.language, cfg, tokenizer)
                path = check_path(record, root, seen)
            except Rejected as rejected:
                drop(position, record, source.language, rejected)
                continue
            job = AudioJob(path, output_name(index, Path(str(record["audio"])), root, used_names))
            if job.name not in done:
                workers.submit(job)
            pending.append((position, record, source, text, job))
        fresh = iter(workers.results())  # the submitted jobs' results, in submission order
    return [
        (position, record, source, text, job, done[job.name] if job.name in done else next(fresh))
        for position, record, source, text, job in pending
    ]


LOUDNESS_SLACK = 1.0  # LU: a clip this much below loudness_lufs (held back by the peak limit) is reported


def kept_samples(checked: List[tuple], cfg: DictConfig, drop) -> Tuple[List[Sample], List[tuple]]:
    """A Sample for each clip the audio work kept (`drop` gets the others), and each one's
    origin (position, record, source), in the same order."""
    kept: List[Sample] = []
    origins: List[Tuple[int, dict, object]] = []
    first_with: Dict[str, dict] = {}  # a written clip's digest → the record it came from first
    repeats: List[Tuple[dict, dict]] = []  # (record, the earlier record with the same audio)
    quiet: List[Tuple[dict, float]] = []  # (record, LU below loudness_lufs)
    for position, record, source, text, job, clip in checked:
        if isinstance(clip, Rejected):
            drop(position, record, source.language, clip)
            continue
        if clip.loudness_shortfall >= LOUDNESS_SLACK:
            quiet.append((record, clip.loudness_shortfall))
        if clip.digest in first_with:
            repeats.append((record, first_with[clip.digest]))
        elif clip.digest:
            first_with[clip.digest] = record
        kept.append(clip_sample(record, source, text, job, clip, cfg))
        origins.append((position, record, source))
    if quiet:
        # The -1 dBFS peak limit wins over the target: said, so a corpus of peaky clips is not taken as normalised.
        worst = max(quiet, key=lambda q: q[1])
        log.warning(
            "%d clip(s) stay below loudness_lufs=%s: reaching it would push their peaks past -1 dBFS (by %.1f LU on average; "
            "the most, %.1f LU, %s) — kept as they are; fix: a lower loudness_lufs (loudness_lufs=%.0f reaches them all), or a "
            "limiter on the corpus",
            len(quiet),
            cfg.loudness_lufs,
            sum(q[1] for q in quiet) / len(quiet),
            worst[1],
            worst[0]["source_line"],
            math.floor(cfg.loudness_lufs - worst[1]),
        )
    if repeats:
        # Kept (the user decides), but said: the same recording in train and eval inflates the eval
        # scores, and one recording with two texts teaches neither.
        examples = "; ".join(
            f"{r['source_line']} ({Path(str(r['audio'])).name}) = {f['source_line']} ({Path(str(f['audio'])).name})"
            for r, f in repeats[:3]
        )
        log.warning(
            "%d clip(s) are the same audio as an earlier clip, e.g. %s — kept; the same recording in train and eval "
            "inflates eval scores — fix: remove the repeated rows",
            len(repeats),
            examples,
        )
    return kept, origins


def clip_sample(record: dict, source, text: str, job: AudioJob, clip, cfg: DictConfig) -> Sample:
    """The manifest line of one processed clip: the record's own fields, and what the audio work measured."""
    extra = {k: v for k, v in record.items() if k not in ("audio", "text", "speaker", "emotion")}
    extra.update(raw_text=str(record["text"]), source_rate=clip.source_rate)
    if clip.has_24k:
        extra["audio_24k"] = f"wavs_24k/{job.name}"
        extra["band_limited"] = clip.source_rate < DECODER_SAMPLE_RATE  # no content above source_rate/2
    if clip.clipped_fraction > 0:
        extra["clipped_fraction"] = round(clip.clipped_fraction, 6)
    return Sample(
        audio=f"wavs/{job.name}",
        text=text,
        speaker=str(record["speaker"]),
        language=source.language,
        duration=round(clip.samples / cfg.sample_rate, 4),
        emotion=record.get("emotion") or None,
        extra=extra,
    )


def write_dataset(
    tmp: Path, kept: List[Sample], dropped: List[dict], validation: Optional[dict], key: str, cfg: DictConfig
) -> Tuple[List[Sample], List[Sample]]:
    """dropped.jsonl, the train/eval split and its manifests, stats.json; returns (train, eval)."""
    write_jsonl(tmp / "dropped.jsonl", dropped)  # first: if no split can be made, the error points here
    try:
        train, evaluation = split_by_speaker(kept, cfg)
    except ValueError as err:
        raise ValueError(f"{err}{drop_summary(dropped, tmp / 'dropped.jsonl')}") from None
    write_manifest(tmp / "train.jsonl", train)
    write_manifest(tmp / "eval.jsonl", evaluation)
    write_json(
        tmp / "stats.json",
        {
            **dataset_stats(train, evaluation, dropped, cfg),
            **({"transcript_validation": validation} if validation else {}),
            "input_key": key,
        },
    )
    return train, evaluation


def validate_transcripts(kept: List[Sample], origins: List[tuple], tmp: Path, cfg: DictConfig, drop) -> dict:
    """Transcribe every kept clip (xtts_ft.evaluation.validation), store `asr_text`/`asr_cer` in its Sample and mark
    those above max_transcript_cer `transcript_mismatch` (`drop` them with transcript_action=drop; the
    caller removes them from the kept list); writes validation.md; returns the summary for stats.json."""
    from xtts_ft.evaluation.validation import check_transcripts, is_mismatch, report

    # A long recording's clips were cut on ASR word timestamps and their text *is* an ASR transcript:
    # the segmenter's own checks hold for them, a second ASR pass would only score Whisper against itself.
    skipped = {
        f"data.sources[{i}] ({source.path})": "its clips' texts are ASR transcripts (long_recordings)"
        for i, source in enumerate(cfg.data.sources)
        if source.formatter == "long_recordings"
    }
    checkable = [k for k, (_, _, source) in enumerate(origins) if source.formatter != "long_recordings"]
    cache = Path(cfg.paths.processed_dir) / "cache" / cfg.data.name / "transcripts"
    checks, summary = check_transcripts([kept[k] for k in checkable], tmp, cfg, cache)
    mismatched = {}  # kept index -> its check
    for k, check in zip(checkable, checks):
        if check is None:
            continue
        kept[k].extra.update(asr_text=check.asr_text, asr_cer=check.asr_cer)
        if is_mismatch(check, cfg):
            mismatched[k] = check
            kept[k].extra["transcript_mismatch"] = True
    if cfg.transcript_action == "drop":
        for k, check in mismatched.items():
            position, record, source = origins[k]
            drop(
                position,
                record,
                source.language,
                Rejected(
                    "transcript_mismatch",
                    f"the ASR heard {check.asr_text!r}: CER {check.asr_cer:.2f} against the "
                    f"transcript > max_transcript_cer={cfg.max_transcript_cer} (clip kept for listening: {kept[k].audio})",
                ),
                asr_text=check.asr_text,
                asr_cer=check.asr_cer,
            )
    summary[{"drop": "dropped", "flag": "flagged"}[cfg.transcript_action]] = len(mismatched)
    summary["not_validated_sources"] = skipped
    write_text(tmp / "validation.md", report([kept[k] for k in checkable], checks, summary, skipped))
    print(
        f"transcripts: {summary['clips']} clip(s) checked ({summary['speed'] or '–'}× real time), "
        f"{len(mismatched)} above max_transcript_cer={cfg.max_transcript_cer} ({cfg.transcript_action}) → {output_dir(cfg) / 'validation.md'}"
    )
    return summary


def dataset_stats(train: List[Sample], evaluation: List[Sample], dropped: List[dict], cfg: DictConfig) -> dict:
    def summary(samples: List[Sample]) -> dict:
        return {
            "clips": len(samples),
            "hours": round(sum(s.duration for s in samples) / 3600, 5),
            "languages": dict(Counter(s.language for s in samples)),
            "speakers": dict(Counter(s.speaker for s in samples)),
        }

    languages = sorted({source.language for source in cfg.data.sources})
    return {
        "name": cfg.data.name,
        "sample_rate": cfg.sample_rate,
        "train": summary(train),
        "eval": summary(evaluation),
        "dropped": {"clips": len(dropped), "reasons": dict(Counter(d["reason"] for d in dropped))},
        "text_cleaners": {language: cleaner_name(language) for language in languages},
        "band_limited_clips": sum(1 for s in train + evaluation if s.extra.get("band_limited")),
        "config": to_container(cfg),
        "source_paths": sorted(source_paths(cfg)),  # what a rebuild from other corpora is told apart by
    }
