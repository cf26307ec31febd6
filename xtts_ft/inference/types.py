"""The shapes synthesis speaks in: a voice (conditioning latents), a synthesis (the audio and how it
was made), a streamed chunk, the names of the decoding settings a config.json holds, and a request
as checked once (`PreparedRequest`) for every synthesis path to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

DECODING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "length_penalty")


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


@dataclass(frozen=True)
class PreparedRequest:
    """One request, checked: what every synthesis path (one text, streamed, batched) reads of it."""

    language: str  # as the model's config.languages names it (e.g. "en" for "en-US", "zh-cn" kept)
    voice: Voice  # the reference's or the named voice's latents, an emotion preset's conditioning applied
    settings: dict  # decoding settings: config.json's, overridden by the request's
    max_seconds_per_char: float  # the babble guard's rate (see XttsSynthesizer._max_codes)
    prefix: str  # put before each sentence's text: "[emotion token]", or ""
    sentences: List[Tuple[str, List[int]]]  # each sentence with the token ids XTTS's GPT reads for it
