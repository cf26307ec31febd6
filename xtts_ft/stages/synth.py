"""Stage `synth`: one text, one voice, one WAV, through the shared inference module."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import List

import numpy as np
from omegaconf import DictConfig, OmegaConf

from xtts_ft.data.audio import write_wav
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.inference import XttsSynthesizer, read_requests
from xtts_ft.io_utils import write_jsonl
from xtts_ft.model.loading import resolve_model_dir

log = logging.getLogger(__name__)


def outputs(cfg: DictConfig) -> List[Path]:
    return [Path(cfg.out_dir) / "index.jsonl"] if cfg.texts else [Path(cfg.out)]


def check_before_loading(model_dir: Path, requests: List[dict], out_folder: Path) -> None:
    """What is wrong with a call, found before the model loads (10 s and more): a language the model's
    config.json does not list, a reference clip that is not readable audio, an output that cannot be
    written. The synthesizer checks the same again, for its other callers."""
    from xtts_ft.data.audio import header_seconds

    languages = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("languages", [])
    for request in requests:
        language = request["language"] if request["language"] == "zh-cn" else request["language"].split("-")[0]
        if languages and language not in languages:
            raise BadValue(
                f"{request.get('where', '')}{': ' if request.get('where') else ''}language {language!r} is not in "
                f"this model's config.languages: {', '.join(languages)}",
                fix="language=<one of those> (a new language is added with `xtts-ft extend`)",
            )
        reference = Path(request["reference"]) if request.get("reference") else None
        if reference is not None and not reference.is_file():
            what = "is a folder, not an audio file" if reference.is_dir() else "does not exist"
            raise MissingFile(
                f"reference audio {reference} {what}", fix="reference=<an audio file of the voice, 3-10 s>"
            )
        if reference is not None and header_seconds(reference) < 0.5:  # header_seconds: unreadable audio raises
            raise BadValue(
                f"reference audio {reference} is shorter than 0.5 s", fix="give at least 0.5 s (3-10 s is best)"
            )
    folder = next(p for p in [out_folder, *out_folder.parents] if p.exists())  # the one the WAVs are made in
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise BadValue(
            f"cannot write into {out_folder}: {folder} is not a folder this user can write",
            fix="out or out_dir in a writable folder",
        )


def run(cfg: DictConfig) -> Path:
    if not cfg.texts and Path(cfg.out).suffix.lower() != ".wav":
        raise BadValue(f"out={cfg.out}: synth writes WAV files", fix="out=<name>.wav")
    if cfg.texts and Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise BadValue(f"out_dir={cfg.out_dir} is a file", fix="out_dir=<a folder> (made if missing)")
    if not cfg.texts and cfg.text is None:
        raise BadValue("nothing to say", fix="give text=... (one text) or texts=<file.txt|.csv> (a batch)")
    if cfg.texts:
        requests = read_requests(cfg.texts, cfg.language, cfg.reference, cfg.voice, cfg.emotion)
    model_dir = resolve_model_dir(str(cfg.checkpoint))
    single = [{"language": cfg.language, "reference": cfg.reference}]
    check_before_loading(
        model_dir, requests if cfg.texts else single, Path(cfg.out_dir if cfg.texts else Path(cfg.out).parent)
    )
    synthesizer = XttsSynthesizer(model_dir, device=cfg.device)
    if cfg.texts:  # a batch: one WAV per text in out_dir, plus an index
        index = Path(cfg.out_dir) / "index.jsonl"
        if index.is_file():
            # An earlier batch's index (ours) goes before any WAV is replaced: an interrupted run must not leave it
            # describing the new audio. Its WAVs stay; the new index lists this run's.
            index.unlink()
            log.info(f"{index}: an earlier batch's index, removed; this run writes its own when every WAV is done")
        rows = synthesizer.synthesize_batch(
            requests, cfg.out_dir, OmegaConf.to_container(cfg.decoding, resolve=True), batch_size=cfg.batch_size
        )
        write_jsonl(Path(cfg.out_dir) / "index.jsonl", rows)
        cut = sum(1 for row in rows if not row["stopped"])
        note = (
            f"; {cut} cut by the babble guard (the model did not stop by itself: `stopped` false in the index)"
            if cut
            else ""
        )
        log.info(f"wrote {len(rows)} WAVs to {cfg.out_dir} (index: {Path(cfg.out_dir) / 'index.jsonl'}){note}")
        return Path(cfg.out_dir)
    # Exactly one of a reference clip and a named voice (an export's speakers_xtts.pth).
    request = dict(
        text=cfg.text,
        language=cfg.language,
        reference=cfg.reference,
        voice=cfg.voice,
        emotion=cfg.emotion,
        decoding=OmegaConf.to_container(cfg.decoding, resolve=True),
    )
    if cfg.stream:
        for key in ("stream_first_chunk_codes", "stream_chunk_codes"):  # said with the setting's own name
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadValue(
                    f"{key}={value!r} is not an integer ≥ 1",
                    fix=f"{key}=<an integer ≥ 1> (GPT codes per chunk, ~0.046 s of audio each)",
                )
        chunks = list(
            synthesizer.stream(
                **request, first_chunk_codes=cfg.stream_first_chunk_codes, chunk_codes=cfg.stream_chunk_codes
            )
        )
        wav = np.concatenate([c.wav for c in chunks])
        write_wav(Path(cfg.out), wav, synthesizer.sample_rate)
        log.info(
            f"wrote {cfg.out}: {wav.size / synthesizer.sample_rate:.2f} s in {len(chunks)} streamed chunks; "
            f"first audio after {chunks[0].seconds_since_start:.2f} s, all after {chunks[-1].seconds_since_start:.2f} s"
        )
        return Path(cfg.out)
    result = synthesizer.synthesize_to_file(Path(cfg.out), **request)
    note = "" if result.stopped else " (cut by the babble guard: the model did not stop by itself)"
    log.info(
        f"wrote {cfg.out}: {result.duration:.2f} s at {result.sample_rate} Hz, RTF {result.real_time_factor:.2f}{note}"
    )
    return Path(cfg.out)
