"""An export in the stock XTTS-v2 layout, built from a base model and trained weights.

What goes in: the base model's files with the trained GPT (full weights, or a LoRA adapter merged
in) and HiFiGAN decoder loaded into it; `model.pth` holds the weights coqui's loader reads (no
optimizer, no DVAE), in fp32 or fp16, optionally also as safetensors. What proves it: the export
reloaded with coqui-tts's own loader carries the trained weights unchanged, and holds only files
`layout.EXPORT_FILES` lists. What describes it: `xtts_ft.json` (`export_record`, `adapter_record`),
which the model card, push and every later load read. Export replaces only its own exports
(`check_replaceable`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import OmegaConf

from xtts_ft import __version__
from xtts_ft.errors import BadValue, FileInTheWay, MissingFile
from xtts_ft.io_utils import check_free_space, file_hash, files_bytes, tensor_bytes, tensors_hash
from xtts_ft.model import lora
from xtts_ft.model.dvae_pairing import DVAE_FILES  # copied from the DVAE the GPT trained on, not the base
from xtts_ft.model.layout import EXPORT_FILES, EXPORT_KIND, SIDECAR, is_export, read_sidecar
from xtts_ft.model.loading import load_xtts, resolve_model_cfg
from xtts_ft.model.public import hub_id_of

log = logging.getLogger(__name__)

# Keys coqui's loader drops anyway; a slim export never writes them.
TRAINING_ONLY_PREFIXES = ("dvae.", "torch_mel_spectrogram_style_encoder.", "torch_mel_spectrogram_dvae.")
COPIED_FILES = ("vocab.json", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_replaceable(out: Path, overwrite: bool) -> None:
    """Export replaces only its own exports: out_dir may be absent, empty or an xtts-ft export,
    never a training run, a base model or anything else a typo could name."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_export(out):
        raise FileInTheWay(
            f"out_dir={out} exists and is not an xtts-ft export (no {SIDECAR} of kind {EXPORT_KIND!r}); export only "
            "ever replaces its own exports",
            fix="choose another out_dir, or move that directory away yourself",
        )
    if not overwrite:
        raise FileInTheWay(f"{out} exists", fix="pass overwrite=true to replace it")


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
        raise BadValue(
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
            raise BadValue(
                f"adapter=true: {state_path} is a full fine-tune (method=full), which has no adapter",
                fix="export it without adapter=true, or train with method=lora",
            )
        xtts.gpt.load_state_dict(state["gpt"])
        return {}
    if state.get("base_model_hash") and file_hash(base_dir / "model.pth") != state["base_model_hash"]:
        raise BadValue(
            f"{state_path} is a LoRA adapter of another {base_dir / 'model.pth'} (the file changed since "
            "training): merging it there would make a model nobody trained",
            fix="export with the run's own base",
        )
    model = lora.trained_adapter(xtts.gpt, state, base_dir, str(state_path))
    files = lora.adapter_files(model, str(state["config"]["model"]["source"])) if with_adapter else {}
    model.merge_and_unload()
    return files


def trained_gpt_weights(xtts, state: dict | None) -> dict:
    """The GPT the export must carry: the trained weights, or for LoRA the base with the adapter merged in."""
    return (xtts.gpt.state_dict() if lora.is_lora_state(state) else state["gpt"]) if state else {}


def copied_sources(base_dir: Path, dvae_dir: Path | None) -> dict:
    """Each stock file an export copies → where from: the base's, but dvae.pth and mel_stats.pth from the
    DVAE the GPT trained on (None: the base's)."""
    return {name: (dvae_dir if dvae_dir and name in DVAE_FILES else base_dir) / name for name in COPIED_FILES}


def write_model_files(
    export_dir: Path,
    xtts,
    config,
    base_dir: Path,
    adapter: dict,
    half: bool,
    safetensors: bool,
    dvae_dir: Path | None = None,
) -> None:
    """model.pth (and model.safetensors), config.json, the DVAE (`dvae_dir`, default the base's), the base's
    other stock files and the adapter's."""
    weights = {k: v for k, v in xtts.state_dict().items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    if half:  # coqui's loader copies them into its fp32 model: half the file, same model up to fp16 rounding
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    sources = copied_sources(base_dir, dvae_dir)
    need = tensor_bytes(weights) * (2 if safetensors else 1) + files_bytes(sources.values())
    check_free_space(export_dir.parent, need, "the export")  # a warning now, not a full disk halfway
    torch.save({"model": weights}, export_dir / "model.pth")
    if safetensors:
        from safetensors.torch import save_file

        # clone: safetensors refuses tensors that share storage, and a file must not depend on it.
        save_file(
            {k: v.detach().clone().contiguous() for k, v in weights.items()},
            str(export_dir / "model.safetensors"),
            metadata={"format": "pt", "producer": f"xtts-ft {__version__}"},
        )
    config.model_args.tokenizer_file = ""  # read vocab.json beside model.pth, not a path on this machine
    config.save_json(str(export_dir / "config.json"))
    for name, source in sources.items():
        shutil.copy2(source, export_dir / name)
    for name, data in adapter.items():  # PEFT's adapter files, beside the merged model
        (export_dir / name).write_bytes(data)


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


def voice_latents(voice) -> dict:
    """A cloned voice as the stock speakers_xtts.pth holds one (also the emotion presets' format)."""
    return {
        "gpt_cond_latent": voice.gpt_cond_latent.cpu(),
        "speaker_embedding": voice.speaker_embedding.cpu(),
    }


def export_record(
    state: dict | None,
    base_dir: Path,
    export_dir: Path,
    config,
    decoder_state: dict | None = None,
    dvae_hash: str | None = None,
) -> dict:
    """xtts_ft.json: what produced the export (base model, training, data, hashes, the shipped DVAE's
    `dvae_hash`) and what it carries over from its base (the tiny DVAE's shape, what `xtts-ft extend` added)."""
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
            **hub_origin(train_cfg["model"], base_dir, base_sidecar),
        },
        "languages": list(config.languages),
        "emotion_tokens": base_sidecar.get("extension", {}).get("emotion_tokens", []),
        "training": training_record(state, decoder_state),
        "data": stats,
        "metrics": {},
        "files": {name: sha256(export_dir / name) for name in ("model.pth", "config.json", "vocab.json")},
        # The DVAE shipped: the one whose codes the GPT trained on (a later fine-tune of the export checks it).
        **({"dvae_hash": dvae_hash} if dvae_hash else {}),
        # The tiny model's DVAE differs from the released one; keep its shape with the export.
        **({"dvae": base_sidecar["dvae"]} if "dvae" in base_sidecar else {}),
        # What `xtts-ft extend` added (languages, emotion tokens, char limits, cleaners): the
        # tokenizer of every later load reads it from here.
        **({"extension": base_sidecar["extension"]} if "extension" in base_sidecar else {}),
    }


