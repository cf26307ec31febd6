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
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from omegaconf import DictConfig

from xtts_ft.config import to_container
from xtts_ft import __version__
from xtts_ft.data.clips import DECODER_RATE, AudioJob, AudioSettings, AudioWorkers, Rejected, read_done, remove_bookkeeping
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.sample import Sample, write_manifest
from xtts_ft.data.text import clean_text, cleaner_name, language_token, token_ids
from xtts_ft.io_utils import file_hash, resumable_dir, write_json, write_jsonl

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.processed_dir) / cfg.data.name


def outputs(cfg: DictConfig) -> List[Path]:
    return outputs_of(output_dir(cfg))


def check_text(raw: str, language: str, cfg: DictConfig, tokenizer) -> str:
    text = clean_text(raw, language)
    if not text:
        raise Rejected("empty_text", "the transcript is empty")
    if len(text) > cfg.max_text_chars:
        raise Rejected("text_too_long", f"{len(text)} characters > max_text_chars={cfg.max_text_chars}")
    # A language the base has no [xx] token for is checked after `xtts-ft extend` adds it (train-gpt
    # skips, with a reason, any clip the extended vocabulary cannot encode).
    if tokenizer is not None and tokenizer.token_to_id(language_token(language)) is not None:
        ids = token_ids(tokenizer, text, language)
        unk = tokenizer.token_to_id("[UNK]")
        if unk in ids:
            unknown = sorted({ch for ch in text if ch != " " and unk in token_ids(tokenizer, ch, language)[1:]})
            raise Rejected("unknown_characters", f"not in the model's vocabulary: {' '.join(unknown) or '?'}")
        if len(ids) > cfg.max_text_tokens:
            raise Rejected("too_many_tokens", f"{len(ids)} tokens > max_text_tokens={cfg.max_text_tokens}")
    return text


def check_path(record: dict, root: Path, seen: set) -> Path:
    audio_path = Path(str(record["audio"])).resolve()
    if not audio_path.is_relative_to(root.resolve()):
        raise Rejected("outside_root", f"{audio_path} is outside the corpus root {root}")
    if not audio_path.is_file():
        raise Rejected("missing_file", f"{audio_path} does not exist")
    if audio_path in seen:
        raise Rejected("duplicate_audio", f"{audio_path} is already used by an earlier record")
    seen.add(audio_path)
    return audio_path


def output_name(source_index: int, audio: Path, root: Path, used: set) -> str:
    """Unique names: spk1/0001.wav and spk2/0001.wav, or x.wav and x.flac, must not overwrite each other."""
    relative = audio.resolve().relative_to(root.resolve())
    name = f"{source_index}_{relative.with_suffix('').as_posix().replace('/', '__')}.wav"
    if name in used:
        name = f"{source_index}_{relative.as_posix().replace('/', '__').replace('.', '_')}.wav"
    used.add(name)
    return name


def split_by_speaker(samples: List[Sample], cfg: DictConfig) -> Tuple[List[Sample], List[Sample]]:
    """Per speaker: a seeded shuffle, then eval_fraction (at least min_eval_per_speaker) to eval."""
    by_speaker: Dict[str, List[Sample]] = defaultdict(list)
    for s in samples:
        by_speaker[s.speaker].append(s)
    train, evaluation = [], []
    for speaker in sorted(by_speaker):
        clips = sorted(by_speaker[speaker], key=lambda s: s.audio)
        random.Random(f"{cfg.seed}:{speaker}").shuffle(clips)
        n_eval = max(cfg.min_eval_per_speaker, round(cfg.eval_fraction * len(clips))) if len(clips) >= 2 else 0
        n_eval = min(n_eval, len(clips) - 1)
        evaluation += clips[:n_eval]
        train += clips[n_eval:]
    if not evaluation or not train:
        raise ValueError(
            f"cannot build both a train and an eval split from {len(samples)} kept clip(s): "
            "each split needs a speaker with at least 2 clips; add data or check dropped.jsonl"
        )
    return train, evaluation


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
        records += [(len(records) + 1 + i, index, source, root, r) for i, r in enumerate(read_corpus(Path(source.path), source))]
    return records


