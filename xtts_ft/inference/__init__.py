"""The one inference path: CLI, notebooks, evaluation, the web page and tests all synthesize through here.

- synthesizer: `XttsSynthesizer` — loading, voices, adapters, emotions, checking a request, and the
  public calls: `synthesize` (one text, coqui's Xtts.inference), `stream` (chunks as they are generated),
  `synthesize_many` / `iter_synthesize` / `synthesize_batch` (many texts, batched), `synthesize_to_file`;
- batched: the batched generate (several sentences, each with its own voice, language, babble guard and
  seed, in one transformers generate; the same codes as one at a time);
- streaming: the streaming loop over coqui's streaming generator (a short first chunk, then longer ones);
- cpu_kernels: every trick that patches torch or transformers for a batch's speed, each switchable off
  (XTTS_FT_PLAIN_KERNELS=1);
- requests: texts files read as requests, text cut into sentences;
- types: Voice, Synthesis, AudioChunk, DECODING_KEYS, and a checked request (PreparedRequest).

The names below are the package's public face: import them from `xtts_ft.inference`.
"""

from xtts_ft.inference.batched import CodeLimits, SeededDraw
from xtts_ft.inference.cpu_kernels import PLAIN_KERNELS_ENV, PackedProducts, cache_grown_in_place, fused_gelu
from xtts_ft.inference.requests import read_requests, split_sentences
from xtts_ft.inference.synthesizer import XttsSynthesizer
from xtts_ft.inference.types import DECODING_KEYS, AudioChunk, PreparedRequest, Synthesis, Voice

__all__ = [
    "DECODING_KEYS",
    "PLAIN_KERNELS_ENV",
    "AudioChunk",
    "CodeLimits",
    "PackedProducts",
    "PreparedRequest",
    "SeededDraw",
    "Synthesis",
    "Voice",
    "XttsSynthesizer",
    "cache_grown_in_place",
    "fused_gelu",
    "read_requests",
    "split_sentences",
]
