"""What evaluate speaks: the probe sets shipped with the package and the probe rows of a run.

A probe row is one utterance to synthesize and score: its probe set, text, language, the
recording whose voice speaks it (`reference`), that recording's seconds (a manifest's rows) and
speaker. Rows come from a prepared eval manifest (each row's own recording is its voice) and/or
a shipped probe set (`probes=sentences|short`, per-language sentences spoken in the voice of
`reference=`), kept to `languages=` and to texts with words to score.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import List

import pandas as pd
from omegaconf import DictConfig

from xtts_ft.data.sample import read_manifest, resolve_audio
from xtts_ft.errors import BadValue, ConfigValueError, MissingFile
from xtts_ft.evaluation import metrics

log = logging.getLogger(__name__)

PROBE_SETS = ("sentences", "short")


def shipped_probes(name: str) -> pd.DataFrame:
    if name not in PROBE_SETS:
        raise ConfigValueError(
            f"probes={name!r} is not a shipped probe set",
            fix=f"probes=<one of {', '.join(PROBE_SETS)}>, or manifest=<eval.jsonl>",
        )
    with resources.files("xtts_ft").joinpath("probes", f"{name}.tsv").open(encoding="utf-8") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


def manifest_probes(manifest: Path, max_utterances: int) -> List[dict]:
    """The first `max_utterances` rows of a prepared manifest, each in the voice of its own recording."""
    samples = read_manifest(manifest)[:max_utterances]
    if not samples:
        raise BadValue(f"{manifest} holds no utterances to evaluate")
    return [
        {
            "probe_set": manifest.stem,
            "text": s.text,
            "language": s.language,
            "reference": resolve_audio(manifest, s),
            "reference_seconds": s.duration,
            "speaker": s.speaker,
        }
        for s in samples
    ]


def shipped_probe_rows(name: str, reference_audio, max_utterances: int) -> List[dict]:
    """The first `max_utterances` texts per language of a shipped probe set, in the voice of `reference_audio`."""
    if not reference_audio:
        raise ConfigValueError(
            f"probes={name} needs a reference recording (the voice that speaks them)", fix="reference=<audio file>"
        )
    reference = Path(reference_audio)
    if not reference.is_file():
        raise MissingFile(f"reference audio {reference} does not exist")
    rows = []
    for language, group in shipped_probes(name).groupby("language", sort=False):
        rows += [
            {
                "probe_set": name,
                "text": text,
                "language": language,
                "reference": reference,
                "reference_seconds": None,
                "speaker": reference.stem,
            }
            for text in group["text"][:max_utterances]
        ]
    return rows


def probe_rows(cfg: DictConfig) -> List[dict]:
    """(probe set, text, language, reference, reference seconds, speaker) for every probe."""
    rows = []
    if cfg.manifest:
        rows += manifest_probes(Path(cfg.manifest), cfg.max_utterances)
    if cfg.probes:
        rows += shipped_probe_rows(cfg.probes, cfg.reference, cfg.max_utterances)
    if not rows:
        raise ConfigValueError(
            "nothing to evaluate", fix="give manifest=<eval.jsonl> and/or probes=sentences|short reference=<audio>"
        )
    if cfg.languages:
        kept = [r for r in rows if r["language"] in cfg.languages]
        if not kept:
            raise ConfigValueError(
                f"languages={list(cfg.languages)} keeps none of the probes (their languages: "
                f"{', '.join(dict.fromkeys(r['language'] for r in rows))}) — fix: languages=[<some of those>]"
            )
        rows = kept
    return scorable(rows)


def scorable(rows: List[dict]) -> List[dict]:
    """The rows with words to score. A text with nothing to say once punctuation goes ("...", "?!")
    has no CER to measure: left out, and said."""
    kept = [r for r in rows if metrics.normalize_for_scoring(r["text"], r["language"])]
    if len(kept) < len(rows):
        empty = [r for r in rows if r not in kept]
        log.warning(
            "%d probe(s) have no words to score, left out: %s",
            len(empty),
            "; ".join(f"{r['probe_set']}: {r['text']!r}" for r in empty[:5]),
        )
        if not kept:
            raise BadValue("no probe has words to score (every text is empty once punctuation goes)")
    return kept