def input_key(cfg: DictConfig, records: List[tuple], vocab: Optional[Path]) -> str:
    """A digest of everything the prepared dataset depends on: the settings (not where outputs go,
    nor how many workers), the vocabulary, and every record with its audio file's size and mtime."""
    settings = {k: v for k, v in to_container(cfg).items() if k not in ("paths", "num_workers", "force")}
    digest = hashlib.sha256(json.dumps(
        {"xtts_ft": __version__, "settings": settings, "vocab": file_hash(vocab) if vocab else None}, sort_keys=True, default=str
    ).encode())
    for _, index, _, _, record in records:
        try:
            stat = Path(str(record.get("audio", ""))).stat()
            audio = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            audio = None  # missing: dropped as such, and re-checked if it appears
        digest.update(json.dumps([index, record, audio], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def up_to_date(out: Path, key: str) -> bool:
    if not all(p.is_file() for p in outputs_of(out)):
        return False
    try:
        return json.loads((out / "stats.json").read_text(encoding="utf-8")).get("input_key") == key
    except ValueError:  # an unreadable stats.json: rebuild
        return False


def outputs_of(out: Path) -> List[Path]:
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


def is_done(cfg: DictConfig) -> bool:
    """Prepared from the corpus as it is now, with these settings (the pipeline's skip test)."""
    out = output_dir(cfg)
    if not all(p.is_file() for p in outputs_of(out)):
        return False  # (without reading the corpus)
    return up_to_date(out, input_key(cfg, read_records(cfg), vocab_file(cfg)))


def run(cfg: DictConfig) -> Path:
    out = output_dir(cfg)
    if not cfg.data.sources:
        raise ValueError(f"data.sources is empty for dataset {cfg.data.name!r}: nothing to prepare")
    vocab = vocab_file(cfg)
    tokenizer = None
    if vocab is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(vocab))
    records = read_records(cfg)
    key = input_key(cfg, records, vocab)
    if not cfg.force and up_to_date(out, key):
        print(f"{out} is up to date: same corpus, same settings (force=true rebuilds it)")
        return out

    kept: List[Sample] = []
    dropped: List[Tuple[int, dict]] = []  # (position in the corpus, entry): written in corpus order

    def drop(position: int, record: dict, language: str, rejected: Rejected) -> None:
        dropped.append((position, {**record, "language": language, "reason": rejected.reason, "message": str(rejected)}))
        log.info("dropped %s (%s): %s", record["source_line"], rejected.reason, rejected)

    # Built aside; an interrupted run's clips are kept there and reused by the next run on the
    # same inputs (any change to them starts afresh). `out` only ever holds a finished dataset.
    with resumable_dir(out, key if not cfg.force else f"{key}:{time.time_ns()}") as tmp:
        done = read_done(tmp)
        if done:
            print(f"resuming an interrupted run: {len(done)} clip(s) already processed")
        settings = AudioSettings.from_config(cfg)
        with AudioWorkers(settings, tmp, cfg.num_workers, expected_jobs=len(records) - len(done)) as workers:
            # Cheap checks (text, paths, duplicates) in order here, while the audio workers start;
            # each record that passes goes to them at once.
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
            fresh = iter(workers.results())

        for position, record, source, text, job in pending:
            clip = done[job.name] if job.name in done else next(fresh)
            if isinstance(clip, Rejected):
                drop(position, record, source.language, clip)
                continue
            extra = {k: v for k, v in record.items() if k not in ("audio", "text", "speaker", "emotion")}
            extra.update(raw_text=str(record["text"]), source_rate=clip.source_rate)
            if clip.has_24k:
                extra["audio_24k"] = f"wavs_24k/{job.name}"
                extra["band_limited"] = clip.source_rate < DECODER_RATE  # no content above source_rate/2
            if clip.clipped_fraction > 0:
                extra["clipped_fraction"] = round(clip.clipped_fraction, 6)
            kept.append(
                Sample(
                    audio=f"wavs/{job.name}",
                    text=text,
                    speaker=str(record["speaker"]),
                    language=source.language,
                    duration=round(clip.samples / cfg.sample_rate, 4),
                    emotion=record.get("emotion") or None,
                    extra=extra,
                )
            )
        dropped = [entry for _, entry in sorted(dropped, key=lambda pair: pair[0])]
        train, evaluation = split_by_speaker(kept, cfg)
        write_manifest(tmp / "train.jsonl", train)
        write_manifest(tmp / "eval.jsonl", evaluation)
        write_jsonl(tmp / "dropped.jsonl", dropped)
        write_json(tmp / "stats.json", {**dataset_stats(train, evaluation, dropped, cfg), "input_key": key})
        remove_bookkeeping(tmp)
    print(f"prepared {len(train)} train + {len(evaluation)} eval clips, dropped {len(dropped)} → {out}")
    return out


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
    }
