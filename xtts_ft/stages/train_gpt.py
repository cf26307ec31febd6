"""Stage `train-gpt`: fine-tune the XTTS GPT on a prepared manifest.

An explicit loop (build, load, loop, save) rather than coqui's GPTTrainer: the DVAE, HiFiGAN
decoder and speaker encoder stay frozen; the DVAE codes of every clip are computed once and
cached next to the manifest; the sampler is deterministic (`xtts_ft.data.sampler`) and every
micro-batch seeds its own randomness (reference crop, dropout), so a run continues exactly
after a kill and a torchrun launch over N processes follows the same trajectory as one
process accumulating N micro-batches.

Outputs in runs/<run_name>/gpt/: state.pt (everything resume needs), progress.json,
checkpoints/step_*.pt (GPT weights, last `keep_last`), checkpoints/best.pt (lowest eval loss),
tensorboard/, config.yaml. `export` turns a state or checkpoint into a model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import List

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.batches import ReferencePicker, collate, encode_samples
from xtts_ft.data.sample import read_manifest
from xtts_ft.data.sampler import LengthBucketSampler
from xtts_ft.io_utils import file_hash, torch_save, write_json, write_jsonl
from xtts_ft.model import lora
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import init_gpt_for_inference, load_dvae, load_xtts, resolve_model_cfg
from xtts_ft.train import loop
from xtts_ft.train import runtime as rt
from xtts_ft.train.cache import attach_codes
from xtts_ft.model.constants import GPT_SAMPLE_RATE

log = logging.getLogger(__name__)
EVAL_EPOCH = 2**31 - 1  # seeds eval batches apart from any training epoch


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.runs_dir) / cfg.run_name / "gpt"


def outputs(cfg: DictConfig) -> List[Path]:
    return [run_dir(cfg) / "state.pt", run_dir(cfg) / "progress.json"]


def is_done(cfg: DictConfig) -> bool:
    """The run reached max_steps (a killed or shorter run is not done: it resumes)."""
    return loop.is_done(run_dir(cfg), cfg.max_steps)


def parameter_groups(gpt: torch.nn.Module, weight_decay: float, spare=()) -> list:
    """Decay only weight matrices, as coqui's recipe does (optimizer_wd_only_on_weights):
    biases, norms and embeddings are not pulled towards zero, nor the parameters in `spare`
    (LoRA's token rows and row-masked head: `lora.no_decay_parameters`)."""
    no_decay_modules = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding)
    spared = {id(p) for p in spare}
    decay, no_decay = [], []
    for module in gpt.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            skip = isinstance(module, no_decay_modules) or name.endswith("bias") or param.ndim < 2 or id(param) in spared
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def select_trainable(gpt: torch.nn.Module, freeze_text_embeddings: bool, train_last_layers: int) -> None:
    """Set requires_grad on the GPT parts that train (see TrainGptConfig)."""
    gpt.requires_grad_(True)
    blocks = gpt.gpt.h
    if train_last_layers > 0:
        if train_last_layers > len(blocks):
            raise ValueError(f"train_last_layers={train_last_layers} but the GPT has {len(blocks)} layers")
        gpt.requires_grad_(False)
        for module in [*blocks[-train_last_layers:], gpt.gpt.ln_f, gpt.final_norm, gpt.text_head, gpt.mel_head]:
            module.requires_grad_(True)
    if freeze_text_embeddings:
        gpt.text_embedding.requires_grad_(False)
        gpt.text_pos_embedding.requires_grad_(False)


