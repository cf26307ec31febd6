"""Regenerate the shipped demo corpora with espeak-ng: data/demo, data/wolof_demo, data/emotion_demo.

The corpora are real (synthetic but honest) speech: espeak-ng voices act as speakers.
- data/demo: English and French, two coqui-CSV corpora (`audio_file|text|speaker_name`) so
  that `prepare` reads it like a user's data. Two deliberately broken rows (a missing file,
  an empty text) show that nothing is dropped silently.
- data/wolof_demo: Wolof sentences (with digits and an abbreviation, for the Wolof cleaner) for
  the tiny Wolof recipe. espeak-ng has no Wolof voice: French voices read the Latin-script
  text, which is speech aligned with its transcript but not Wolof pronunciation.
- data/emotion_demo: English sentences acted in five styles by one voice (pitch, rate and
  loudness per emotion; espeak-ng's whisper variant for `whisper`), a CSV with an `emotion`
  column, for the tiny emotion recipe.
Output is deterministic for a given espeak-ng version.

    python scripts/make_demo_data.py [--out data] [--only demo,wolof_demo,emotion_demo]
"""

from __future__ import annotations

import argparse
import csv
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
WOLOF = [
    "Na nga def?",
    "Maa ngi fi rekk, jërëjëf.",
    "Ñaata at nga am?",
    "Dama bëgg lekk ceebu jën.",
    "Dakar dëkk bu mag la.",
    "Suba ma dem ca marse ba.",
    "Xale yi dañuy fo ci buntu kër gi.",
    "Am na 6 xar ak 10 bëy.",
    "Ba beneen yoon, ñu gis ci kanam.",
    "Yaay bi dafay togg ci waañ wi.",
    "Ndox mi dafa sedd lool.",
    "Jàng bi dafa am solo.",
    "Dr. Ndiaye dafa dem Tuubaa.",
    "Ma ngi lay sant ci sa ndimbal.",
]
# (speaker, espeak-ng voice, words per minute)
WOLOF_SPEAKERS = [("awa", "fr+Annie", 140), ("moussa", "fr+Andy", 150)]
EMOTION_SENTENCES = ENGLISH[:5]
# emotion → (espeak-ng voice, words per minute, pitch 0-99, amplitude 0-200)
EMOTIONS = {
    "neutral": ("en-us+Alicia", 150, 50, 100),
    "happy": ("en-us+Alicia", 180, 80, 120),
    "sad": ("en-us+Alicia", 115, 25, 70),
    "angry": ("en-us+Alicia", 185, 40, 190),
    "whisper": ("en-us+whisperf", 140, 50, 100),
}
# (corpus, speaker name, espeak-ng voice, words per minute, sentences)
SPEAKERS = [
    ("en", "alicia", "en-us+Alicia", 150, ENGLISH),
    ("en", "andy", "en-gb+Andy", 165, ENGLISH),
    ("fr", "annie", "fr+Annie", 150, FRENCH),
]


def speak(text: str, voice: str, wpm: int, pitch: int = 50, amplitude: int = 100) -> tuple:
    wav_bytes = subprocess.run(
        ["espeak-ng", "--stdout", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-a", str(amplitude), text],
        check=True,
        capture_output=True,
    ).stdout
    return sf.read(io.BytesIO(wav_bytes), dtype="float32")


def make_demo(out: Path) -> int:
    rows: dict[str, list[str]] = {"en": [], "fr": []}
    for corpus, speaker, voice, wpm, sentences in SPEAKERS:
        wav_dir = out / corpus / "wavs"
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
        (out / corpus / "metadata.csv").write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return sum(len(v) for v in rows.values())


def make_wolof(out: Path) -> int:
    lines = ["audio_file|text|speaker_name"]
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    for speaker, voice, wpm in WOLOF_SPEAKERS:
        for i, text in enumerate(WOLOF):
            audio, rate = speak(text, voice, wpm)
            name = f"{speaker}_{i:03d}.flac"
            sf.write(out / "wavs" / name, audio, rate, subtype="PCM_16")
            lines.append(f"wavs/{name}|{text}|{speaker}")
    (out / "metadata.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def make_emotion(out: Path) -> int:
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    rows = []
    for emotion, (voice, wpm, pitch, amplitude) in EMOTIONS.items():
        for i, text in enumerate(EMOTION_SENTENCES):
            audio, rate = speak(text, voice, wpm, pitch, amplitude)
            name = f"{emotion}_{i:03d}.flac"
            sf.write(out / "wavs" / name, audio, rate, subtype="PCM_16")
            rows.append({"audio": f"wavs/{name}", "text": text, "speaker": "alicia", "emotion": emotion})
    with open(out / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["audio", "text", "speaker", "emotion"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


MAKERS = {"demo": make_demo, "wolof_demo": make_wolof, "emotion_demo": make_emotion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    parser.add_argument("--only", default=",".join(MAKERS), help=f"comma list of: {', '.join(MAKERS)}")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: apt-get install espeak-ng")
    for name in args.only.split(","):
        print(f"wrote {MAKERS[name](args.out / name)} rows to {args.out / name}")


if __name__ == "__main__":
    main()
