"""Stage `export`: training states → a directory in the stock XTTS-v2 layout.

The GPT comes from runs/<run_name>/gpt/ and the HiFiGAN decoder from runs/<run_name>/decoder/
when those runs exist (at least one must); every other weight is the base model's. Each comes
from the run's state.pt (checkpoint=latest), or from a checkpoint (best or a step) alone: a
checkpoint describes itself (`xtts_ft.train.checkpoints`); one from before that (no
format_version) takes what it lacks from state.pt.

The export is the product: `config.json`, `model.pth` (GPT + HiFiGAN decoder + mel stats
only: no optimizer, no DVAE), `vocab.json`, `dvae.pth`, `mel_stats.pth`,
`speakers_xtts.pth` as coqui-tts expects them, plus `xtts_ft.json` (what produced it) and a
model card. It is built aside, reloaded with coqui-tts's own loader and compared, and only
then moved into place.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import List

import torch
from omegaconf import DictConfig, OmegaConf

from xtts_ft import __version__
from xtts_ft.io_utils import atomic_dir, file_hash, tensors_hash, write_json, write_text
from xtts_ft.model import lora
from xtts_ft.model.card import model_card
from xtts_ft.model.layout import EMOTIONS_FILE, EXPORT_FILES, EXPORT_KIND, SIDECAR, is_export, read_sidecar
from xtts_ft.model.loading import load_xtts, resolve_model_cfg
from xtts_ft.train import checkpoints as ckpt

log = logging.getLogger(__name__)

# Keys coqui's loader drops anyway; a slim export never writes them.
TRAINING_ONLY_PREFIXES = ("dvae.", "torch_mel_spectrogram_style_encoder.", "torch_mel_spectrogram_dvae.")
COPIED_FILES = ("vocab.json", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth")


def training_state_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "gpt" / "state.pt"


def decoder_state_path(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "decoder" / "state.pt"


def outputs(cfg: DictConfig) -> List[Path]:
    out = Path(cfg.out_dir)
    return [out / "model.pth", out / "config.json", out / SIDECAR, out / "README.md"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_training_state(path: Path) -> dict:
    """A training state or checkpoint, refused by name when unreadable or of a newer format."""
    if not path.is_file():
        raise FileNotFoundError(f"training state {path} does not exist; run `xtts-ft train-gpt` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable xtts-ft training state ({type(err).__name__}: {err})") from err
    ckpt.check_format(state, path)
    return state


def chosen_weights(cfg: DictConfig, run_dir: Path, part: str = "gpt") -> dict:
    """The checkpoint to export (part = gpt | decoder): {} for the latest state (default), else
    checkpoints/best.pt (the run's best eval) or a kept step."""
    choice = str(cfg.checkpoint if part == "gpt" else cfg.decoder_checkpoint)
    if choice == "latest":
        return {}
    if choice == "best":
        path = run_dir / "checkpoints" / "best.pt"
    elif choice.isdigit():
        path = run_dir / "checkpoints" / f"step_{int(choice):08d}.pt"
    else:
        raise ValueError(
            f"{'checkpoint' if part == 'gpt' else 'decoder_checkpoint'}={choice}: use latest, best or a step number"
        )
    if not path.is_file():
        kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
        raise FileNotFoundError(
            f"checkpoint={choice}: {path} does not exist (kept: {', '.join(kept) or 'none'}; or use latest)"
        )
    return load_training_state(path)


def training_source(cfg: DictConfig, state_path: Path, part: str) -> dict | None:
    """What to export of one run (part = gpt | decoder), None where the run does not exist.

    checkpoint=latest: state.pt. A chosen checkpoint that describes itself (format_version 2+):
    the checkpoint alone, state.pt is not read. An older checkpoint: state.pt with the
    checkpoint's weights and step, or the checkpoint alone when state.pt cannot be read but the
    checkpoint carries the run's config (a run whose state.pt was lost still exports its kept steps).
    """
    run_dir = state_path.parent
    latest = str(cfg.checkpoint if part == "gpt" else cfg.decoder_checkpoint) == "latest"
    if not state_path.is_file() and (latest or not (run_dir / "checkpoints").is_dir()):
        return None
    chosen = chosen_weights(cfg, run_dir, part)
    if chosen.get("format_version", 1) >= 2:
        return chosen
    try:
        state = load_training_state(state_path)
    except ckpt.NewerFormatError:
        raise
    except (ValueError, FileNotFoundError) as err:
        if not chosen:  # latest: say what can still be exported
            raise ValueError(f"{err}. {ckpt.salvage(run_dir, part)}") from None
        if "config" not in chosen:  # a checkpoint from before checkpoints described themselves
            raise
        log.warning("%s cannot be read; exporting %s step %d from its checkpoint", state_path, part, chosen["step"])
        return chosen
    state.update({key: chosen[key] for key in (part, "step") if key in chosen})
    return state


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Export replaces only its own exports: out_dir may be absent, empty or an xtts-ft export,
    never a training run, a base model or anything else a typo could name."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_export(out):
        raise FileExistsError(
            f"out_dir={out} exists and is not an xtts-ft export (no {SIDECAR} of kind {EXPORT_KIND!r}); export only "
            "ever replaces its own exports. Choose another out_dir, or move that directory away yourself."
        )
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")


def run(cfg: DictConfig) -> Path:
    out = Path(cfg.out_dir)
    check_replaceable(out, cfg.overwrite)
    gpt_path, decoder_path = training_state_path(cfg), decoder_state_path(cfg)
    state = training_source(cfg, gpt_path, "gpt")
    decoder_state = training_source(cfg, decoder_path, "decoder")
    if state is None and decoder_state is None:
        raise FileNotFoundError(
            f"training state {gpt_path} does not exist (nor {decoder_path}); run `xtts-ft train-gpt` (and/or `xtts-ft train-decoder`) first"
        )
    base_dir = base_model_dir(state, decoder_state, gpt_path, decoder_path)
    config, xtts = load_xtts(base_dir, "cpu", for_inference=False)
    adapter = {}
    if state:
        adapter = load_trained_gpt(xtts, state, base_dir, gpt_path, cfg.adapter)
    elif cfg.adapter:
        raise ValueError(f"adapter=true: {gpt_path} does not exist; only a train-gpt method=lora run has an adapter")
    if decoder_state:
        load_trained_decoder(xtts, decoder_state)

    with atomic_dir(out) as tmp:
        weights = {k: v for k, v in xtts.state_dict().items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
        if cfg.half:  # coqui's loader copies them into its fp32 model: half the file, same model up to fp16 rounding
            weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
        torch.save({"model": weights}, tmp / "model.pth")
        if cfg.safetensors:
            from safetensors.torch import save_file

            # clone: safetensors refuses tensors that share storage, and a file must not depend on it.
            save_file(
                {k: v.detach().clone().contiguous() for k, v in weights.items()},
                str(tmp / "model.safetensors"),
                metadata={"format": "pt", "producer": f"xtts-ft {__version__}"},
            )
        config.model_args.tokenizer_file = ""  # read vocab.json beside model.pth, not a path on this machine
        config.save_json(str(tmp / "config.json"))
        for name in COPIED_FILES:
            shutil.copy2(base_dir / name, tmp / name)
        for name, data in adapter.items():  # PEFT's adapter files, beside the merged model
            (tmp / name).write_bytes(data)
        # The GPT the export must carry: the trained weights, or for LoRA the base with the adapter merged in.
        trained_gpt = (xtts.gpt.state_dict() if lora.is_lora_state(state) else state["gpt"]) if state else {}
        verify_export(
            tmp, trained_gpt, half=cfg.half, decoder_state=decoder_state["decoder"] if decoder_state else None
        )
        voices = add_named_voices(tmp, dict(cfg.voices)) if cfg.voices else []
        emotions = add_emotion_presets(tmp, dict(cfg.emotions)) if cfg.emotions else []
        sidecar = export_record(state, base_dir, tmp, config, decoder_state)
        sidecar.update(
            voices=voices,
            emotion_presets=emotions,
            weights_dtype="float16" if cfg.half else "float32",
            safetensors=bool(cfg.safetensors),
        )
        if adapter:
            sidecar["adapter"] = adapter_record(state, sidecar["base_model"])
        write_json(tmp / SIDECAR, sidecar)
        write_text(tmp / "README.md", model_card(sidecar))
        check_listed(tmp)
    print(f"exported {out} ({(out / 'model.pth').stat().st_size / 2**20:.1f} MiB model.pth)")
    return out


def base_model_dir(state: dict | None, decoder_state: dict | None, gpt_path: Path, decoder_path: Path) -> Path:
    """The base model both runs were trained from (where it lies now)."""
    main = state or decoder_state
    base_dir = Path(main["base_model_dir"])
    if not base_dir.is_dir():  # runs/ moved to another machine, or the tiny model was cleaned
        base_dir = resolve_model_cfg(OmegaConf.create(main["config"]["model"]))
    if (
        state
        and decoder_state
        and Path(decoder_state["base_model_dir"]).resolve() != Path(state["base_model_dir"]).resolve()
    ):
        raise ValueError(
            f"{gpt_path} and {decoder_path} were trained from different base models "
            f"({state['base_model_dir']} vs {decoder_state['base_model_dir']}); they cannot go into one export"
        )
    return base_dir


def load_trained_decoder(xtts, decoder_state: dict) -> None:
    """Put the fine-tuned HiFiGAN generator into the model; warn when it learnt another GPT's latents."""
    xtts.hifigan_decoder.waveform_decoder.load_state_dict(decoder_state["decoder"])
    if tensors_hash(xtts.gpt.state_dict()) != decoder_state["gpt"]["hash"]:
        # Still a working model, but the decoder learnt to voice another GPT's latents.
        log.warning(
            "the decoder was fine-tuned on latents of GPT %s, not on the GPT exported here; "
            "run train-decoder again (gpt=auto) after train-gpt for a matched pair",
            decoder_state["gpt"]["source"],
        )


def load_trained_gpt(xtts, state: dict, base_dir: Path, state_path: Path, with_adapter: bool) -> dict:
    """Put the trained GPT into the base model: full weights, or a LoRA adapter merged in (PEFT's
    merge_and_unload: the stock layout, nothing new downstream). Returns PEFT's adapter files when
    asked for them (adapter=true), else {}."""
    if not lora.is_lora_state(state):
        if with_adapter:
            raise ValueError(
                f"adapter=true: {state_path} is a full fine-tune (method=full), which has no adapter; "
                "export it without adapter=true, or train with method=lora"
            )
        xtts.gpt.load_state_dict(state["gpt"])
        return {}
    if state.get("base_model_hash") and file_hash(base_dir / "model.pth") != state["base_model_hash"]:
        raise ValueError(
            f"{state_path} is a LoRA adapter of another {base_dir / 'model.pth'} (the file changed since "
            "training): merging it there would make a model nobody trained. Export with the run's own base."
        )
    model = lora.trained_adapter(xtts.gpt, state, base_dir, str(state_path))
    files = lora.adapter_files(model, str(state["config"]["model"]["source"])) if with_adapter else {}
    model.merge_and_unload()
    return files


def adapter_record(state: dict, base_model: dict) -> dict:
    """What xtts_ft.json says of the adapter files: the base they apply to (id and hash) and the LoRA set-up."""
    settings = state["config"]["lora"]
    return {
        "format": "peft-lora",
        "files": list(lora.ADAPTER_FILES),
        "base_model": {"source": base_model["source"], "model_sha256": base_model["model_sha256"]},
        **{key: settings[key] for key in ("rank", "alpha", "dropout", "targets", "train_heads")},
    }


def check_listed(export_dir: Path) -> None:
    """Every file written is in layout.EXPORT_FILES, the list push and Hub downloads go by: a file
    missing there would silently stay behind on the way through the Hub."""
    unlisted = sorted(p.name for p in export_dir.iterdir() if p.name not in EXPORT_FILES)
    if unlisted:
        raise RuntimeError(
            f"export wrote {', '.join(unlisted)}, which xtts_ft.model.layout.EXPORT_FILES does not list"
        )


def verify_export(export_dir: Path, gpt_state: dict, half: bool = False, decoder_state: dict | None = None) -> None:
    """Reload with coqui-tts's stock loader and check the trained weights (GPT, decoder) came
    through unchanged (exactly as rounded to fp16 for a half-precision export)."""
    _, reloaded = load_xtts(export_dir, "cpu", for_inference=False)
    for part, module, trained in (
        ("GPT", reloaded.gpt, gpt_state),
        ("decoder", reloaded.hifigan_decoder.waveform_decoder, decoder_state or {}),
    ):
        loaded = module.state_dict()
        for key, value in trained.items():
            expected = value.half().to(value.dtype) if half and value.is_floating_point() else value
            if not torch.equal(loaded[key], expected):
                raise RuntimeError(f"export check failed: {part} weight {key} differs after reloading {export_dir}")


def add_named_voices(export_dir: Path, voices: dict) -> list:
    """Speaker latents of reference clips, computed by the exported model, saved in
    speakers_xtts.pth the way the stock file holds its voices (name → gpt_cond_latent,
    speaker_embedding), beside any voices the base model had."""
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(export_dir, device="cpu")
    path = export_dir / "speakers_xtts.pth"
    speakers = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
    for name, reference in voices.items():
        voice = synthesizer.clone_voice(reference)
        speakers[name] = {
            "gpt_cond_latent": voice.gpt_cond_latent.cpu(),
            "speaker_embedding": voice.speaker_embedding.cpu(),
        }
    torch.save(speakers, path)
    return sorted(voices)


def add_emotion_presets(export_dir: Path, emotions: dict) -> list:
    """Emotion presets: the conditioning latents of a reference clip spoken with that emotion,
    saved as `emotions_xtts.pth` (name → gpt_cond_latent, speaker_embedding; the stock voices'
    format). `synth emotion=<name>` conditions the GPT on the preset while the voice keeps its own
    speaker embedding, so presets work for any model, extended with emotion tokens or not."""
    from xtts_ft.inference import XttsSynthesizer

    synthesizer = XttsSynthesizer(export_dir, device="cpu")
    presets = {}
    for name, reference in emotions.items():
        voice = synthesizer.clone_voice(reference)
        presets[name] = {
            "gpt_cond_latent": voice.gpt_cond_latent.cpu(),
            "speaker_embedding": voice.speaker_embedding.cpu(),
        }
    torch.save(presets, export_dir / EMOTIONS_FILE)
    return sorted(presets)


def export_record(
    state: dict | None, base_dir: Path, export_dir: Path, config, decoder_state: dict | None = None
) -> dict:
    main = state or decoder_state
    train_cfg = main["config"]
    stats = main.get("data_stats", {})
    base_sidecar = read_sidecar(base_dir)
    return {
        "kind": EXPORT_KIND,  # what lets a later export replace this directory (and nothing else)
        "xtts_ft_version": __version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {
            "source": train_cfg["model"]["source"],
            "name": train_cfg["model"]["name"],
            "kind": base_sidecar.get("kind", "released"),
            "model_sha256": sha256(base_dir / "model.pth"),
        },
        "languages": list(config.languages),
        "emotion_tokens": base_sidecar.get("extension", {}).get("emotion_tokens", []),
        "training": {
            "gpt_steps": state["step"] if state else 0,
            "run_name": train_cfg["run_name"],
            "lr": state["config"]["lr"] if state else None,
            "method": state["config"].get("method", "full") if state else None,
            **(
                {
                    "decoder_steps": decoder_state["step"],
                    "decoder_lr": decoder_state["config"]["lr_gen"],
                    "decoder_adversarial": decoder_state["config"]["adversarial"],
                    "decoder_gpt": decoder_state["gpt"]["source"],
                }
                if decoder_state
                else {}
            ),
        },
        "data": stats,
        "metrics": {},
        "files": {name: sha256(export_dir / name) for name in ("model.pth", "config.json", "vocab.json")},
        # The tiny model's DVAE differs from the released one; keep its shape with the export.
        **({"dvae": base_sidecar["dvae"]} if "dvae" in base_sidecar else {}),
        # What `xtts-ft extend` added (languages, emotion tokens, char limits, cleaners): the
        # tokenizer of every later load reads it from here.
        **({"extension": base_sidecar["extension"]} if "extension" in base_sidecar else {}),
    }
