"""Benchmark synthesis throughput: coqui-tts's own Xtts.inference against our inference module.

Paths, each over the same --utterances English sentences (one sentence each) in one cloned voice,
all in this one process on one loaded model, interleaved round by round (--rounds):

  coqui     Xtts.inference, one utterance at a time (what evaluate and `synth texts=` did before)
  ours-1    XttsSynthesizer.synthesize_many, batch_size=1 (our generate, one sentence per call)
  ours-4    the same, batch_size=4 (4 sentences per GPT generate)
  ours-8    the same, batch_size=8
  stream    XttsSynthesizer.stream (our loop over coqui's streaming generator, at its defaults:
            the first chunk after 8 codes, then every 20) on the first sentence: time to the
            first audio chunk against the whole synthesis of that sentence by `synthesize`
            (coqui's path), measured back to back
  parts     where a batch's time goes: our GPT generate for the utterances one at a time and all
            in one batch (with MKL's products and transformers' GELU — the cache grown in place either
            way — and as synthesize_many runs it: through PackedProducts, whose setup — timing, packing
            the weights — is timed apart, with the fused GELU), the HiFiGAN
            decoder per utterance, coqui's GPT latents pass per utterance
            (Xtts.inference runs it; ours reads the generate's own latents since 2026-11-30), and one
            matrix product of the GPT's MLP shape (1024 x 4096) at 1 row and at as many rows as
            utterances (the per-step product of a batched decode)

Every path decodes exactly --codes GPT codes per utterance: the weights are random, so the stop
token's logit is pushed to -1e4 (never drawn) and every path's cap is --codes (coqui's through
gpt.max_gen_mel_tokens, ours through the babble guard). Decoding: the model's config.json
settings (sampling), seed 0. Reported per path: utterances/s (utterances / wall seconds of the
path, the decoder included, and for `coqui` its second GPT pass for the latents) and RTF (wall
seconds / seconds of audio).

Sizes: `full` (the XTTS-v2 GPT: 30 layers, width 1024, 16 heads, the real DVAE shape; random
weights, built once under --work-dir by xtts_ft.model.tiny.build_tiny_xtts) or `tiny`. The
HiFiGAN decoder and speaker encoder are real-sized in both (coqui builds them at that size).

    .venv/bin/python scripts/bench_inference.py --size full --codes 64 --utterances 8 --rounds 2
    .venv/bin/python scripts/bench_inference.py --size full --device cuda
    MKL_CBWR=AVX2 .venv/bin/python scripts/bench_inference.py --size full --codes 48 --paths coqui,ours-8,parts

MKL reads MKL_CBWR when it starts, so that setting is one process's: compare two invocations.

Another job on the same cores changes every number: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "data" / "demo" / "en" / "wavs" / "alicia_000.flac"
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
]
FULL_GPT = dict(gpt_layers=30, gpt_n_model_channels=1024, gpt_n_heads=16)


def build_model(size: str, work_dir: Path) -> Path:
    from xtts_ft.model.layout import REAL_DVAE
    from xtts_ft.model.tiny import build_tiny_xtts

    out = work_dir / "models" / size
    if not (out / "model.pth").is_file():
        build_tiny_xtts(out, seed=0, **(dict(gpt=FULL_GPT, dvae=REAL_DVAE) if size == "full" else {}))
    return out


def fixed_length(synthesizer, codes: int) -> None:
    """Every path decodes exactly `codes` codes: the stop token is never drawn, the cap is `codes`."""
    gpt = synthesizer.model.gpt
    with torch.no_grad():
        gpt.mel_head.bias[gpt.stop_audio_token] = -1e4
    gpt.max_gen_mel_tokens = codes  # coqui's cap (generate's max_length = this + prompt)
    synthesizer._max_codes = lambda sentence, language, max_seconds_per_char: codes  # ours


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_coqui(synthesizer, requests, decoding) -> float:
    """Xtts.inference one utterance at a time; returns seconds of audio."""
    settings = synthesizer.decoding_settings(decoding)
    voice = synthesizer.clone_voice(REFERENCE)
    torch.manual_seed(decoding["seed"])
    seconds = 0.0
    for request in requests:
        out = synthesizer.model.inference(
            request["text"],
            request["language"],
            voice.gpt_cond_latent,
            voice.speaker_embedding,
            enable_text_splitting=False,
            **settings,
        )
        seconds += len(out["wav"]) / synthesizer.sample_rate
    return seconds


def run_ours(synthesizer, requests, decoding, batch_size: int) -> float:
    return sum(r.duration for r in synthesizer.synthesize_many(requests, decoding, batch_size=batch_size))


def run_stream(synthesizer, request, decoding) -> dict:
    sync(synthesizer.device)
    chunks = list(synthesizer.stream(**request, decoding=decoding))
    sync(synthesizer.device)
    started = time.perf_counter()
    whole = synthesizer.synthesize(**request, decoding=decoding)
    sync(synthesizer.device)
    full_seconds = time.perf_counter() - started
    return {
        "first_chunk_s": chunks[0].seconds_since_start,
        "stream_total_s": chunks[-1].seconds_since_start,
        "full_synthesis_s": full_seconds,
        "ratio": chunks[0].seconds_since_start / full_seconds,
        "audio_s": whole.duration,
        "chunks": len(chunks),
    }


def run_parts(synthesizer, requests, decoding) -> dict:
    """Seconds per part for all the utterances (see the module docstring)."""
    sentences = [s for i, r in enumerate(requests) for s in synthesizer._sentences(i, r, decoding)]
    settings = synthesizer.decoding_settings(decoding)
    timed = {}

    def clock(name, work):
        sync(synthesizer.device)
        started = time.perf_counter()
        out = work()
        sync(synthesizer.device)
        timed[name] = time.perf_counter() - started
        return out

    clock("generate_one_at_a_time_s", lambda: [synthesizer._generate([s], settings) for s in sentences])
    rows = clock("generate_batched_mkl_s", lambda: synthesizer._generate(sentences, settings))
    # What synthesize_many runs: the batch's products (prompt pass, steps) through PackedProducts where faster,
    # GPT-2's GELU fused.
    packed_products = synthesizer._packed_products
    # The first time: the timing, then packing the weights.
    packed = clock(
        "packing_setup_s",
        lambda: packed_products.packed_weights(synthesizer.model.gpt.gpt, len(sentences), synthesizer.device),
    )
    with synthesizer._batch_kernels(packed, len(sentences)):
        rows = clock("generate_batched_s", lambda: synthesizer._generate(sentences, settings))
    del packed
    gpt = synthesizer.model.gpt
    latents = []
    with torch.no_grad():

        def latents_pass():  # Xtts.inference's second GPT pass (ours reads the generate's own latents)
            for sentence, (codes, _, _) in zip(sentences, rows):
                latents.append(
                    gpt(
                        sentence.tokens,
                        torch.tensor([sentence.tokens.shape[-1]], device=synthesizer.device),
                        codes.unsqueeze(0),
                        torch.tensor([codes.shape[-1] * gpt.code_stride_len], device=synthesizer.device),
                        cond_latents=sentence.voice.gpt_cond_latent,
                        return_attentions=False,
                        return_latent=True,
                    )
                )

        clock("latents_pass_s", latents_pass)
        clock(
            "decoder_s",
            lambda: [
                synthesizer.model.hifigan_decoder(x, g=s.voice.speaker_embedding) for x, s in zip(latents, sentences)
            ],
        )
        weight = torch.randn(1024, 4096, device=synthesizer.device)
        bias = torch.randn(4096, device=synthesizer.device)
        for rows_ in (1, len(sentences)):
            x = torch.randn(rows_, 1024, device=synthesizer.device)
            for _ in range(3):
                torch.addmm(bias, x, weight)
            clock(f"addmm_{rows_}_rows_ms", lambda: [torch.addmm(bias, x, weight) for _ in range(100)])
            timed[f"addmm_{rows_}_rows_ms"] *= 10  # 100 calls: ms per call
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--codes", type=int, default=64, help="GPT codes per utterance (21.5 per second of audio)")
    parser.add_argument("--utterances", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--paths", default="coqui,ours-1,ours-4,ours-8,stream")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/xtts_ft_bench_inference"))
    parser.add_argument("--out", type=Path, default=REPO / "scripts" / "results" / "bench_inference.json")
    args = parser.parse_args()

    from xtts_ft.inference import XttsSynthesizer

    torch.set_num_threads(os.cpu_count())
    model_dir = build_model(args.size, args.work_dir)
    synthesizer = XttsSynthesizer(model_dir, device=args.device)
    fixed_length(synthesizer, args.codes)
    requests = [
        {"text": text, "language": "en", "reference": REFERENCE}
        for text in (SENTENCES * (1 + args.utterances // len(SENTENCES)))[: args.utterances]
    ]
    decoding = {"seed": 0}
    paths = args.paths.split(",")
    run_ours(synthesizer, requests[:1], decoding, 1)  # warm-up: voice latents, allocator, kernels
    results = {path: [] for path in paths}
    for round_ in range(args.rounds):
        for path in paths:
            sync(synthesizer.device)
            started = time.perf_counter()
            if path == "stream":
                results[path].append(run_stream(synthesizer, requests[0], decoding))
                continue
            if path == "parts":
                results[path].append(run_parts(synthesizer, requests, decoding))
                print(
                    f"round {round_} parts: " + ", ".join(f"{k} {v:.2f}" for k, v in results[path][-1].items()),
                    flush=True,
                )
                continue
            audio = (
                run_coqui(synthesizer, requests, decoding)
                if path == "coqui"
                else run_ours(synthesizer, requests, decoding, int(path.split("-")[1]))
            )
            sync(synthesizer.device)
            wall = time.perf_counter() - started
            results[path].append(
                {"wall_s": wall, "audio_s": audio, "utt_per_s": len(requests) / wall, "rtf": wall / audio}
            )
            print(f"round {round_} {path}: {len(requests)} utt in {wall:.1f} s, {audio:.2f} s audio", flush=True)

    def best(path, key, pick=max):
        return pick(r[key] for r in results[path])

    rows = []
    for path in paths:
        if path in ("stream", "parts"):
            continue
        ratio = f"{best(path, 'utt_per_s') / best('coqui', 'utt_per_s'):.2f}x" if "coqui" in paths else "-"
        rows.append(f"| {path} | {best(path, 'utt_per_s'):.3f} | {best(path, 'rtf', min):.2f} | {ratio} |")
    table = "| path | utterances/s | RTF | vs coqui |\n|---|---|---|---|\n" + "\n".join(rows)
    if "stream" in paths:
        s = min(results["stream"], key=lambda r: r["ratio"])
        table += (
            f"\n\nstreaming: first chunk after {s['first_chunk_s']:.2f} s, whole sentence ({s['audio_s']:.2f} s audio) "
            f"synthesized in {s['full_synthesis_s']:.2f} s: ratio {s['ratio']:.2f}"
        )
    if "parts" in paths:
        table += "\n\nparts (seconds; addmm: ms per call): " + ", ".join(
            f"{k} {v:.2f}" for k, v in results["parts"][-1].items()
        )
    print(table)
    record = {
        "mkl_cbwr": os.environ.get("MKL_CBWR"),
        "size": args.size,
        "codes": args.codes,
        "utterances": args.utterances,
        "rounds": args.rounds,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": results,
        "table": table,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"→ {args.out}")


if __name__ == "__main__":
    main()
