"""Write the benchmark corpus: espeak-ng speech whose clip durations spread evenly over 1-11 s.

Real fine-tuning sets mix short and long clips, and a training step's cost grows with the
longest clip of its batch, so a benchmark on clips of one length says little. This script
speaks English texts with two espeak-ng voices (`en-us+m3`, `en-gb+f2`) and adjusts each
text's word count until its clip lasts about its target duration; the targets are spread
evenly from --min-seconds to --max-seconds and dealt alternately to the two voices. Output
is a coqui-CSV corpus (`metadata.csv` with `audio_file|text|speaker_name`, `wavs/*.wav`) that
`xtts-ft prepare` reads like a user's data. Deterministic for a given espeak-ng version.

    .venv/bin/python scripts/make_bench_corpus.py --out runs/bench_corpus --clips 18
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

# Harvard sentences (public domain), lower-case letters and spaces only: every character is in
# the tiny model's vocabulary, and the tokenizer maps none of it to [UNK].
WORDS = " ".join(
    [
        "the birch canoe slid on the smooth planks",
        "glue the sheet to the dark blue background",
        "it is easy to tell the depth of a well",
        "these days a chicken leg is a rare dish",
        "rice is often served in round bowls",
        "the juice of lemons makes fine punch",
        "the box was thrown beside the parked truck",
        "the hogs were fed chopped corn and garbage",
        "four hours of steady work faced us",
        "a large size in stockings is hard to sell",
        "the boy was there when the sun rose",
        "a rod is used to catch pink salmon",
        "the source of the huge river is the clear spring",
        "kick the ball straight and follow through",
        "help the woman get back to her feet",
        "a pot of tea helps to pass the evening",
        "smoky fires lack flame and heat",
        "the soft cushion broke the man's fall",
        "the salt breeze came across from the sea",
        "the girl at the booth sold fifty bonds",
    ]
).split()
VOICES = (("us_m3", "en-us+m3"), ("gb_f2", "en-gb+f2"))
WPM = 150
RATE = 22050


def speak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(WPM), text], check=True, capture_output=True
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == RATE, rate  # espeak-ng speaks at 22.05 kHz
    return audio


def text_of(start: int, count: int) -> str:
    words = [WORDS[(start + i) % len(WORDS)] for i in range(max(count, 1))]
    return " ".join(words).capitalize() + "."


def clip_for(target: float, voice: str, start: int) -> tuple:
    """The text (from word `start` of the pool) whose speech lasts closest to `target` seconds."""
    count = max(1, round(target * WPM / 60))
    best = None
    for _ in range(6):
        text = text_of(start, count)
        audio = speak(text, voice)
        seconds = len(audio) / RATE
        if best is None or abs(seconds - target) < abs(best[2] - target):
            best = (text, audio, seconds)
        if abs(seconds - target) < 0.25:
            break
        count = max(1, count + round((target - seconds) * WPM / 60))
    return best


def make_corpus(out: Path, clips: int, min_seconds: float = 1.0, max_seconds: float = 11.0) -> Path:
    """Write `clips` clips to out/wavs and out/metadata.csv; skip if the same corpus is there."""
    out = Path(out)
    stamp = f"clips={clips} min={min_seconds} max={max_seconds} wpm={WPM} voices={VOICES}"
    if (
        (out / "metadata.csv").is_file()
        and (out / "corpus.txt").is_file()
        and (out / "corpus.txt").read_text() == stamp
    ):
        return out
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    shutil.rmtree(out, ignore_errors=True)
    (out / "wavs").mkdir(parents=True)
    rows = []
    for i, target in enumerate(np.linspace(min_seconds, max_seconds, clips)):
        speaker, voice = VOICES[i % len(VOICES)]
        text, audio, _ = clip_for(float(target), voice, start=7 * i)
        name = f"{speaker}_{i:03d}.wav"
        sf.write(out / "wavs" / name, audio, RATE, subtype="PCM_16")
        rows.append(f"wavs/{name}|{text}|{speaker}")
    (out / "metadata.csv").write_text("\n".join(["audio_file|text|speaker_name", *rows]) + "\n", encoding="utf-8")
    (out / "corpus.txt").write_text(stamp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips", type=int, default=18)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=11.0)
    args = parser.parse_args()
    out = make_corpus(args.out, args.clips, args.min_seconds, args.max_seconds)
    durations = [sf.info(p).duration for p in sorted((out / "wavs").glob("*.wav"))]
    print(
        f"wrote {len(durations)} clips to {out}: {min(durations):.2f}-{max(durations):.2f} s, total {sum(durations):.1f} s"
    )


if __name__ == "__main__":
    main()
