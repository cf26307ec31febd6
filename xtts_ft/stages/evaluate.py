"""Stage `evaluate`: synthesize probe sets with one or more checkpoints and measure them.

Probes: a prepared eval manifest (each row's text, language and recording — the recording is
the voice reference), and/or a probe set shipped with the package (`probes=sentences|short`,
per-language sentences; `short` is one- to three-word utterances, where fine-tunes babble),
spoken in the voice of `reference=`. Every checkpoint (an export, a model directory, a Hub id)
speaks every probe in a language it has, through the shared inference module.

Per utterance: CER/WER through the ASR configured for its language (`asr=`, xtts_ft.evaluation.asr; a
language without one is "not scored (no ASR for xx)"), speaker similarity to the reference,
DNSMOS, the duration against the recording and against a per-language expectation from the text,
ASR insertions and deletions, a hallucination/truncation flag with its reasons, real-time factor,
loudness, whether the GPT stopped by itself. A clip in which no voice is detected gets NaN
similarity, DNSMOS and UTMOS with the flag `no_speech` (left out of the means, counted in the
summary); a clip the ASR hears nothing in gets CER 1 with the flag `asr_heard_nothing`.
With several checkpoints the first is the base: `forgetting` compares every later one (a fine-tune)
with it on the base's languages (the change in CER, speaker similarity and flag rate).
Outputs: utterances.csv, summary.csv (model × language), forgetting.csv, report.md
with PNG plots and the published XTTS v2.0.2 numbers beside ours (labelled: other metric models),
and — for exports made by xtts-ft — the summary in their xtts_ft.json and model card.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from xtts_ft.data.audio import load_audio, write_wav
from xtts_ft.data.sample import read_manifest, resolve_audio
from xtts_ft.data.text import describe_characters
from xtts_ft.evaluation import asr, metrics
from xtts_ft.inference import XttsSynthesizer
from xtts_ft.io_utils import write_json, write_text
from xtts_ft.model.loading import resolve_model_dir

log = logging.getLogger(__name__)

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
PROBE_SETS = ("sentences", "short")


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "utterances.csv", out / "summary.csv", out / "report.md"]


def checkpoints(cfg: DictConfig) -> List[str]:
    chosen = ([cfg.checkpoint] if cfg.checkpoint else []) + [c for c in cfg.checkpoints if c != cfg.checkpoint]
    if not chosen:
        raise ValueError("give checkpoint=<export|model dir|Hub id> or checkpoints=[a,b,...]")
    return [str(c) for c in chosen]


def model_label(checkpoint: str, taken: set) -> str:
    """A short unique name for tables and plots: the export's folder name (or the Hub id)."""
    path = Path(checkpoint)
    label = path.name if path.is_dir() else checkpoint
    while label in taken:
        label = f"{path.parent.name}/{label}"
    taken.add(label)
    return label


def shipped_probes(name: str) -> pd.DataFrame:
    if name not in PROBE_SETS:
        raise ValueError(
            f"probes={name!r}: shipped probe sets are {', '.join(PROBE_SETS)} (or pass manifest=<eval.jsonl>)"
        )
    with resources.files("xtts_ft").joinpath("probes", f"{name}.tsv").open(encoding="utf-8") as f:
        return pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)