def hub_origin(model_cfg: dict, base_dir: Path, base_sidecar: dict) -> dict:
    """What the Hub has of the base, recorded while the base is at hand (push names it so, never by a local
    path): `hub_id` and `revision` when these very weights came from the Hub (a Hub id, or a Hub cache
    snapshot), else `derived_from`, the Hub model an extended base was made from (or None)."""
    hub_id, revision = hub_id_of(model_cfg["source"], base_dir.resolve())
    origin = {"hub_id": hub_id, "revision": model_cfg.get("revision") or revision}
    if not hub_id:
        below = (base_sidecar.get("base") or {}).get("source")  # an extended base: the model extend started from
        origin["derived_from"] = hub_id_of(below)[0] if below else None
    return origin


def exported_checkpoint(state: dict, choice: str, run_steps: int | None) -> dict:
    """Which step of the GPT run the export holds and why: the latest state, the best eval (its metric and
    value), or a step chosen by number; `run_steps`: how far the run went."""
    record = {"choice": choice if choice in ("latest", "best") else "step", "step": state["step"]}
    if choice == "best":
        metric = state.get("best_metric", "eval_loss")
        value = state.get("cer") if metric == "cer" else state.get("eval_loss")
        record.update(metric=metric, value=None if value is None else round(float(value), 4))
    record["run_steps"] = max(run_steps or 0, state["step"])
    return record


def evaluated_metrics(source: Path, model_sha256: str) -> dict:
    """`export metrics=<evaluate out_dir or its metrics.json>`: the metrics that evaluation recorded for this
    very model (matched by model.pth hash: the same run and checkpoint export to the same bytes)."""
    path = source / "metrics.json" if source.is_dir() else source
    if not path.is_file():
        raise MissingFile(
            f"metrics={source}: no metrics.json there",
            fix="give the out_dir of an `xtts-ft evaluate` run of this export (evaluate writes metrics.json there)",
        )
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["models"]
    except (ValueError, KeyError, TypeError) as err:
        raise BadValue(f"metrics={source}: {path} is not an evaluation's metrics.json ({err})") from None
    for entry in entries:
        if entry.get("model_sha256") == model_sha256:
            return entry["metrics"]
    scored = ", ".join(str(entry.get("checkpoint")) for entry in entries) or "no model"
    raise BadValue(
        f"metrics={source}: that evaluation scored {scored}, not this export (model.pth sha256 {model_sha256[:12]}…)",
        fix="evaluate this export, then export it again with metrics=<that out_dir> (or evaluate it with write_metrics=true)",
    )


def run_steps(run_dir: Path) -> int | None:
    """The last step a training run saved (progress.json), None when it says nothing."""
    try:
        return int(json.loads((run_dir / "progress.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_record(state: dict | None, decoder_state: dict | None) -> dict:
    """xtts_ft.json's "training": the GPT run's steps and settings, and the decoder run's if any."""
    train_cfg = (state or decoder_state)["config"]
    return {
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
    }
