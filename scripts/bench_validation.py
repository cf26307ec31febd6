"""Benchmark transcript validation (`prepare validate_transcripts=true`): × real time and audio
seconds per CPU second with the bundled Whisper tiny.en, today's path against the one before.

Makes (or reuses) an espeak-ng English corpus (`scripts/make_bench_corpus.py`), runs `prepare` on
it once without validation so the clips are the WAVs prepare writes, then runs the validation
(`xtts_ft.evaluation.validation.check_transcripts`, as prepare calls it, with a fresh transcript cache each
time) once per path and repeat, the paths interleaved:

- `before`: the path as it was: one window of packed clips at a time through faster-whisper's own
  `WhisperModel.transcribe` loop (which encodes again from where the decoder stopped), clips it
  heard nothing in heard again in smaller groups;
- `corpus-order`: the code now with the packing before one-voice windows: consecutive clips in
  corpus order, any voices, into a window while they fit;
- `window-end`: the code now, but a window's last heard clip counts as heard whole only when
  Whisper ended the window (before closing timestamps were read: a window Whisper stopped early
  sent its last clip to be heard again even when a timestamp had closed after its last sound);
- `align-all`: the code now, but words aligned in every window (before, a segment whose
  timestamps lie within one clip was not yet taken whole without aligning its words);
- `after`: the code in xtts_ft.evaluation.validation now (one voice per window, longest clips first).

Reported per run: audio seconds, wall seconds, × real time, CPU seconds of this process, audio
seconds per CPU second (the figure other load on the machine disturbs least: with both cores
busy, ≥ 10 audio-s per CPU-s is ≥ 20× real time on 2 cores), the cores other processes kept busy
meanwhile, and the mean CER and clips above max_transcript_cer. Then the transcripts of each path
against the first path's, clip by clip: how many differ, and each difference with its CER against
the clip's text.

    .venv/bin/python scripts/bench_validation.py --clips 60 --repeats 2 --paths before,after
    .venv/bin/python scripts/bench_validation.py --clips 60 --repeats 3 --paths corpus-order,after
    .venv/bin/python scripts/bench_validation.py --clips 60 --repeats 3 --paths window-end,after
    .venv/bin/python scripts/bench_validation.py --clips 60 --repeats 3 --paths align-all,after
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_bench_corpus import make_corpus  # noqa: E402

from xtts_ft.config import compose  # noqa: E402
from xtts_ft.data.audio import load_audio  # noqa: E402
from xtts_ft.data.sample import read_manifest  # noqa: E402
from xtts_ft.evaluation import asr, validation  # noqa: E402
from xtts_ft.io_utils import file_hash  # noqa: E402

# --- the path before: one window at a time through faster-whisper's sequential loop -----------


TODAY = validation.transcribe_clips  # run_path swaps the module's function per path


def corpus_order_pack(seconds, alone=(), voices=None):
    """The packing before: consecutive clips, in corpus order, into windows while they fit (any voices)."""
    windows, used = [], math.inf
    for i, length in enumerate(seconds):
        if (
            used + length + validation.GAP_SECONDS > validation.WINDOW_SECONDS
            or i in alone
            or windows[-1][-1] in alone
        ):
            windows.append([])
            used = 0.0
        windows[-1].append(i)
        used += length + validation.GAP_SECONDS
    return windows


def corpus_order_transcribe_clips(choice, paths, seconds, cache, voices=None):
    """Today's path with the corpus-order packing it had before one-voice first-fit-decreasing windows."""
    packing, validation.pack = validation.pack, corpus_order_pack
    try:
        return TODAY(choice, paths, seconds, cache, voices)
    finally:
        validation.pack = packing


def before_transcribe_clips(choice, paths, seconds, cache, voices=None):
    hashes = [file_hash(p) for p in paths]
    todo = [i for i, h in enumerate(hashes) if h not in cache.texts]
    windows = corpus_order_pack([seconds[i] for i in todo]) if not cache.solo else [[k] for k in range(len(todo))]
    for window in windows:
        clips = [load_audio(paths[todo[k]], asr.ASR_RATE) for k in window]
        texts = before_transcribe_window(choice.load(), clips, choice.language)
        cache.add({hashes[todo[k]]: text for k, text in zip(window, texts)})
    return [cache.texts[h] for h in hashes], sum(seconds[i] for i in todo)


def before_transcribe_window(model, clips, language):
    words = before_heard_words(model, clips, language)
    texts = ["".join(w).strip() for w in words]
    missed = [i for i, w in enumerate(words) if not w]
    if len(clips) > 1 and missed:
        groups = [missed] if len(missed) < len(clips) else [[i] for i in missed]
        for group in groups:
            for i, text in zip(group, before_transcribe_window(model, [clips[i] for i in group], language)):
                texts[i] = text
    return texts


def before_heard_words(model, clips, language):
    gap = np.zeros(int(validation.GAP_SECONDS * asr.ASR_RATE), np.float32)
    ends = np.cumsum([c.size + gap.size for c in clips]) / asr.ASR_RATE
    joined = np.concatenate([part for clip in clips for part in (clip, gap)])
    segments, _ = model.transcribe(
        joined,
        language=language,
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        word_timestamps=True,
        vad_filter=False,
    )
    words = [[] for _ in clips]
    for segment in segments:
        for word in segment.words or []:
            words[min(int(np.searchsorted(ends, (word.start + word.end) / 2)), len(clips) - 1)].append(word.word)
    return words


def window_end_transcribe_clips(choice, paths, seconds, cache, voices=None):
    """Today's path with the test before closing timestamps counted: the last clip a window heard words
    in is whole only when Whisper ended the window (an infinite negative slack: no timestamp suffices)."""
    slack, validation.HEARD_SLACK = validation.HEARD_SLACK, -math.inf
    try:
        return TODAY(choice, paths, seconds, cache, voices)
    finally:
        validation.HEARD_SLACK = slack