def probe_rows(cfg: DictConfig) -> List[dict]:
    """(probe set, text, language, reference, reference seconds, speaker) for every probe."""
    rows = []
    if cfg.manifest:
        manifest = Path(cfg.manifest)
        samples = read_manifest(manifest)[: cfg.max_utterances]
        if not samples:
            raise ValueError(f"{manifest} holds no utterances to evaluate")
        rows += [
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
    if cfg.probes:
        if not cfg.reference:
            raise ValueError(f"probes={cfg.probes} needs reference=<audio file> (the voice that speaks them)")
        reference = Path(cfg.reference)
        if not reference.is_file():
            raise FileNotFoundError(f"reference audio {reference} does not exist")
        table = shipped_probes(cfg.probes)
        for language, group in table.groupby("language", sort=False):
            rows += [
                {
                    "probe_set": cfg.probes,
                    "text": text,
                    "language": language,
                    "reference": reference,
                    "reference_seconds": None,
                    "speaker": reference.stem,
                }
                for text in group["text"][: cfg.max_utterances]
            ]
    if not rows:
        raise ValueError(
            "nothing to evaluate: give manifest=<eval.jsonl> and/or probes=sentences|short reference=<audio>"
        )
    if cfg.languages:
        kept = [r for r in rows if r["language"] in cfg.languages]
        if not kept:
            raise ValueError(
                f"languages={list(cfg.languages)} keeps none of the probes (their languages: "
                f"{', '.join(dict.fromkeys(r['language'] for r in rows))}) — fix: languages=[<some of those>]"
            )
        rows = kept
    # A text with nothing to say once punctuation goes ("...", "?!") has no CER to measure: left out, and said.
    scorable = [r for r in rows if metrics.normalize_for_scoring(r["text"], r["language"])]
    if len(scorable) < len(rows):
        empty = [r for r in rows if r not in scorable]
        log.warning(
            "%d probe(s) have no words to score, left out: %s",
            len(empty),
            "; ".join(f"{r['probe_set']}: {r['text']!r}" for r in empty[:5]),
        )
        rows = scorable
        if not rows:
            raise ValueError("no probe has words to score (every text is empty once punctuation goes)")
    return rows


def asr_choices(cfg: DictConfig, probes: List[dict]) -> Dict[str, Tuple[Optional[asr.Asr], str]]:
    """Per probe language, the ASR that scores it or why none does (a bad entry fails here,
    before any synthesis)."""
    return {language: asr.choose(cfg.asr, language) for language in dict.fromkeys(p["language"] for p in probes)}


def asr_scores(audio: np.ndarray, rate: int, text: str, language: str, choice: Optional[asr.Asr]) -> dict:
    """Transcript, CER and WER against the text (both cleaned by the language's cleaner); NaN only
    when no ASR is configured for the language, which the `asr` column and the report say."""
    if choice is None:
        return {"transcript": None, "cer": math.nan, "wer": math.nan, "asr_heard_nothing": False}
    transcript = choice.transcribe(audio, rate)
    return {
        "transcript": transcript,
        "cer": metrics.cer(text, transcript, language),
        "wer": metrics.wer(text, transcript, language),
        "asr_heard_nothing": not metrics.normalize_for_scoring(transcript, language),
    }


def no_measure_flags(row: dict, reference_has_voice: bool) -> List[str]:
    flags = []
    if row["no_speech"]:
        flags.append("no_speech (no voice detected: similarity, DNSMOS, UTMOS not computed)")
    elif not reference_has_voice:
        flags.append("reference has no voice (similarity not computed)")
    if row["asr_heard_nothing"]:
        flags.append("asr_heard_nothing (CER 1)")
    return flags


def evaluate_model(
    synthesizer: XttsSynthesizer,
    label: str,
    probes: List[dict],
    cfg: DictConfig,
    out: Path,
    reference_embeddings: Optional[Dict[str, np.ndarray]] = None,
    choices: Optional[Dict[str, Tuple[Optional[asr.Asr], str]]] = None,
) -> List[dict]:
    """One model's rows. `reference_embeddings` (reference path -> speaker embedding) is shared
    across models, so each reference is decoded and embedded once, not once per probe and model;
    `choices` (language -> ASR or why none, `asr_choices`) likewise."""
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)
    references = {} if reference_embeddings is None else reference_embeddings
    choices = asr_choices(cfg, probes) if choices is None else choices

    def reference_embedding(path) -> np.ndarray:
        if str(path) not in references:
            references[str(path)] = metrics.speaker_embedding(load_audio(path, 16000), 16000, cfg.speaker_model)
        return references[str(path)]

    rows = []
    usable = [p for p in probes if p["language"].split("-")[0] in [x.split("-")[0] for x in synthesizer.languages]]
    skipped = sorted({p["language"] for p in probes} - {p["language"] for p in usable})
    if skipped:
        log.warning("%s has no %s: those probes are skipped for it", label, ", ".join(skipped))
    # Batched synthesis (batch_size sentences per GPT generate); each utterance is scored as it is done.
    requests = [
        {
            "text": p["text"],
            "language": p["language"],
            "reference": p["reference"],
            "where": f"probe {p['probe_set']}: {p['text'][:40]!r}",
        }
        for p in usable
    ]  # a bad one's error names it
    done = synthesizer.iter_synthesize(requests, decoding, batch_size=cfg.batch_size)
    for i, result in tqdm(done, total=len(usable), desc=f"evaluate {label}", unit="utt"):
        probe = usable[i]
        wav_path = out / "wavs" / label.replace("/", "__") / f"{i:03d}_{probe['probe_set']}_{probe['language']}.wav"
        write_wav(wav_path, result.wav, result.sample_rate)
        choice, why_not = choices[probe["language"]]
        scores = asr_scores(result.wav, result.sample_rate, probe["text"], probe["language"], choice)
        reference_voice = reference_embedding(probe["reference"])
        row = {
            "model": label,
            "probe_set": probe["probe_set"],
            "utterance": i,
            "language": probe["language"],
            "speaker": probe["speaker"],
            "text": probe["text"],
            "wav": str(wav_path.relative_to(out)),
            "seconds": result.duration,
            "expected_seconds": metrics.expected_seconds(probe["text"], probe["language"], cfg.speaking_rates),
            "duration_ratio": metrics.duration_ratio(result.duration, probe["reference_seconds"]),
            "rms_dbfs": metrics.rms_dbfs(result.wav),
            "rtf": result.real_time_factor,
            "stopped": all(result.stopped),
            "no_speech": not metrics.speech_seconds(result.wav, result.sample_rate),
            "speaker_similarity": float(
                np.dot(metrics.speaker_embedding(result.wav, result.sample_rate, cfg.speaker_model), reference_voice)
            ),
            "dnsmos": metrics.dnsmos(result.wav, result.sample_rate)["ovrl_mos"],
            "utmos": metrics.utmos(result.wav, result.sample_rate, cfg.utmos_model) if cfg.utmos_model else math.nan,
            "asr": choice.describe() if choice else f"not scored ({why_not})",
            **scores,
        }
        row.update(
            metrics.hallucination_check(
                result.duration, probe["text"], probe["language"], scores["transcript"], rates=cfg.speaking_rates
            )
        )
        extra = no_measure_flags(row, bool(np.isfinite(reference_voice).all()))
        if extra:
            row["flags"] = "; ".join(extra + ([row["flags"]] if row["flags"] else []))
            row["flagged"] = True
        unknown = synthesizer.unknown_characters(probe["text"], probe["language"])
        if unknown:  # the GPT read [UNK] there: a fault of the text, named, but not counted in the model's flag rate
            row["flags"] = "; ".join(
                [f"unknown_characters {describe_characters(unknown)} (not in the vocabulary: read as [UNK])"]
                + ([row["flags"]] if row["flags"] else [])
            )
        rows.append(row)
    return sorted(rows, key=lambda row: row["utterance"])  # probe order, whatever order the batches finished in


