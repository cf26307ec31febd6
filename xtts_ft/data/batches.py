"""Deterministic batches for GPT training: every sample once per epoch, restorable mid-epoch.

Unlike coqui's XTTS dataset (which ignores the index and swaps clips at random), item i is
always sample i; the order is a seeded permutation per epoch, so (epoch, batch) fully
identifies what the model saw, and resume continues from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import torch

from xtts_ft.data.audio import load_audio
from xtts_ft.data.sample import Sample, resolve_audio


@dataclass(frozen=True)
class GptItem:
    audio: Path  # 22.05 kHz prepared clip
    text_tokens: torch.Tensor  # (L,)
    speaker: str


def encode_samples(samples: List[Sample], tokenizer, max_text_tokens: int, max_samples: int, manifest: Path):
    """Tokenize once; return (trainable items, skipped records with a reason)."""
    kept, skipped = [], []
    for s in samples:
        tokens = tokenizer.encode(s.text, lang=s.language)
        if len(tokens) > max_text_tokens:
            skipped.append({**s.to_json(), "reason": "too_many_tokens", "message": f"{len(tokens)} > {max_text_tokens}"})
        elif s.duration * 22050 > max_samples:
            skipped.append({**s.to_json(), "reason": "too_long", "message": f"{s.duration:.2f} s over the GPT limit"})
        elif 1 in tokens:  # [UNK]
            skipped.append({**s.to_json(), "reason": "unknown_characters", "message": "text encodes to [UNK]"})
        else:
            kept.append(GptItem(resolve_audio(manifest, s), torch.tensor(tokens, dtype=torch.long), s.speaker))
    return kept, skipped


def pick_references(items: List[GptItem], indices: List[int], rng: np.random.Generator) -> List[Path]:
    """A voice reference for each clip: another clip of the same speaker when there is one.

    Conditioning on the target clip itself would let the GPT copy its length and content from
    the reference, which inference (a different reference sentence) never offers.
    """
    by_speaker: dict = {}
    for i, item in enumerate(items):
        by_speaker.setdefault(item.speaker, []).append(i)
    references = []
    for i in indices:
        others = [j for j in by_speaker[items[i].speaker] if j != i] or [i]
        references.append(items[others[int(rng.integers(len(others)))]].audio)
    return references


def epoch_order(n: int, seed: int, epoch: int) -> List[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def iterate_batches(n: int, batch_size: int, seed: int, epoch: int, start_batch: int) -> Iterator[Tuple[int, int, List[int]]]:
    """Yield (epoch, batch index, sample indices) forever, starting at (epoch, start_batch)."""
    while True:
        order = epoch_order(n, seed, epoch)
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        for b in range(start_batch, len(batches)):
            yield epoch, b, batches[b]
        epoch, start_batch = epoch + 1, 0


def collate(items: List[GptItem], references: List[Path], cond_seconds: Tuple[float, float], rng: np.random.Generator):
    """Pad a batch; crop one reference segment per clip, all of one length (no cond padding)."""
    wavs = [torch.from_numpy(load_audio(item.audio, 22050)) for item in items]
    refs = [torch.from_numpy(load_audio(path, 22050)) for path in references]
    tokens = [item.text_tokens for item in items]
    cond_len = int(min(min(r.numel() for r in refs), rng.uniform(*cond_seconds) * 22050))
    cond = []
    for r in refs:
        start = int(rng.integers(0, r.numel() - cond_len + 1))
        cond.append(r[start : start + cond_len])
    return {
        "wavs": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
        "wav_lengths": torch.tensor([w.numel() for w in wavs]),
        "text_inputs": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
        "text_lengths": torch.tensor([t.numel() for t in tokens]),
        "cond_wavs": torch.stack(cond),
    }
