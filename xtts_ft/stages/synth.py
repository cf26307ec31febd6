"""Stage `synth`: one text, one voice, one WAV, through the shared inference module."""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
from omegaconf import DictConfig, OmegaConf

from xtts_ft.data.audio import write_wav
from xtts_ft.errors import BadValue
from xtts_ft.inference import XttsSynthesizer, read_requests
from xtts_ft.io_utils import write_jsonl


def outputs(cfg: DictConfig) -> List[Path]:
    return [Path(cfg.out_dir) / "index.jsonl"] if cfg.texts else [Path(cfg.out)]


def run(cfg: DictConfig) -> Path:
    if not cfg.texts and Path(cfg.out).suffix.lower() != ".wav":
        raise BadValue(f"out={cfg.out}: synth writes WAV files — fix: out=<name>.wav")
    if cfg.texts and Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise BadValue(f"out_dir={cfg.out_dir} is a file — fix: out_dir=<a folder> (made if missing)")
    synthesizer = XttsSynthesizer(cfg.checkpoint, device=cfg.device)
    if cfg.texts:  # a batch: one WAV per text in out_dir, plus an index
        requests = read_requests(cfg.texts, cfg.language, cfg.reference, cfg.voice, cfg.emotion)
        index = Path(cfg.out_dir) / "index.jsonl"
        if index.is_file():
            # An earlier batch's index (ours) goes before any WAV is replaced: an interrupted run must not leave it
            # describing the new audio. Its WAVs stay; the new index lists this run's.
            index.unlink()
            print(f"{index}: an earlier batch's index, removed; this run writes its own when every WAV is done")
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
        print(f"wrote {len(rows)} WAVs to {cfg.out_dir} (index: {Path(cfg.out_dir) / 'index.jsonl'}){note}")
        return Path(cfg.out_dir)
    if cfg.text is None:
        raise BadValue("give text=... (one text) or texts=<file.txt|.csv> (a batch)")
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
                    f"{key}={value!r} — fix: {key}=<an integer ≥ 1> (GPT codes per chunk, ~0.046 s of audio each)"
                )
        chunks = list(
            synthesizer.stream(
                **request, first_chunk_codes=cfg.stream_first_chunk_codes, chunk_codes=cfg.stream_chunk_codes
            )
        )
        wav = np.concatenate([c.wav for c in chunks])
        write_wav(Path(cfg.out), wav, synthesizer.sample_rate)
        print(
            f"wrote {cfg.out}: {wav.size / synthesizer.sample_rate:.2f} s in {len(chunks)} streamed chunks; "
            f"first audio after {chunks[0].seconds_since_start:.2f} s, all after {chunks[-1].seconds_since_start:.2f} s"
        )
        return Path(cfg.out)
    result = synthesizer.synthesize_to_file(Path(cfg.out), **request)
    note = "" if all(result.stopped) else " (cut by the babble guard: the model did not stop by itself)"
    print(
        f"wrote {cfg.out}: {result.duration:.2f} s at {result.sample_rate} Hz, RTF {result.real_time_factor:.2f}{note}"
    )
    return Path(cfg.out)