def run(cfg: DictConfig) -> pd.DataFrame:
    out = Path(cfg.out_dir)
    probes = probe_rows(cfg)
    if cfg.speaker_model != "resemblyzer":
        metrics.ecapa_encoder(cfg.speaker_model)  # a missing model fails now, not after the first synthesis
    if cfg.utmos_model:
        metrics.utmos_model(cfg.utmos_model)
    choices = asr_choices(cfg, probes)
    for language, (choice, why_not) in choices.items():
        log.info("ASR for %s: %s", language, choice.describe() if choice else f"not scored ({why_not})")
        if choice:
            choice.load()  # a missing or unreachable model fails now, not after the first synthesis
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={out} is a file — fix: out_dir=<a folder> (made if missing)")
    # Every checkpoint found (or fetched) before any synthesis: a missing one fails now, not after the first model's probes.
    located = [(checkpoint, resolve_model_dir(str(checkpoint))) for checkpoint in checkpoints(cfg)]
    rows, taken, labels = [], set(), {}
    reference_embeddings: Dict[str, np.ndarray] = {}
    for checkpoint, model_dir in located:
        label = model_label(checkpoint, taken)
        labels[label] = checkpoint
        synthesizer = XttsSynthesizer(model_dir, device=cfg.device)
        rows += evaluate_model(synthesizer, label, probes, cfg, out, reference_embeddings, choices)
        del synthesizer  # one model in memory at a time
    if not rows:
        raise ValueError("no probe is in a language the model(s) have; see the warnings above")

    table = pd.DataFrame(rows)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "utterances.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv())
    plots = write_plots(table, out)
    forgotten = forgetting(summary)
    write_text(out / "forgetting.csv", forgotten.to_csv(index=False))
    write_text(out / "report.md", report(cfg, table, summary, plots, labels, forgotten))
    if cfg.write_metrics:
        for label, checkpoint in labels.items():
            record_metrics(
                Path(checkpoint),
                summary.loc[label] if label in summary.index.get_level_values(0) else None,
                cfg,
                table,
                forgotten[forgotten["model"] == label] if len(forgotten) else None,
                labels,
            )
    print(f"evaluated {len(table)} utterance(s) of {len(labels)} model(s) → {out / 'report.md'}")
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    groups = table.groupby(["model", "language"], sort=False)
    summary = groups[SUMMARY_COLUMNS].mean()  # NaN (not computable, no ASR) is left out of each mean
    for column in COUNT_COLUMNS:
        if column in table:
            summary[column] = groups[column].sum()
    summary["stopped_fraction"] = groups["stopped"].mean()
    summary["utterances"] = groups.size()
    return summary


