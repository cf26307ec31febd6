"""The decoder fine-tune recipe (stage `train-decoder`), in torchtune's manner: `DecoderRecipe` with
setup(cfg), load_state(), train() (the loop written out; each micro-batch a discriminator_step()
then a generator_step()), save_state(), cleanup(); plus the decoder-specific pieces it calls
(latents, targets, segments, the eval).

It fine-tunes XTTS's HiFiGAN decoder on (GPT latents, speaker embedding) → the 24 kHz audio of
the prepared clips. The GPT, DVAE and speaker encoder stay frozen. Each clip's latents are
computed once, the way inference computes them (`xtts_ft.model.decoder.gpt_latents`: the GPT in
eval mode, teacher-forced on the clip's DVAE codes plus the stop token, conditioned on another
clip of the same speaker through the shared inference module), and cached next to the manifest
keyed by a hash of the GPT and speaker-encoder weights: a changed GPT recomputes them. Targets
are the 24 kHz copies `prepare decoder_copies=true` cuts from the source audio.

Training runs on random segments of `segment_samples` on the decoder's 24 kHz frame grid, where
output and target line up sample for sample (see `xtts_ft.model.decoder`). Losses are coqui-tts's
HiFiGAN losses: log-mel L1 and multi-resolution STFT, and, unless adversarial=false, a fresh (or
given) multi-period + multi-scale discriminator with least-squares GAN and feature-matching
losses, each network with its own optimizer and scheduler. Resume, mixed precision, torchrun and
the run directory work as in the GPT recipe.

Writes in runs/<run_name>/decoder/: state.pt (everything resume needs, discriminator included),
progress.json, checkpoints/step_*.pt and best.pt (generator weights, best = lowest eval mel
loss, described as `xtts_ft.train.checkpoints` says), tensorboard/ (losses, eval audio and mel
images), config.yaml.
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
from xtts_ft.data.sampler import LengthBucketSampler
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.io_utils import file_hash, tensors_hash, torch_save, write_json, write_jsonl
from xtts_ft.model.constants import DECODER_HOP, DECODER_SAMPLE_RATE, GPT_SAMPLE_RATE
from xtts_ft.model.decoder import (
    build_discriminator,
    build_losses,
    decoder_frames,
    decoder_input,
    gpt_latents,
    vocoder_loss_config,
)
from xtts_ft.model.dvae_pairing import check_teacher_dvae, dvae_dir_of, recorded_dvae
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import dvae_hash, load_dvae, load_xtts, resolve_model_cfg
from xtts_ft.train import checkpoints as ckpt
from xtts_ft.train import runtime as rt
from xtts_ft.train.cache import attach_codes, cached_features_on_ranks
from xtts_ft.train.logs import mel_image, summary_writer
from xtts_ft.train.preemption import stop_if_asked
from xtts_ft.train.rundir import check_fresh, is_done, manifest_hash, start_run_dir
from xtts_ft.train.steps import check_diverged, mean_over_ranks, position_rng

log = logging.getLogger(__name__)
# Logged per step, in this order (coqui's loss names; 0 where a loss is off).
LOSS_KEYS = (
    "loss",
    "G_l1_spec_loss",
    "G_stft_loss_mg",
    "G_stft_loss_sc",
    "G_mse_fake_loss",
    "G_feat_match_loss",
    "D_loss",
)
LOSS_TAGS = ("loss_gen", "loss_mel", "loss_stft_mag", "loss_stft_sc", "loss_adv", "loss_feat_match", "loss_disc")


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
        raise MissingFile(f"gpt={choice}: no such train-gpt state or checkpoint", fix="gpt=auto, base or a path")
    state = torch.load(
        path, map_location="cpu", weights_only=True, mmap=True
    )  # mmap: the optimizer state is never read
    ckpt.check_format(state, path)
    if "gpt" not in state:
        raise BadValue(f"gpt={choice}: {path} holds no GPT weights (expected a train-gpt state.pt or checkpoint)")
    return str(path), state


def target_paths(manifest: Path) -> dict:
    """22.05 kHz clip → its 24 kHz copy, for every sample of the manifest."""
    targets = {}
    for sample in read_manifest(manifest):
        if "audio_24k" not in sample.extra:
            raise BadValue(
                f"{manifest} has no 24 kHz copies (sample {sample.audio}): the decoder trains on audio at its "
                "output rate",
                fix="prepare the data again with decoder_copies=true",
            )
        target = sample.extra["audio_24k"]
        if not isinstance(target, str) or not stays_inside(target):
            raise BadValue(
                f"{manifest}: audio_24k {target!r} of {sample.audio} is not inside the manifest's folder; "
                "manifest rows name their clips relative to it",
                fix="prepare the data again with decoder_copies=true",
            )
        targets[resolve_audio(manifest, sample)] = (manifest.parent / target).resolve()
    return targets


def attach_latents(
    items: List[GptItem], xtts, config, cache_path: Path, model_hash: str, seed: int, runtime: rt.Runtime, desc: str
):
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
    return cached_features_on_ranks(runtime, cache_path, model_hash, clips, compute, desc, inputs)


def build_items(gpt_items: List[GptItem], values: List[dict], targets: dict, min_frames: int, decoder):
    """DecoderItems, and a skip record for clips shorter than one training segment."""
    kept, skipped = [], []
    for item, value in zip(gpt_items, values):
        target = targets[item.audio]
        info = sf.info(str(target))
        if info.samplerate != DECODER_SAMPLE_RATE:
            raise BadValue(
                f"{target} is at {info.samplerate} Hz; decoder targets must be {DECODER_SAMPLE_RATE} Hz",
                fix="run prepare again",
            )
        frames = decoder_frames(decoder, value["latents"].shape[0])
        if frames < min_frames:
            skipped.append(
                {
                    "audio": str(item.audio),
                    "reason": "shorter_than_segment",
                    "message": f"{frames} decoder frames < segment of {min_frames}",
                }
            )
            continue
        kept.append(
            DecoderItem(
                item.audio, target, item.speaker, item.language, item.duration, value["latents"], value["speaker"]
            )
        )
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
def evaluate_clips(generator, decoder, gen_loss, items: List[DecoderItem], device, precision: str):
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
        raise MissingFile(f"discriminator={path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "discriminator" in state:
        state = state["discriminator"]
    if not state:
        raise BadValue(
            f"discriminator={path}: it holds no discriminator (was that run trained with adversarial=false?)"
        )
    return state


def segment_sampler(items: List[DecoderItem], cfg: DictConfig, runtime: rt.Runtime):
    """The GPT recipe's deterministic sampler; no length bucketing (every segment has one length)."""
    return LengthBucketSampler(
        [i.duration for i in items],
        [i.language for i in items],
        cfg.batch_size,
        cfg.grad_accum_steps,
        runtime.world_size,
        runtime.rank,
        cfg.seed,
        bucket_batches=1,
    )


