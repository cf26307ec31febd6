"""The one inference path: CLI, notebooks, evaluation and tests all synthesize through here.

`XttsSynthesizer` loads the released base, an export or a Hub id with coqui-tts's own
loader, clones voices from reference audio it loads itself (soundfile + soxr, never
torchaudio.load), caches conditioning latents per reference file, splits long text into
sentences, and applies the decoding settings of the model's config.json unless overridden.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from xtts_ft.data.audio import load_audio
from xtts_ft.model.loading import load_xtts, pick_device, resolve_model_dir

EMOTIONS_FILE = "emotions_xtts.pth"  # an export's emotion presets (name → conditioning latents)
DECODING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "length_penalty")
CODES_PER_SECOND = 22050 / 1024  # one GPT audio code per 1024 samples at 22.05 kHz


@dataclass
class Voice:
    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


@dataclass
class Synthesis:
    wav: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    seconds_to_generate: float
    stopped: List[bool]  # per sentence: the GPT emitted its stop token (False: cut by the babble guard)

    @property
    def duration(self) -> float:
        return self.wav.size / self.sample_rate

    @property
    def real_time_factor(self) -> float:
        return self.seconds_to_generate / max(self.duration, 1e-9)


@dataclass
class AudioChunk:
    wav: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    seconds_since_start: float  # of the stream() call: the first chunk's is the time to first audio


def split_sentences(text: str, language: str) -> List[str]:
    import pysbd

    try:
        segmenter = pysbd.Segmenter(language=language.split("-")[0], clean=False)
    except ValueError:  # a language pysbd does not know: its English rules split on . ! ? too
        segmenter = pysbd.Segmenter(language="en", clean=False)
    return [s.strip() for s in segmenter.segment(text) if s.strip()]


def read_requests(path: Union[str, Path], language: str, reference: Optional[str], voice: Optional[str],
                  emotion: Optional[str] = None) -> List[dict]:
    """Texts to synthesize from a .txt (one per line) or a CSV/TSV with a `text` column and
    optional `language`, `reference`, `voice`, `emotion`, `name` columns (missing ones take the defaults)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"texts file {path} does not exist")
    if path.suffix.lower() in (".csv", ".tsv"):
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
        if "text" not in table.columns:
            raise ValueError(f"{path}: no `text` column (columns: {', '.join(table.columns)})")
        rows = table.to_dict("records")
    else:
        rows = [{"text": line.strip()} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    requests = []
    for line, row in enumerate(rows, start=2 if path.suffix.lower() in (".csv", ".tsv") else 1):
        if not str(row.get("text", "")).strip():
            raise ValueError(f"{path}, line {line}: empty text")
        request = {"text": row["text"], "language": row.get("language") or language,
                   "reference": row.get("reference") or None, "voice": row.get("voice") or None,
                   "emotion": row.get("emotion") or emotion, "name": row.get("name") or None}
        if request["reference"] is None and request["voice"] is None:
            request["reference"], request["voice"] = reference, voice
        requests.append(request)
    return requests


class XttsSynthesizer:
    def __init__(self, checkpoint: Union[str, Path], device: str = "auto", revision: Optional[str] = None):
        self.model_dir = resolve_model_dir(str(checkpoint), revision)
        self.device = pick_device(device)
        self.config, self.model = load_xtts(self.model_dir, self.device, for_inference=True)
        self.sample_rate = int(self.config.model_args.output_sample_rate)
        self._voices: Dict[Tuple[str, int, int], Voice] = {}

    @classmethod
    def from_model(cls, config, model, model_dir: Optional[Path] = None) -> "XttsSynthesizer":
        """Wrap a model already in memory (e.g. the GPT being trained, for in-loop eval audio)."""
        self = cls.__new__(cls)
        self.model_dir = Path(model_dir) if model_dir else None
        self.device = next(model.parameters()).device
        self.config, self.model = config, model
        self.sample_rate = int(config.model_args.output_sample_rate)
        self._voices = {}
        return self

    @property
    def languages(self) -> List[str]:
        return list(self.config.languages)

    @property
    def emotion_tokens(self) -> List[str]:
        """Emotion tokens the model was extended with (`xtts-ft extend emotions=[...]`)."""
        return list(getattr(self.model.tokenizer, "emotion_tokens", []))

    @property
    def emotion_presets(self) -> Dict[str, dict]:
        """Emotion presets of an export (`xtts-ft export +emotions={happy: clip.wav}`)."""
        if not hasattr(self, "_emotion_presets"):
            path = self.model_dir / EMOTIONS_FILE if self.model_dir else None
            self._emotion_presets = torch.load(path, map_location="cpu", weights_only=True) if path and path.is_file() else {}
        return self._emotion_presets

    def with_emotion(self, voice: Voice, emotion: Optional[str]) -> Tuple[Voice, Optional[str]]:
        """(voice, emotion token to put before the text). An emotion token of the model is used as
        such; a preset replaces the GPT conditioning (prosody) and keeps the voice's timbre."""
        if emotion is None:
            return voice, None
        token = emotion if emotion in self.emotion_tokens else None
        preset = self.emotion_presets.get(emotion)
        if token is None and preset is None:
            raise ValueError(
                f"this model has no emotion {emotion!r}: emotion tokens: {', '.join(self.emotion_tokens) or 'none'}; "
                f"emotion presets: {', '.join(self.emotion_presets) or 'none'}"
            )
        if preset is not None:
            voice = Voice(preset["gpt_cond_latent"].to(self.device), voice.speaker_embedding)
        return voice, token

    @property
    def voice_names(self) -> List[str]:
        manager = self.model.speaker_manager
        return manager.speaker_names if manager is not None else []

    def clone_voice(self, reference: Union[str, Path]) -> Voice:
        """Conditioning latents for a reference clip, computed once per file version."""
        path = Path(reference)
        if not path.is_file():
            raise FileNotFoundError(f"reference audio {path} does not exist")
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in self._voices:
            audio = torch.from_numpy(load_audio(path, 22050)).unsqueeze(0)
            max_seconds = int(self.config.max_ref_len)
            audio = audio[:, : 22050 * max_seconds]
            if audio.shape[1] < 22050 * 0.5:
                raise ValueError(f"reference audio {path} is {audio.shape[1] / 22050:.2f} s long; give at least 0.5 s (3-10 s is best)")
            gpt_cond_latent = self.model.get_gpt_cond_latents(
                audio, 22050, length=int(self.config.gpt_cond_len), chunk_length=int(self.config.gpt_cond_chunk_len)
            )
            speaker_embedding = self.model.get_speaker_embedding(audio.to(self.device), 22050)
            self._voices[key] = Voice(gpt_cond_latent, speaker_embedding)
        return self._voices[key]

    def named_voice(self, name: str) -> Voice:
        if name not in self.voice_names:
            raise KeyError(f"no voice named {name!r} in {self.model_dir / 'speakers_xtts.pth'}; known: {', '.join(self.voice_names) or 'none'}")
        latents = self.model.speaker_manager.speakers[name]
        return Voice(latents["gpt_cond_latent"], latents["speaker_embedding"])

    def decoding_settings(self, overrides: Optional[dict] = None) -> dict:
        settings = {key: getattr(self.config, key) for key in DECODING_KEYS}
        settings.update({k: v for k, v in (overrides or {}).items() if k in DECODING_KEYS and v is not None})
        return settings

    def _request(self, text: str, language: str, reference, voice, decoding: Optional[dict], emotion: Optional[str] = None):
        """Validate a request: (language, voice latents, decoding settings, babble-guard rate, text prefix)."""
        if not text.strip():
            raise ValueError("text is empty")
        language = language.split("-")[0] if language != "zh-cn" else language
        if language not in self.languages:
            raise ValueError(f"language {language!r} is not in this model's config.languages: {', '.join(self.languages)}")
        if (reference is None) == (voice is None):
            raise ValueError("give exactly one of reference= (an audio file to clone) or voice= (a named voice)")
        chosen = self.clone_voice(reference) if reference is not None else self.named_voice(voice)
        chosen, emotion_token = self.with_emotion(chosen, emotion)
        prefix = f"[{emotion_token}]" if emotion_token else ""  # the tokenizer reads it as the emotion token
        decoding = dict(decoding or {})
        settings = self.decoding_settings(decoding)
        max_seconds_per_char = float(decoding.get("max_seconds_per_char") or 0.25)
        if decoding.get("seed") is not None:
            torch.manual_seed(int(decoding["seed"]))
        return language, chosen, settings, max_seconds_per_char, prefix

    def _max_codes(self, sentence: str, max_seconds_per_char: float) -> int:
        # Babble guard: a sentence cannot need more than ~max_seconds_per_char per character.
        max_codes = int((2.0 + max_seconds_per_char * len(sentence)) * CODES_PER_SECOND)
        return min(max_codes, int(self.model.args.gpt_max_audio_tokens) - 3)

    def synthesize(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        emotion: Optional[str] = None,
    ) -> Synthesis:
        language, chosen, settings, max_seconds_per_char, prefix = self._request(text, language, reference, voice, decoding, emotion)
        started = time.perf_counter()
        pieces, stopped = [], []
        for sentence in split_sentences(text, language):
            max_codes = self._max_codes(sentence, max_seconds_per_char)
            out = self.model.inference(
                prefix + sentence,
                language,
                chosen.gpt_cond_latent,
                chosen.speaker_embedding,
                enable_text_splitting=False,
                max_new_tokens=max_codes,
                **settings,
            )
            codes = out["gpt_latents"].shape[1]
            stopped.append(codes < max_codes)
            pieces.append(np.asarray(out["wav"], dtype=np.float32).reshape(-1))
        elapsed = time.perf_counter() - started
        return Synthesis(np.concatenate(pieces), self.sample_rate, elapsed, stopped)

    def stream(
        self,
        text: str,
        language: str,
        reference: Union[str, Path, None] = None,
        voice: Optional[str] = None,
        decoding: Optional[dict] = None,
        chunk_codes: int = 20,
        emotion: Optional[str] = None,
    ) -> Iterator[AudioChunk]:
        """Audio as it is generated: a chunk every `chunk_codes` GPT codes (~0.93 s at 20), each
        with the seconds since the call, so the first one's is the time to first audio."""
        language, chosen, settings, max_seconds_per_char, prefix = self._request(text, language, reference, voice, decoding, emotion)
        started = time.perf_counter()
        for sentence in split_sentences(text, language):
            for wav in self.model.inference_stream(
                prefix + sentence,
                language,
                chosen.gpt_cond_latent,
                chosen.speaker_embedding,
                stream_chunk_size=chunk_codes,
                enable_text_splitting=False,
                max_new_tokens=self._max_codes(sentence, max_seconds_per_char),
                **settings,
            ):
                chunk = wav.detach().float().cpu().numpy().reshape(-1)
                yield AudioChunk(chunk, self.sample_rate, time.perf_counter() - started)

    def synthesize_batch(self, requests: List[dict], out_dir: Union[str, Path], decoding: Optional[dict] = None) -> List[dict]:
        """Each request (text, language, reference or voice, optional name) → <out_dir>/<name>.wav,
        with a progress bar; returns one row per request (file, duration, RTF, stopped)."""
        from tqdm import tqdm

        from xtts_ft.data.audio import write_wav

        out_dir = Path(out_dir)
        rows = []
        for i, request in enumerate(tqdm(requests, desc="synth", unit="text")):
            name = request.get("name") or f"{i:04d}"
            result = self.synthesize(
                text=request["text"], language=request["language"], reference=request.get("reference"),
                voice=request.get("voice"), decoding=decoding, emotion=request.get("emotion"),
            )
            path = out_dir / f"{name}.wav"
            write_wav(path, result.wav, result.sample_rate)
            rows.append({"name": name, "file": str(path), "text": request["text"], "language": request["language"],
                         "emotion": request.get("emotion"),
                         "seconds": round(result.duration, 3), "rtf": round(result.real_time_factor, 3), "stopped": all(result.stopped)})
        return rows

    def synthesize_to_file(self, out: Union[str, Path], **kwargs) -> Synthesis:
        from xtts_ft.data.audio import write_wav

        result = self.synthesize(**kwargs)
        write_wav(Path(out), result.wav, result.sample_rate)
        return result
