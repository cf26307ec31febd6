"""Stage `prepare`: corpus → data/processed/<name>/ (wavs, train/eval/dropped.jsonl, stats.json).

Reads every configured source with its formatter, normalises text with the language's
cleaner, checks it against the base model's vocabulary, rejects bad records with a stable
reason code (never silently), writes 22.05 kHz mono trimmed WAVs (and 24 kHz copies from the
source for decoder training when asked), and splits train/eval per speaker with a seed
(xtts_ft.data.records reads and checks the records, xtts_ft.data.dataset builds the dataset,
xtts_ft.evaluation.transcripts validates its transcripts when asked).

The output directory is built aside (`.<name>.partial`) and moved into place at the end, so
an interrupted run never leaves a dataset that looks complete; the next run on the same
inputs continues from the clips already done. A run whose corpus and settings have not changed
since the last one (`input_key` in stats.json, xtts_ft.data.prepared) does nothing; one that
rebuilds says why in one line (each changed setting old → new, the corpus, the vocabulary), and the
dataset it replaces stays in place until the new one is complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from xtts_ft.config import to_container
from xtts_ft.data.clips import remove_bookkeeping
from xtts_ft.data.dataset import Drops, check_and_process, kept_samples, write_dataset
from xtts_ft.data.prepared import check_output_dir, dataset_inputs, input_key, outputs_of, rebuild_reason, up_to_date
from xtts_ft.data.records import check_languages, on_disk, read_records
from xtts_ft.errors import ConfigValueError
from xtts_ft.evaluation.asr import transcribe_words
from xtts_ft.evaluation.transcripts import validate_transcripts
from xtts_ft.evaluation.validation import check_settings
from xtts_ft.io_utils import check_free_space, files_bytes, resumable_dir
from xtts_ft.model.constants import GPT_SAMPLE_RATE

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.processed_dir) / cfg.data.name


def is_done(cfg: DictConfig) -> bool:
    """Prepared from the corpus as it is now, with these settings (the pipeline's skip test)."""
    out = output_dir(cfg)
    if not all(p.is_file() for p in outputs_of(out)):
        return False  # (without reading the corpus)
    records = read_records(cfg, transcribe_words)  # first: it sets the sources' cache_dir, part of the settings
    vocab = vocab_file(cfg)
    return up_to_date(out, input_key(to_container(cfg), records, vocab))


def run(cfg: DictConfig) -> Path:
    out = output_dir(cfg)
    if not cfg.data.sources:
        raise ConfigValueError(f"data.sources is empty for dataset {cfg.data.name!r}: nothing to prepare")
    check_output_dir(cfg, out)
    vocab = vocab_file(cfg)
    tokenizer = load_tokenizer(vocab)
    check_languages(cfg, tokenizer)
    records = read_records(cfg, transcribe_words)
    inputs = dataset_inputs(to_container(cfg), records, vocab)
    key = inputs["key"]
    if not cfg.force and up_to_date(out, key):
        log.info(f"{out} is up to date: same corpus, same settings (force=true rebuilds it)")
        return out

    reason = rebuild_reason(out, inputs, to_container(cfg), cfg.force)
    if reason:  # never silently: a pipeline's prepare with other settings replaces the user's own dataset
        log.info("prepare: rebuilding %s — %s", out, reason)
    if cfg.validate_transcripts:
        check_settings(cfg)  # a bad setting fails before any audio work
    check_sample_rate(cfg)
    # It writes at least the source audio's bytes (twice with decoder_copies): a full disk foreseen, not met halfway.
    sources = [on_disk(Path(str(r[-1]["audio"]))) for r in records if r[-1].get("audio")]
    check_free_space(out.parent, files_bytes(sources) * (2 if cfg.decoder_copies else 1), "prepare")
    drop = Drops()
    # Built aside; an interrupted run's clips are kept there and reused by the next run on the
    # same inputs (any change to them starts afresh). `out` only ever holds a finished dataset.
    with resumable_dir(out, key if not cfg.force else f"{key}:{time.time_ns()}") as tmp:
        checked = check_and_process(records, tmp, cfg, tokenizer, drop)
        kept, origins = kept_samples(checked, cfg, drop)
        validation = validate_transcripts(kept, origins, tmp, out, cfg, drop) if cfg.validate_transcripts else None
        if validation and cfg.transcript_action == "drop":
            kept = [s for s in kept if not s.extra.get("transcript_mismatch")]
        dropped = drop.in_order()
        train, evaluation = write_dataset(tmp, kept, dropped, validation, key, cfg, to_container(cfg), inputs)
        remove_bookkeeping(tmp)
    log.info(f"prepared {len(train)} train + {len(evaluation)} eval clips, dropped {len(dropped)} → {out}")
    return out


def vocab_file(cfg: DictConfig) -> Optional[Path]:
    """The base model's vocab.json the texts are checked against (None: token checks are off)."""
    if cfg.max_text_tokens <= 0:
        return None
    from xtts_ft.model.loading import resolve_vocab

    return resolve_vocab(cfg.model)


def load_tokenizer(vocab: Optional[Path]):
    """The `tokenizers` object of the base's vocab.json (None: token checks are off)."""
    if vocab is None:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(vocab))


def check_sample_rate(cfg: DictConfig) -> None:
    """A sample_rate other than the GPT's is written as asked (the user named it), and said to cost a resample."""
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
