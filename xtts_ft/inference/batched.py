"""The batched path of `XttsSynthesizer.iter_synthesize`: sentences of many requests (any voices and
languages) cut into rows, their prompts through the GPT at once (`prefill`), one transformers generate
for all rows with a babble guard and a seeded sampling stream per row (`generate`), then the HiFiGAN
decoder speaking each row from the latents that generate computed (`speak`), and the loop that runs the
batches and puts each request's audio back together (`synthesized_batches`).

Under greedy decoding a row's codes are those the sentence gets alone (and through coqui's own
GPT.generate); sampling draws each row from its own seed, so its codes depend on nothing else.
The CPU tricks a batch runs with live in cpu_kernels.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from xtts_ft.errors import UserError
from xtts_ft.inference.cpu_kernels import cache_grown_in_place
from xtts_ft.inference.types import Synthesis, Voice


class Generated(NamedTuple):
    """One row of a batched generate."""

    codes: torch.Tensor  # (n,) as Xtts.inference keeps them: up to and with the stop token, or all if cut
    stopped: bool  # ended by its own stop token, not by its babble guard
    latents: (
        torch.Tensor
    )  # (1, n, width): the GPT's final-normed hidden state at each code's step: what the decoder speaks


@dataclass
class Sentence:
    """One sentence of one request, as the batched GPT decodes it."""

    request: int  # index of its request
    tokens: torch.Tensor  # (1, T) text tokens, as coqui's Xtts.inference encodes them
    voice: Voice
    max_codes: int  # its babble guard
    seed: int  # its own sampling stream (see SeededDraw)
    adapter: Optional[str] = None  # its LoRA adapter in a batch of mixed adapters (see mixed_adapters); None: none


class SeededDraw:
    """The sampling step of a batched decode, one random stream per row: the argmax of
    log p - log E, E ~ Exp(1) drawn from the row's own generator, is a draw from p (the
    exponential race). Run as the last logits processor of a greedy generate, it makes a row's
    codes depend on its seed only, never on which rows share its batch or how many."""

    def __init__(self, seeds: List[int], device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # Every row draws at every step, finished or not, so its k-th draw is always its k-th code's.
        race = torch.stack(
            [torch.empty(scores.shape[1], device=scores.device).exponential_(generator=g) for g in self.generators]
        )
        return scores.float().log_softmax(-1) - race.clamp_min(torch.finfo(race.dtype).tiny).log()


class CodeLimits:
    """The babble guard per row: row i is done after `max_codes[i]` codes (transformers' own
    max_length is one number for the whole batch)."""

    def __init__(self, prompt_length: int, max_codes: List[int], device: torch.device):
        self.prompt_length = prompt_length
        self.max_codes = torch.tensor(max_codes, device=device)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.max_codes


def request_sentences(synthesizer, index: int, request: dict, decoding: Optional[dict]) -> List[Sentence]:
    """A request checked (as `synthesize` checks it, by the synthesizer's _request) and cut into sentences
    with their tokens; a bad one's error names its file and line (read_requests' `where`) or its index."""
    try:
        prepared = synthesizer._request(
            request["text"],
            request["language"],
            request.get("reference"),
            request.get("voice"),
            decoding,
            request.get("emotion"),
        )
    except (ValueError, FileNotFoundError) as err:
        raise _placed(err, request.get("where") or f"request {index}") from None
    device = synthesizer.device
    voice = Voice(prepared.voice.gpt_cond_latent.to(device), prepared.voice.speaker_embedding.to(device))
    seed = (decoding or {}).get("seed")
    seed = int(seed) if seed is not None else int(torch.randint(2**62, ()))  # unseeded: follows torch's global RNG
    sentences = []
    for k, (sentence, tokens) in enumerate(prepared.sentences):
        tokens = torch.tensor(tokens, dtype=torch.int32, device=device).unsqueeze(0)
        max_codes = synthesizer._max_codes(sentence, prepared.language, prepared.max_seconds_per_char)
        sentences.append(Sentence(index, tokens, voice, max_codes, seed + k))
    return sentences


def _placed(err: Exception, where: str) -> Exception:
    """The same error, of the same type (a UserError keeps its fix), its message led by where it was found."""
    if isinstance(err, UserError):
        return type(err)(f"{where}: {err}", err.fix) if err.fix is not None else type(err)(f"{where}: {err}")
    return type(err)(f"{where}: {err}")


def text_embedding(gpt, sentence: Sentence) -> torch.Tensor:
    """(length, width): the text between its start and stop tokens, embedded — what coqui's
    GPT.compute_embeddings puts after the conditioning latents for one row."""
    text = F.pad(F.pad(sentence.tokens, (0, 1), value=gpt.stop_text_token), (1, 0), value=gpt.start_text_token)
    return (gpt.text_embedding(text) + gpt.text_pos_embedding(text))[0]


def _distinct_voices(sentences: List[Sentence]) -> Tuple[List[torch.Tensor], List[Optional[str]], List[int]]:
    """(each distinct voice's latents, (length, width); the adapter it goes through; the index of each row's
    voice among them). A voice is distinct per adapter: a LoRA adapter changes its keys and values."""
    voices: List[torch.Tensor] = []
    adapters: List[Optional[str]] = []
    voice_of_row = []
    for sentence in sentences:
        latents = sentence.voice.gpt_cond_latent  # (1, length, width)
        same = (
            k
            for k, v in enumerate(voices)
            if adapters[k] == sentence.adapter
            and (v is latents or (v.shape == latents.shape and torch.equal(v, latents)))
        )
        k = next(same, None)
        if k is None:
            voices.append(latents)
            adapters.append(sentence.adapter)
            k = len(voices) - 1
        voice_of_row.append(k)
    return [v[0] for v in voices], adapters, voice_of_row


def prefill(gpt, sentences: List[Sentence], device: torch.device, adapters=None):
    """The GPT's pass over every row's prompt, each distinct voice's conditioning latents computed once.

    A row's prompt is its voice's conditioning latents (32 of the 70-odd positions of a short
    sentence), then its text. The GPT-2 inside XTTS has no position embeddings of its own (coqui's
    are added to the text and codes before it), so a position's hidden states depend only on the
    unmasked positions before it: the latents' keys and values are the same in every row that
    speaks in that voice, whatever its text. Each row is laid out as its voice's latents (padded
    after them to the longest voice's), then its text padded before it to the longest text; the
    voices go through the GPT once each, their cache is copied to the rows that use them, and the
    texts go through after. Returns (the rows' prompts embedded, attention mask with a last column
    for the start-of-audio token, the cache). `adapters` (a mixed_adapters.RowAdapters): each pass goes
    through its rows' own LoRA adapters."""
    adapters = adapters or _NO_ADAPTERS
    voices, voice_adapters, voice_of_row = _distinct_voices(sentences)
    texts = []
    for s in sentences:
        with adapters.rows([s.adapter]):  # trainable token rows of an adapter's extended vocabulary
            texts.append(text_embedding(gpt, s))
    voice_width, text_width = max(v.shape[0] for v in voices), max(t.shape[0] for t in texts)
    rows = torch.tensor(voice_of_row, device=device)
    voice_block = torch.stack([F.pad(v, (0, 0, 0, voice_width - v.shape[0])) for v in voices])
    voice_mask = (
        torch.arange(voice_width, device=device)[None, :]
        < torch.tensor([v.shape[0] for v in voices], device=device)[:, None]
    ).long()
    text_block = torch.stack([F.pad(t, (0, 0, text_width - t.shape[0], 0)) for t in texts])
    text_mask = (
        torch.arange(text_width, device=device)[None, :]
        >= torch.tensor([text_width - t.shape[0] for t in texts], device=device)[:, None]
    ).long()
    mask = torch.cat(
        [voice_mask[rows], text_mask, torch.ones((len(sentences), 1), dtype=torch.long, device=device)], dim=1
    )
    transformer = gpt.gpt_inference.transformer
    with adapters.rows(voice_adapters):
        cache = transformer(inputs_embeds=voice_block, attention_mask=voice_mask, use_cache=True).past_key_values
    if voice_of_row != list(range(len(sentences))):
        cache.reorder_cache(rows)  # each row gets its voice's keys and values
    with adapters.rows([s.adapter for s in sentences]):
        transformer(inputs_embeds=text_block, attention_mask=mask[:, :-1], past_key_values=cache, use_cache=True)
    return torch.cat([voice_block[rows], text_block], dim=1), mask, cache


