"""GPT training items and batches: tokenised texts, cached audio codes, reference crops.

Item i is always sample i (unlike coqui's XTTS dataset, which ignores the index and swaps clips
at random); which items form a step is the sampler's job (`xtts_ft.data.sampler`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch

from xtts_ft.data.audio import load_audio
from xtts_ft.data.sample import Sample, resolve_audio
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.model.constants import GPT_SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GptItem:
    audio: Path  # 22.05 kHz prepared clip
    text_tokens: torch.Tensor  # (L,)
    speaker: str
    language: str
    num_samples: int  # length of the clip at 22.05 kHz
    codes: Optional[torch.Tensor] = None  # (~num_samples/1024,) DVAE codes, from the cache

    @property
    def duration(self) -> float:
        return self.num_samples / GPT_SAMPLE_RATE

    def with_codes(self, codes: torch.Tensor) -> "GptItem":
        return replace(self, codes=codes)


def emotion_labels(samples: List[Sample], tokenizer, manifest: Path) -> bool:
    """Whether the samples' `emotion` labels become tokens: yes when the model has emotion tokens
    (then every label must be one of them), no (with a warning) when it has none."""
    labels = sorted({s.emotion for s in samples if s.emotion})
    tokens = list(getattr(tokenizer, "emotion_tokens", []))
    if not labels:
        return False
    if not tokens:
        log.warning(
            "%s has emotion labels (%s) but the model has no emotion tokens: the labels are ignored "
            "(add the tokens with `xtts-ft extend emotions=[%s]`)",
            manifest,
            ", ".join(labels),
            ",".join(labels),
        )
        return False
    unknown = [label for label in labels if label not in tokens]
    if unknown:
        raise BadValue(
            f"{manifest}: emotion label(s) {', '.join(unknown)} have no token in the model "
            f"(its emotion tokens: {', '.join(tokens)})",
            fix=f"extend the model with emotions=[{','.join(labels)}] (`xtts-ft extend`)",
        )
    return True


def encode_samples(samples: List[Sample], tokenizer, max_text_tokens: int, max_samples: int, manifest: Path):
    """Tokenize once (`[lang]`, then `[emotion]` when the model has emotion tokens, then the text);
    return (trainable items, skipped records with a reason)."""
    kept, skipped = [], []
    with_emotions = emotion_labels(samples, tokenizer, manifest)
    for s in samples:
        if with_emotions and s.emotion:
            tokens = tokenizer.encode(s.text, lang=s.language, emotion=s.emotion, report_unknown=False)
        else:
            tokens = tokenizer.encode(s.text, lang=s.language, report_unknown=False)
        if len(tokens) > max_text_tokens:
            skipped.append(
                {**s.to_json(), "reason": "too_many_tokens", "message": f"{len(tokens)} > {max_text_tokens}"}
            )
        elif s.duration * GPT_SAMPLE_RATE > max_samples:
            skipped.append({**s.to_json(), "reason": "too_long", "message": f"{s.duration:.2f} s over the GPT limit"})
        elif 1 in tokens:  # [UNK]
            skipped.append({**s.to_json(), "reason": "unknown_characters", "message": "text encodes to [UNK]"})
        else:
            audio = resolve_audio(manifest, s)
            try:
                num_samples = sf.info(str(audio)).frames
            except (RuntimeError, sf.LibsndfileError) as err:
                raise MissingFile(
                    f"{manifest}: clip {audio} is missing or unreadable ({err})", fix="run `xtts-ft prepare` again"
                ) from None
            kept.append(GptItem(audio, torch.tensor(tokens, dtype=torch.long), s.speaker, s.language, num_samples))
    return kept, skipped


class ReferencePicker:
    """A voice reference for each clip: another clip of the same speaker when there is one.

    Conditioning on the target clip itself would let the GPT copy its length and content from
    the reference, which inference (a different reference sentence) never offers. The speaker
    groups are built once: picking runs at every training step.
    """

    def __init__(self, items: Sequence[GptItem]):
        self.items = items
        self.groups: dict = {}
        for i, item in enumerate(items):
            self.groups.setdefault(item.speaker, []).append(i)
        self.position = {i: p for group in self.groups.values() for p, i in enumerate(group)}

    def __call__(self, indices: List[int], rng: np.random.Generator) -> List[Path]:
        references = []
        for i in indices:
            group = self.groups[self.items[i].speaker]
            if len(group) == 1:  # a lone clip of its speaker is its own reference
                references.append(self.items[i].audio)
                continue
            k = int(rng.integers(len(group) - 1))  # one of the others, skipping i itself
            references.append(self.items[group[k if k < self.position[i] else k + 1]].audio)
        return references


def collate(items: List[GptItem], references: List[Path], cond_seconds: Tuple[float, float], rng: np.random.Generator):
    """Pad a batch; crop one reference segment per clip, all of one length (no cond padding).

    Items with cached codes give `codes`; without, the batch carries the waveforms (`wavs`) for
    the caller to encode.
    """
    refs = [torch.from_numpy(load_audio(path, GPT_SAMPLE_RATE)) for path in references]
    tokens = [item.text_tokens for item in items]
    cond_len = int(min(min(r.numel() for r in refs), rng.uniform(*cond_seconds) * GPT_SAMPLE_RATE))
    cond = []
    for r in refs:
        start = int(rng.integers(0, r.numel() - cond_len + 1))
        cond.append(r[start : start + cond_len])
    batch = {
        "wav_lengths": torch.tensor([item.num_samples for item in items]),
        "text_inputs": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True),
        "text_lengths": torch.tensor([t.numel() for t in tokens]),
        "cond_wavs": torch.stack(cond),
    }
    if all(item.codes is not None for item in items):
        batch["codes"] = torch.nn.utils.rnn.pad_sequence([item.codes.long() for item in items], batch_first=True)
    else:
        wavs = [torch.from_numpy(load_audio(item.audio, GPT_SAMPLE_RATE)) for item in items]
        batch["wavs"] = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    return batch
