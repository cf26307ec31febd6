"""Scoring checkpoints on probes: each model speaks each probe through the shared inference module
(xtts_ft.inference), and each utterance becomes one row of measures.

Per utterance: CER/WER through the ASR chosen for its language (`asr_choices`; NaN with "not
scored (no ASR for xx)" where none is), speaker similarity to the reference, DNSMOS (and UTMOS
when configured), the duration against the recording and against the text's expectation, ASR
insertions and deletions, a hallucination/truncation flag with its reasons, real-time factor,
loudness, whether the GPT stopped by itself. What cannot be measured is flagged (`no_speech`,
`asr_heard_nothing`), and a text the vocabulary lacks characters of is named in the flags.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from xtts_ft.data.audio import load_audio, write_wav
from xtts_ft.data.text import describe_characters
from xtts_ft.evaluation import asr, metrics
from xtts_ft.inference import XttsSynthesizer

log = logging.getLogger(__name__)

AsrChoices = Dict[str, Tuple[Optional[asr.Asr], str]]  # language -> (the ASR that scores it, or None and why not)


def asr_choices(cfg: DictConfig, probes: List[dict]) -> AsrChoices:
    """Per probe language, the ASR that scores it or why none does (a bad entry fails here,
    before any synthesis)."""
    return {language: asr.choose(cfg.asr, language) for language in dict.fromkeys(p["language"] for p in probes)}


def load_metric_models(cfg: DictConfig, probes: List[dict]) -> AsrChoices:
    """Load every metric model the probes need (speaker model, UTMOS, each language's ASR), so a
    missing or unreachable one fails now, not after the first synthesis; the ASR choices."""
    if cfg.speaker_model != "resemblyzer":
        metrics.ecapa_encoder(cfg.speaker_model)
    if cfg.utmos_model:
        metrics.utmos_model(cfg.utmos_model)
    choices = asr_choices(cfg, probes)
    for language, (choice, why_not) in choices.items():
        log.info("ASR for %s: %s", language, choice.describe() if choice else f"not scored ({why_not})")
        if choice:
            choice.load()
    return choices


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


def model_label(checkpoint: str, taken: set) -> str:
    """A short unique name for tables and plots: the export's folder name (or the Hub id)."""
    path = Path(checkpoint)
    label = path.name if path.is_dir() else checkpoint
    while label in taken:
        label = f"{path.parent.name}/{label}"
    taken.add(label)
    return label


def evaluate_checkpoints(
    located: List[Tuple[str, Path]], probes: List[dict], cfg: DictConfig, out: Path, choices: AsrChoices
) -> Tuple[List[dict], Dict[str, str]]:
    """Every (checkpoint, model directory) on every probe in a language it has, one model in memory
    at a time: the rows, and label -> checkpoint. Each reference is embedded once for all models."""
    rows, taken, labels = [], set(), {}
    reference_embeddings: Dict[str, np.ndarray] = {}
    for checkpoint, model_dir in located:
        label = model_label(checkpoint, taken)
        labels[label] = checkpoint
        synthesizer = XttsSynthesizer(model_dir, device=cfg.device)
        rows += evaluate_model(synthesizer, label, probes, cfg, out, reference_embeddings, choices)
        del synthesizer  # one model in memory at a time
    return rows, labels


def evaluate_model(
    synthesizer: XttsSynthesizer,
    label: str,
    probes: List[dict],
    cfg: DictConfig,
    out: Path,
    reference_embeddings: Optional[Dict[str, np.ndarray]] = None,
    choices: Optional[AsrChoices] = None,
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
        voice = reference_embedding(probe["reference"])
        scored = score_utterance(result, probe, str(wav_path.relative_to(out)), cfg, choices[probe["language"]], voice)
        row = {"model": label, "probe_set": probe["probe_set"], "utterance": i, **scored}
        unknown = synthesizer.unknown_characters(probe["text"], probe["language"])
        if unknown:  # the GPT read [UNK] there: a fault of the text, named, but not counted in the model's flag rate
            row["flags"] = "; ".join(
                [f"unknown_characters {describe_characters(unknown)} (not in the vocabulary: read as [UNK])"]
                + ([row["flags"]] if row["flags"] else [])
            )
        rows.append(row)
    return sorted(rows, key=lambda row: row["utterance"])  # probe order, whatever order the batches finished in


def score_utterance(
    result,
    probe: dict,
    wav: str,
    cfg: DictConfig,
    choice_and_why: Tuple[Optional[asr.Asr], str],
    reference_voice: np.ndarray,
) -> dict:
    """One synthesized utterance (`result` of XttsSynthesizer.iter_synthesize, written to `wav`):
    its row from `language` on, with the hallucination check and the flags of what could not be
    measured. `reference_voice`: the speaker embedding of the probe's reference."""
    choice, why_not = choice_and_why
    scores = asr_scores(result.wav, result.sample_rate, probe["text"], probe["language"], choice)
    row = {
        "language": probe["language"],
        "speaker": probe["speaker"],
        "text": probe["text"],
        "wav": wav,
        "seconds": result.duration,
        "expected_seconds": metrics.expected_seconds(probe["text"], probe["language"], cfg.speaking_rates),
        "duration_ratio": metrics.duration_ratio(result.duration, probe["reference_seconds"]),
        "rms_dbfs": metrics.rms_dbfs(result.wav),
        "rtf": result.real_time_factor,
        "stopped": result.stopped,
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
    return row
