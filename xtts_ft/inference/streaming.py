"""The streaming path of `XttsSynthesizer.stream`: each sentence's audio in chunks as the GPT generates
its codes, through coqui's own streaming generator and chunk handling (Xtts.inference_stream step for
step), except where a chunk is cut: a short first chunk (the latency), then longer ones."""

from __future__ import annotations

import time
from typing import Iterator, List

import torch

from xtts_ft.inference.types import AudioChunk, PreparedRequest, Voice


def stream_chunks(
    synthesizer, request: PreparedRequest, first_chunk_codes: int, chunk_codes: int
) -> Iterator[AudioChunk]:
    """`stream`'s chunks, sentence by sentence (with the token ids the synthesizer's _request made), timed from
    the first request for audio."""
    started = time.perf_counter()
    for sentence, tokens in request.sentences:
        max_codes = synthesizer._max_codes(sentence, request.language, request.max_seconds_per_char)
        for wav in stream_sentence(
            synthesizer, tokens, request.voice, request.settings, max_codes, first_chunk_codes, chunk_codes
        ):
            yield AudioChunk(
                wav.detach().float().cpu().numpy().reshape(-1), synthesizer.sample_rate, time.perf_counter() - started
            )


@torch.inference_mode()
def stream_sentence(
    synthesizer,
    tokens: List[int],
    voice: Voice,
    settings: dict,
    max_codes: int,
    first_chunk_codes: int,
    chunk_codes: int,
    overlap: int = 1024,
) -> Iterator[torch.Tensor]:
    """One sentence's audio chunks: coqui's Xtts.inference_stream step for step (its building
    blocks, its decoding arguments), except when a chunk is cut: after `first_chunk_codes` codes
    for the first, every `chunk_codes` after (inference_stream has one fixed size). `overlap` is
    inference_stream's overlap_wav_len, at its default; its speed stays 1 (as in `synthesize`)."""
    model, device = synthesizer.model, synthesizer.device
    gpt = model.gpt
    # The text as inference_stream (and Xtts.inference) feeds the GPT, stripped and lower-cased: `_request`
    # encoded it and checked its length.
    tokens = torch.tensor(tokens, dtype=torch.int32, device=device).unsqueeze(0)
    speaker = voice.speaker_embedding.to(device)
    # get_generator fixes the cap (max_length = gpt.max_gen_mel_tokens + prompt) when it is called,
    # so the babble guard need only hold while the generator is built, not while the caller listens.
    with synthesizer._babble_guard(max_codes):
        steps = gpt.get_generator(
            fake_inputs=gpt.compute_embeddings(voice.gpt_cond_latent.to(device), tokens),
            top_k=settings["top_k"],
            top_p=settings["top_p"],
            temperature=settings["temperature"],
            do_sample=True,
            num_beams=1,
            num_return_sequences=1,
            length_penalty=float(settings["length_penalty"]),
            repetition_penalty=float(settings["repetition_penalty"]),
            output_attentions=False,
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    latents: List[torch.Tensor] = []  # the GPT's last hidden state at each code: what the decoder speaks
    new, previous, held = 0, None, None  # codes since the last chunk; handle_chunks' previous audio and overlap
    for _code, latent in steps:  # the codes up to and with the stop token, or up to the guard's cap
        latents.append(latent)
        new += 1
        if new >= (first_chunk_codes if previous is None else chunk_codes):
            chunk, previous, held = decode_chunk(model, latents, speaker, previous, held, overlap, final=False)
            new = 0
            if chunk.numel():  # 1 code decodes to 1024 samples, all held back: no empty chunk (a false first audio)
                yield chunk
    if new == 0 and held is not None:
        # Nothing new since the last chunk: only the held-back overlap is left. inference_stream
        # decodes the whole sentence again to cross-fade these samples with themselves.
        yield held
    else:
        yield decode_chunk(model, latents, speaker, previous, held, overlap, final=True)[0]


def decode_chunk(model, latents: List[torch.Tensor], speaker: torch.Tensor, previous, held, overlap: int, final: bool):
    """(new audio, all audio so far, overlap held back) as inference_stream makes them. The decoder
    hears every latent so far, not only the new ones: its convolutions look both ways, so the
    end of a chunk changes once later codes are known; handle_chunks keeps the audio past the
    previous chunk and cross-fades the seam over `overlap` samples (the last ones, held back)."""
    wav = model.hifigan_decoder(torch.cat(latents, dim=0)[None, :], g=speaker)
    return model.handle_chunks(wav.squeeze(), previous, held, overlap, is_final=final)
