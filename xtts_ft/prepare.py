"""Stage `prepare`: corpus → data/processed/<name>/ (wavs, train/eval/dropped.jsonl, stats.json).

Reads every configured source with its formatter, rejects bad records with a stable reason
code (never silently), writes 22.05 kHz mono trimmed WAVs, and splits train/eval per
speaker with a seed. The whole output directory is built aside and moved into place at the
end, so an interrupted run never leaves a half-prepared dataset behind.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.audio import load_audio, trim_silence, write_wav
from xtts_ft.data.formatters import read_corpus
from xtts_ft.data.sample import Sample, write_manifest
from xtts_ft.io_utils import atomic_dir, write_json, write_jsonl

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.processed_dir) / cfg.data.name


def outputs(cfg: DictConfig) -> List[Path]:
    out = output_dir(cfg)
    return [out / "train.jsonl", out / "eval.jsonl", out / "dropped.jsonl", out / "stats.json"]


def clean_text(text: str) -> str:
    # Only whitespace here: XTTS's tokenizer applies its per-language cleaners at encode time.
    return re.sub(r"\s+", " ", text).strip()


def check_record(record: dict, root: Path, cfg: DictConfig, seen: set) -> Tuple[Optional[np.ndarray], str, str]:
    """Return (trimmed audio, "", "") for a good record, or (None, reason, message)."""
    text = clean_text(str(record["text"]))
    if not text:
        return None, "empty_text", "the transcript is empty"
    if len(text) > cfg.max_text_chars:
        return None, "text_too_long", f"{len(text)} characters > max_text_chars={cfg.max_text_chars}"
    audio_path = Path(str(record["audio"])).resolve()
    if not audio_path.is_relative_to(root.resolve()):
        return None, "outside_root", f"{audio_path} is outside the corpus root {root}"
    if not audio_path.is_file():
        return None, "missing_file", f"{audio_path} does not exist"
    if audio_path in seen:
        return None, "duplicate_audio", f"{audio_path} is already used by an earlier record"
    seen.add(audio_path)
    try:
        audio = load_audio(audio_path, cfg.sample_rate)
    except RuntimeError as err:
        return None, "unreadable_audio", str(err)
    if audio.size == 0 or not np.isfinite(audio).all():
        return None, "unreadable_audio", "the audio is empty or holds non-finite samples"
    audio = trim_silence(audio, cfg.trim_top_db)
    seconds = audio.size / cfg.sample_rate
    if seconds < cfg.min_seconds:
        return None, "too_short", f"{seconds:.2f} s after trimming < min_seconds={cfg.min_seconds}"
    if seconds > cfg.max_seconds:
        return None, "too_long", f"{seconds:.2f} s > max_seconds={cfg.max_seconds}"
    return audio, "", ""


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


def run(cfg: DictConfig) -> Path:
    out = output_dir(cfg)
    if not cfg.data.sources:
        raise ValueError(f"data.sources is empty for dataset {cfg.data.name!r}: nothing to prepare")
    kept: List[Sample] = []
    dropped: List[dict] = []
    with atomic_dir(out) as tmp:
        seen: set = set()
        used_names: set = set()
        for index, source in enumerate(cfg.data.sources):
            root = Path(source.path)
            records = read_corpus(root, source.formatter, source.metadata, source.speaker)
            for record in tqdm(records, desc=f"prepare {root}", unit="clip"):
                audio, reason, message = check_record(record, root, cfg, seen)
                if audio is None:
                    dropped.append({**record, "language": source.language, "reason": reason, "message": message})
                    log.info("dropped %s (%s): %s", record["source_line"], reason, message)
                    continue
                name = output_name(index, Path(str(record["audio"])), root, used_names)
                write_wav(tmp / "wavs" / name, audio, cfg.sample_rate)
                kept.append(
                    Sample(
                        audio=f"wavs/{name}",
                        text=clean_text(str(record["text"])),
                        speaker=str(record["speaker"]),
                        language=source.language,
                        duration=round(audio.size / cfg.sample_rate, 4),
                        extra={k: v for k, v in record.items() if k not in ("audio", "text", "speaker")},
                    )
                )
        train, evaluation = split_by_speaker(kept, cfg)
        write_manifest(tmp / "train.jsonl", train)
        write_manifest(tmp / "eval.jsonl", evaluation)
        write_jsonl(tmp / "dropped.jsonl", dropped)
        write_json(tmp / "stats.json", dataset_stats(train, evaluation, dropped, cfg))
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

    return {
        "name": cfg.data.name,
        "sample_rate": cfg.sample_rate,
        "train": summary(train),
        "eval": summary(evaluation),
        "dropped": {"clips": len(dropped), "reasons": dict(Counter(d["reason"] for d in dropped))},
        "config": to_container(cfg),
    }