class _NoAdapters:
    """A batch without LoRA adapters per row: every pass as it is."""

    @staticmethod
    def rows(names):
        return contextlib.nullcontext()


_NO_ADAPTERS = _NoAdapters()


@torch.no_grad()
def generate(gpt, sentences: List[Sentence], settings: dict, device: torch.device, adapters=None) -> List[Generated]:
    """One transformers generate for all rows: codes, stopped by itself, and latents per row.

    The prompts are padded to one length (see prefill) and the padding masked out, so every row's
    audio codes start at the same column; the GPT's positions are its own learned embeddings (text
    from 0 per row, audio from the start-of-audio token), so the padding shifts nothing. A row ends
    at its stop token or its own babble guard; the others go on.

    The latents are the hidden states the generate computes anyway, read at the GPT's final norm
    (coqui's inference_stream speaks these too). Xtts.inference instead runs the GPT over the text
    and codes once more: the same positions and weights, so the same latents up to float rounding
    (≤ 2e-6 at full size, BENCHMARKS.md), for a pass that cost a quarter of a batch's time on CPU.
    Not thread-safe (nor is the synthesizer): the hook hears every forward of the GPT.

    `adapters` (a mixed_adapters.RowAdapters, hooked): each row goes through its sentence's LoRA adapter.
    (A batch whose rows come and go, as a server's does, runs continuous.RunningBatch instead.)"""
    adapters = adapters or _NO_ADAPTERS
    prompts, mask, cache = prefill(gpt, sentences, device, adapters)
    width = prompts.shape[1]
    max_codes = [s.max_codes for s in sentences]
    # coqui's forward reads the prompt's length from the stored prefix (the codes' positions count from it).
    gpt.gpt_inference.store_prefix_emb(prompts)
    # Token ids of the prompt are placeholders (coqui's are 1s): the cache holds the prompt; the generate
    # goes on from the start-of-audio token.
    inputs = torch.ones((len(sentences), width + 1), dtype=torch.long, device=device)
    inputs[:, -1] = gpt.start_audio_token
    processors = _logits_processors(settings, [s.seed for s in sentences], device)
    with adapters.rows([s.adapter for s in sentences]):
        generated, steps = _generate_reading_latents(gpt, inputs, mask, cache, processors, max_codes, device)
    return _rows(gpt, generated[:, width + 1 :], steps, max_codes)


