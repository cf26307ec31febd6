"""What an evaluation reports: the summary per model and language, the Markdown report (with the
published XTTS v2.0.2 numbers beside ours, labelled as other metric models), what could not be
measured, and the summary recorded into an xtts-ft export's xtts_ft.json and model card.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional

import pandas as pd
from omegaconf import DictConfig

from xtts_ft.evaluation.forgetting import forgetting, forgetting_md
from xtts_ft.io_utils import write_json, write_text

SUMMARY_COLUMNS = [
    "cer",
    "wer",
    "speaker_similarity",
    "dnsmos",
    "utmos",
    "duration_ratio",
    "text_duration_ratio",
    "flagged",
    "rtf",
]
COUNT_COLUMNS = ["no_speech", "asr_heard_nothing"]  # summed per model and language: how many the means leave out
FLAGGED_COLUMNS = ["model", "probe_set", "language", "text", "seconds", "expected_seconds", "flags"]
UTTERANCE_COLUMNS = [
    "model",
    "probe_set",
    "utterance",
    "language",
    "seconds",
    "expected_seconds",
    "cer",
    "speaker_similarity",
    "dnsmos",
    "rtf",
    "stopped",
    "no_speech",
    "flagged",
    "wav",
]


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    groups = table.groupby(["model", "language"], sort=False)
    summary = groups[SUMMARY_COLUMNS].mean()  # NaN (not computable, no ASR) is left out of each mean
    for column in COUNT_COLUMNS:
        if column in table:
            summary[column] = groups[column].sum()
    summary["stopped_fraction"] = groups["stopped"].mean()
    summary["utterances"] = groups.size()
    return summary


def paper_metrics() -> pd.DataFrame:
    """Published XTTS v2.0.2 per-language CER (%), UTMOS and SECS (package data)."""
    with resources.files("xtts_ft").joinpath("reference", "xtts_v2.0.2_paper_metrics.csv").open(encoding="utf-8") as f:
        return pd.read_csv(f).set_index("language")


def asr_by_language(table: pd.DataFrame) -> Dict[str, str]:
    """language -> the ASR that scored it, or "not scored (no ASR for xx: why)"."""
    return {
        language: "; ".join(dict.fromkeys(group["asr"])) for language, group in table.groupby("language", sort=False)
    }


def not_measured_md(table: pd.DataFrame) -> str:
    counts = table.groupby(["model", "language"], sort=False)[COUNT_COLUMNS].sum()
    counts = counts[(counts > 0).any(axis=1)]
    return counts.to_markdown() if len(counts) else "none: every clip had a voice and every ASR transcript had words"


def beside_paper(summary: pd.DataFrame) -> pd.DataFrame:
    """Our CER (%), speaker similarity and DNSMOS per model and language, the paper's numbers beside them."""
    ours = summary.reset_index()
    beside = ours[["model", "language", "cer", "speaker_similarity", "dnsmos"]].copy()
    beside["cer"] = beside["cer"] * 100
    return beside.join(
        paper_metrics().rename(
            columns={"cer_percent": "paper_cer_percent", "utmos": "paper_utmos", "secs": "paper_secs"}
        ),
        on="language",
    )


def flagged_md(table: pd.DataFrame) -> str:
    flagged = table[table["flagged"]]
    return flagged[FLAGGED_COLUMNS].round(2).to_markdown(index=False) if len(flagged) else "none"


def report(
    cfg: DictConfig,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    plots: List[str],
    labels: dict,
    forgotten: Optional[pd.DataFrame] = None,
) -> str:
    models_md = "\n".join(f"- `{label}`: `{checkpoint}`" for label, checkpoint in labels.items())
    return f"""# Evaluation

Models:
{models_md}

Probes: {", ".join(sorted(set(table["probe_set"])))} ({len(table)} utterance(s) in all). A manifest's rows are
spoken in the voice of their own recording; shipped probe sets in the voice of `{cfg.reference}`.

## Summary per model and language

{summary.round(3).to_markdown()}

## Forgetting

{forgetting_md(forgetting(summary) if forgotten is None else forgotten)}

## ASR per language

{chr(10).join(f"- `{language}`: {name}" for language, name in asr_by_language(table).items())}

CER/WER compare the text and the transcript after the language's own text cleaner (numbers and
abbreviations as words) on both sides. A language "not scored" has no ASR that knows it (`asr=`
in the config): its CER is blank rather than measured by a model of another language.

## Not measurable

`no_speech`: the voice-activity detector found no voice in the clip; its speaker similarity, DNSMOS
and UTMOS are NaN and left out of the means above. `asr_heard_nothing`: the ASR transcript is empty;
that is a CER of 1, counted in the means. `unknown_characters` (in the flags): the text has
characters the model's vocabulary lacks, which it read as [UNK]; its scores measure that text too
(a fault of the text: not counted in the flag rate).

{not_measured_md(table)}

![metrics per model and language]({plots[0]})

![duration against the text's expectation]({plots[1]})

## Beside the published XTTS v2.0.2

{beside_paper(summary).round(3).to_markdown(index=False)}

**Different protocols — do not compare directly.** The paper: 240 FLORES+ sentences per language, CER (%)
from Whisper large-v3, SECS from ECAPA2, UTMOS. Here: CER/WER from the ASR listed per language above. Speaker similarity: resemblyzer
(cosine; same voice ≈ 0.85+, different ≈ 0.6 on espeak-ng speech). Quality: DNSMOS overall (P.835, 1-5),
not UTMOS.

## Flagged utterances (babbling or truncation)

A flag: synthesized duration outside 0.5-2x the text's expected duration (per-language speaking rate), or ASR
insertions/deletions above a quarter of the text's words (at least 2).

{flagged_md(table)}

## Utterances

{table[UTTERANCE_COLUMNS].round(3).to_markdown(index=False)}
"""


def rounded(row) -> dict:
    """A row's numbers for JSON: 4 decimals, None where not measurable."""
    return {k: (None if pd.isna(v) else round(float(v), 4)) for k, v in row.items()}


def record_metrics(
    checkpoint: Path,
    summary: Optional[pd.DataFrame],
    cfg: DictConfig,
    table: pd.DataFrame,
    forgotten: Optional[pd.DataFrame] = None,
    labels: Optional[dict] = None,
) -> None:
    """Write the per-language summary (and, for a fine-tune evaluated beside its base, what it forgot)
    into an xtts-ft export's xtts_ft.json and model card."""
    from xtts_ft.model.card import model_card
    from xtts_ft.model.layout import SIDECAR

    sidecar = checkpoint / SIDECAR
    if summary is None or not sidecar.is_file():
        return
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    if "training" not in record:  # a base model or an extended base, not an export: no card to update
        return
    record["metrics"] = {
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probes": ", ".join(filter(None, [Path(cfg.manifest).name if cfg.manifest else None, cfg.probes])),
        "metric_models": {
            "asr": "; ".join(f"{lang}: {name}" for lang, name in asr_by_language(table).items()),
            "speaker": cfg.speaker_model,
            "quality": "DNSMOS (speechmos)" + (f" + UTMOS ({cfg.utmos_model})" if cfg.utmos_model else ""),
        },
        "per_language": {language: rounded(row) for language, row in summary.iterrows()},
    }
    if forgotten is not None and len(forgotten):
        base = forgotten["base"].iloc[0]
        record["metrics"]["forgetting"] = {
            "base": (labels or {}).get(base, base),
            "per_language": {
                row["language"]: rounded(row.drop(["model", "base", "language"])) for _, row in forgotten.iterrows()
            },
        }
    write_json(sidecar, record)
    write_text(checkpoint / "README.md", model_card(record))
