"""Stage `export`: training states → a directory in the stock XTTS-v2 layout.

The GPT comes from runs/<run_name>/gpt/ and the HiFiGAN decoder from runs/<run_name>/decoder/
when those runs exist (at least one must); every other weight is the base model's. Each comes
from the run's state.pt (checkpoint=latest), or from a checkpoint (best or a step) alone
(`xtts_ft.train.export_source`).

The export is the product: `config.json`, `model.pth` (GPT + HiFiGAN decoder + mel stats
only: no optimizer, no DVAE), `vocab.json`, `dvae.pth` and `mel_stats.pth` (of the DVAE the GPT
trained on: `xtts_ft.model.dvae_pairing` refuses any other),
`speakers_xtts.pth` as coqui-tts expects them, plus `xtts_ft.json` (what produced it) and a
model card. It is built aside (`xtts_ft.model.export`), reloaded with coqui-tts's own loader
and compared, and only then moved into place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

import torch
from omegaconf import DictConfig

from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.io_utils import atomic_dir, write_json, write_text
from xtts_ft.model.card import model_card
from xtts_ft.model.dvae_pairing import shipped_dvae
from xtts_ft.model.export import (
    adapter_record,
    base_model_dir,
    check_listed,
    check_replaceable,
    evaluated_metrics,
    export_record,
    exported_checkpoint,
    load_trained_decoder,
    load_trained_gpt,
    run_steps,
    trained_gpt_weights,
    verify_export,
    voice_latents,
    write_model_files,
)
from xtts_ft.model.layout import EMOTIONS_FILE, SIDECAR
from xtts_ft.model.loading import load_xtts
from xtts_ft.train.export_source import training_source

log = logging.getLogger(__name__)


def training_state_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "gpt" / "state.pt"


def decoder_state_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "decoder" / "state.pt"


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "model.pth", out / "config.json", out / SIDECAR, out / "README.md"]


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.out_dir)
    check_replaceable(out, cfg.overwrite)
    gpt_path, decoder_path = training_state_path(cfg), decoder_state_path(cfg)
    state = training_source(cfg, gpt_path, "gpt")
    decoder_state = training_source(cfg, decoder_path, "decoder")
    if state is None and decoder_state is None:
        raise MissingFile(
            f"training state {gpt_path} does not exist (nor {decoder_path})",
            fix="run `xtts-ft train-gpt` (and/or `xtts-ft train-decoder`) first",
        )
    base_dir = base_model_dir(state, decoder_state, gpt_path, decoder_path)
    # The DVAE whose codes the GPT trained on (dvae=null), or the one given: refused if the GPT or decoder did not.
    dvae_dir, dvae_hash = shipped_dvae(cfg.dvae, state, decoder_state, base_dir, gpt_path, decoder_path)
    config, xtts = load_xtts(base_dir, "cpu", for_inference=False)
    adapter = {}
    if state:
        adapter = load_trained_gpt(xtts, state, base_dir, gpt_path, cfg.adapter)
    elif cfg.adapter:
        raise BadValue(f"adapter=true: {gpt_path} does not exist; only a train-gpt method=lora run has an adapter")
    if decoder_state:
        load_trained_decoder(xtts, decoder_state)

    with atomic_dir(out) as tmp:
        write_model_files(tmp, xtts, config, base_dir, adapter, cfg.half, cfg.safetensors, dvae_dir)
        verify_export(
            tmp,
            trained_gpt_weights(xtts, state),
            half=cfg.half,
            decoder_state=decoder_state["decoder"] if decoder_state else None,
        )
        voices = add_named_voices(tmp, dict(cfg.voices)) if cfg.voices else []
        emotions = add_emotion_presets(tmp, dict(cfg.emotions)) if cfg.emotions else []
        sidecar = export_record(state, base_dir, tmp, config, decoder_state, dvae_hash)
        sidecar.update(
            voices=voices,
            emotion_presets=emotions,
            weights_dtype="float16" if cfg.half else "float32",
            safetensors=bool(cfg.safetensors),
        )
        if cfg.metrics:  # an evaluation of this very model, recorded by name (evaluate itself writes no card)
            sidecar["metrics"] = evaluated_metrics(Path(cfg.metrics), sidecar["files"]["model.pth"])
        if state:  # which step went out, and why (the card says it)
            sidecar["training"]["checkpoint"] = exported_checkpoint(
                state, str(cfg.checkpoint), run_steps(gpt_path.parent)
            )
        if adapter:
            sidecar["adapter"] = adapter_record(state, sidecar["base_model"])
        write_json(tmp / SIDECAR, sidecar)
        write_text(tmp / "README.md", model_card(sidecar))
        check_listed(tmp)
    log.info(f"exported {out} ({(out / 'model.pth').stat().st_size / 2**20:.1f} MiB model.pth)")
    return out


def add_named_voices(export_dir: Path, voices: dict) -> list:
    """Speaker latents of reference clips, computed by the exported model, saved in
    speakers_xtts.pth the way the stock file holds its voices (name → gpt_cond_latent,
    speaker_embedding), beside any voices the base model had."""
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(export_dir, device="cpu")
    path = export_dir / "speakers_xtts.pth"
    speakers = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
    for name, reference in voices.items():
        speakers[name] = voice_latents(synthesizer.clone_voice(reference))
    torch.save(speakers, path)
    return sorted(voices)


def add_emotion_presets(export_dir: Path, emotions: dict) -> list:
    """Emotion presets: the conditioning latents of a reference clip spoken with that emotion,
    saved as `emotions_xtts.pth` (name → gpt_cond_latent, speaker_embedding; the stock voices'
    format). `synth emotion=<name>` conditions the GPT on the preset while the voice keeps its own
    speaker embedding, so presets work for any model, extended with emotion tokens or not."""
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(export_dir, device="cpu")
    presets = {name: voice_latents(synthesizer.clone_voice(reference)) for name, reference in emotions.items()}
    torch.save(presets, export_dir / EMOTIONS_FILE)
    return sorted(presets)