# What forgetting is measured by: up is worse for CER and the flag rate, down for similarity.
FORGETTING_COLUMNS = ["cer", "speaker_similarity", "flagged"]


def forgetting(summary: pd.DataFrame) -> pd.DataFrame:
    """The first model is the base; for every later one (a fine-tune) and every language both were
    probed in — the base's own languages, not the ones the fine-tune added — each metric of the base,
    of the fine-tune, and the change (fine-tune − base). Empty with a single model."""
    models = list(dict.fromkeys(summary.index.get_level_values(0)))
    rows = []
    for model in models[1:]:
        base, tuned = summary.loc[models[0]], summary.loc[model]
        for language in [x for x in base.index if x in tuned.index]:
            row = {"model": model, "base": models[0], "language": language}
            for column in FORGETTING_COLUMNS:
                row.update(
                    {
                        f"{column}_base": base.loc[language, column],
                        column: tuned.loc[language, column],
                        f"{column}_change": tuned.loc[language, column] - base.loc[language, column],
                    }
                )
            row["utterances"] = int(tuned.loc[language, "utterances"])
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=["model", "base", "language"]
        + [f"{c}{suffix}" for c in FORGETTING_COLUMNS for suffix in ("_base", "", "_change")]
        + ["utterances"],
    )


def forgetting_md(forgotten: pd.DataFrame) -> str:
    if not len(forgotten):
        return (
            "Not measured: give the base first and the fine-tune after it, `checkpoints=[<base>,<fine-tune>]`, with probes "
            "in the base's languages (e.g. `probes=sentences`)."
        )
    return (
        f"The first model, `{forgotten['base'].iloc[0]}`, is the base; each later model against it on the base's languages. "
        "`_change` = fine-tune − base: CER and flag rate up, or speaker similarity down, is what fine-tuning cost the "
        "language. `nan`: not measurable (no ASR for the language, or no voice in any clip; see below).\n\n"
        + forgotten.drop(columns="base").round(3).to_markdown(index=False)
    )


