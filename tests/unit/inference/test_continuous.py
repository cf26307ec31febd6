"""continuous.RunningBatch: rows that join a running batch mid-way and rows that leave it (or step on, ended,
until half the batch has) get, code for code, what batched.generate gives each sentence alone (greedy and
sampled), and the latents it reads."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.settings import DEMO
from xtts_ft.inference.continuous import RunningBatch

REQUESTS = [
    {"text": "Hello there.", "language": "en", "reference": DEMO / "en" / "wavs" / "alicia_000.flac"},
    {
        "text": "The birch canoe slid on the smooth planks.",
        "language": "en",
        "reference": DEMO / "fr" / "wavs" / "annie_000.flac",
    },
    {"text": "Bonjour. Encore une fois!", "language": "fr", "reference": DEMO / "en" / "wavs" / "alicia_000.flac"},
]


@pytest.fixture(scope="module")
def untrained(tiny_model_dir):
    from xtts_ft.inference import XttsSynthesizer

    return XttsSynthesizer(tiny_model_dir, device="cpu")


@pytest.mark.parametrize("decoding", [{"top_k": 1}, {}], ids=["greedy", "sampled"])
def test_rows_joining_and_leaving_a_running_batch_get_the_codes_they_get_alone(untrained, decoding):
    decoding = {**decoding, "seed": 5, "max_seconds_per_char": 0.02}
    sentences = [s for i, r in enumerate(REQUESTS) for s in untrained._sentences(i, r, decoding)]
    settings = untrained.decoding_settings(decoding)
    alone = [untrained._generate([s], settings)[0] for s in sentences]
    batch = RunningBatch(untrained.model.gpt, settings, untrained.device)
    batch.admit(sentences[:2], [0, 1])
    # The prompts' pass builds no autograd graph (the weights require grad): the cache holds plain tensors.
    assert not any(layer.keys.requires_grad or layer.values.requires_grad for layer in batch.cache.layers)
    sizes, done = [], {}
    waiting = list(enumerate(sentences))[2:]
    while batch.rows or waiting:
        batch.step()
        sizes.append(len(batch.rows))
        ended = [row for row in batch.rows if row.ended]
        done.update({row.tag: row for row in ended})
        if 2 * len(ended) >= len(batch.rows):  # as the server does: an ended row may step on a while
            batch.retire(ended)
        if len(sizes) in (3, 7) and waiting:  # one row joins at step 3, the rest at step 7
            joining = waiting[:1] if len(sizes) == 3 else waiting
            waiting = waiting[len(joining) :]
            batch.admit([s for _, s in joining], [k for k, _ in joining])
    assert max(sizes) == 4 and sizes[0] == 2 and sizes[-1] < 4  # joined mid-way, then left
    for k, expected in enumerate(alone):
        row = done[k]
        assert torch.equal(torch.tensor(row.codes), expected.codes), k
        assert torch.allclose(torch.stack(row.latents)[None], expected.latents, rtol=0, atol=1e-5)
