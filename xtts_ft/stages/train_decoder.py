"""Stage `train-decoder`: fine-tune XTTS's HiFiGAN decoder on (GPT latents, speaker embedding) →
the 24 kHz audio of the prepared clips.

The GPT, DVAE and speaker encoder stay frozen. Each clip's latents are computed once, the way
inference computes them (`xtts_ft.model.decoder.gpt_latents`: the GPT in eval mode,
teacher-forced on the clip's DVAE codes plus the stop token, conditioned on another clip of the
same speaker through the shared inference module), and cached next to the manifest keyed by a
hash of the GPT and speaker-encoder weights: a changed GPT recomputes them. Targets are the 24 kHz
copies `prepare decoder_copies=true` cuts from the source audio.

Training runs on random segments of `segment_samples` on the decoder's 24 kHz frame grid, where
output and target line up sample for sample (see `xtts_ft.model.decoder`). Losses are coqui-tts's
HiFiGAN losses: log-mel L1 and multi-resolution STFT, and, unless adversarial=false, a fresh (or
given) multi-period + multi-scale discriminator with least-squares GAN and feature-matching
losses, each network with its own optimizer and scheduler. Resume, mixed precision, torchrun and
the run directory work as in train-gpt (`xtts_ft.train`).

Outputs in runs/<run_name>/decoder/: state.pt (everything resume needs, discriminator included),
progress.json, checkpoints/step_*.pt and best.pt (generator weights), tensorboard/ (losses,
eval audio and mel images), config.yaml. `export` puts the decoder into the model it writes.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.batches import GptItem, ReferencePicker, encode_samples

from xtts_ft.data.sample import read_manifest, resolve_audio, stays_inside
from xtts_ft.io_utils import file_hash, tensors_hash, torch_save, write_json, write_jsonl
from xtts_ft.model.decoder import build_discriminator, build_losses, decoder_frames, decoder_input, gpt_latents, vocoder_loss_config
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import load_dvae, load_xtts, resolve_model_cfg
from xtts_ft.train import loop
from xtts_ft.train import runtime as rt
from xtts_ft.train.cache import attach_codes, cached_features
from xtts_ft.model.constants import DECODER_HOP, DECODER_SAMPLE_RATE, GPT_SAMPLE_RATE

log = logging.getLogger(__name__)
# Logged per step, in this order (coqui's loss names; 0 where a loss is off).
LOSS_KEYS = ("loss", "G_l1_spec_loss", "G_stft_loss_mg", "G_stft_loss_sc", "G_mse_fake_loss", "G_feat_match_loss", "D_loss")
LOSS_TAGS = ("loss_gen", "loss_mel", "loss_stft_mag", "loss_stft_sc", "loss_adv", "loss_feat_match", "loss_disc")


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "decoder"


def outputs(cfg: DictConfig) -> List[Path]:
    return [run_dir(cfg) / "state.pt", run_dir(cfg) / "progress.json"]


def is_done(cfg: DictConfig) -> bool:
    return loop.is_done(run_dir(cfg), cfg.max_steps)


@dataclass(frozen=True)
class DecoderItem:
    audio: Path  # the 22.05 kHz clip (what the latents were computed from)
    target: Path  # its 24 kHz copy from the source
    speaker: str
    language: str
    duration: float
    latents: torch.Tensor  # (T, C) float16: T = codes + 1, as inference decodes
    speaker_embedding: torch.Tensor  # (512,)


def gpt_weights(cfg: DictConfig) -> tuple[str, Optional[dict]]:
    """(where the GPT comes from, its train-gpt state/checkpoint or None for the base model's)."""
    choice = str(cfg.gpt)
    if choice == "base":
        return "base", None
    path = Path(cfg.paths.runs_dir) / cfg.run_name / "gpt" / "state.pt" if choice == "auto" else Path(choice)
    if not path.is_file():
        if choice == "auto":
            return "base", None
        raise FileNotFoundError(f"gpt={choice}: no such train-gpt state or checkpoint (use auto, base or a path)")
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: the optimizer state is never read
    if "gpt" not in state:
        raise ValueError(f"gpt={choice}: {path} holds no GPT weights (expected a train-gpt state.pt or checkpoint)")
    return str(path), state


def target_paths(manifest: Path) -> dict:
    """22.05 kHz clip → its 24 kHz copy, for every sample of the manifest."""
    targets = {}
    for sample in read_manifest(manifest):
        if "audio_24k" not in sample.extra:
            raise ValueError(
                f"{manifest} has no 24 kHz copies (sample {sample.audio}): the decoder trains on audio at its "
                "output rate. Prepare the data again with decoder_copies=true."
            )
        target = sample.extra["audio_24k"]
        if not isinstance(target, str) or not stays_inside(target):
            raise ValueError(f"{manifest}: audio_24k {target!r} of {sample.audio} is not inside the manifest's folder; "
                             "manifest rows name their clips relative to it: prepare the data again with decoder_copies=true")
        targets[resolve_audio(manifest, sample)] = (manifest.parent / target).resolve()
    return targets


def attach_latents(items: List[GptItem], xtts, config, cache_path: Path, model_hash: str, seed: int, runtime: rt.Runtime, desc: str):
    """Each item's (latents, speaker embedding), computed once per clip and reference (rank 0 first)."""
    from xtts_ft.inference import XttsSynthesizer

    # The voice comes from another clip of the same speaker, fixed per clip, as at inference.
    pick = ReferencePicker(items)
    references = [pick([i], np.random.default_rng([seed, i]))[0] for i in range(len(items))]
    by_clip = {item.audio: (item, ref) for item, ref in zip(items, references)}
    synthesizer = XttsSynthesizer.from_model(config, xtts)  # the inference module's voice cloning

    def describe(item: GptItem, ref: Path) -> str:
        stat = ref.stat()
        tokens = hashlib.blake2b(item.text_tokens.numpy().tobytes(), digest_size=8).hexdigest()
        return f"{os.path.relpath(ref, cache_path.parent.resolve())}:{stat.st_size}:{stat.st_mtime_ns}:{tokens}"

    @torch.no_grad()
    def compute(clip: Path) -> dict:
        item, ref = by_clip[clip]
        voice = synthesizer.clone_voice(ref)
        latents = gpt_latents(xtts.gpt, item.text_tokens, item.codes, voice.gpt_cond_latent)[0]
        # float16 halves the cache (1024 channels × 21.5 frames/s: 160 MB per hour of audio);
        # the latents come out of a LayerNorm, O(1), where float16 keeps 3 significant digits.
        return {"latents": latents.half().cpu(), "speaker": voice.speaker_embedding.reshape(-1).float().cpu()}

    inputs = [describe(item, ref) for item, ref in zip(items, references)]
    clips = [item.audio for item in items]
    computed = 0
    if runtime.is_main:
        values, computed = cached_features(cache_path, model_hash, clips, compute, desc, inputs)
    runtime.barrier()
    if not runtime.is_main:
        values, _ = cached_features(cache_path, model_hash, clips, compute, desc, inputs)
    return values, computed


def build_items(gpt_items: List[GptItem], values: List[dict], targets: dict, min_frames: int, decoder):
    """DecoderItems, and a skip record for clips shorter than one training segment."""
    kept, skipped = [], []
    for item, value in zip(gpt_items, values):
        target = targets[item.audio]
        info = sf.info(str(target))
        if info.samplerate != DECODER_SAMPLE_RATE:
            raise ValueError(f"{target} is at {info.samplerate} Hz; decoder targets must be {DECODER_SAMPLE_RATE} Hz (run prepare again)")
        frames = decoder_frames(decoder, value["latents"].shape[0])
        if frames < min_frames:
            skipped.append({"audio": str(item.audio), "reason": "shorter_than_segment",
                            "message": f"{frames} decoder frames < segment of {min_frames}"})
            continue
        kept.append(DecoderItem(item.audio, target, item.speaker, item.language, item.duration, value["latents"], value["speaker"]))
    return kept, skipped


def read_target(path: Path, start: int, length: int) -> torch.Tensor:
    """`length` samples of a 24 kHz clip from `start`, zero past its end (the decoder's last frame,
    the one that predicts the stop token, runs up to one GPT frame past the clip)."""
    audio, _ = sf.read(str(path), start=start, frames=length, dtype="float32", always_2d=True)
    audio = torch.from_numpy(audio.mean(axis=1))
    return torch.nn.functional.pad(audio, (0, length - audio.numel()))


def make_batch(items: List[DecoderItem], decoder, segment_frames: int, rng: np.random.Generator):
    """A random segment of each clip: generator input (B, C, S), speaker (B, 512, 1), target (B, 1, S·256).

    The latents are stretched over the whole clip first (as inference does), then cut on the 24 kHz
    frame grid: frame j of the input makes output samples [256 j, 256 (j+1)), the same span of the target.
    """
    zs, targets = [], []
    for item in items:
        z = decoder_input(decoder, item.latents.float().unsqueeze(0))[0]
        start = int(rng.integers(0, z.shape[-1] - segment_frames + 1))
        zs.append(z[:, start : start + segment_frames])
        targets.append(read_target(item.target, start * DECODER_HOP, segment_frames * DECODER_HOP))
    speakers = torch.stack([item.speaker_embedding for item in items]).unsqueeze(-1)
    return torch.stack(zs), speakers, torch.stack(targets).unsqueeze(1)


@torch.no_grad()
def evaluate(generator, decoder, gen_loss, items: List[DecoderItem], device, precision: str):
    """Mel L1 of whole eval clips decoded from their whole latents (as inference decodes them);
    returns (mean loss, [(generated, target) waveforms])."""
    was_training = generator.training
    generator.eval()
    losses, pairs = [], []
    for item in items:
        z = decoder_input(decoder, item.latents.float().unsqueeze(0)).to(device)
        with rt.autocast(precision, device):
            wav = generator(z, item.speaker_embedding.view(1, -1, 1).to(device))
        wav = wav.float()
        target = read_target(item.target, 0, wav.shape[-1]).view(1, 1, -1).to(device)
        losses.append(float(gen_loss.l1_spec_loss(wav, target)))
        pairs.append((wav.view(-1).cpu().numpy(), target.view(-1).cpu().numpy()))
    generator.train(was_training)
    return float(np.mean(losses)) if losses else math.nan, pairs


def load_discriminator_init(path: str) -> dict:
    """A discriminator to start from: a train-decoder state.pt, or a file holding its state dict."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"discriminator={path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "discriminator" in state:
        state = state["discriminator"]
    if not state:
        raise ValueError(f"discriminator={path}: it holds no discriminator (was that run trained with adversarial=false?)")
    return state


def run(cfg: DictConfig) -> Path:
    return loop.run_locked(cfg, run_dir(cfg), train)


def train(cfg: DictConfig, runtime: rt.Runtime, out: Path) -> Path:
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    device = runtime.device
    state_path = out / "state.pt"
    loop.check_fresh(state_path, cfg.resume)
    loop.warn_slow_bf16(cfg.precision, device)
    if cfg.segment_samples <= 0 or cfg.segment_samples % DECODER_HOP:
        raise ValueError(f"segment_samples={cfg.segment_samples}: use a positive multiple of the decoder's hop ({DECODER_HOP})")
    segment_frames = cfg.segment_samples // DECODER_HOP
    # torch.stft's reflect padding (n_fft/2 each side) needs a longer signal than that.
    loss_config = vocoder_loss_config(DECODER_SAMPLE_RATE, cfg.mel_loss_weight, cfg.stft_loss_weight, cfg.adv_loss_weight, cfg.feat_match_loss_weight)
    n_fft = max([loss_config.l1_spec_loss_params["n_fft"]] + (list(loss_config.stft_loss_params["n_ffts"]) if cfg.stft_loss_weight > 0 else []))
    if cfg.segment_samples <= n_fft // 2:
        raise ValueError(f"segment_samples={cfg.segment_samples}: the spectral losses need more than {n_fft // 2} samples (their largest FFT is {n_fft})")
    torch.manual_seed(cfg.seed)

    # Build: the base model (every part frozen), the GPT whose latents the decoder will voice.
    model_dir = resolve_model_cfg(cfg.model)
    config, xtts = load_xtts(model_dir, device, for_inference=False)
    xtts.requires_grad_(False)
    gpt_source, gpt_state = gpt_weights(cfg)
    if gpt_state is not None:  # full weights, or a LoRA adapter merged into the base's (train-gpt method=lora)
        from xtts_ft.model.lora import load_trained_gpt

        load_trained_gpt(xtts.gpt, gpt_state, model_dir, gpt_source)
    xtts.gpt.eval()  # the GPT module's own eval (not Xtts.eval(), which builds the inference wrapper)
    xtts.hifigan_decoder.eval()
    gpt_hash = tensors_hash(xtts.gpt.state_dict())

    # Data: the GPT's items (tokens, limits, cached DVAE codes), then latents and 24 kHz targets.
    manifests = {split: data_dir / f"{split}.jsonl" for split in ("train", "eval")}
    max_samples = int(cfg.max_audio_seconds * GPT_SAMPLE_RATE)
    dvae, mel_stats = load_dvae(model_dir, xtts.args.gpt_num_audio_tokens)
    features = GptFeatures(dvae, mel_stats, xtts.args.gpt_use_perceiver_resampler).to(device)
    dvae_hash = file_hash(Path(model_dir) / "dvae.pth", Path(model_dir) / "mel_stats.pth")
    # Everything the latents depend on besides the clip, its reference and its text.
    latent_hash = tensors_hash(
        xtts.gpt.state_dict(), xtts.hifigan_decoder.speaker_encoder.state_dict(), {"mel_stats": xtts.mel_stats},
        extra=f"decoder-latents-v1:{config.gpt_cond_len}:{config.gpt_cond_chunk_len}:{config.max_ref_len}:{dvae_hash}",
    )
    splits, skipped, cache_started, computed = {}, [], time.perf_counter(), 0
    for split, manifest in manifests.items():
        targets = target_paths(manifest)
        items, dropped = encode_samples(read_manifest(manifest), xtts.tokenizer, cfg.max_text_tokens, max_samples, manifest)
        items, _ = attach_codes(items, features, data_dir / f"{split}.codes.pt", dvae_hash, device, runtime, f"DVAE codes ({split})")
        values, n = attach_latents(items, xtts, config, data_dir / f"{split}.decoder_latents.pt", latent_hash, cfg.seed, runtime, f"decoder latents ({split})")
        kept, short = build_items(items, values, targets, segment_frames, xtts.hifigan_decoder)
        splits[split], skipped, computed = kept, skipped + dropped + short, computed + n
    train_items, eval_items = splits["train"], splits["eval"][: cfg.eval_clips]
    if computed:
        print(f"computed decoder latents for {computed} clip(s) in {time.perf_counter() - cache_started:.1f} s (cached in {data_dir})")
    if skipped and runtime.is_main:
        write_jsonl(out / "skipped.jsonl", skipped)
        log.warning("skipped %d clip(s) the decoder cannot train on; see %s", len(skipped), out / "skipped.jsonl")
    if not train_items:
        raise ValueError(f"no trainable clips in {manifests['train']} (see {out / 'skipped.jsonl'})")

    # Only the generator trains; the GPT, DVAE and the rest of the model are not needed any more.
    decoder = xtts.hifigan_decoder
    generator = decoder.waveform_decoder.train().requires_grad_(True)
    del xtts, features, dvae
    gc.collect()
    discriminator = build_discriminator().to(device).train() if cfg.adversarial else None
    if discriminator is not None and cfg.discriminator:
        discriminator.load_state_dict(load_discriminator_init(cfg.discriminator))
    gen_loss, disc_loss = (m.to(device) for m in build_losses(
        DECODER_SAMPLE_RATE, cfg.mel_loss_weight, cfg.stft_loss_weight, cfg.adv_loss_weight, cfg.feat_match_loss_weight))

    sampler = loop_sampler(train_items, cfg, runtime)
    sampler_key = {
        "manifest": loop.manifest_hash(manifests["train"]),
        "global_batch": sampler.global_batch,
        "segment_samples": cfg.segment_samples,
        "seed": cfg.seed,
    }
    gen_model, disc_model = generator, discriminator
    if runtime.distributed:
        ids = [device] if device.type == "cuda" else None
        gen_model = torch.nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        if discriminator is not None:
            disc_model = torch.nn.parallel.DistributedDataParallel(discriminator, device_ids=ids)
    betas = tuple(cfg.betas)
    opt_gen = torch.optim.AdamW(generator.parameters(), lr=cfg.lr_gen, betas=betas, weight_decay=cfg.weight_decay)
    sched_gen = torch.optim.lr_scheduler.ExponentialLR(opt_gen, gamma=cfg.lr_gamma)
    opt_disc = sched_disc = None
    if discriminator is not None:
        opt_disc = torch.optim.AdamW(discriminator.parameters(), lr=cfg.lr_disc, betas=betas, weight_decay=cfg.weight_decay)
        sched_disc = torch.optim.lr_scheduler.ExponentialLR(opt_disc, gamma=cfg.lr_gamma)
    # One scaler for both optimizers (torch's recipe for several losses and optimizers).
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Load: continue the same run if a training state exists.
    step, epoch, batch_in_epoch, best_eval = 0, 0, 0, math.inf
    if state_path.is_file():
        state = loop.load_state(state_path, "decoder")
        loop.check_sampler_key(state_path, state.get("sampler", {}), sampler_key)
        if (state["discriminator"] is not None) != (discriminator is not None):
            raise ValueError(f"{state_path} was trained with adversarial={not cfg.adversarial}; resume it the same way or use another run_name")
        generator.load_state_dict(state["decoder"])
        opt_gen.load_state_dict(state["opt_gen"])
        sched_gen.load_state_dict(state["sched_gen"])
        if discriminator is not None:
            discriminator.load_state_dict(state["discriminator"])
            opt_disc.load_state_dict(state["opt_disc"])
            sched_disc.load_state_dict(state["sched_disc"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        step, epoch, batch_in_epoch, best_eval = state["step"], state["epoch"], state["batch_in_epoch"], state["best_eval_loss"]
        if state["gpt"]["hash"] != gpt_hash:
            log.warning("%s was trained on latents of another GPT (%s); continuing on those of %s", state_path, state["gpt"]["source"], gpt_source)
        if runtime.is_main:
            print(f"resuming {state_path} at step {step}")
    data_stats = loop.start_run_dir(cfg, out, data_dir, runtime.is_main)
    checkpoints = out / "checkpoints"

    def save_state() -> None:
        weights = generator.state_dict()
        state = {
            "decoder": weights,
            "discriminator": None if discriminator is None else discriminator.state_dict(),
            "opt_gen": opt_gen.state_dict(),
            "sched_gen": sched_gen.state_dict(),
            "opt_disc": None if opt_disc is None else opt_disc.state_dict(),
            "sched_disc": None if sched_disc is None else sched_disc.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": sampler_key,
            "train_items": len(train_items),
            "data_stats": data_stats,
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_eval_loss": best_eval,
            "base_model_dir": str(Path(model_dir).resolve()),
            "gpt": {"source": gpt_source, "hash": gpt_hash},
            "config": to_container(cfg),
        }
        torch_save(state, state_path)
        loop.save_checkpoint(checkpoints, step, loop.checkpoint_payload(state, "decoder"), cfg.keep_last)
        write_json(
            out / "progress.json",
            {"step": step, "max_steps": cfg.max_steps, "train_seconds": round(train_seconds, 3),
             "segments": segments_seen, "world_size": runtime.world_size},
        )

    def run_eval() -> None:
        nonlocal best_eval
        loss, pairs = evaluate(generator, decoder, gen_loss, eval_items, device, cfg.precision)
        writer.add_scalar("eval/loss_mel", loss, step)
        for n, (wav, target) in enumerate(pairs[: cfg.eval_audio]):
            writer.add_audio(f"eval_audio/{n}", torch.from_numpy(wav).unsqueeze(0), step, sample_rate=DECODER_SAMPLE_RATE)
            writer.add_image(f"eval_mel/{n}", loop.mel_image(wav, DECODER_SAMPLE_RATE), step, dataformats="HW")
            if step == 0:  # what the decoder should say, once
                writer.add_audio(f"eval_target/{n}", torch.from_numpy(target).unsqueeze(0), step, sample_rate=DECODER_SAMPLE_RATE)
                writer.add_image(f"eval_target_mel/{n}", loop.mel_image(target, DECODER_SAMPLE_RATE), step, dataformats="HW")
        if step > 0 and loss < best_eval:
            best_eval = loss
            torch_save({"decoder": generator.state_dict(), "step": step, "eval_loss": loss}, checkpoints / "best.pt")

    # Loop.
    writer = loop.summary_writer(out, step) if runtime.is_main else None
    evals = runtime.is_main and bool(eval_items) and cfg.eval_every > 0
    if evals and step == 0:
        run_eval()  # the decoder before fine-tuning: the baseline the eval loss must beat
    steps = sampler.steps(epoch, batch_in_epoch)
    progress = tqdm(total=cfg.max_steps, initial=step, desc="train-decoder", unit="step", disable=not runtime.is_main)
    segments_seen, train_seconds = 0, 0.0
    while step < cfg.max_steps:
        step_started = time.perf_counter()
        plan = next(steps)
        opt_gen.zero_grad(set_to_none=True)
        if opt_disc is not None:
            opt_disc.zero_grad(set_to_none=True)
        adversarial_now = discriminator is not None and step >= cfg.disc_warmup_steps
        losses = torch.zeros(len(LOSS_KEYS), device=device)
        for a, indices in enumerate(plan.micro_batches):
            rng = loop.position_rng(cfg.seed, plan.epoch, plan.batch, plan.micro_offset + a)
            z, speakers, target = (t.to(device) for t in make_batch([train_items[i] for i in indices], decoder, segment_frames, rng))
            last = a == len(plan.micro_batches) - 1
            with contextlib.ExitStack() as stack:
                if runtime.distributed and not last:  # DDP all-reduces only after the last micro-batch
                    stack.enter_context(gen_model.no_sync())
                    if disc_model is not None:
                        stack.enter_context(disc_model.no_sync())
                with rt.autocast(cfg.precision, device):
                    wav = gen_model(z, speakers)
                wav = wav.float()
                # coqui's GAN order: both losses against the discriminator as it was before this
                # step, the discriminator's on the generator's output before this step.
                scores_fake = feats_fake = feats_real = None
                d_out = {}
                if discriminator is not None:
                    n = wav.shape[0]
                    with rt.autocast(cfg.precision, device):  # fake and real in one pass: one DDP forward per backward
                        scores, feats = disc_model(torch.cat([wav.detach(), target]))
                    d_out = disc_loss([s[:n].float() for s in scores], [s[n:].float() for s in scores])
                    scaler.scale(d_out["loss"] / cfg.grad_accum_steps).backward()
                    feats_real = [[f[n:].detach().float() for f in fs] for fs in feats]
                if adversarial_now:
                    # The plain module with its weights frozen: gradients reach the generator
                    # through it but not its own weights, and DDP's reducer is not involved.
                    discriminator.requires_grad_(False)
                    with rt.autocast(cfg.precision, device):
                        scores_fake, feats_fake = discriminator(wav)
                    discriminator.requires_grad_(True)
                    scores_fake = [s.float() for s in scores_fake]
                    feats_fake = [[f.float() for f in fs] for fs in feats_fake]
                g_out = gen_loss(wav, target, scores_fake, feats_fake, feats_real if adversarial_now else None)
                scaler.scale(g_out["loss"] / cfg.grad_accum_steps).backward()
            values = {**g_out, "D_loss": d_out.get("loss", 0.0)}
            losses += torch.stack([torch.as_tensor(values.get(k, 0.0), device=device).detach().float() for k in LOSS_KEYS]) / cfg.grad_accum_steps
            segments_seen += len(indices)
        losses = losses.cpu()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        scaler.unscale_(opt_gen)
        grad_norm = torch.nn.utils.clip_grad_norm_(generator.parameters(), clip)
        disc_norm = torch.zeros(())
        if opt_disc is not None:
            scaler.unscale_(opt_disc)
            disc_norm = torch.nn.utils.clip_grad_norm_(discriminator.parameters(), clip)
        norms_ok = cfg.precision == "fp16" or (torch.isfinite(grad_norm) and torch.isfinite(disc_norm))
        if not torch.isfinite(losses).all() or not norms_ok:
            raise FloatingPointError(
                f"training diverged at step {step + 1}: "
                + ", ".join(f"{tag} {float(v):.4g}" for tag, v in zip(LOSS_TAGS, losses))
                + f", grad norm {float(grad_norm):.4g} (discriminator {float(disc_norm):.4g}). Stopped without saving; the last "
                f"good state is {state_path if state_path.is_file() else 'none (no state saved yet)'}. Lower lr_gen/lr_disc or use precision=fp32."
            )
        if opt_disc is not None:
            scaler.step(opt_disc)
            sched_disc.step()
        scaler.step(opt_gen)
        scaler.update()
        sched_gen.step()
        step += 1
        epoch, batch_in_epoch = plan.epoch, plan.batch + 1
        train_seconds += time.perf_counter() - step_started
        progress.update(1)
        if step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps:
            if runtime.distributed:
                reduced = losses.to(device)
                torch.distributed.all_reduce(reduced)
                losses = reduced.cpu() / runtime.world_size
            if writer is not None:
                for tag, value in zip(LOSS_TAGS, losses):
                    writer.add_scalar(f"train/{tag}", float(value), step)
                writer.add_scalar("train/lr_gen", sched_gen.get_last_lr()[0], step)
                writer.add_scalar("train/grad_norm", float(grad_norm), step)
                if sched_disc is not None:
                    writer.add_scalar("train/lr_disc", sched_disc.get_last_lr()[0], step)
                    writer.add_scalar("train/grad_norm_disc", float(disc_norm), step)
                writer.add_scalar("train/seconds_per_step", train_seconds / max(step - progress.initial, 1), step)
                writer.add_scalar("train/peak_memory_mb", rt.peak_memory_mb(device), step)
                progress.set_postfix(mel=f"{float(losses[1]):.3f}")
        if evals and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            run_eval()
        if runtime.is_main and (step % cfg.save_every == 0 or step == cfg.max_steps):
            save_state()
    progress.close()
    if writer is not None:
        writer.close()
    if runtime.is_main and (not state_path.is_file() or not is_done(cfg)):  # e.g. max_steps already reached
        save_state()
    runtime.barrier()
    if runtime.is_main:
        print(f"trained the decoder for {step} steps → {state_path} (TensorBoard: {out / 'tensorboard'})")
    return state_path


def loop_sampler(items: List[DecoderItem], cfg: DictConfig, runtime: rt.Runtime):
    """The GPT loop's deterministic sampler; no length bucketing (every segment has one length)."""
    from xtts_ft.data.sampler import LengthBucketSampler

    return LengthBucketSampler(
        [i.duration for i in items], [i.language for i in items], cfg.batch_size, cfg.grad_accum_steps,
        runtime.world_size, runtime.rank, cfg.seed, bucket_batches=1,
    )
