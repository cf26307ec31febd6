"""From checked records to a prepared dataset: the audio work, the kept Samples, the split, the files.

Owns what `prepare` does between reading the corpus and moving the finished folder into place:
each record's checks and its clip's audio work (in worker processes, resumed from an interrupted
run's ledger), the dropped records with their reasons (`Drops`, written in corpus order), the kept
clips' Samples and what is said about them (too quiet for the loudness target, the same recording
twice), the seeded per-speaker train/eval split, and dropped.jsonl, the manifests and stats.json.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from xtts_ft.data.clips import AudioJob, AudioSettings, AudioWorkers, Rejected, read_done
from xtts_ft.data.prepared import source_paths
from xtts_ft.data.records import check_path, check_text, output_name
from xtts_ft.data.sample import Sample, write_manifest
from xtts_ft.data.text import cleaner_name
from xtts_ft.errors import BadValue
from xtts_ft.io_utils import write_json, write_jsonl
from xtts_ft.model.constants import DECODER_SAMPLE_RATE

log = logging.getLogger(__name__)

LOUDNESS_SLACK = 1.0  # LU: a clip this much below loudness_lufs (held back by the peak limit) is reported


class Drops:
    """The records dropped so far, each with its reason and message; called as `drop(position, record,
    language, rejected, **details)`, and written to dropped.jsonl in corpus order (`in_order`)."""

    def __init__(self) -> None:
        self.entries: List[Tuple[int, dict]] = []  # (position in the corpus, entry)

    def __call__(self, position: int, record: dict, language: str, rejected: Rejected, **details) -> None:
        self.entries.append(
            (
                position,
                {**record, "language": language, "reason": rejected.reason, "message": str(rejected), **details},
            )
        )
        log.info("dropped %s (%s): %s", record["source_line"], rejected.reason, rejected)

    def in_order(self) -> List[dict]:
        return [entry for _, entry in sorted(self.entries, key=lambda pair: pair[0])]


def check_and_process(records: List[tuple], tmp: Path, cfg, tokenizer, drop) -> List[tuple]:
    """Each record's cheap checks (text, path, duplicates), in corpus order, then its audio work;
    `drop` gets every record that fails a check. Returns (position, record, source, text, job, clip)
    for each record that passed, `clip` being the audio worker's ClipInfo, or its Rejected."""
    done = read_done(tmp)
    if done:
        log.info(f"resuming an interrupted run: {len(done)} clip(s) already processed")
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


def kept_samples(checked: List[tuple], cfg, drop) -> Tuple[List[Sample], List[tuple]]:
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


def clip_sample(record: dict, source, text: str, job: AudioJob, clip, cfg) -> Sample:
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


def split_by_speaker(samples: List[Sample], cfg) -> Tuple[List[Sample], List[Sample]]:
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
        raise BadValue(f"cannot build both a train and an eval split from {len(samples)} kept clip(s): {why}")
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


def write_dataset(
    tmp: Path,
    kept: List[Sample],
    dropped: List[dict],
    validation: Optional[dict],
    key: str,
    cfg,
    config: dict,
    inputs: Optional[dict] = None,
) -> Tuple[List[Sample], List[Sample]]:
    """dropped.jsonl, the train/eval split and its manifests, stats.json (`config`: the resolved stage
    config it records; `inputs`: the parts of `key`, xtts_ft.data.prepared.dataset_inputs, kept so that
    a later rebuild can say what changed); returns (train, eval)."""
    write_jsonl(tmp / "dropped.jsonl", dropped)  # first: if no split can be made, the error points here
    try:
        train, evaluation = split_by_speaker(kept, cfg)
    except BadValue as err:
        raise BadValue(f"{err}{drop_summary(dropped, tmp / 'dropped.jsonl')}") from None
    write_manifest(tmp / "train.jsonl", train)
    write_manifest(tmp / "eval.jsonl", evaluation)
    write_json(
        tmp / "stats.json",
        {
            **dataset_stats(train, evaluation, dropped, cfg, config),
            **({"transcript_validation": validation} if validation else {}),
            "input_key": key,
            **({"inputs": {k: v for k, v in inputs.items() if k != "key"}} if inputs else {}),
        },
    )
    return train, evaluation


def dataset_stats(train: List[Sample], evaluation: List[Sample], dropped: List[dict], cfg, config: dict) -> dict:
    """stats.json's numbers: clips, hours, languages and speakers per split, drops per reason, the
    cleaners used, and the settings (`config`) and sources the dataset was prepared with."""

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
        "config": config,
        "source_paths": sorted(source_paths(cfg)),  # what a rebuild from other corpora is told apart by
    }