def _logits_processors(settings: dict, seeds: List[int], device: torch.device):
    """transformers' sampling processors in its own order and on its own conditions, then the per-row draw.
    The repetition penalty sees which ids a row holds: its padding's placeholders are the prompt's own (1s),
    so a padded row penalises what it would alone."""
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if settings["repetition_penalty"] not in (None, 1.0):
        processors.append(RepetitionPenaltyLogitsProcessor(float(settings["repetition_penalty"])))
    if settings["temperature"] not in (None, 1.0):
        processors.append(TemperatureLogitsWarper(float(settings["temperature"])))
    if settings["top_k"]:
        processors.append(TopKLogitsWarper(int(settings["top_k"])))
    if settings["top_p"] is not None and settings["top_p"] < 1.0:
        processors.append(TopPLogitsWarper(float(settings["top_p"])))
    processors.append(SeededDraw(seeds, device))
    return processors


def _generate_reading_latents(gpt, inputs, mask, cache, processors, max_codes: List[int], device: torch.device):
    """(the generated ids, prompt placeholders included; the final-normed hidden state of each forward's last
    position). Each forward of the generate passes its hidden states through the final norm (the first of
    lm_head's two layers) once; the last position's is the latent of the code it predicts."""
    from transformers import StoppingCriteriaList

    prompt = inputs.shape[1]  # the prompt's placeholders and the start-of-audio token
    steps: List[torch.Tensor] = []
    hook = gpt.gpt_inference.final_norm.register_forward_hook(
        lambda _norm, _inputs, out: steps.append(out[:, -1].clone())
    )
    try:
        # The cache holds at most the prompt, the start-of-audio token and the longest babble guard's codes.
        with cache_grown_in_place(cache, prompt + max(max_codes)):
            generated = gpt.gpt_inference.generate(
                inputs,
                attention_mask=mask,
                past_key_values=cache,
                do_sample=False,
                num_beams=1,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([CodeLimits(prompt, max_codes, device)]),
                bos_token_id=gpt.start_audio_token,
                pad_token_id=gpt.stop_audio_token,
                eos_token_id=gpt.stop_audio_token,
                max_length=prompt + max(max_codes),
            )
    finally:
        hook.remove()
    return generated, steps