def segment_frames(cfg: DictConfig) -> int:
    """The training segment in decoder frames, refused where the hop or the spectral losses cannot use it."""
    if cfg.segment_samples <= 0 or cfg.segment_samples % DECODER_HOP:
        raise BadValue(
            f"segment_samples={cfg.segment_samples} is not a positive multiple of the decoder's hop ({DECODER_HOP})",
            fix=f"segment_samples=<a multiple of {DECODER_HOP}>",
        )
    # torch.stft's reflect padding (n_fft/2 each side) needs a longer signal than that.
    loss_config = vocoder_loss_config(
        DECODER_SAMPLE_RATE, cfg.mel_loss_weight, cfg.stft_loss_weight, cfg.adv_loss_weight, cfg.feat_match_loss_weight
    )
    n_fft = max(
        [loss_config.l1_spec_loss_params["n_fft"]]
        + (list(loss_config.stft_loss_params["n_ffts"]) if cfg.stft_loss_weight > 0 else [])
    )
    if cfg.segment_samples <= n_fft // 2:
        raise BadValue(
            f"segment_samples={cfg.segment_samples}: the spectral losses need more than {n_fft // 2} samples (their largest FFT is {n_fft})"
        )
    return cfg.segment_samples // DECODER_HOP


class DecoderRecipe:
    """One train-decoder run in one process (a rank under torchrun): setup(cfg), load_state(),
    train(), cleanup(); save_state() writes state.pt, a step checkpoint and progress.json."""

    def __init__(self, runtime: rt.Runtime, out: Path):
        self.runtime, self.device, self.out = runtime, runtime.device, out
        self.state_path, self.checkpoints = out / "state.pt", out / "checkpoints"
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_score = math.inf  # the lowest eval mel loss so far
        self.last_eval: dict = {}  # the latest eval's loss and step, which checkpoints record
        self.segments_seen, self.train_seconds = 0, 0.0  # this process's training steps
        self.writer = self.progress = None

    def setup(self, cfg: DictConfig) -> None:
        """The frozen model and the GPT to voice, latents and targets, then only the generator (and
        discriminator) to train with their losses and optimizers."""
        self.cfg = cfg
        check_fresh(self.state_path, cfg.resume)
        rt.warn_slow_bf16(cfg.precision, self.device)
        self.segment_frames = segment_frames(cfg)
        torch.manual_seed(cfg.seed)
        config, xtts = self.setup_frozen_model()
        self.setup_data(config, xtts)
        # Only the generator trains; the GPT, DVAE and the rest of the model are not needed any more.
        self.decoder = xtts.hifigan_decoder
        self.generator = self.decoder.waveform_decoder.train().requires_grad_(True)
        del config, xtts
        gc.collect()
        self.discriminator = build_discriminator().to(self.device).train() if cfg.adversarial else None
        if self.discriminator is not None and cfg.discriminator:
            self.discriminator.load_state_dict(load_discriminator_init(cfg.discriminator))
        self.gen_loss, self.disc_loss = (
            m.to(self.device)
            for m in build_losses(
                DECODER_SAMPLE_RATE,
                cfg.mel_loss_weight,
                cfg.stft_loss_weight,
                cfg.adv_loss_weight,
                cfg.feat_match_loss_weight,
            )
        )
        self.setup_optimizers()

    def setup_frozen_model(self):
        """The base model with every part frozen, its GPT replaced by the one whose latents the decoder voices."""
        cfg = self.cfg
        self.model_dir = resolve_model_cfg(cfg.model)
        self.gpt_source, gpt_state = gpt_weights(cfg)
        self.pair_dvae(gpt_state)  # before loading the model: a mismatch is refused at once
        config, xtts = load_xtts(self.model_dir, self.device, for_inference=False)
        xtts.requires_grad_(False)
        if gpt_state is not None:  # full weights, or a LoRA adapter merged into the base's (train-gpt method=lora)
            from xtts_ft.model.lora import load_trained_gpt

            load_trained_gpt(xtts.gpt, gpt_state, self.model_dir, self.gpt_source)
        xtts.gpt.eval()  # the GPT module's own eval (not Xtts.eval(), which builds the inference wrapper)
        xtts.hifigan_decoder.eval()
        self.gpt_hash = tensors_hash(xtts.gpt.state_dict())
        self.base_hash = file_hash(Path(self.model_dir) / "model.pth")  # what checkpoints say they build on
        rt.return_freed_host_memory()  # the loader's copy of the weights
        return config, xtts

    def pair_dvae(self, gpt_state: Optional[dict]) -> None:
        """The DVAE (dvae=null: the base's) whose codes the GPT is teacher-forced on: the one that GPT
        trained on (its run records it; the base's GPT, the base's DVAE), else refused naming both."""
        self.dvae_dir = dvae_dir_of(self.cfg.dvae, self.model_dir)
        self.dvae_hash = dvae_hash(self.dvae_dir)
        if not (gpt_state or {}).get("dvae_hash") and Path(self.dvae_dir).resolve() == Path(self.model_dir).resolve():
            return  # the base's GPT (or a run from before runs recorded it) on the base's DVAE
        gpt_hash, gpt_dir = recorded_dvae(gpt_state, self.model_dir)
        gpt_name = "base model's GPT" if gpt_state is None else f"GPT in {self.gpt_source}"
        check_teacher_dvae(gpt_name, gpt_hash, gpt_dir, self.dvae_hash, self.dvae_dir, self.model_dir)

    def setup_data(self, config, xtts) -> None:
        """The GPT's items (tokens, limits, cached DVAE codes), then latents (cached) and 24 kHz targets."""
        cfg, runtime, out = self.cfg, self.runtime, self.out
        self.data_dir = data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
        self.manifests = manifests = {split: data_dir / f"{split}.jsonl" for split in ("train", "eval")}
        max_samples = int(cfg.max_audio_seconds * GPT_SAMPLE_RATE)
        dvae, mel_stats = load_dvae(self.dvae_dir, xtts.args.gpt_num_audio_tokens)
        features = GptFeatures(dvae, mel_stats, xtts.args.gpt_use_perceiver_resampler).to(self.device)
        dvae_key = self.dvae_hash  # keys the code cache and the latents' (a new DVAE re-caches both)
        # Everything the latents depend on besides the clip, its reference and its text.
        latent_hash = tensors_hash(
            xtts.gpt.state_dict(),
            xtts.hifigan_decoder.speaker_encoder.state_dict(),
            {"mel_stats": xtts.mel_stats},
            extra=f"decoder-latents-v1:{config.gpt_cond_len}:{config.gpt_cond_chunk_len}:{config.max_ref_len}:{dvae_key}",
        )
        splits, skipped, started, computed = {}, [], time.perf_counter(), 0
        for split, manifest in manifests.items():
            targets = target_paths(manifest)
            items, dropped = encode_samples(
                read_manifest(manifest), xtts.tokenizer, cfg.max_text_tokens, max_samples, manifest
            )
            items, _ = attach_codes(
                items,
                features,
                data_dir / f"{split}.codes.pt",
                dvae_key,
                self.device,
                runtime,
                f"DVAE codes ({split})",
            )
            values, n = attach_latents(
                items,
                xtts,
                config,
                data_dir / f"{split}.decoder_latents.pt",
                latent_hash,
                cfg.seed,
                runtime,
                f"decoder latents ({split})",
            )
            kept, short = build_items(items, values, targets, self.segment_frames, xtts.hifigan_decoder)
            splits[split], skipped, computed = kept, skipped + dropped + short, computed + n
        self.train_items, self.eval_items = splits["train"], splits["eval"][: cfg.eval_clips]
        if computed:
            log.info(
                f"computed decoder latents for {computed} clip(s) in {time.perf_counter() - started:.1f} s (cached in {data_dir})"
            )
        if skipped and runtime.is_main:
            write_jsonl(out / "skipped.jsonl", skipped)
            log.warning("skipped %d clip(s) the decoder cannot train on; see %s", len(skipped), out / "skipped.jsonl")
        if not self.train_items:
            raise BadValue(f"no trainable clips in {manifests['train']} (see {out / 'skipped.jsonl'})")

    def setup_optimizers(self) -> None:
        """The sampler, DDP around each network under torchrun, an AdamW and a decay per network, the fp16 scaler."""
        cfg, device = self.cfg, self.device
        self.sampler = segment_sampler(self.train_items, cfg, self.runtime)
        self.sampler_key = {  # what the sampler's saved position is tied to
            "manifest": manifest_hash(self.manifests["train"]),
            "global_batch": self.sampler.global_batch,
            "segment_samples": cfg.segment_samples,
            "seed": cfg.seed,
        }
        self.gen_model, self.disc_model = self.generator, self.discriminator
        if self.runtime.distributed:
            ids = [device] if device.type == "cuda" else None
            self.gen_model = torch.nn.parallel.DistributedDataParallel(self.generator, device_ids=ids)
            if self.discriminator is not None:
                self.disc_model = torch.nn.parallel.DistributedDataParallel(self.discriminator, device_ids=ids)
        betas = tuple(cfg.betas)
        self.opt_gen = torch.optim.AdamW(
            self.generator.parameters(), lr=cfg.lr_gen, betas=betas, weight_decay=cfg.weight_decay
        )
        self.sched_gen = torch.optim.lr_scheduler.ExponentialLR(self.opt_gen, gamma=cfg.lr_gamma)
        self.opt_disc = self.sched_disc = None
        if self.discriminator is not None:
            self.opt_disc = torch.optim.AdamW(
                self.discriminator.parameters(), lr=cfg.lr_disc, betas=betas, weight_decay=cfg.weight_decay
            )
            self.sched_disc = torch.optim.lr_scheduler.ExponentialLR(self.opt_disc, gamma=cfg.lr_gamma)
        # One scaler for both optimizers (torch's recipe for several losses and optimizers).
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def load_state(self) -> None:
        """Continue the same run if a training state exists (same data path, adversarial or not)."""
        cfg, state_path = self.cfg, self.state_path
        if not state_path.is_file():
            return
        state = ckpt.load_state(state_path, "decoder")
        ckpt.check_sampler_key(state_path, state.get("sampler", {}), self.sampler_key)
        if (state["discriminator"] is not None) != (self.discriminator is not None):
            raise BadValue(
                f"{state_path} was trained with adversarial={not cfg.adversarial}",
                fix=f"resume it with adversarial={not cfg.adversarial}, or use another run_name",
            )
        self.generator.load_state_dict(state["decoder"])
        self.opt_gen.load_state_dict(state["opt_gen"])
        self.sched_gen.load_state_dict(state["sched_gen"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.opt_disc.load_state_dict(state["opt_disc"])
            self.sched_disc.load_state_dict(state["sched_disc"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_score = state["best_eval_loss"]
        self.last_eval = state.get("last_eval", {})
        if state["gpt"]["hash"] != self.gpt_hash:
            log.warning(
                "%s was trained on latents of another GPT (%s); continuing on those of %s",
                state_path,
                state["gpt"]["source"],
                self.gpt_source,
            )
        if self.runtime.is_main:
            log.info(f"resuming {state_path} at step {self.step}")

    def train(self) -> Path:
        """The loop: an eval of the decoder as it was, then one optimizer step per sampler step,
        logged, evaluated and saved on schedule."""
        cfg, runtime = self.cfg, self.runtime
        self.data_stats = start_run_dir(cfg, self.out, self.data_dir, runtime.is_main)
        self.writer = summary_writer(self.out, self.step) if runtime.is_main else None
        if runtime.is_main:  # warns if what the run will write does not fit
            weights = [self.generator.state_dict(), self.discriminator.state_dict() if self.discriminator else {}]
            ckpt.check_run_space(self.out, cfg, weights, [self.opt_gen, self.opt_disc], self.model_dir)
        evals = runtime.is_main and bool(self.eval_items) and cfg.eval_every > 0
        if evals and self.step == 0:
            self.evaluate()  # the decoder before fine-tuning: the baseline the eval loss must beat
        steps = self.sampler.steps(self.epoch, self.batch_in_epoch)
        self.progress = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train-decoder", unit="step", disable=not runtime.is_main
        )
        while self.step < cfg.max_steps:
            stop_if_asked(runtime, self.step, self.save_state, self.out)  # SIGTERM/SIGUSR1: save, stop
            step_started = time.perf_counter()
            plan = next(steps)
            losses, grad_norm, disc_norm = self.train_step(plan)
            self.step += 1
            self.epoch, self.batch_in_epoch = plan.epoch, plan.batch + 1
            self.train_seconds += time.perf_counter() - step_started
            self.progress.update(1)
            if self.step % cfg.log_every == 0 or self.step == 1 or self.step == cfg.max_steps:
                self.log_step(mean_over_ranks(losses, runtime), grad_norm, disc_norm)
            if evals and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                self.evaluate()
            if runtime.is_main and (self.step % cfg.save_every == 0 or self.step == cfg.max_steps):
                self.save_state()
        self.progress.close()
        if self.writer is not None:
            self.writer.close()
        if runtime.is_main and (
            not self.state_path.is_file() or not is_done(self.out, cfg.max_steps)
        ):  # e.g. max_steps already reached
            self.save_state()
        runtime.barrier()
        if runtime.is_main:
            log.info(
                f"trained the decoder for {self.step} steps → {self.state_path} (TensorBoard: {self.out / 'tensorboard'})"
            )
        return self.state_path

    def train_step(self, plan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimizer step of each network over the plan's micro-batches; returns this rank's
        losses (LOSS_KEYS, CPU) and the generator's and discriminator's gradient norms before clipping."""
        cfg = self.cfg
        self.opt_gen.zero_grad(set_to_none=True)
        if self.opt_disc is not None:
            self.opt_disc.zero_grad(set_to_none=True)
        adversarial_now = self.discriminator is not None and self.step >= cfg.disc_warmup_steps
        losses = torch.zeros(len(LOSS_KEYS), device=self.device)
        for a, indices in enumerate(plan.micro_batches):
            rng = position_rng(cfg.seed, plan.epoch, plan.batch, plan.micro_offset + a)
            last = a == len(plan.micro_batches) - 1
            losses += self.micro_step(indices, rng, last, adversarial_now)
        losses = losses.cpu()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self.scaler.unscale_(self.opt_gen)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), clip)
        disc_norm = torch.zeros(())
        if self.opt_disc is not None:
            self.scaler.unscale_(self.opt_disc)
            disc_norm = torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), clip)
        readings = ", ".join(f"{tag} {float(v):.4g}" for tag, v in zip(LOSS_TAGS, losses))
        check_diverged(
            losses,
            [grad_norm, disc_norm],
            cfg.precision,
            self.step + 1,
            f"{readings}, grad norm {float(grad_norm):.4g} (discriminator {float(disc_norm):.4g})",
            self.state_path,
            "Lower lr_gen/lr_disc or use precision=fp32.",
        )
        if self.opt_disc is not None:
            self.scaler.step(self.opt_disc)
            self.sched_disc.step()
        self.scaler.step(self.opt_gen)
        self.scaler.update()
        self.sched_gen.step()
        return losses, grad_norm, disc_norm

    def micro_step(self, indices, rng: np.random.Generator, last: bool, adversarial_now: bool) -> torch.Tensor:
        """One micro-batch: the generator's forward, then the discriminator's step and the generator's
        (coqui's GAN order); returns its losses (LOSS_KEYS) / grad_accum_steps."""
        cfg, device = self.cfg, self.device
        batch = make_batch([self.train_items[i] for i in indices], self.decoder, self.segment_frames, rng)
        z, speakers, target = (t.to(device) for t in batch)
        with contextlib.ExitStack() as stack:
            if self.runtime.distributed and not last:  # DDP all-reduces only after the last micro-batch
                stack.enter_context(self.gen_model.no_sync())
                if self.disc_model is not None:
                    stack.enter_context(self.disc_model.no_sync())
            with rt.autocast(cfg.precision, device):
                wav = self.gen_model(z, speakers)
            wav = wav.float()
            # coqui's GAN order: both losses against the discriminator as it was before this
            # step, the discriminator's on the generator's output before this step.
            d_out, feats_real = self.discriminator_step(wav, target)
            g_out = self.generator_step(wav, target, feats_real, adversarial_now)
        values = {**g_out, "D_loss": d_out.get("loss", 0.0)}
        self.segments_seen += len(indices)
        return (
            torch.stack([torch.as_tensor(values.get(k, 0.0), device=device).detach().float() for k in LOSS_KEYS])
            / cfg.grad_accum_steps
        )

    def discriminator_step(self, wav: torch.Tensor, target: torch.Tensor) -> tuple[dict, Optional[list]]:
        """The discriminator's loss on the generated (detached) and real segments, backward; returns
        its losses and the real segments' features (for feature matching). No discriminator: ({}, None)."""
        if self.discriminator is None:
            return {}, None
        n = wav.shape[0]
        with rt.autocast(self.cfg.precision, self.device):  # fake and real in one pass: one DDP forward per backward
            scores, feats = self.disc_model(torch.cat([wav.detach(), target]))
        d_out = self.disc_loss([s[:n].float() for s in scores], [s[n:].float() for s in scores])
        self.scaler.scale(d_out["loss"] / self.cfg.grad_accum_steps).backward()
        feats_real = [[f[n:].detach().float() for f in fs] for fs in feats]
        return d_out, feats_real

    def generator_step(
        self, wav: torch.Tensor, target: torch.Tensor, feats_real: Optional[list], adversarial_now: bool
    ) -> dict:
        """The generator's spectral losses and, once the discriminator warmed up, its adversarial and
        feature-matching losses; backward. Returns coqui's loss dict."""
        scores_fake = feats_fake = None
        if adversarial_now:
            # The plain module with its weights frozen: gradients reach the generator
            # through it but not its own weights, and DDP's reducer is not involved.
            self.discriminator.requires_grad_(False)
            with rt.autocast(self.cfg.precision, self.device):
                scores_fake, feats_fake = self.discriminator(wav)
            self.discriminator.requires_grad_(True)
            scores_fake = [s.float() for s in scores_fake]
            feats_fake = [[f.float() for f in fs] for fs in feats_fake]
        g_out = self.gen_loss(wav, target, scores_fake, feats_fake, feats_real if adversarial_now else None)
        self.scaler.scale(g_out["loss"] / self.cfg.grad_accum_steps).backward()
        return g_out

    def log_step(self, losses: torch.Tensor, grad_norm: torch.Tensor, disc_norm: torch.Tensor) -> None:
        """The step's losses (mean over ranks), learning rates, gradient norms, time and memory."""
        if self.writer is None:
            return
        writer, step = self.writer, self.step
        for tag, value in zip(LOSS_TAGS, losses):
            writer.add_scalar(f"train/{tag}", float(value), step)
        writer.add_scalar("train/lr_gen", self.sched_gen.get_last_lr()[0], step)
        writer.add_scalar("train/grad_norm", float(grad_norm), step)
        if self.sched_disc is not None:
            writer.add_scalar("train/lr_disc", self.sched_disc.get_last_lr()[0], step)
            writer.add_scalar("train/grad_norm_disc", float(disc_norm), step)
        writer.add_scalar("train/seconds_per_step", self.train_seconds / max(step - self.progress.initial, 1), step)
        writer.add_scalar("train/peak_memory_mb", rt.peak_memory_mb(self.device), step)
        self.progress.set_postfix(mel=f"{float(losses[1]):.3f}")

    def evaluate(self) -> None:
        """Mel loss of whole eval clips, their audio and mel images to TensorBoard (the targets once,
        at step 0); best.pt on a new lowest loss after training began (rank 0)."""
        cfg, writer, step = self.cfg, self.writer, self.step
        loss, pairs = evaluate_clips(
            self.generator, self.decoder, self.gen_loss, self.eval_items, self.device, cfg.precision
        )
        writer.add_scalar("eval/loss_mel", loss, step)
        for n, (wav, target) in enumerate(pairs[: cfg.eval_audio]):
            writer.add_audio(
                f"eval_audio/{n}", torch.from_numpy(wav).unsqueeze(0), step, sample_rate=DECODER_SAMPLE_RATE
            )
            writer.add_image(f"eval_mel/{n}", mel_image(wav, DECODER_SAMPLE_RATE), step, dataformats="HW")
            if step == 0:  # what the decoder should say, once
                writer.add_audio(
                    f"eval_target/{n}", torch.from_numpy(target).unsqueeze(0), step, sample_rate=DECODER_SAMPLE_RATE
                )
                writer.add_image(
                    f"eval_target_mel/{n}", mel_image(target, DECODER_SAMPLE_RATE), step, dataformats="HW"
                )
        self.last_eval = {"step": step, "eval/loss_mel": loss}
        if step > 0 and loss < self.best_score:
            self.best_score = loss
            torch_save(
                {"decoder": self.generator.state_dict(), **self.description(), "eval_loss": loss},
                self.checkpoints / "best.pt",
            )

    def description(self) -> dict:
        """What every state and checkpoint of this run says about itself: what export needs besides
        the weights, including which GPT the decoder learnt to voice."""
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.step,
            "base_model_dir": str(Path(self.model_dir).resolve()),
            "base_model_hash": self.base_hash,
            "config": to_container(self.cfg),
            "data_stats": self.data_stats,
            "gpt": {"source": self.gpt_source, "hash": self.gpt_hash},
            "dvae_hash": self.dvae_hash,  # the DVAE whose codes the GPT was teacher-forced on (issue 34)
            "dvae_dir": str(Path(self.dvae_dir).resolve()),
            "last_eval": self.last_eval,
        }

    def save_state(self) -> None:
        """state.pt (everything resume needs), checkpoints/step_*.pt (the generator, described), progress.json."""
        weights = self.generator.state_dict()
        state = {
            "decoder": weights,
            "discriminator": None if self.discriminator is None else self.discriminator.state_dict(),
            "opt_gen": self.opt_gen.state_dict(),
            "sched_gen": self.sched_gen.state_dict(),
            "opt_disc": None if self.opt_disc is None else self.opt_disc.state_dict(),
            "sched_disc": None if self.sched_disc is None else self.sched_disc.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": self.sampler_key,
            "train_items": len(self.train_items),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_eval_loss": self.best_score,
            **self.description(),
        }
        ckpt.save_state(state, self.state_path)  # the state it replaces kept as state.prev.pt
        ckpt.save_checkpoint(
            self.checkpoints, self.step, {"decoder": weights, **self.description()}, self.cfg.keep_last
        )
        write_json(
            self.out / "progress.json",
            {
                "step": self.step,
                "max_steps": self.cfg.max_steps,
                "train_seconds": round(self.train_seconds, 3),
                "segments": self.segments_seen,
                "world_size": self.runtime.world_size,
            },
        )

    def cleanup(self) -> None:
        """Close the progress bar and TensorBoard (also after a failure: what was logged is kept)."""
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
