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


@dataclass
class GptItem:
    wav: torch.Tensor  # (T,) 22.05 kHz
    text_tokens: torch.Tensor  # (L,)


def encode_samples(samples: List[Sample], tokenizer, max_text_tokens: int, max_samples: int, manifest: Path):
    """Tokenize once; return (kept indices + tokens, skipped records with a reason)."""
    kept, skipped = [], []
    for i, s in enumerate(samples):
        tokens = tokenizer.encode(s.text, lang=s.language)
        if len(tokens) > max_text_tokens:
            skipped.append({**s.to_json(), "reason": "too_many_tokens", "message": f"{len(tokens)} > {max_text_tokens}"})
        elif s.duration * 22050 > max_samples:
            skipped.append({**s.to_json(), "reason": "too_long", "message": f"{s.duration:.2f} s over the GPT limit"})
        elif 1 in tokens:  # [UNK]
            skipped.append({**s.to_json(), "reason": "unknown_characters", "message": "text encodes to [UNK]"})
        else:
            kept.append((resolve_audio(manifest, s), torch.tensor(tokens, dtype=torch.long)))
    return kept, skipped


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


def collate(items: List[Tuple[Path, torch.Tensor]], cond_seconds: Tuple[float, float], rng: np.random.Generator):
    """Pad a batch; crop one reference segment per clip, all of one length (no cond padding)."""
    wavs = [torch.from_numpy(load_audio(path, 22050)) for path, _ in items]
    tokens = [t for _, t in items]
    shortest = min(w.numel() for w in wavs)
    cond_len = int(min(shortest, rng.uniform(*cond_seconds) * 22050))
    cond = []
    for w in wavs:
        start = int(rng.integers(0, w.numel() - cond_len + 1))
        cond.append(w[start : start + cond_len])
    return {
        "wavs": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
        "wav_lengths": torch.tensor([w.numel() for w in wavs]),
        "text_inputs": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
        "text_lengths": torch.tensor([t.numel() for t in tokens]),
        "cond_wavs": torch.stack(cond),
    }