def write_plots(table: pd.DataFrame, out: Path) -> List[str]:
    """metrics.png (CER, speaker similarity, DNSMOS per language, one bar per model) and
    durations.png (synthesized against expected seconds: babbling sits far above the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    languages = list(dict.fromkeys(table["language"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    width = 0.8 / len(models)
    for ax, (column, title) in zip(
        axes, [("cer", "CER (ASR)"), ("speaker_similarity", "speaker similarity"), ("dnsmos", "DNSMOS overall")]
    ):
        for k, model in enumerate(models):
            means = table[table["model"] == model].groupby("language")[column].mean().reindex(languages)
            ax.bar([i + k * width for i in range(len(languages))], means.fillna(0).values, width, label=model)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(languages))], languages)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for model in models:
        part = table[table["model"] == model]
        ax.scatter(part["expected_seconds"], part["seconds"], label=model, s=18)
    top = max(table["expected_seconds"].max(), table["seconds"].max()) * 1.05
    for factor, style in ((1, "-"), (2, ":"), (0.5, ":")):
        ax.plot([0, top], [0, top * factor], "k" + style, linewidth=0.8)
    ax.set_xlabel("expected seconds (text length)")
    ax.set_ylabel("synthesized seconds")
    ax.set_title("duration: flagged outside the dotted lines")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "durations.png", dpi=100)
    plt.close(fig)
    return ["metrics.png", "durations.png"]


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


def report(
    cfg: DictConfig,
    table: pd.DataFrame,
    summary: pd.DataFrame,
    plots: List[str],
    labels: dict,
    forgotten: Optional[pd.DataFrame] = None,
) -> str:
    paper = paper_metrics()
    ours = summary.reset_index()
    beside = ours[["model", "language", "cer", "speaker_similarity", "dnsmos"]].copy()
    beside["cer"] = beside["cer"] * 100
    beside = beside.join(
        paper.rename(columns={"cer_percent": "paper_cer_percent", "utmos": "paper_utmos", "secs": "paper_secs"}),
        on="language",
    )
    flagged = table[table["flagged"]]
    flagged_md = (
        flagged[["model", "probe_set", "language", "text", "seconds", "expected_seconds", "flags"]]
        .round(2)
        .to_markdown(index=False)
        if len(flagged)
        else "none"
    )
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

{beside.round(3).to_markdown(index=False)}

**Different protocols — do not compare directly.** The paper: 240 FLORES+ sentences per language, CER (%)
from Whisper large-v3, SECS from ECAPA2, UTMOS. Here: CER/WER from the ASR listed per language above. Speaker similarity: resemblyzer
(cosine; same voice ≈ 0.85+, different ≈ 0.6 on espeak-ng speech). Quality: DNSMOS overall (P.835, 1-5),
not UTMOS.

## Flagged utterances (babbling or truncation)

A flag: synthesized duration outside 0.5-2x the text's expected duration (per-language speaking rate), or ASR
insertions/deletions above a quarter of the text's words (at least 2).

{flagged_md}

## Utterances

{table[["model", "probe_set", "utterance", "language", "seconds", "expected_seconds", "cer", "speaker_similarity", "dnsmos", "rtf", "stopped", "no_speech", "flagged", "wav"]].round(3).to_markdown(index=False)}
"""


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
        "per_language": {
            language: {k: (None if pd.isna(v) else round(float(v), 4)) for k, v in row.items()}
            for language, row in summary.iterrows()
        },
    }
    if forgotten is not None and len(forgotten):
        base = forgotten["base"].iloc[0]
        record["metrics"]["forgetting"] = {
            "base": (labels or {}).get(base, base),
            "per_language": {
                row["language"]: {
                    k: (None if pd.isna(v) else round(float(v), 4))
                    for k, v in row.items()
                    if k not in ("model", "base", "language")
                }
                for _, row in forgotten.iterrows()
            },
        }
    write_json(sidecar, record)
    write_text(checkpoint / "README.md", model_card(record))
