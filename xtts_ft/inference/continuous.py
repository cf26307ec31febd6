"""A batched decode whose rows come and go: `RunningBatch` steps the GPT one code for all its rows, as
batched.generate does, but in a loop of its own, so that between two steps a row that ended (its stop
token, its babble guard, a caller gone, logits that were not finite) leaves the batch, and new rows (new
sentences, prefilled apart with batched.prefill) join it. A server keeps its batch full this way instead
of waiting for the longest row of a batch before it starts the next.

A row's code at each step is what transformers' greedy generate with batched's processors gives it: the
embedding of its last code at its own position among its codes (coqui's GPT2InferenceModel.forward, with a
position per row), the GPT-2 over the cache (the other rows' padding masked; XTTS's GPT-2 has no position
embeddings of its own, so where a row's positions sit in the cache changes nothing), the final norm (the
latent the decoder speaks), the mel head, the sampling processors in transformers' order, then the row's
own seeded draw (batched.SeededDraw). Its ids for the repetition penalty are the prompt's placeholder,
the start-of-audio token and its codes, what transformers' input_ids hold for it. So a row's codes are
those it gets alone, whoever else is in the batch, and when they join or leave.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.nn.functional as F

from xtts_ft.inference import batched

PLACEHOLDER = 1  # the prompt's token id in transformers' input_ids (coqui's): what a row's ids are padded with


@dataclass(eq=False)
class LiveRow:
    """One sentence in a running batch: its codes and latents so far."""

    sentence: batched.Sentence
    tag: Any  # the caller's (e.g. the serving engine's row)
    generator: torch.Generator
    codes: List[int] = field(default_factory=list)  # up to and with its stop token, once stopped
    latents: List[torch.Tensor] = field(default_factory=list)  # (width,) per code: the final norm's output
    stopped: bool = False  # its stop token came
    failed: bool = False  # its logits were not finite: it gets no more codes

    @property
    def ended(self) -> bool:
        return self.stopped or self.failed or len(self.codes) >= self.sentence.max_codes


class RunningBatch:
    """Rows of one GPT and one set of decoding settings (`settings`, batched's), decoded together; `adapters`
    (mixed_adapters.RowAdapters, hooked by the caller): each row through its sentence's adapter."""

    def __init__(self, gpt, settings: dict, device: torch.device, adapters=None):
        self.gpt, self.settings, self.device = gpt, settings, device
        self.adapters = adapters or batched._NO_ADAPTERS
        self.rows: List[LiveRow] = []
        self.cache = None
        self.mask: Optional[torch.Tensor] = None  # (rows, positions in the cache + the next input)
        self.ids: Optional[torch.Tensor] = None  # (rows, ids): what the repetition penalty reads
        self.processors = batched._logits_processors(settings, [], device)
        self.draw = self.processors[-1]  # SeededDraw: its generators are the rows'

    @torch.no_grad()  # the weights require grad (the synthesizer leaves them as loaded): no graph in the cache
    def admit(self, sentences: List[batched.Sentence], tags: List[Any]) -> None:
        """New rows: their prompts through the GPT (batched.prefill, among themselves), their cache joined to
        the batch's, both padded on the left to one length (the padding masked)."""
        if not sentences:
            return
        _prompts, mask, cache = batched.prefill(self.gpt, sentences, self.device, self.adapters)
        start = torch.tensor([[PLACEHOLDER, self.gpt.start_audio_token]], device=self.device)
        new_ids = start.expand(len(sentences), 2)
        if self.cache is None:
            self.cache, self.mask, self.ids = cache, mask, new_ids.clone()
        else:
            self.mask = _joined(self.mask, mask, 0)
            self.ids = _joined(self.ids, new_ids, PLACEHOLDER)
            for old, new in zip(self.cache.layers, cache.layers):
                old.keys = _joined(old.keys, new.keys, 0.0, dim=2)
                old.values = _joined(old.values, new.values, 0.0, dim=2)
        for sentence, tag in zip(sentences, tags):
            generator = torch.Generator(device=self.device).manual_seed(int(sentence.seed))
            self.rows.append(LiveRow(sentence, tag, generator))
        self.draw.generators = [row.generator for row in self.rows]

    @torch.no_grad()
    def retire(self, leaving: List[LiveRow]) -> None:
        """Rows out of the batch; the cache's positions that only they used go too."""
        gone = set(map(id, leaving))
        keep = [k for k, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        self.draw.generators = [row.generator for row in self.rows]
        if not keep:
            self.cache = self.mask = self.ids = None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self.mask[index]
        first = int(mask.any(0).nonzero()[0])  # positions before it are padding in every row left
        self.mask = mask[:, first:]
        self.ids = self.ids[index]
        first_id = int((self.ids != PLACEHOLDER).any(0).nonzero()[0]) - 1  # one placeholder kept per row
        self.ids = self.ids[:, max(0, first_id) :]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first:].contiguous()
            layer.values = layer.values[index, :, first:].contiguous()

    def kernels(self, synthesizer, packed: dict):
        """The context the steps of this membership run in: cpu_kernels' products and GELU for this row count,
        and the cache growing in place (room for the longest babble guard left)."""
        from xtts_ft.inference.cpu_kernels import cache_grown_in_place

        stack = contextlib.ExitStack()
        stack.enter_context(synthesizer._batch_kernels(packed, len(self.rows)))
        left = max(row.sentence.max_codes - len(row.codes) for row in self.rows)
        stack.enter_context(cache_grown_in_place(self.cache, self.cache.get_seq_length() + left + 1))
        return stack

    @torch.no_grad()
    def step(self) -> None:
        """One code for every row (its latent kept), as transformers' generate steps (see the module doc)."""
        inference = self.gpt.gpt_inference
        last = self.ids[:, -1:]
        # An ended row may stay in the batch for a while (its caller takes it out when it suits): its position
        # stops growing, past its babble guard it could leave the position table.
        positions = torch.tensor(
            [min(len(row.codes), row.sentence.max_codes) for row in self.rows], device=self.device
        )
        emb = inference.embeddings(last) + inference.pos_embedding.emb(positions)[:, None]
        with self.adapters.rows([row.sentence.adapter for row in self.rows]):
            hidden = inference.transformer(
                inputs_embeds=emb, past_key_values=self.cache, attention_mask=self.mask, use_cache=True
            ).last_hidden_state
            latents = inference.final_norm(hidden)
            logits = inference.lm_head[-1](latents)[:, -1, :].to(copy=True, dtype=torch.float32)
        finite = torch.isfinite(logits).all(dim=-1)
        if not bool(finite.all()):  # the others go on: flat logits stand in, the row is marked failed
            logits = torch.where(finite[:, None], logits, torch.zeros_like(logits))
        codes = self.processors(self.ids, logits).argmax(dim=-1)
        self.ids = torch.cat([self.ids, codes[:, None]], dim=1)
        self.mask = F.pad(self.mask, (0, 1), value=1)
        latents = latents[:, -1]
        for row, code, latent, ok in zip(self.rows, codes.tolist(), latents, finite.tolist()):
            if row.ended:  # its codes are final; what it computes now is padding
                continue
            if not ok:
                row.failed = True
                continue
            row.codes.append(code)
            row.latents.append(latent)
            row.stopped = code == self.gpt.stop_audio_token

    def row_latents(self, row: LiveRow) -> torch.Tensor:
        """(1, codes, width): what the decoder speaks for the row's codes so far."""
        return torch.stack(row.latents)[None]


def _joined(old: torch.Tensor, new: torch.Tensor, pad, dim: int = 1) -> torch.Tensor:
    """`old` and `new` stacked as rows (dim 0), the shorter along `dim` padded on the left with `pad`."""
    length = max(old.shape[dim], new.shape[dim])

    def padded(t: torch.Tensor) -> torch.Tensor:
        if t.shape[dim] == length:
            return t
        shape = list(t.shape)
        shape[dim] = length - t.shape[dim]
        return torch.cat([t.new_full(shape, pad), t], dim=dim)

    return torch.cat([padded(old), padded(new)], dim=0)
