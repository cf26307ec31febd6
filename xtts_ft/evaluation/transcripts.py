"""`prepare validate_transcripts=true` on a dataset being built: which kept clips do not say their text.

Owns the glue between prepare's kept clips and transcript validation (xtts_ft.evaluation.validation,
which transcribes and scores): which sources are checked (not long_recordings, whose texts are ASR
transcripts already), each checked clip's `asr_text`/`asr_cer` and `transcript_mismatch` in its
Sample, the dropped records with transcript_action=drop, validation.md, and stats.json's summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

from xtts_ft.data.clips import Rejected
from xtts_ft.data.sample import Sample
from xtts_ft.evaluation.validation import check_transcripts, is_mismatch, report
from xtts_ft.io_utils import write_text

log = logging.getLogger(__name__)


def validate_transcripts(kept: List[Sample], origins: List[tuple], tmp: Path, out: Path, cfg, drop) -> dict:
    """Transcribe every kept clip (xtts_ft.evaluation.validation), store `asr_text`/`asr_cer` in its Sample and mark
    those above max_transcript_cer `transcript_mismatch` (`drop` them with transcript_action=drop; the
    caller removes them from the kept list); writes validation.md in `tmp` (the dataset being built, moved
    to `out` once finished); returns the summary for stats.json."""
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
    log.info(
        f"transcripts: {summary['clips']} clip(s) checked ({summary['speed'] or '–'}× real time), "
        f"{len(mismatched)} above max_transcript_cer={cfg.max_transcript_cer} ({cfg.transcript_action}) → {out / 'validation.md'}"
    )
    return summary
