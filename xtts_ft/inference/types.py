"""The shapes synthesis speaks in: a voice (conditioning latents), a synthesis (the audio and how it
was made), a streamed chunk, the names of the decoding settings a config.json holds, and a request
as checked once (`PreparedRequest`) for every synthesis path to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

DECODING_KEYS = ("temperature", "top_k", "top_p", "repetition_penalty", "length_penalty")


@dataclass
class Voice:
    gpt_cond_latent: torch.Tensor
    speaker_embedding: torch.Tensor


@dataclass
class Synthesis:
    """One text's audio and how it was made. `stopped` is one flag (every sentence ended by the GPT's own stop
    token); `stopped_per_sentence` holds it sentence by sentence. `seed` is the sampling seed the call used,
    the one given or, unseeded, the one drawn: passed back as `seed=` to the same call, it gives this audio again."""

    wav: np.ndarray  # float32 mono at `sample_rate`
    sample_rate: int
    seconds_to_generate: float
    stopped_per_sentence: List[bool]  # in text order: the GPT emitted its stop token (False: cut by the babble guard)
    seed: Optional[int] = None  # the sampling seed used (None: made by a caller that does not say)

    @property
    def stopped(self) -> bool:
        """Whether every sentence ended by the GPT's own stop token (none was cut by the babble guard)."""
        return all(self.stopped_per_sentence)

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
    seed: Optional[int] = None  # the stream's sampling seed (given, or drawn when unseeded): stream(seed=...) again


@dataclass(frozen=True)
class PreparedRequest:
    """One request, checked: what every synthesis path (one text, streamed, batched) reads of it."""

    language: str  # as the model's config.languages names it (e.g. "en" for "en-US", "zh-cn" kept)
    voice: Voice  # the reference's or the named voice's latents, an emotion preset's conditioning applied
    settings: dict  # decoding settings: config.json's, overridden by the request's
    max_seconds_per_char: float  # the babble guard's rate (see XttsSynthesizer._max_codes)
    prefix: str  # put before each sentence's text: "[emotion token]", or ""
    sentences: List[Tuple[str, List[int]]]  # each sentence with the token ids XTTS's GPT reads for it
