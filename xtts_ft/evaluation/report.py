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


def summary_md(summary: pd.DataFrame, digits: int = 3) -> str:
    """A table indexed by (model, language) with `model` and `language` as columns, not tuples."""
    return summary.reset_index().round(digits).to_markdown(index=False)


def not_measured_md(table: pd.DataFrame) -> str:
    counts = table.groupby(["model", "language"], sort=False)[COUNT_COLUMNS].sum()
    counts = counts[(counts > 0).any(axis=1)]
    return summary_md(counts) if len(counts) else "none: every clip had a voice and every ASR transcript had words"


def beside_paper(summary: pd.DataFrame) -> pd.DataFrame:
    """Our CER, speaker similarity and DNSMOS per model and language, the paper's numbers beside them;
    CER a fraction on both sides, as everywhere in the report (the paper's percent divided by 100)."""
    ours = summary.reset_index()
    beside = ours[["model", "language", "cer", "speaker_similarity", "dnsmos"]].copy()
    paper = paper_metrics()
    paper = pd.DataFrame(
        {"paper_cer": paper["cer_percent"] / 100, "paper_utmos": paper["utmos"], "paper_secs": paper["secs"]}
    )
    return beside.join(paper, on="language")


def voices_md(cfg: DictConfig) -> str:
    """Whose voice the probes were spoken in: each manifest row its own recording's, a shipped set `reference`'s."""
    voices = []
    if cfg.manifest:
        voices.append("a manifest's rows are spoken in the voice of their own recording")
    if cfg.probes:
        voices.append(f"the shipped probe set `{cfg.probes}` in the voice of `{Path(str(cfg.reference)).name}`")
    sentence = "; ".join(voices)
    return f"{sentence[:1].upper()}{sentence[1:]}." if voices else ""


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
    not_fine_tunes: Optional[Dict[str, str]] = None,
) -> str:
    models_md = "\n".join(f"- `{label}`: `{checkpoint}`" for label, checkpoint in labels.items())
    return f"""# Evaluation

Models:
{models_md}

Probes: {", ".join(sorted(set(table["probe_set"])))} ({len(table)} utterance(s) in all). {voices_md(cfg)}

## Summary per model and language

CER and WER are fractions (0.05 = 5 %) here and in every table below.

{summary_md(summary)}

## Forgetting

{forgetting_md(forgetting(summary) if forgotten is None else forgotten, not_fine_tunes)}

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

{beside_paper(summary).round(4).to_markdown(index=False)}

**Different protocols — do not compare directly.** The paper: 240 FLORES+ sentences per language, CER
(published in %, a fraction here) from Whisper large-v3, SECS from ECAPA2, UTMOS. Here: CER/WER from the ASR listed per language above. Speaker similarity: resemblyzer
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


def metrics_record(
    summary: pd.DataFrame,
    cfg: DictConfig,
    table: pd.DataFrame,
    forgotten: Optional[pd.DataFrame] = None,
    labels: Optional[dict] = None,
) -> dict:
    """What an export's xtts_ft.json (and card) records of one model's evaluation: its summary per language
    and, for a fine-tune evaluated after its base, what it forgot."""
    metrics = {
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
        metrics["forgetting"] = {
            "base": (labels or {}).get(base, base),
            "per_language": {
                row["language"]: rounded(row.drop(["model", "base", "language"])) for _, row in forgotten.iterrows()
            },
        }
    return metrics


def evaluated_models(
    summary: pd.DataFrame,
    cfg: DictConfig,
    table: pd.DataFrame,
    forgotten: pd.DataFrame,
    labels: Dict[str, str],
    model_dirs: Dict[str, Path],
) -> List[dict]:
    """metrics.json: for each model evaluated, its checkpoint, its model.pth hash (an xtts-ft export's: what
    `export metrics=<out_dir>` matches) and the metrics its card would record."""
    from xtts_ft.model.export import sha256
    from xtts_ft.model.layout import is_export

    entries = []
    for label, checkpoint in labels.items():
        if label not in summary.index.get_level_values(0):
            continue
        model_dir = Path(model_dirs[checkpoint])
        mine = forgotten[forgotten["model"] == label] if len(forgotten) else None
        entries.append(
            {
                "label": label,
                "checkpoint": checkpoint,
                "model_sha256": sha256(model_dir / "model.pth") if is_export(model_dir) else None,
                "metrics": metrics_record(summary.loc[label], cfg, table, mine, labels),
            }
        )
    return entries


def record_metrics(checkpoint: Path, metrics: dict) -> None:
    """Write an evaluation's metrics into an xtts-ft export's xtts_ft.json and model card (`write_metrics=true`);
    anything else (a base model, an extended base) has no card to update."""
    from xtts_ft.model.card import model_card
    from xtts_ft.model.layout import SIDECAR

    sidecar = checkpoint / SIDECAR
    if not sidecar.is_file():
        return
    record = json.loads(sidecar.read_text(encoding="utf-8"))
    if "training" not in record:  # a base model or an extended base, not an export: no card to update
        return
    record["metrics"] = metrics
    write_json(sidecar, record)
    write_text(checkpoint / "README.md", model_card(record))
