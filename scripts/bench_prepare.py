"""Benchmark `prepare`: audio-hours processed per wall-clock minute, ours vs the straightforward path.

Builds a corpus of mixed formats and rates from the demo speech (44.1/48 kHz, mono/stereo,
16/24-bit WAV and FLAC), then times on the same corpus:
  - straightforward: one process, per file `librosa.load(sr=22050, mono=True)` (soxr_hq
    resampling), `librosa.effects.trim`, `soundfile.write` — no loudness, no 24 kHz copy,
    no manifest, no checks;
  - ours, full chain (decode, checks, resample, trim, loudness, 24 kHz copy, write,
    manifests) with 1 worker and with all workers.
Each is run `--repeats` times, the paths interleaved; the best wall time counts (least
disturbed by other load and by the machine's drift).

    .venv/bin/python scripts/bench_prepare.py --clips 240 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [  # (rate, channels, subtype, extension)
    (44100, 1, "PCM_16", "wav"),
    (48000, 2, "PCM_24", "wav"),
    (44100, 2, "PCM_16", "flac"),
    (48000, 1, "PCM_24", "flac"),
]


def build_corpus(root: Path, clips: int) -> float:
    """coqui-CSV corpus of `clips` files made from the demo speech; returns its audio hours."""
    sources = sorted((REPO / "data" / "demo").glob("*/wavs/*.flac"))
    texts = {}
    for meta in (REPO / "data" / "demo").glob("*/metadata.csv"):
        for line in meta.read_text().splitlines()[1:]:
            audio, text, _ = line.split("|")
            texts[(meta.parent / audio).resolve()] = text
    (root / "wavs").mkdir(parents=True)
    rows, seconds = ["audio_file|text|speaker_name"], 0.0
    for i in range(clips):
        source = sources[i % len(sources)]
        audio, rate = sf.read(str(source), dtype="float32")
        target_rate, channels, subtype, ext = VARIANTS[i % len(VARIANTS)]
        audio = soxr.resample(audio, rate, target_rate)
        # Leading/trailing silence, so trimming has work to do.
        audio = np.concatenate([np.zeros(target_rate // 4, np.float32), audio, np.zeros(target_rate // 4, np.float32)])
        data = np.stack([audio] * channels, axis=1) if channels == 2 else audio
        name = f"clip{i:04d}.{ext}"
        sf.write(root / "wavs" / name, data, target_rate, subtype=subtype)
        rows.append(f"wavs/{name}|{texts[source.resolve()]}|spk{i % 3}")
        seconds += audio.size / target_rate
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return seconds / 3600


def straightforward(corpus: Path, out: Path) -> None:
    import librosa

    out.mkdir(parents=True)
    for line in (corpus / "metadata.csv").read_text().splitlines()[1:]:
        audio_file = line.split("|")[0]
        audio, _ = librosa.load(corpus / audio_file, sr=22050, mono=True)
        audio, _ = librosa.effects.trim(audio, top_db=40)
        sf.write(out / (Path(audio_file).stem + ".wav"), audio, 22050, subtype="PCM_16")


def ours(corpus: Path, out: Path, workers: int, models_dir: Path) -> None:
    from xtts_ft.config import compose
    from xtts_ft.stages import prepare

    cfg = compose(
        "prepare",
        [
            "data.name=bench",
            f"data.sources=[{{path: {corpus}, formatter: coqui_csv, language: en}}]",
            f"paths.processed_dir={out}",
            f"paths.models_dir={models_dir}",
            f"num_workers={workers}",
            "loudness_lufs=-23",
            "decoder_copies=true",
        ],
    )
    prepare.run(cfg)


def best_times(functions: dict, repeats: int, scratch: Path) -> dict:
    """Best wall time of each function over `repeats` rounds, the functions interleaved within a
    round: this VM's speed drifts by tens of percent over minutes, and interleaving gives every
    path the same share of fast and slow moments."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            out = scratch / f"out{len(list(scratch.iterdir()))}"
            started = time.perf_counter()
            function(out)
            times[name].append(time.perf_counter() - started)
            shutil.rmtree(out, ignore_errors=True)
    return {name: min(values) for name, values in times.items()}


def resample_work(repeats: int) -> float:
    """Seconds for `repeats` soxr HQ resamples of 4 s at 48 kHz: pure compute, no I/O, no imports timed."""
    audio = np.random.default_rng(0).standard_normal(48000 * 4).astype(np.float32)
    started = time.perf_counter()
    for _ in range(repeats):
        soxr.resample(audio, 48000, 22050, quality="HQ")
    return time.perf_counter() - started


def compute_scaling(workers: int, repeats: int = 400) -> float:
    """The machine's ceiling for process scaling: the same compute in 1 process vs `workers` spawned
    ones (started and warmed before the clock), as throughput ratio."""
    import multiprocessing

    alone = resample_work(repeats)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(resample_work, [5] * workers)
        started = time.perf_counter()
        pool.map(resample_work, [repeats] * workers)
        together = time.perf_counter() - started
    return workers * alone / together


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hours = build_corpus(tmp / "corpus", args.clips)
        scratch = tmp / "scratch"
        scratch.mkdir()
        models = REPO / "models"  # the tiny model's vocab.json checks the texts (built once if missing)
        ours(tmp / "corpus", scratch / "warm", 1, models)  # build the tiny model, warm caches (numba)
        shutil.rmtree(scratch / "warm")
        cores = os.cpu_count() or 1
        results = best_times(
            {
                "straightforward (librosa.load + trim + write, 1 process)": lambda o: straightforward(
                    tmp / "corpus", o
                ),
                "ours, full chain, 1 worker": lambda o: ours(tmp / "corpus", o, 1, models),
                f"ours, full chain, {cores} workers": lambda o: ours(tmp / "corpus", o, cores, models),
            },
            args.repeats,
            scratch,
        )
    scaling = compute_scaling(cores)
    base = results["ours, full chain, 1 worker"]
    print(
        f"\ncorpus: {args.clips} clips, {hours * 60:.1f} min of audio (44.1/48 kHz, mono/stereo, 16/24-bit, WAV/FLAC)\n"
    )
    print("| path | wall s | audio-hours / min | × real time | vs ours-1-worker |")
    print("|---|---|---|---|---|")
    for name, seconds in results.items():
        print(
            f"| {name} | {seconds:.1f} | {hours / (seconds / 60):.3f} | {hours * 3600 / seconds:.0f}× | {base / seconds:.2f} |"
        )
    print(
        f"\nthis machine's ceiling: pure compute (soxr) in {cores} spawned processes runs {scaling:.2f}× one process"
    )


if __name__ == "__main__":
    main()