def align_all_transcribe_clips(choice, paths, seconds, cache, voices=None):
    """Today's path with every window's words aligned (before segments within one clip were taken whole)."""
    within, validation.within_one_clip = validation.within_one_clip, lambda start, end, bounds: False
    try:
        return TODAY(choice, paths, seconds, cache, voices)
    finally:
        validation.within_one_clip = within


PATHS = {
    "before": before_transcribe_clips,
    "corpus-order": corpus_order_transcribe_clips,
    "window-end": window_end_transcribe_clips,
    "align-all": align_all_transcribe_clips,
    "after": TODAY,
}


# --- measuring ---------------------------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def prepared(corpus: Path, work: Path):
    """The corpus through `prepare` (no validation): its clips as prepare writes them, and the settings."""
    from xtts_ft.stages import prepare

    cfg = compose(
        "prepare",
        [
            "data.name=bench",
            f"data.sources=[{{path: {corpus}, formatter: coqui_csv, language: en}}]",
            f"paths.processed_dir={work}",
            "max_text_tokens=0",
            "validate_transcripts=true",
        ],
    )
    root = work / "bench"
    if not (root / "train.jsonl").is_file():
        prepare.run(
            compose(
                "prepare",
                [
                    "data.name=bench",
                    f"data.sources=[{{path: {corpus}, formatter: coqui_csv, language: en}}]",
                    f"paths.processed_dir={work}",
                    "max_text_tokens=0",
                ],
            )
        )
    samples = sorted(read_manifest(root / "train.jsonl") + read_manifest(root / "eval.jsonl"), key=lambda s: s.audio)
    return root, samples, cfg


ENCODED = [0]  # 30 s windows through Whisper's encoder: the work, free of the machine's noise


def count_encoded_windows() -> None:
    from faster_whisper import WhisperModel

    encode = WhisperModel.encode

    def counted(self, features):
        ENCODED[0] += features.shape[0] if features.ndim == 3 else 1
        return encode(self, features)

    WhisperModel.encode = counted


def run_path(name: str, samples, root: Path, cfg) -> dict:
    """One validation of every clip with a fresh cache; its numbers and transcripts."""
    validation.transcribe_clips = PATHS[name]  # hear() calls it through the module
    ENCODED[0] = 0
    cache = Path(tempfile.mkdtemp(prefix=f"bench-validation-{name}-"))
    load = os.getloadavg()[0]
    busy0, cpu0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    checks, summary = validation.check_transcripts(samples, root, cfg, cache)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    others = max(busy_cpu_seconds() - busy0 - cpu, 0.0) / wall
    shutil.rmtree(cache)
    audio = sum(s.duration for s in samples)
    return {
        "path": name,
        "audio_s": audio,
        "transcribed_s": summary["transcribed_seconds"],
        "wall_s": wall,
        "cpu_s": cpu,
        "x_real_time": audio / wall,
        "audio_s_per_cpu_s": audio / cpu,
        "others_cores": others,
        "loadavg_before": load,
        "windows": ENCODED[0],
        "mean_cer": summary["mean_cer"],
        "above_max": summary["above_max"],
        "checks": checks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_validation")
    parser.add_argument(
        "--corpus", type=Path, help="a coqui-CSV English corpus (default: an espeak-ng one made under --work)"
    )
    parser.add_argument("--clips", type=int, default=60, help="clips of the espeak-ng corpus (1-11 s, about 6 s each)")
    parser.add_argument("--paths", default="before,after")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    corpus = args.corpus or make_corpus(args.work / f"corpus-{args.clips}", args.clips)
    root, samples, cfg = prepared(corpus, args.work / f"processed-{corpus.name}")
    count_encoded_windows()
    asr.whisper_model(asr.BUNDLED)  # both paths' models loaded before any clock starts
    asr.whisper_model(asr.BUNDLED, cpu_threads=1, num_workers=validation.WORKERS)
    names = args.paths.split(",")
    print(
        f"{len(samples)} clips, {sum(s.duration for s in samples):.1f} s of audio; {os.cpu_count()} CPU cores; "
        f"faster-whisper tiny.en int8"
    )
    print(
        "| path | audio s | wall s | × real time | CPU s | audio-s per CPU-s | windows encoded | other cores busy | load before | mean CER | above max |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first = {}
    for _ in range(args.repeats):
        for name in names:
            r = run_path(name, samples, root, cfg)
            first.setdefault(name, r)
            print(
                f"| {name} | {r['audio_s']:.1f} | {r['wall_s']:.1f} | {r['x_real_time']:.1f} | {r['cpu_s']:.1f} | "
                f"{r['audio_s_per_cpu_s']:.1f} | {r['windows']} | {r['others_cores']:.2f} | {r['loadavg_before']:.2f} | {r['mean_cer']} | "
                f"{r['above_max']} |",
                flush=True,
            )
    reference = first[names[0]]["checks"]
    for name in names[1:]:
        checks = first[name]["checks"]
        differ = [i for i, (a, b) in enumerate(zip(reference, checks)) if a.asr_text != b.asr_text]
        print(f"\n{name} against {names[0]}: {len(differ)} of {len(samples)} transcripts differ")
        for i in differ:
            print(
                f"- {Path(samples[i].audio).name} ({samples[i].duration:.1f} s): {samples[i].text!r}\n"
                f"    {names[0]} (CER {reference[i].asr_cer:.2f}): {reference[i].asr_text!r}\n"
                f"    {name} (CER {checks[i].asr_cer:.2f}): {checks[i].asr_text!r}"
            )


if __name__ == "__main__":
    main()
