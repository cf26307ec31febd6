"""Regenerate the demo corpus in data/demo/ with espeak-ng.

The demo corpus is real (synthetic but honest) speech: several espeak-ng voices act as
speakers, in English and French, written as two coqui-CSV corpora
(`audio_file|text|speaker_name`) so that `prepare` reads it like a user's data.
Two deliberately broken rows (a missing file, an empty text) show that nothing is
dropped silently. Output is deterministic for a given espeak-ng version.

    python scripts/make_demo_data.py [--out data/demo]
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
from pathlib import Path

import soundfile as sf

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "A rainbow is a meteorological phenomenon.",
    "She sells sea shells by the sea shore.",
    "Please call Stella and ask her to bring these things.",
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It is easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
]
FRENCH = [
    "Le petit chat dort sur le canapé.",
    "Il fait très beau aujourd'hui à Paris.",
    "Nous allons au marché le samedi matin.",
    "La musique adoucit les moeurs.",
    "Elle lit un livre dans le jardin.",
    "Le train part à huit heures précises.",
    "Les enfants jouent dans la cour de l'école.",
    "Il pleut souvent en automne.",
    "Mon frère habite près de la mer.",
    "Le boulanger ouvre sa boutique très tôt.",
    "Nous avons mangé une bonne soupe.",
    "La lune brille dans le ciel.",
]
# (corpus, speaker name, espeak-ng voice, words per minute, sentences)
SPEAKERS = [
    ("en", "alicia", "en-us+Alicia", 150, ENGLISH),
    ("en", "andy", "en-gb+Andy", 165, ENGLISH),
    ("fr", "annie", "fr+Annie", 150, FRENCH),
]


def speak(text: str, voice: str, wpm: int) -> tuple:
    wav_bytes = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm), text],
        check=True,
        capture_output=True,
    ).stdout
    return sf.read(io.BytesIO(wav_bytes), dtype="float32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "demo")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")

    rows: dict[str, list[str]] = {"en": [], "fr": []}
    for corpus, speaker, voice, wpm, sentences in SPEAKERS:
        wav_dir = args.out / corpus / "wavs"
        wav_dir.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(sentences):
            audio, rate = speak(text, voice, wpm)
            name = f"{speaker}_{i:03d}.flac"
            sf.write(wav_dir / name, audio, rate, subtype="PCM_16")
            rows[corpus].append(f"wavs/{name}|{text}|{speaker}")
    # Deliberately broken rows: prepare must log them in dropped.jsonl, not crash or skip silently.
    rows["en"].append("wavs/missing_clip.flac|This file does not exist.|alicia")
    rows["fr"].append("wavs/annie_000.flac||annie")

    for corpus, lines in rows.items():
        header = "audio_file|text|speaker_name"
        (args.out / corpus / "metadata.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    print(f"wrote {sum(len(v) for v in rows.values())} rows to {args.out}")


if __name__ == "__main__":
    main()
