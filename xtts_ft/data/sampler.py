"""The training sampler: which samples form each optimizer step, deterministic and restorable.

One epoch is planned at once from (seed, epoch) alone:
1. per-language weights choose the epoch's samples (weight 1: every sample once; 0.3: a fresh
   30 % draw each epoch, e.g. base-language replay in a new-language run; 2: every sample twice);
2. a seeded shuffle, then length bucketing: consecutive chunks of `bucket_batches` global
   batches are sorted by duration, so a batch holds clips of similar length (less padding);
3. the chunks are cut into global batches, the last one filled up from the start of the epoch
   (as torch's DistributedSampler pads), so every rank always gets full micro-batches and no rank
   waits for another that ran out of data;
4. the batch order is shuffled again so the model does not see lengths in sorted runs.

A global batch is batch_size × grad_accum_steps × world_size samples, split into consecutive
micro-batches; rank r takes micro-batches r·accum … (r+1)·accum−1. A 2-process run and a
1-process run with twice the accumulation therefore see exactly the same micro-batches.
(epoch, batch index) identifies a step's data; resume continues from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np

from xtts_ft.errors import BadValue


@dataclass(frozen=True)
class Step:
    epoch: int
    batch: int  # index of the global batch within the epoch
    micro_batches: List[List[int]]  # this rank's micro-batches (sample indices), in order
    micro_offset: int  # global index of this rank's first micro-batch (for per-micro-batch seeds)


class LengthBucketSampler:
    def __init__(
        self,
        durations: Sequence[float],
        languages: Sequence[str],
        batch_size: int,
        grad_accum_steps: int = 1,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        bucket_batches: int = 16,
        language_weights: Optional[Dict[str, float]] = None,
    ):
        if len(durations) != len(languages):
            raise ValueError("durations and languages must have one entry per sample")
        if len(durations) == 0:
            raise ValueError("the sampler needs at least one sample")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.languages = list(languages)
        self.batch_size, self.accum, self.world_size, self.rank = batch_size, grad_accum_steps, world_size, rank
        self.global_batch = batch_size * grad_accum_steps * world_size
        self.seed, self.bucket_batches = seed, max(bucket_batches, 1)
        self.language_weights = dict(language_weights or {})
        unknown = set(self.language_weights) - set(self.languages)
        if unknown:
            raise BadValue(
                f"language_weights name {', '.join(sorted(unknown))}, absent from the training data ({', '.join(sorted(set(self.languages)))})"
            )
        if any(w < 0 for w in self.language_weights.values()):
            raise BadValue(f"language_weights must be >= 0: {self.language_weights}")
        self.epoch_samples(0)  # fail now, not at the first step, when the weights leave nothing

    def _rng(self, epoch: int, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, purpose])

    def epoch_samples(self, epoch: int) -> np.ndarray:
        """The epoch's samples after language weighting (before shuffling)."""
        rng = self._rng(epoch, 0)
        chosen = []
        for language in sorted(set(self.languages)):
            members = np.array([i for i, lang in enumerate(self.languages) if lang == language])
            weight = float(self.language_weights.get(language, 1.0))
            whole, fraction = int(weight), weight - int(weight)
            chosen.extend(np.tile(members, whole))
            extra = int(round(fraction * len(members)))
            if extra:
                chosen.extend(rng.choice(members, size=extra, replace=False))
        if not chosen:
            raise BadValue(f"language_weights {self.language_weights} leave no sample in the epoch")
        return np.sort(np.array(chosen, dtype=np.int64), kind="stable")

    def epoch_batches(self, epoch: int) -> List[List[int]]:
        """All global batches of one epoch, in training order."""
        samples = self.epoch_samples(epoch)
        order = samples[self._rng(epoch, 1).permutation(len(samples))]
        chunk = self.global_batch * self.bucket_batches
        if self.bucket_batches > 1:
            order = np.concatenate(
                [
                    part[np.argsort(self.durations[part], kind="stable")]
                    for part in np.split(order, range(chunk, len(order), chunk))
                ]
            )
        missing = -len(order) % self.global_batch
        order = np.concatenate([order, np.resize(order, missing)])  # fill the last batch from the start
        batches = order.reshape(-1, self.global_batch)
        batches = batches[self._rng(epoch, 2).permutation(len(batches))]
        return [b.tolist() for b in batches]

    def steps(self, epoch: int = 0, start_batch: int = 0) -> Iterator[Step]:
        """This rank's steps forever, from (epoch, start_batch)."""
        while True:
            batches = self.epoch_batches(epoch)
            for b in range(start_batch, len(batches)):
                micro = [
                    batches[b][m * self.batch_size : (m + 1) * self.batch_size]
                    for m in range(self.accum * self.world_size)
                ]
                first = self.rank * self.accum
                yield Step(epoch, b, micro[first : first + self.accum], first)
            epoch, start_batch = epoch + 1, 0
