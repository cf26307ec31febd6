"""The DVAE fine-tune recipe (stage `train-dvae`), in torchtune's manner: `DvaeRecipe` with setup(cfg),
load_state(), train() (the loop written out), save_state(), cleanup(); plus the DVAE-specific pieces it
calls (clips and crops, the eval and its code metrics, the product files).

XTTS's DVAE (coqui's `DiscreteVAE`: a normalised log-mel → one code per 4 mel frames) makes the GPT's
targets. A GPT trained on one DVAE's codes reads another's as noise wherever they differ (anhnh2002 #43: the
GPT collapsed after a DVAE fine-tune), so every eval measures what matters to the GPT, on held-out clips
and against the base DVAE: the mel reconstruction loss, the codebook's use (perplexity, dead codes) and the
code drift (the share of frames whose code changed).

The losses are the DVAE's own, as `DiscreteVAE.forward` returns them: the reconstruction error of the mel
(computed exactly as the GPT's codes are: `GptFeatures.dvae_mel` with the base's mel_stats.pth) and the
commitment loss, weighted by `commitment_weight`. Training runs on random fixed-length crops of the prepared
22.05 kHz clips (rectangular batches), each drawn from its micro-batch's own seeded generator
(`position_rng`), so a resumed run draws the same crops. Shapes, code count and mel channels come from the
base's dvae.pth (`load_dvae`).

Modes: `encoder` (default) trains the encoder and the DVAE's decoder with the codebook frozen. coqui's
`Quantize` moves its codebook (the `embed`, `embed_avg` and `cluster_size` buffers, no gradients) by an
exponential moving average whenever it is in training mode, so this mode keeps `dvae.codebook` in eval mode:
the codebook stays bit-identical and a code keeps its meaning. `full` lets that update run too. Under
torchrun, `Quantize` all-reduces the update's sums itself, and DDP's default `broadcast_buffers=True` copies
rank 0's buffers to every rank before each forward: the codebook is the same on every rank by construction.

Writes in runs/<run_name>/dvae/: state.pt (+ state.prev.pt), progress.json, checkpoints/step_*.pt and
best.pt (lowest eval reconstruction loss), tensorboard/, config.yaml, skipped.jsonl, and the product,
refreshed at every save: dvae.pth (a plain DiscreteVAE state dict: `load_dvae(<run dir>)` reads it),
mel_stats.pth (the base's bytes) and dvae.json (written last: a directory holding it is complete).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.audio import load_audio
from xtts_ft.data.sample import read_manifest, resolve_audio
from xtts_ft.data.sampler import LengthBucketSampler
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.io_utils import atomic_path, file_hash, torch_save, write_json, write_jsonl
from xtts_ft.model.constants import GPT_SAMPLE_RATE
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import dvae_hash, load_dvae, resolve_model_cfg
from xtts_ft.train import checkpoints as ckpt
from xtts_ft.train import runtime as rt
from xtts_ft.train.logs import summary_writer
from xtts_ft.train.preemption import stop_if_asked
from xtts_ft.train.rundir import check_fresh, is_done, manifest_hash, start_run_dir
from xtts_ft.train.steps import check_diverged, mean_over_ranks, position_rng

log = logging.getLogger(__name__)
MODES = ("encoder", "full")
PRODUCT_KIND, PRODUCT_FORMAT = "xtts-ft-dvae", 1
# dvae.json's "metrics" and "base_metrics": the keys every eval reports (issue 34's contract).
METRIC_KEYS = (
    "recon_loss",
    "commitment_loss",
    "perplexity",
    "dead_codes",
    "codebook_size",
    "code_drift",
    "eval_frames",
)


@dataclass(frozen=True)
class Clip:
    audio: Path  # the prepared 22.05 kHz clip
    text: str
    language: str
    duration: float


def check_settings(cfg: DictConfig) -> None:
    """The settings no model or data is needed to refuse."""
    if cfg.mode not in MODES:
        raise BadValue(f"mode={cfg.mode} is not a mode", fix="mode=encoder (the codebook frozen) or mode=full")
    if cfg.eval_clips < 1:
        raise BadValue(
            "eval_clips=0: the code drift the GPT depends on is measured on held-out clips, and dvae.json reports it",
            fix="eval_clips=<1 or more>",
        )


def read_clips(manifest: Path, min_seconds: float) -> tuple[List[Clip], List[dict]]:
    """The manifest's clips, and a skip record for each shorter than `min_seconds`."""
    kept, skipped = [], []
    for sample in read_manifest(manifest):
        if sample.duration < min_seconds:
            message = f"{sample.duration:.2f} s < segment_seconds={min_seconds}"
            skipped.append({**sample.to_json(), "reason": "shorter_than_segment", "message": message})
            continue
        audio = resolve_audio(manifest, sample)
        if not audio.is_file():
            raise MissingFile(f"{manifest}: clip {audio} is missing", fix="run `xtts-ft prepare` again")
        kept.append(Clip(audio, sample.text, sample.language, sample.duration))
    return kept, skipped


