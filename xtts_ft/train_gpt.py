"""Stage `train-gpt`: fine-tune the XTTS GPT on a prepared manifest.

An explicit loop (build, load, loop, save) rather than coqui's GPTTrainer: the DVAE,
HiFiGAN decoder and speaker encoder stay frozen; batches are deterministic; the training
state (GPT weights, optimizer, scheduler, step, sampler position, RNG) is saved apart from
the model in runs/<run_name>/gpt/state.pt, and `export` turns it into a model.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.batches import collate, encode_samples, iterate_batches, pick_references
from xtts_ft.data.sample import read_manifest
from xtts_ft.io_utils import torch_save, write_json, write_jsonl, write_text
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import load_dvae, load_xtts, pick_device, resolve_model_cfg

log = logging.getLogger(__name__)


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "gpt"


def outputs(cfg: DictConfig) -> List[Path]:
    return [run_dir(cfg) / "state.pt", run_dir(cfg) / "progress.json"]


def is_done(cfg: DictConfig) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    progress = run_dir(cfg) / "progress.json"
    return progress.is_file() and json.loads(progress.read_text())["step"] >= cfg.max_steps


def parameter_groups(gpt: torch.nn.Module, weight_decay: float) -> list:
    """Decay only weight matrices, as coqui's recipe does (optimizer_wd_only_on_weights):
    biases, norms and embeddings are not pulled towards zero."""
    no_decay_modules = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding)
    decay, no_decay = [], []
    for module in gpt.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = isinstance(module, no_decay_modules) or name.endswith("bias") or param.ndim < 2
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def gpt_losses(gpt, features: GptFeatures, batch: dict, device: torch.device):
    batch = {k: v.to(device) for k, v in batch.items()}
    loss_text, loss_mel, _ = gpt(
        batch["text_inputs"],
        batch["text_lengths"],
        features.audio_codes(batch["wavs"]),
        batch["wav_lengths"],
        cond_mels=features.conditioning_mels(batch["cond_wavs"]),
    )
    return loss_text, loss_mel


@torch.no_grad()
def evaluate_loss(gpt, features, items, cfg, device) -> dict:
    gpt.eval()
    totals, batches = np.zeros(2), 0
    cond_seconds = (cfg.cond_min_seconds, cfg.cond_max_seconds)
    for i in range(0, len(items), cfg.batch_size):
        rng = np.random.default_rng([cfg.seed, i])  # the same references and crops at every eval
        indices = list(range(i, min(i + cfg.batch_size, len(items))))
        batch = collate([items[j] for j in indices], pick_references(items, indices, rng), cond_seconds, rng)
        totals += [loss.item() for loss in gpt_losses(gpt, features, batch, device)]
        batches += 1
    gpt.train()
    text, mel = totals / max(batches, 1)
    return {"eval/loss_text_ce": text, "eval/loss_mel_ce": mel, "eval/loss": cfg.text_ce_weight * text + cfg.mel_ce_weight * mel}


def run(cfg: DictConfig) -> Path:
    out = run_dir(cfg)
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    device = pick_device(cfg.model.device)
    torch.manual_seed(cfg.seed)

    # Build: the base model with only the GPT trainable, the frozen DVAE, the data.
    model_dir = resolve_model_cfg(cfg.model)
    _, xtts = load_xtts(model_dir, device, for_inference=False)
    # Not xtts.eval(): coqui's Xtts.eval() also builds the inference wrapper around the GPT.
    xtts.requires_grad_(False)
    xtts.hifigan_decoder.eval()
    gpt = xtts.gpt.requires_grad_(True).train()
    dvae, mel_stats = load_dvae(model_dir)
    features = GptFeatures(dvae, mel_stats, xtts.args.gpt_use_perceiver_resampler).to(device)

    max_samples = int(cfg.max_audio_seconds * 22050)
    train_items, skipped = encode_samples(
        read_manifest(data_dir / "train.jsonl"), xtts.tokenizer, cfg.max_text_tokens, max_samples, data_dir / "train.jsonl"
    )
    eval_items, eval_skipped = encode_samples(
        read_manifest(data_dir / "eval.jsonl"), xtts.tokenizer, cfg.max_text_tokens, max_samples, data_dir / "eval.jsonl"
    )
    if skipped or eval_skipped:
        write_jsonl(out / "skipped.jsonl", skipped + eval_skipped)
        log.warning("skipped %d clip(s) the GPT cannot train on; see %s", len(skipped) + len(eval_skipped), out / "skipped.jsonl")
    if not train_items:
        raise ValueError(f"no trainable clips in {data_dir / 'train.jsonl'} (see {out / 'skipped.jsonl'})")

    trainable = [p for p in gpt.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameter_groups(gpt, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    warmup = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

    # Load: continue the same run if a training state exists.
    step, epoch, batch_in_epoch = 0, 0, 0
    state_path = out / "state.pt"
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if (state["train_items"], state["config"]["batch_size"]) != (len(train_items), cfg.batch_size):
            raise ValueError(
                f"{state_path} was trained on {state['train_items']} clips with batch_size={state['config']['batch_size']}, "
                f"now {len(train_items)} with batch_size={cfg.batch_size}: its sampler position means nothing here. "
                "Use another run_name, or resume=false to start over in this one."
            )
        gpt.load_state_dict(state["gpt"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng"):
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        print(f"resuming {state_path} at step {step}")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    stats_path = data_dir / "stats.json"
    data_stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    data_stats.pop("config", None)

    def save_state() -> None:
        torch_save(
            {
                "gpt": gpt.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "train_items": len(train_items),
                "data_stats": data_stats,
                "step": step,
                "epoch": epoch,
                "batch_in_epoch": batch_in_epoch,
                "base_model_dir": str(Path(model_dir).resolve()),
                "config": to_container(cfg),
            },
            state_path,
        )
        write_json(out / "progress.json", {"step": step, "max_steps": cfg.max_steps})

    # Loop.
    # purge_step: after a crash, events logged past the saved step are dropped, not duplicated.
    writer = SummaryWriter(str(out / "tensorboard"), purge_step=step + 1 if step else None)
    batches = iterate_batches(len(train_items), cfg.batch_size, cfg.seed, epoch, batch_in_epoch)
    progress = tqdm(total=cfg.max_steps, initial=step, desc="train-gpt", unit="step")
    audio_seconds, started = 0.0, time.perf_counter()
    while step < cfg.max_steps:
        optimizer.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum_steps):
            epoch, b, indices = next(batches)
            batch_in_epoch = b + 1
            rng = np.random.default_rng([cfg.seed, epoch, b])
            references = pick_references(train_items, indices, rng)
            batch = collate([train_items[i] for i in indices], references, (cfg.cond_min_seconds, cfg.cond_max_seconds), rng)
            loss_text, loss_mel = gpt_losses(gpt, features, batch, device)
            loss = cfg.text_ce_weight * loss_text + cfg.mel_ce_weight * loss_mel
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}: stopping; last good state is {state_path}")
            (loss / cfg.grad_accum_steps).backward()
            audio_seconds += batch["wav_lengths"].sum().item() / 22050
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        optimizer.step()
        scheduler.step()
        step += 1
        progress.update(1)
        if step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps:
            elapsed = time.perf_counter() - started
            scalars = {
                "train/loss": loss.item(),
                "train/loss_text_ce": loss_text.item(),
                "train/loss_mel_ce": loss_mel.item(),
                "train/lr": scheduler.get_last_lr()[0],
                "train/grad_norm": float(grad_norm),
                "train/audio_seconds_per_second": audio_seconds / max(elapsed, 1e-9),
            }
            for key, value in scalars.items():
                writer.add_scalar(key, value, step)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        if eval_items and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            for key, value in evaluate_loss(gpt, features, eval_items, cfg, device).items():
                writer.add_scalar(key, value, step)
        if step % cfg.save_every == 0 or step == cfg.max_steps:
            save_state()
    progress.close()
    writer.close()
    if not state_path.is_file() or not is_done(cfg):  # e.g. killed between state.pt and progress.json
        save_state()
    print(f"trained GPT for {step} steps → {state_path} (TensorBoard: {out / 'tensorboard'})")
    return state_path