def _rows(gpt, generated: torch.Tensor, steps: List[torch.Tensor], max_codes: List[int]) -> List[Generated]:
    """Each row's codes (`generated`: the new ids only), whether it stopped by itself, and its latents."""
    new_tokens = generated.shape[1]
    # One forward per new code, the start-of-audio token's first (the prompt is in the cache). Any other count (a
    # chunked prefill, a change in transformers' generate) would shift every latent against its code: same shapes,
    # wrong audio.
    if len(steps) not in (new_tokens, new_tokens + 1):
        raise RuntimeError(
            f"the GPT ran {len(steps)} forwards for {new_tokens} new codes: this transformers "
            "version's generate does not step as XttsSynthesizer expects (one forward per code)"
        )
    latents = torch.stack(steps[:new_tokens], dim=1)  # (rows, steps, width): step k's latent belongs to code k
    rows = []
    for row, (codes, limit) in enumerate(zip(generated, max_codes)):
        codes = codes[:limit]
        stops = (codes == gpt.stop_audio_token).nonzero()
        # As Xtts.inference keeps them: the codes up to and with the stop token, or all, if cut.
        codes, stopped = (codes[: int(stops[0]) + 1], True) if len(stops) else (codes, False)
        rows.append(Generated(codes, stopped, latents[row : row + 1, : codes.shape[-1]]))
    return rows


@torch.no_grad()
def speak(model, sentence: Sentence, row: Generated) -> np.ndarray:
    """A row's latents → audio: the HiFiGAN decoder with the voice's speaker embedding, as
    Xtts.inference calls it."""
    wav = model.hifigan_decoder(row.latents, g=sentence.voice.speaker_embedding)
    return wav.detach().float().cpu().numpy().reshape(-1)


class _Assembly:
    """The sentences' audio as their batches finish, until each request's last sentence is done."""

    def __init__(self, sentences: List[Sentence], sample_rate: int):
        self.sample_rate = sample_rate
        self.left = Counter(s.request for s in sentences)  # sentences still to do, per request
        self.pieces: Dict[int, Dict[int, Tuple[np.ndarray, bool, float]]] = {}

    def add(self, request: int, k: int, wav: np.ndarray, stopped: bool, seconds: float) -> Optional[Synthesis]:
        """Sentence `k` of `request` done: the request's Synthesis if it was its last, else None."""
        self.pieces.setdefault(request, {})[k] = (wav, stopped, seconds)
        self.left[request] -= 1
        if self.left[request]:
            return None
        done = [piece for _, piece in sorted(self.pieces.pop(request).items())]  # sentences in text order
        return Synthesis(
            np.concatenate([p[0] for p in done]), self.sample_rate, sum(p[2] for p in done), [p[1] for p in done]
        )


def synthesized_batches(
    synthesizer, sentences: List[Sentence], settings: dict, batch_size: int
) -> Iterator[Tuple[int, Synthesis]]:
    """(request index, Synthesis) as each request's last sentence is spoken: `batch_size` sentences per
    generate (the synthesizer's _generate, inside its _batch_kernels), then the decoder per row."""
    assembly = _Assembly(sentences, synthesizer.sample_rate)
    # Similar text lengths together: less padding, and fewer rows idle while a long one finishes.
    order = sorted(range(len(sentences)), key=lambda k: sentences[k].tokens.shape[-1])
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]

    def run(batch: List[int], packed: dict) -> Iterator[Tuple[int, Synthesis]]:
        started = time.perf_counter()
        with synthesizer._batch_kernels(packed, len(batch)):
            rows = synthesizer._generate([sentences[k] for k in batch], settings)
        shared = (time.perf_counter() - started) / len(batch)
        for k, row in zip(batch, rows):
            started = time.perf_counter()
            wav = speak(synthesizer.model, sentences[k], row)
            request = sentences[k].request
            result = assembly.add(request, k, wav, row.stopped, shared + time.perf_counter() - started)
            if result is not None:
                yield request, result

    # Each batch's products (its prompt's pass, its one-code steps) the way that is fastest on this CPU
    # (see PackedProducts): the full batches with one packed copy of the weights, then the last, smaller
    # one (packing takes 0.7-1.5 s at full size, so not once per batch). The copy is held until that row
    # count's batches are done, the caller's work between results included; the layers are patched only
    # inside each generate, so another call in between (or a caller that stops early) sees them as usual.
    for rows in sorted({len(batch) for batch in batches}, reverse=True):
        packed = synthesizer._packed_products.packed_weights(synthesizer.model.gpt.gpt, rows, synthesizer.device)
        for batch in (b for b in batches if len(b) == rows):
            yield from run(batch, packed)
        del packed