def code_grid(dvae) -> int:
    """Mel frames per code: coqui's DiscreteVAE halves the length in each of its `num_layers` strided
    convolutions (its default stride 2, which every XTTS DVAE keeps)."""
    return 2**dvae.num_layers


def segment_frames(segment_seconds: float, hop: int, grid: int) -> int:
    """The training crop in mel frames: segment_seconds on the mel's hop, rounded down to whole codes (a
    crop of whole codes reconstructs to its own length, as coqui's training trims mels to)."""
    frames = int(segment_seconds * GPT_SAMPLE_RATE / hop) // grid * grid
    if frames < grid:
        shortest = grid * hop / GPT_SAMPLE_RATE
        raise BadValue(
            f"segment_seconds={segment_seconds} is shorter than one DVAE code ({shortest:.3f} s)",
            fix="segment_seconds=<about 2>",
        )
    return frames


@torch.no_grad()
def clip_mel(features: GptFeatures, path: Path, device: torch.device) -> torch.Tensor:
    """(channels, frames): a whole clip's normalised log-mel, as the GPT's code extraction computes it."""
    wav = torch.from_numpy(load_audio(path, GPT_SAMPLE_RATE)).to(device)
    return features.dvae_mel(wav.unsqueeze(0))[0]


def make_batch(clips: List[Clip], features, frames: int, grid: int, rng: np.random.Generator, device) -> torch.Tensor:
    """(B, channels, frames): a random crop of each clip's mel, starting on the code grid."""
    crops = []
    for clip in clips:
        mel = clip_mel(features, clip.audio, device)
        if mel.shape[-1] < frames:  # a clip at the limit of segment_seconds may round a frame short
            mel = F.pad(mel.unsqueeze(0), (0, frames - mel.shape[-1]), mode="replicate")[0]
        start = grid * int(rng.integers(0, (mel.shape[-1] - frames) // grid + 1))
        crops.append(mel[:, start : start + frames])
    return torch.stack(crops)


def set_training(dvae, mode: str) -> None:
    """Train mode, the codebook left in eval mode under mode=encoder: coqui's Quantize moves its codebook
    whenever it is in training mode (and, under torch.distributed, all-reduces the move)."""
    dvae.train()
    if mode == "encoder":
        dvae.codebook.eval()


@torch.no_grad()
def encode_decode(dvae, mel: torch.Tensor):
    """A whole clip through the DVAE in eval mode: its codes exactly as `get_codebook_indices` gives them
    to the GPT (encoder, nearest code), the reconstruction from those codes (what coqui's eval-mode forward
    returns: `decode(codes)`), and the sums of its reconstruction and commitment losses."""
    img = dvae.norm(mel.unsqueeze(0))
    logits = dvae.encoder(img).permute(0, 2, 1)
    quantized, codes, _ = dvae.codebook(logits)
    out = dvae.decode(codes)[0][..., : img.shape[-1]]  # the last code's frames past the clip's end dropped
    recon = float(dvae.loss_fn(out, img, reduction="sum"))
    commitment = float((quantized - logits).pow(2).sum())
    return codes[0], recon, commitment, out[0]


def code_metrics(codes: torch.Tensor, base_codes: torch.Tensor, codebook_size: int) -> dict:
    """Codebook use and drift of the held-out frames' codes: perplexity = exp(entropy of the code
    histogram), dead codes = entries no frame uses, code drift = share of frames whose code differs from
    the base DVAE's."""
    counts = torch.bincount(codes, minlength=codebook_size).double()
    share = counts[counts > 0] / counts.sum()
    return {
        "perplexity": float(torch.exp(-(share * share.log()).sum())),
        "dead_codes": int((counts == 0).sum()),
        "codebook_size": int(codebook_size),
        "code_drift": float((codes != base_codes).double().mean()),
        "eval_frames": int(codes.numel()),
    }


@torch.no_grad()
def evaluate_dvae(dvae, mels: List[torch.Tensor], base_codes: Optional[List[torch.Tensor]]):
    """(metrics, each clip's codes, each clip's reconstruction) of the DVAE as it is, in eval mode (the
    caller sets the training mode back). Without `base_codes` the drift is measured against its own codes."""
    dvae.eval()
    codes, outs, recon, commitment, mel_values, code_values = [], [], 0.0, 0.0, 0, 0
    for mel in mels:
        clip_codes, clip_recon, clip_commitment, out = encode_decode(dvae, mel)
        codes.append(clip_codes.cpu())
        outs.append(out)
        recon, commitment = recon + clip_recon, commitment + clip_commitment
        mel_values, code_values = mel_values + mel.numel(), code_values + clip_codes.numel() * dvae.codebook.dim
    flat = torch.cat(codes)
    base = flat if base_codes is None else torch.cat(base_codes)
    metrics = {"recon_loss": recon / mel_values, "commitment_loss": commitment / code_values}
    return {**metrics, **code_metrics(flat, base, dvae.num_tokens)}, codes, outs


def mel_pair_image(target: torch.Tensor, reconstruction: torch.Tensor) -> np.ndarray:
    """Target (top) over reconstruction (bottom) on one [0, 1] scale, low frequencies at the bottom of each."""
    both = torch.stack([target, reconstruction]).float().cpu().numpy()
    scaled = (both - both.min()) / max(float(both.max() - both.min()), 1e-8)
    return np.concatenate([np.flipud(scaled[0]), np.flipud(scaled[1])]).astype(np.float32)


def describe_eval(step: int, metrics: dict) -> str:
    return (
        f"eval at step {step}: reconstruction {metrics['recon_loss']:.4f}, commitment {metrics['commitment_loss']:.4f}, "
        f"perplexity {metrics['perplexity']:.1f}, dead codes {metrics['dead_codes']}/{metrics['codebook_size']}, "
        f"code drift {100 * metrics['code_drift']:.2f} % of {metrics['eval_frames']} frames"
    )


class BaseVoicer:
    """The base model's GPT and HiFiGAN, to hear a clip's codes: teacher-forced through the base GPT to its
    latents as inference computes them (`gpt_latents`), then decoded by the base HiFiGAN, in the clip's own
    voice. What the codes mean to the GPT and decoder the user already has."""

    def __init__(self, model_dir: Path, device: torch.device):
        from xtts_ft.inference import XttsSynthesizer
        from xtts_ft.model.loading import load_xtts

        config, self.xtts = load_xtts(model_dir, device, for_inference=True)
        self.synthesizer = XttsSynthesizer.from_model(config, self.xtts)
        self.sample_rate = self.synthesizer.sample_rate

    @torch.no_grad()
    def speak(self, clip: Clip, codes: torch.Tensor) -> Optional[np.ndarray]:
        """The 24 kHz audio of the codes; None when the clip is longer than the GPT takes."""
        from xtts_ft.model.decoder import gpt_latents

        gpt = self.xtts.gpt
        tokens = torch.tensor(self.xtts.tokenizer.encode(clip.text, lang=clip.language, report_unknown=False))
        lengths = ((codes.numel(), gpt.max_mel_tokens), (tokens.numel(), gpt.max_text_tokens))
        if any(0 < limit < n + 2 for n, limit in lengths):  # start and stop tokens added; -1: no limit
            return None
        voice = self.synthesizer.clone_voice(clip.audio)
        latents = gpt_latents(gpt, tokens, codes, voice.gpt_cond_latent)
        return self.xtts.hifigan_decoder(latents, g=voice.speaker_embedding).reshape(-1).float().cpu().numpy()


def check_resumable(state_path: Path, state: dict, mode: str, base_dvae_hash: str) -> None:
    """A state continues only in its mode and from its base DVAE (the drift is measured against it)."""
    saved = state.get("mode")
    if saved != mode:
        raise BadValue(
            f"{state_path} was trained with mode={saved}, not mode={mode}",
            fix=f"resume it with mode={saved}, or use another run_name",
        )
    if state.get("base_dvae_hash") != base_dvae_hash:
        raise BadValue(
            f"{state_path} fine-tunes another base DVAE ({state.get('base_dvae_hash')}, this base's is {base_dvae_hash})",
            fix=f"resume it with its own base ({state.get('base_model_dir')}), or use another run_name",
        )


def write_product(out: Path, weights: dict, model_dir: Path, info: dict) -> str:
    """dvae.pth, mel_stats.pth (the base's bytes: the normalisation does not train), then dvae.json, last:
    a directory holding dvae.json is complete. Returns the product's dvae_hash."""
    torch_save(weights, out / "dvae.pth")
    with atomic_path(out / "mel_stats.pth") as tmp:
        shutil.copyfile(Path(model_dir) / "mel_stats.pth", tmp)
    digest = dvae_hash(out)
    write_json(out / "dvae.json", {**info, "dvae_hash": digest})
    return digest


def read_product(run_dir: Path) -> dict:
    """A train-dvae run's dvae.json (what the DVAE it holds is, and its measured drift)."""
    path = Path(run_dir) / "dvae.json"
    if not path.is_file():
        raise MissingFile(f"{path} is missing: {run_dir} holds no finished DVAE", fix="run `xtts-ft train-dvae` first")
    return json.loads(path.read_text(encoding="utf-8"))


class DvaeRecipe:
    """One train-dvae run in one process (a rank under torchrun): setup(cfg), load_state(), train(),
    cleanup(); save_state() writes state.pt, a step checkpoint, the product and progress.json."""

    def __init__(self, runtime: rt.Runtime, out: Path):
        self.runtime, self.device, self.out = runtime, runtime.device, out
        self.state_path, self.checkpoints = out / "state.pt", out / "checkpoints"
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_score = math.inf  # the lowest eval reconstruction loss so far
        self.last_eval: dict = {}  # the latest eval's metrics and step, which dvae.json and checkpoints record
        self.base_metrics: dict = {}  # the base DVAE's, measured at set-up (drift 0)
        self.crops_seen, self.train_seconds = 0, 0.0  # this process's training steps
        self.writer = self.progress = self.voicer = None

    def setup(self, cfg: DictConfig) -> None:
        """The base DVAE to train (and, for eval audio, the base GPT and decoder), the data, the optimizer."""
        self.cfg = cfg
        check_settings(cfg)
        check_fresh(self.state_path, cfg.resume)
        rt.warn_slow_bf16(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()

    def setup_model(self) -> None:
        """The base DVAE (shapes from its dvae.pth, checked against the GPT's code count), its mel, hashes."""
        cfg = self.cfg
        self.model_dir = resolve_model_cfg(cfg.model)
        config = json.loads((Path(self.model_dir) / "config.json").read_text(encoding="utf-8"))
        dvae, mel_stats = load_dvae(self.model_dir, config.get("model_args", {}).get("gpt_num_audio_tokens"))
        self.features = GptFeatures(dvae, mel_stats).to(self.device)
        mel = self.features.dvae_mel
        if mel_stats.numel() != mel.n_mel_channels or dvae.encoder[0][0].in_channels != mel.n_mel_channels:
            raise BadValue(
                f"{self.model_dir}: the DVAE reads {dvae.encoder[0][0].in_channels} mel channels and mel_stats.pth "
                f"has {mel_stats.numel()}, where XTTS's DVAE mel has {mel.n_mel_channels}",
                fix="use the dvae.pth and mel_stats.pth released with this model",
            )
        if cfg.mode == "full" and not dvae.codebook.cluster_size.any():
            # Quantize's moving average divides embed_avg by these counts: at zero, the first update blows the
            # codebook up (every frame one code within a few steps). A trained DVAE always has them.
            raise BadValue(
                f"{Path(self.model_dir) / 'dvae.pth'}: the codebook has no usage counts (codebook.cluster_size is all "
                "zero: it was never trained with its moving average), so mode=full would collapse it",
                fix="mode=encoder (the codebook frozen), or a dvae.pth trained with its codebook",
            )
        self.dvae = dvae.requires_grad_(True)  # load_dvae returns it frozen
        self.grid, self.hop = code_grid(dvae), mel.hop_length
        self.base_dvae_hash = dvae_hash(self.model_dir)
        self.base_hash = file_hash(Path(self.model_dir) / "model.pth")  # what checkpoints say they build on
        if self.runtime.is_main and cfg.eval_audio > 0:
            self.voicer = BaseVoicer(self.model_dir, self.device)

    def setup_data(self) -> None:
        """Training clips (shorter than a crop skipped and listed), the held-out clips' mels and their base
        codes and metrics (rank 0), the sampler."""
        cfg, runtime, out = self.cfg, self.runtime, self.out
        self.data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
        self.manifests = {split: self.data_dir / f"{split}.jsonl" for split in ("train", "eval")}
        self.segment_frames = segment_frames(cfg.segment_seconds, self.hop, self.grid)
        self.train_clips, skipped = read_clips(self.manifests["train"], cfg.segment_seconds)
        self.eval_clips = read_clips(self.manifests["eval"], 0.0)[0][: cfg.eval_clips]
        if skipped and runtime.is_main:
            write_jsonl(out / "skipped.jsonl", skipped)
            log.warning("skipped %d clip(s) shorter than segment_seconds; see %s", len(skipped), out / "skipped.jsonl")
        if not self.train_clips:
            raise BadValue(
                f"no clip of {self.manifests['train']} lasts segment_seconds={cfg.segment_seconds}",
                fix="lower segment_seconds, or prepare longer clips",
            )
        if not self.eval_clips:
            raise BadValue(
                f"{self.manifests['eval']} holds no clip: the code drift the GPT depends on is measured on held-out clips",
                fix="prepare the data again with eval clips (eval_fraction > 0)",
            )
        if runtime.is_main:  # the base DVAE's codes, once: every eval's drift is measured against them
            self.eval_mels = [clip_mel(self.features, clip.audio, self.device) for clip in self.eval_clips]
            self.base_metrics, self.base_codes, _ = evaluate_dvae(self.dvae, self.eval_mels, None)
        self.sampler = LengthBucketSampler(
            [c.duration for c in self.train_clips],
            [c.language for c in self.train_clips],
            cfg.batch_size,
            cfg.grad_accum_steps,
            runtime.world_size,
            runtime.rank,
            cfg.seed,
            bucket_batches=1,  # every crop has one length: nothing to bucket
        )
        self.sampler_key = {  # what the sampler's saved position is tied to
            "manifest": manifest_hash(self.manifests["train"]),
            "global_batch": self.sampler.global_batch,
            "segment_seconds": cfg.segment_seconds,
            "seed": cfg.seed,
        }

    def setup_optimizer(self) -> None:
        """DDP around the DVAE under torchrun; AdamW over the encoder and decoder, linear warm-up, the fp16 scaler."""
        cfg, device = self.cfg, self.device
        set_training(self.dvae, cfg.mode)
        self.model = self.dvae
        if self.runtime.distributed:
            # broadcast_buffers (DDP's default) keeps: rank 0's codebook reaches every rank before each forward.
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.dvae, device_ids=[device] if device.type == "cuda" else None
            )
        self.trainable = [p for p in self.dvae.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        warmup = max(cfg.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def load_state(self) -> None:
        """Continue the same run if a training state exists (same data path, mode and base DVAE)."""
        state_path = self.state_path
        if not state_path.is_file():
            return
        state = ckpt.load_state(state_path, "dvae")
        ckpt.check_sampler_key(state_path, state.get("sampler", {}), self.sampler_key)
        check_resumable(state_path, state, self.cfg.mode, self.base_dvae_hash)
        self.dvae.load_state_dict(state["dvae"])  # the codebook's buffers too
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])  # each micro-batch reseeds; this covers anything outside them
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_score = state["best_eval_loss"]
        self.last_eval = state.get("last_eval", {})
        if self.runtime.is_main:
            log.info(f"resuming {state_path} at step {self.step}")

    def train(self) -> Path:
        """The loop: an eval of the base DVAE, then one optimizer step per sampler step, logged, evaluated
        (always at the end: dvae.json carries it) and saved on schedule."""
        cfg, runtime = self.cfg, self.runtime
        self.data_stats = start_run_dir(cfg, self.out, self.data_dir, runtime.is_main)
        if runtime.is_main:
            self.writer = summary_writer(self.out, self.step)
            if self.step == 0:
                self.evaluate()  # the base DVAE: drift 0, the baseline every later eval is read against
        steps = self.sampler.steps(self.epoch, self.batch_in_epoch)
        self.progress = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train-dvae", unit="step", disable=not runtime.is_main
        )
        while self.step < cfg.max_steps:
            stop_if_asked(runtime, self.step, self.save_state, self.out)  # SIGTERM/SIGUSR1: save, stop
            step_started = time.perf_counter()
            plan = next(steps)
            losses, grad_norm = self.train_step(plan)
            self.step += 1
            self.epoch, self.batch_in_epoch = plan.epoch, plan.batch + 1
            self.train_seconds += time.perf_counter() - step_started
            self.progress.update(1)
            if self.step % cfg.log_every == 0 or self.step == 1 or self.step == cfg.max_steps:
                self.log_step(mean_over_ranks(losses, runtime), grad_norm)
            last = self.step == cfg.max_steps
            if runtime.is_main and (last or (cfg.eval_every > 0 and self.step % cfg.eval_every == 0)):
                self.evaluate()
            if runtime.is_main and (self.step % cfg.save_every == 0 or last):
                self.save_state()
        self.progress.close()
        if runtime.is_main and (not self.state_path.is_file() or not is_done(self.out, cfg.max_steps)):
            self.save_state()  # e.g. max_steps already reached
        runtime.barrier()
        if runtime.is_main:
            log.info(
                f"trained the DVAE ({cfg.mode}) for {self.step} steps → {self.out / 'dvae.pth'} "
                f"(code drift {100 * self.last_eval.get('code_drift', math.nan):.2f} %; TensorBoard: {self.out / 'tensorboard'})"
            )
        return self.out

    def train_step(self, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the plan's micro-batches; returns this rank's (reconstruction,
        commitment) losses (CPU) and the gradient norm before clipping."""
        cfg = self.cfg
        set_training(self.dvae, cfg.mode)  # an eval in between left it in eval mode
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.zeros(2, device=self.device)
        for a, indices in enumerate(plan.micro_batches):
            rng = position_rng(cfg.seed, plan.epoch, plan.batch, plan.micro_offset + a)
            losses += self.micro_step(indices, rng, a == len(plan.micro_batches) - 1)
        losses = losses.cpu()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        check_diverged(
            losses,
            [grad_norm],
            cfg.precision,
            self.step + 1,
            f"reconstruction loss {losses[0]:.4g}, commitment loss {losses[1]:.4g}, grad norm {float(grad_norm):.4g}",
            self.state_path,
            "Lower lr, raise warmup_steps or use precision=fp32.",
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, grad_norm

    def micro_step(self, indices, rng: np.random.Generator, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch of crops; returns its (reconstruction, commitment)
        losses / grad_accum_steps."""
        cfg = self.cfg
        clips = [self.train_clips[i] for i in indices]
        mels = make_batch(clips, self.features, self.segment_frames, self.grid, rng, self.device)
        # DDP all-reduces gradients only after the last micro-batch of the step.
        sync = self.model.no_sync() if self.runtime.distributed and not last else contextlib.nullcontext()
        with sync:
            with rt.autocast(cfg.precision, self.device):
                recon_loss, commitment_loss, _ = self.model(mels)  # coqui's DiscreteVAE losses
            recon_loss, commitment_loss = recon_loss.float().mean(), commitment_loss.float().mean()
            loss = recon_loss + cfg.commitment_weight * commitment_loss
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
        self.crops_seen += len(indices)
        return torch.stack([recon_loss.detach(), commitment_loss.detach()]) / cfg.grad_accum_steps

    def log_step(self, losses: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The step's losses (mean over ranks), learning rate, gradient norm, time and memory."""
        if self.writer is None:
            return
        cfg, step = self.cfg, self.step
        scalars = {
            "train/loss": float(losses[0] + cfg.commitment_weight * losses[1]),
            "train/recon_loss": float(losses[0]),
            "train/commitment_loss": float(losses[1]),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/seconds_per_step": self.train_seconds / max(step - self.progress.initial, 1),
            "train/peak_memory_mb": rt.peak_memory_mb(self.device),
        }
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.progress.set_postfix(recon=f"{float(losses[0]):.4f}")

    def evaluate(self) -> None:
        """The held-out clips' metrics (console and TensorBoard), mels and audio; best.pt on a new lowest
        reconstruction loss after training began (rank 0)."""
        cfg, step = self.cfg, self.step
        metrics, codes, outs = evaluate_dvae(self.dvae, self.eval_mels, self.base_codes)
        set_training(self.dvae, cfg.mode)
        for key in METRIC_KEYS:
            self.writer.add_scalar(f"eval/{key}", metrics[key], step)
        for n in range(min(cfg.eval_audio, len(outs))):
            self.log_clip(n, codes[n], outs[n])
        log.info(describe_eval(step, metrics))
        self.last_eval = {"step": step, **metrics}
        if step > 0 and metrics["recon_loss"] < self.best_score:
            self.best_score = metrics["recon_loss"]
            payload = {"dvae": self.weights(), **self.description(), "eval_loss": self.best_score}
            torch_save(payload, self.checkpoints / "best.pt")

    def log_clip(self, n: int, codes: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """Eval clip n in TensorBoard: its target over reconstructed mel, its codes heard through the base's
        GPT and decoder (and, at step 0, the clip itself)."""
        writer, step, clip = self.writer, self.step, self.eval_clips[n]
        writer.add_image(f"eval_mel/{n}", mel_pair_image(self.eval_mels[n], reconstruction), step, dataformats="HW")
        wav = self.voicer.speak(clip, codes) if self.voicer is not None else None
        if wav is not None:
            writer.add_audio(
                f"eval_audio/{n}", torch.from_numpy(wav).unsqueeze(0), step, sample_rate=self.voicer.sample_rate
            )
        if step == 0:
            target = torch.from_numpy(load_audio(clip.audio, GPT_SAMPLE_RATE)).unsqueeze(0)
            writer.add_audio(f"eval_target/{n}", target, step, sample_rate=GPT_SAMPLE_RATE)

    def weights(self) -> dict:
        """The DVAE's state dict on the CPU: a plain coqui DiscreteVAE's (codebook buffers included)."""
        return {key: value.detach().cpu() for key, value in self.dvae.state_dict().items()}

    def description(self) -> dict:
        """What every state and checkpoint of this run says about itself."""
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.step,
            "mode": self.cfg.mode,
            "base_model_dir": str(Path(self.model_dir).resolve()),
            "base_model_hash": self.base_hash,
            "base_dvae_hash": self.base_dvae_hash,
            "config": to_container(self.cfg),
            "data_stats": self.data_stats,
            "last_eval": self.last_eval,
        }

    def product_info(self) -> dict:
        """dvae.json (less its dvae_hash): what the DVAE is, its latest eval and the base's."""
        return {
            "kind": PRODUCT_KIND,
            "format_version": PRODUCT_FORMAT,
            "mode": self.cfg.mode,
            "step": self.step,
            "base_model_dir": str(Path(self.model_dir).resolve()),
            "base_dvae_hash": self.base_dvae_hash,
            "metrics": {key: self.last_eval[key] for key in METRIC_KEYS if key in self.last_eval},
            "metrics_step": self.last_eval.get("step"),
            "base_metrics": {key: self.base_metrics[key] for key in METRIC_KEYS},
        }

    def save_state(self) -> None:
        """state.pt (everything resume needs), checkpoints/step_*.pt, the product (dvae.json last of it),
        then progress.json (so a run whose progress says done has its product)."""
        weights = self.weights()
        state = {
            "dvae": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": self.sampler_key,
            "train_clips": len(self.train_clips),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_eval_loss": self.best_score,
            **self.description(),
        }
        ckpt.save_state(state, self.state_path)  # the state it replaces kept as state.prev.pt
        ckpt.save_checkpoint(self.checkpoints, self.step, {"dvae": weights, **self.description()}, self.cfg.keep_last)
        write_product(self.out, weights, self.model_dir, self.product_info())
        write_json(
            self.out / "progress.json",
            {
                "step": self.step,
                "max_steps": self.cfg.max_steps,
                "train_seconds": round(self.train_seconds, 3),
                "crops": self.crops_seen,
                "world_size": self.runtime.world_size,
            },
        )

    def cleanup(self) -> None:
        """Close the progress bar and TensorBoard (also after a failure: what was logged is kept)."""
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