def enable_activation_checkpointing(transformer) -> None:
    """Recompute each GPT-2 block's activations in backward (transformers' own mechanism).

    coqui feeds the transformer embeddings (`inputs_embeds`) and deletes its token embedding, so
    transformers must not try to hook the (absent) input embedding: declaring the embeddings
    as the main input says exactly that.
    """
    transformer.main_input_name = "inputs_embeds"
    enable = getattr(transformer, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.x
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(gpt, cfg) -> torch.optim.Optimizer:
    # The fused AdamW kernel (CPU and CUDA) updates all tensors in one pass: 1.45× faster than
    # torch's default per-tensor loop on 2 CPU cores for 50M parameters (0.86 s vs 1.25 s a step).
    spare = lora.no_decay_parameters(gpt) if cfg.method == "lora" else ()
    return torch.optim.AdamW(
        parameter_groups(gpt, cfg.weight_decay, spare), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay, fused=True
    )


def gpt_losses(gpt, features: GptFeatures, batch: dict, device: torch.device):
    batch = {k: v.to(device) for k, v in batch.items()}
    codes = batch["codes"] if "codes" in batch else features.audio_codes(batch["wavs"])
    loss_text, loss_mel, _ = gpt(
        batch["text_inputs"],
        batch["text_lengths"],
        codes,
        batch["wav_lengths"],
        cond_mels=features.conditioning_mels(batch["cond_wavs"]),
    )
    return loss_text, loss_mel


def micro_batch_rng(seed: int, epoch: int, batch: int, micro: int) -> np.random.Generator:
    """The randomness of one micro-batch (reference choice, crop, dropout), from its position alone."""
    return loop.position_rng(seed, epoch, batch, micro)


@torch.no_grad()
def evaluate_loss(gpt, features, items, cfg, device) -> dict:
    was_training = gpt.training
    gpt.eval()
    totals, batches = np.zeros(2), 0
    cond_seconds = (cfg.cond_min_seconds, cfg.cond_max_seconds)
    pick_references = ReferencePicker(items)
    for i in range(0, len(items), cfg.batch_size):
        rng = micro_batch_rng(cfg.seed, EVAL_EPOCH, i, 0)  # the same references and crops at every eval
        indices = list(range(i, min(i + cfg.batch_size, len(items))))
        batch = collate([items[j] for j in indices], pick_references(indices, rng), cond_seconds, rng)
        with rt.autocast(cfg.precision, device):
            totals += [loss.float().item() for loss in gpt_losses(gpt, features, batch, device)]
        batches += 1
    gpt.train(was_training)
    text, mel = (float(v) for v in totals / max(batches, 1))
    return {"eval/loss_text_ce": text, "eval/loss_mel_ce": mel, "eval/loss": cfg.text_ce_weight * text + cfg.mel_ce_weight * mel}


@torch.no_grad()
def log_eval_audio(writer, xtts, config, gpt, items, cfg, step: int) -> dict:
    """Synthesize the eval sentences with the current GPT, through the shared inference module;
    with best_metric=cer, also transcribe them (ASR) and return {"eval/cer": mean CER}."""
    from xtts_ft import asr, metrics
    from xtts_ft.inference import XttsSynthesizer

    if not cfg.eval_sentences or not items:
        return {}
    reference = next((i for i in items if i.language == cfg.eval_language), items[0])
    cers = []
    if not hasattr(gpt, "gpt_inference"):
        init_gpt_for_inference(gpt)  # ours: coqui's gives GPT-2 invalid token ids, and transformers warns
    was_training = gpt.training
    gpt.eval()
    try:
        synthesizer = XttsSynthesizer.from_model(config, xtts)  # fresh voice cache: the GPT changed
        for n, sentence in enumerate(cfg.eval_sentences):
            result = synthesizer.synthesize(sentence, reference.language, reference=reference.audio, decoding={"seed": cfg.seed})
            writer.add_audio(f"eval_audio/{n}", torch.from_numpy(result.wav).unsqueeze(0), step, sample_rate=result.sample_rate)
            writer.add_image(f"eval_mel/{n}", loop.mel_image(result.wav, result.sample_rate), step, dataformats="HW")
            if cfg.best_metric == "cer":
                transcript = asr.transcribe(result.wav, result.sample_rate, reference.language, cfg.eval_asr_model)
                cers.append(metrics.cer(sentence, transcript, reference.language))
                writer.add_text(f"eval_transcript/{n}", f"{sentence} → {transcript}", step)
    finally:
        gpt.train(was_training)
    return {"eval/cer": sum(cers) / len(cers)} if cers else {}


def check_best_metric(cfg: DictConfig) -> None:
    """best_metric=cer needs sentences to speak and an ASR model for their language: fail at start."""
    from xtts_ft import asr

    if cfg.best_metric not in ("eval_loss", "cer"):
        raise ValueError(f"best_metric={cfg.best_metric}: choose eval_loss or cer")
    if cfg.best_metric == "cer":
        if not cfg.eval_sentences or cfg.eval_every <= 0:
            raise ValueError("best_metric=cer scores the eval sentences' synthesis: give eval_sentences=[...] and eval_every > 0")
        asr.require(cfg.eval_asr_model, cfg.eval_language, setting="eval_asr_model")  # e.g. bundled is English-only


def training_weights(gpt, keys) -> dict:
    """The GPT weights as trained (without the inference wrapper eval audio adds)."""
    return {k: v for k, v in gpt.state_dict().items() if k in keys}


def check_method(cfg: DictConfig) -> None:
    """method=lora trains adapters, not chosen layers: the full-fine-tune selectors make no sense there."""
    if cfg.method not in ("full", "lora"):
        raise ValueError(f"method={cfg.method}: choose full or lora")
    if cfg.method == "lora" and (cfg.train_last_layers > 0 or cfg.freeze_text_embeddings):
        raise ValueError("method=lora trains LoRA adapters (lora.*) and the extended vocabulary's new rows; "
                         "train_last_layers and freeze_text_embeddings choose layers of a full fine-tune: leave them unset")


def setup_lora(gpt, cfg: DictConfig, model_dir: Path) -> str:
    """Wrap the GPT with PEFT's LoRA (in place) and say what trains; returns the base weights' hash,
    which a LoRA state is meaningless without."""
    new_rows = lora.new_text_rows(model_dir)
    lora.apply_lora(gpt, cfg.lora, new_rows)
    trainable = sum(p.numel() for p in gpt.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in gpt.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    log.info("LoRA rank %d on %s: %.2fM trainable parameters of %.1fM (%d new token rows)",
             cfg.lora.rank, ", ".join(cfg.lora.targets), trainable / 1e6, total / 1e6, len(new_rows))
    return file_hash(Path(model_dir) / "model.pth")


def check_resumable_method(state_path: Path, state: dict, cfg: DictConfig, base_hash: str | None) -> None:
    """A state continues only under the method (and, for LoRA, the base weights) it was trained with."""
    saved = (state.get("config") or {}).get("method", "full")
    if saved != cfg.method:
        raise ValueError(f"{state_path} was trained with method={saved}, not method={cfg.method}: "
                         f"resume it with method={saved}, or use another run_name")
    if base_hash is not None and state.get("base_model_hash") not in (None, base_hash):
        raise ValueError(f"{state_path} holds a LoRA adapter of another base model (model.pth changed since): "
                         "its adapter means nothing on these weights; use the run's own base or another run_name")


def run(cfg: DictConfig) -> Path:
    check_best_metric(cfg)
    check_method(cfg)
    out = run_dir(cfg)
    return loop.run_locked(cfg, out, train)


def train(cfg: DictConfig, runtime: rt.Runtime, out: Path) -> Path:
    data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
    device = runtime.device
    state_path = out / "state.pt"
    loop.check_fresh(state_path, cfg.resume)
    loop.warn_slow_bf16(cfg.precision, device)
    torch.manual_seed(cfg.seed)

    # Build: the base model with only the GPT trainable, the frozen DVAE, the data.
    model_dir = resolve_model_cfg(cfg.model)
    config, xtts = load_xtts(model_dir, device, for_inference=False)
    # Not xtts.eval(): coqui's Xtts.eval() also builds the inference wrapper around the GPT.
    xtts.requires_grad_(False)
    xtts.hifigan_decoder.eval()
    gpt = xtts.gpt.train()
    select_trainable(gpt, cfg.freeze_text_embeddings, cfg.train_last_layers)
    base_hash = setup_lora(gpt, cfg, model_dir) if cfg.method == "lora" else None
    if cfg.grad_checkpointing:
        enable_activation_checkpointing(gpt.gpt)
    # What a state holds: every GPT weight (full), or only the trainable tensors (lora: adapter, new rows).
    weight_keys = {n for n, p in gpt.named_parameters() if p.requires_grad} if cfg.method == "lora" else set(gpt.state_dict())
    dvae, mel_stats = load_dvae(model_dir, xtts.args.gpt_num_audio_tokens)
    features = GptFeatures(dvae, mel_stats, xtts.args.gpt_use_perceiver_resampler).to(device)

    max_samples = int(cfg.max_audio_seconds * GPT_SAMPLE_RATE)
    manifests = {split: data_dir / f"{split}.jsonl" for split in ("train", "eval")}
    train_items, skipped = encode_samples(read_manifest(manifests["train"]), xtts.tokenizer, cfg.max_text_tokens, max_samples, manifests["train"])
    eval_items, eval_skipped = encode_samples(read_manifest(manifests["eval"]), xtts.tokenizer, cfg.max_text_tokens, max_samples, manifests["eval"])
    if (skipped or eval_skipped) and runtime.is_main:
        write_jsonl(out / "skipped.jsonl", skipped + eval_skipped)
        log.warning("skipped %d clip(s) the GPT cannot train on; see %s", len(skipped) + len(eval_skipped), out / "skipped.jsonl")
    if not train_items:
        raise ValueError(f"no trainable clips in {manifests['train']} (see {out / 'skipped.jsonl'})")
    # Audio codes once: the DVAE is frozen, so a clip's codes never change while it and the DVAE don't.
    dvae_hash = file_hash(Path(model_dir) / "dvae.pth", Path(model_dir) / "mel_stats.pth")
    cache_started = time.perf_counter()
    train_items, computed = attach_codes(train_items, features, data_dir / "train.codes.pt", dvae_hash, device, runtime, "DVAE codes (train)")
    eval_items, eval_computed = attach_codes(eval_items, features, data_dir / "eval.codes.pt", dvae_hash, device, runtime, "DVAE codes (eval)")
    if computed + eval_computed:
        print(f"computed DVAE codes for {computed + eval_computed} clip(s) in {time.perf_counter() - cache_started:.1f} s (cached in {data_dir})")

    sampler = LengthBucketSampler(
        [i.duration for i in train_items], [i.language for i in train_items], cfg.batch_size, cfg.grad_accum_steps,
        runtime.world_size, runtime.rank, cfg.seed, cfg.bucket_batches, dict(cfg.language_weights),
    )
    sampler_key = {
        "manifest": loop.manifest_hash(manifests["train"]),
        "global_batch": sampler.global_batch,
        "bucket_batches": cfg.bucket_batches,
        "language_weights": dict(cfg.language_weights),
        "seed": cfg.seed,
    }
    model = gpt
    if runtime.distributed:
        model = torch.nn.parallel.DistributedDataParallel(gpt, device_ids=[device] if device.type == "cuda" else None)
    trainable = [p for p in gpt.parameters() if p.requires_grad]
    optimizer = make_optimizer(gpt, cfg)
    warmup = max(cfg.warmup_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Load: continue the same run if a training state exists.
    step, epoch, batch_in_epoch, best_eval = 0, 0, 0, math.inf  # best_eval: the lowest `best_metric` so far
    if state_path.is_file():
        state = loop.load_state(state_path, "gpt")
        loop.check_sampler_key(state_path, state.get("sampler", {}), sampler_key)
        check_resumable_method(state_path, state, cfg, base_hash)
        if cfg.method == "lora":
            lora.load_adapter_weights(gpt, state["gpt"], str(state_path))
        else:
            gpt.load_state_dict(state["gpt"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])  # each micro-batch reseeds; this covers anything outside them
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # A run resumed with another best_metric starts its best anew (the scores do not compare).
        best_eval = state["best_eval_loss"] if state.get("best_metric", "eval_loss") == cfg.best_metric else math.inf
        if runtime.is_main:
            print(f"resuming {state_path} at step {step}")
    data_stats = loop.start_run_dir(cfg, out, data_dir, runtime.is_main)
    checkpoints = out / "checkpoints"

    def save_state() -> None:
        weights = training_weights(gpt, weight_keys)
        state = {
            "gpt": weights,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": sampler_key,
            "train_items": len(train_items),
            "data_stats": data_stats,
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "best_eval_loss": best_eval,  # of `best_metric` (named so for older states)
            "best_metric": cfg.best_metric,
            "base_model_dir": str(Path(model_dir).resolve()),
            **({"base_model_hash": base_hash} if base_hash else {}),
            "config": to_container(cfg),
        }
        torch_save(state, state_path)
        loop.save_checkpoint(checkpoints, step, loop.checkpoint_payload(state, "gpt"), cfg.keep_last)
        # Throughput of this process's training steps (evals and checkpoint writes excluded).
        write_json(
            out / "progress.json",
            {"step": step, "max_steps": cfg.max_steps, "train_seconds": round(train_seconds, 3), "samples": samples_seen,
             "audio_seconds": round(audio_seconds, 2), "world_size": runtime.world_size},
        )

    # Loop.
    writer = None
    if runtime.is_main:
        writer = loop.summary_writer(out, step)
    steps = sampler.steps(epoch, batch_in_epoch)
    progress = tqdm(total=cfg.max_steps, initial=step, desc="train-gpt", unit="step", disable=not runtime.is_main)
    cond_seconds = (cfg.cond_min_seconds, cfg.cond_max_seconds)
    pick_references = ReferencePicker(train_items)
    audio_seconds, samples_seen, train_seconds = 0.0, 0, 0.0
    while step < cfg.max_steps:
        step_started = time.perf_counter()
        plan = next(steps)
        optimizer.zero_grad(set_to_none=True)
        losses = torch.zeros(2, device=device)  # summed on the device: one host sync per step, not per micro-batch
        for a, indices in enumerate(plan.micro_batches):
            rng = micro_batch_rng(cfg.seed, plan.epoch, plan.batch, plan.micro_offset + a)
            batch = collate([train_items[i] for i in indices], pick_references(indices, rng), cond_seconds, rng)
            last = a == len(plan.micro_batches) - 1
            # DDP all-reduces gradients only after the last micro-batch of the step.
            sync = model.no_sync() if runtime.distributed and not last else contextlib.nullcontext()
            with sync:
                with rt.autocast(cfg.precision, device):
                    loss_text, loss_mel = gpt_losses(model, features, batch, device)
                    loss = cfg.text_ce_weight * loss_text + cfg.mel_ce_weight * loss_mel
                scaler.scale(loss / cfg.grad_accum_steps).backward()
            losses += torch.stack([loss_text.detach().float(), loss_mel.detach().float()]) / cfg.grad_accum_steps
            audio_seconds += batch["wav_lengths"].sum().item() / GPT_SAMPLE_RATE
            samples_seen += len(indices)
        losses = losses.cpu()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        # Divergence guard. Gradients are all-reduced, so every rank sees the same norm and stops
        # together. fp16 overflows are the grad scaler's business (it skips the step).
        if not torch.isfinite(losses).all() or (cfg.precision != "fp16" and not torch.isfinite(grad_norm)):
            raise FloatingPointError(
                f"training diverged at step {step + 1}: loss text {losses[0]:.4g}, audio {losses[1]:.4g}, grad norm {float(grad_norm):.4g}. "
                f"Stopped without saving; the last good state is {state_path if state_path.is_file() else 'none (no state saved yet)'}. "
                "Lower lr, raise warmup_steps or use precision=fp32."
            )
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        epoch, batch_in_epoch = plan.epoch, plan.batch + 1
        train_seconds += time.perf_counter() - step_started
        progress.update(1)
        if step % cfg.log_every == 0 or step == 1 or step == cfg.max_steps:
            if runtime.distributed:  # log the mean over all ranks' micro-batches
                reduced = losses.to(device)
                torch.distributed.all_reduce(reduced)
                losses = reduced.cpu() / runtime.world_size
            if writer is not None:
                elapsed = max(train_seconds, 1e-9)
                loss_value = float(cfg.text_ce_weight * losses[0] + cfg.mel_ce_weight * losses[1])
                scalars = {
                    "train/loss": loss_value,
                    "train/loss_text_ce": float(losses[0]),
                    "train/loss_mel_ce": float(losses[1]),
                    "train/lr": scheduler.get_last_lr()[0],
                    "train/grad_norm": float(grad_norm),
                    "train/audio_seconds_per_second": audio_seconds * runtime.world_size / elapsed,
                    "train/samples_per_second": samples_seen * runtime.world_size / elapsed,
                    "train/peak_memory_mb": rt.peak_memory_mb(device),
                }
                for key, value in scalars.items():
                    writer.add_scalar(key, value, step)
                progress.set_postfix(loss=f"{loss_value:.3f}")
        if runtime.is_main and eval_items and cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            metrics = evaluate_loss(gpt, features, eval_items, cfg, device)
            metrics.update(log_eval_audio(writer, xtts, config, gpt, eval_items, cfg, step))
            for key, value in metrics.items():
                writer.add_scalar(key, value, step)
            score = metrics["eval/cer"] if cfg.best_metric == "cer" else metrics["eval/loss"]
            if score < best_eval:
                best_eval = score
                # config: a LoRA checkpoint is an adapter, which export and train-decoder rebuild from it.
                torch_save({"gpt": training_weights(gpt, weight_keys), "step": step, "eval_loss": metrics["eval/loss"], "config": to_container(cfg),
                            **({"cer": metrics["eval/cer"]} if "eval/cer" in metrics else {})}, checkpoints / "best.pt")
        if runtime.is_main and (step % cfg.save_every == 0 or step == cfg.max_steps):
            save_state()
    progress.close()
    if writer is not None:
        writer.close()
    if runtime.is_main and (not state_path.is_file() or not is_done(cfg)):  # e.g. max_steps already reached
        save_state()
    runtime.barrier()
    if runtime.is_main:
        print(f"trained GPT for {step} steps → {state_path} (TensorBoard: {out / 'tensorboard'})")
    return state_path
