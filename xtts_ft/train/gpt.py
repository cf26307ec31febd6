"""The GPT fine-tune recipe (stage `train-gpt`), in torchtune's manner: `GptRecipe` with
setup(cfg), load_state(), train() (the loop written out), save_state(), cleanup(); plus the
GPT-specific pieces it calls (trainable parts, optimizer groups, losses, evals).

An explicit loop rather than coqui's GPTTrainer: the DVAE, HiFiGAN decoder and speaker encoder
stay frozen; the DVAE codes of every clip are computed once and cached next to the manifest, keyed
by the DVAE's hash (the base's, or `dvae=`'s: the run records it, `xtts_ft.model.dvae_pairing`); the
sampler is deterministic (`xtts_ft.data.sampler`) and every micro-batch seeds its own randomness
(reference crop, dropout), so a run continues exactly after a kill and a torchrun launch over N
processes follows the same trajectory as one process accumulating N micro-batches.

Writes in runs/<run_name>/gpt/: state.pt (everything resume needs), progress.json,
checkpoints/step_*.pt (the last `keep_last`), checkpoints/best.pt (the best eval by
`best_metric`: eval loss, or the CER of the eval sentences' synthesis), tensorboard/,
config.yaml. Every state and checkpoint describes itself (`xtts_ft.train.checkpoints`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from xtts_ft.config import to_container
from xtts_ft.data.batches import ReferencePicker, collate, encode_samples
from xtts_ft.data.sample import read_manifest
from xtts_ft.data.sampler import LengthBucketSampler
from xtts_ft.errors import BadValue
from xtts_ft.io_utils import file_hash, torch_save, write_json, write_jsonl
from xtts_ft.model import lora
from xtts_ft.model.constants import GPT_SAMPLE_RATE
from xtts_ft.model.dvae_pairing import dvae_dir_of, recorded_dvae, retrain_warning
from xtts_ft.model.features import GptFeatures
from xtts_ft.model.loading import dvae_hash, init_gpt_for_inference, load_dvae, load_xtts, resolve_model_cfg
from xtts_ft.train import checkpoints as ckpt
from xtts_ft.train import runtime as rt
from xtts_ft.train.cache import attach_codes
from xtts_ft.train.logs import mel_image, summary_writer
from xtts_ft.train.preemption import stop_if_asked
from xtts_ft.train.rundir import check_fresh, is_done, manifest_hash, start_run_dir
from xtts_ft.train.steps import check_diverged, mean_over_ranks, position_rng

log = logging.getLogger(__name__)
EVAL_EPOCH = 2**31 - 1  # seeds eval batches apart from any training epoch


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
            skip = (
                isinstance(module, no_decay_modules) or name.endswith("bias") or param.ndim < 2 or id(param) in spared
            )
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def select_trainable(gpt: torch.nn.Module, freeze_text_embeddings: bool, train_last_layers: int) -> None:
    """Set requires_grad on the GPT parts that train (see TrainGptConfig)."""
    gpt.requires_grad_(True)
    blocks = gpt.gpt.h
    if train_last_layers > 0:
        if train_last_layers > len(blocks):
            raise BadValue(f"train_last_layers={train_last_layers} but the GPT has {len(blocks)} layers")
        gpt.requires_grad_(False)
        for module in [*blocks[-train_last_layers:], gpt.gpt.ln_f, gpt.final_norm, gpt.text_head, gpt.mel_head]:
            module.requires_grad_(True)
    if freeze_text_embeddings:
        gpt.text_embedding.requires_grad_(False)
        gpt.text_pos_embedding.requires_grad_(False)


CHECKPOINT_KEEPS = ("nothing", "linear_outputs")


def is_low_rank_product(inner: int, out: int) -> bool:
    """A matrix product whose inner dimension is at most an eighth of its output's width: LoRA's
    `B @ (A x)` update (rank <= width / 8), never a linear layer's own product (GPT-2's widest layer
    expands 4x). It costs little to recompute, yet its output is as large as the layer's: keeping
    it would cost as much memory as the layer itself (1.8 GB at full size, rank 16, batch 4 x 409)."""
    return inner * 8 <= out


def keep_linear_outputs(ctx, op, *args, **kwargs):
    """Selective activation checkpointing's policy (grad_checkpointing_keeps=linear_outputs): keep
    the outputs of the blocks' linear layers (most of a block's compute), recompute everything else
    in backward (GELU, softmax, dropout with its saved RNG state, layer norms, the attention products:
    most of its memory, the T x T attention maps and the 4 x wide MLP activations among them), and
    LoRA's low-rank products, which cost little to redo but as much to keep as a linear output."""
    from torch.utils.checkpoint import CheckpointPolicy

    if op is torch.ops.aten.mm.default:
        left, right = args[0], args[1]
    elif op is torch.ops.aten.addmm.default:
        left, right = args[1], args[2]
    else:
        return CheckpointPolicy.PREFER_RECOMPUTE
    low_rank = is_low_rank_product(left.shape[-1], right.shape[-1])
    return CheckpointPolicy.PREFER_RECOMPUTE if low_rank else CheckpointPolicy.MUST_SAVE


def enable_activation_checkpointing(transformer, keeps: str = "nothing") -> None:
    """Recompute each GPT-2 block's activations in backward (transformers' own mechanism; with
    keeps=linear_outputs, torch's selective checkpointing keeps the linear layers' outputs).

    coqui feeds the transformer embeddings (`inputs_embeds`) and deletes its token embedding, so
    transformers must not try to hook the (absent) input embedding: declaring the embeddings
    as the main input says exactly that.
    """
    if keeps not in CHECKPOINT_KEEPS:
        raise BadValue(
            f"grad_checkpointing_keeps={keeps} is not a choice", fix=f"choose {' or '.join(CHECKPOINT_KEEPS)}"
        )
    kwargs = {"use_reentrant": False}
    if keeps == "linear_outputs":
        from torch.utils.checkpoint import create_selective_checkpoint_contexts

        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, keep_linear_outputs)
    transformer.main_input_name = "inputs_embeds"
    enable = getattr(transformer, "activation_checkpointing_enable", None)
    if enable is not None:  # transformers >= 5.x
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        transformer.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def make_optimizer(gpt, cfg) -> torch.optim.Optimizer:
    # The fused AdamW kernel (CPU and CUDA) updates all tensors in one pass: 1.45× faster than
    # torch's default per-tensor loop on 2 CPU cores for 50M parameters (0.86 s vs 1.25 s a step).
    spare = lora.no_decay_parameters(gpt) if cfg.method == "lora" else ()
    return torch.optim.AdamW(
        parameter_groups(gpt, cfg.weight_decay, spare),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        fused=True,
    )


def gpt_losses(gpt, features: GptFeatures, batch: dict, device: torch.device):
    """(text CE, mel CE) of a collated batch: DVAE codes from the cache, or computed from the wavs."""
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
    return position_rng(seed, epoch, batch, micro)


@torch.no_grad()
def evaluate_loss(gpt, features, items, cfg, device) -> dict:
    """The weighted text + mel CE over the eval clips, with the same references and crops every time."""
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
    return {
        "eval/loss_text_ce": text,
        "eval/loss_mel_ce": mel,
        "eval/loss": cfg.text_ce_weight * text + cfg.mel_ce_weight * mel,
    }


@torch.no_grad()
def log_eval_audio(writer, xtts, config, gpt, items, cfg, step: int) -> dict:
    """Synthesize the eval sentences with the current GPT, through the shared inference module;
    with best_metric=cer, also transcribe them (ASR) and return {"eval/cer": mean CER}."""
    from xtts_ft.evaluation import asr, metrics
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
            result = synthesizer.synthesize(
                sentence, reference.language, reference=reference.audio, decoding={"seed": cfg.seed}
            )
            writer.add_audio(
                f"eval_audio/{n}", torch.from_numpy(result.wav).unsqueeze(0), step, sample_rate=result.sample_rate
            )
            writer.add_image(f"eval_mel/{n}", mel_image(result.wav, result.sample_rate), step, dataformats="HW")
            if cfg.best_metric == "cer":
                transcript = asr.transcribe(result.wav, result.sample_rate, reference.language, cfg.eval_asr_model)
                cers.append(metrics.cer(sentence, transcript, reference.language))
                writer.add_text(f"eval_transcript/{n}", f"{sentence} → {transcript}", step)
    finally:
        gpt.train(was_training)
    return {"eval/cer": sum(cers) / len(cers)} if cers else {}


def check_best_metric(cfg: DictConfig) -> None:
    """best_metric=cer needs sentences to speak and an ASR model for their language: fail at start."""
    from xtts_ft.evaluation import asr

    if cfg.best_metric not in ("eval_loss", "cer"):
        raise BadValue(f"best_metric={cfg.best_metric} is not a metric", fix="best_metric=eval_loss or cer")
    if cfg.best_metric == "cer":
        if not cfg.eval_sentences or cfg.eval_every <= 0:
            raise BadValue(
                "best_metric=cer scores the eval sentences' synthesis, and there are none",
                fix="give eval_sentences=[...] and eval_every > 0",
            )
        asr.require(cfg.eval_asr_model, cfg.eval_language, setting="eval_asr_model")  # e.g. bundled is English-only


def check_method(cfg: DictConfig) -> None:
    """method=lora trains adapters, not chosen layers: the full-fine-tune selectors make no sense there."""
    if cfg.method not in ("full", "lora"):
        raise BadValue(f"method={cfg.method} is not a method", fix="method=full or lora")
    if cfg.method == "lora" and (cfg.train_last_layers > 0 or cfg.freeze_text_embeddings):
        raise BadValue(
            "method=lora trains LoRA adapters (lora.*) and the extended vocabulary's new rows; "
            "train_last_layers and freeze_text_embeddings choose layers of a full fine-tune: leave them unset"
        )


def check_checkpointing(cfg: DictConfig) -> None:
    """grad_checkpointing_keeps says what checkpointing keeps: without grad_checkpointing it would do nothing."""
    if cfg.grad_checkpointing_keeps not in CHECKPOINT_KEEPS:
        raise BadValue(
            f"grad_checkpointing_keeps={cfg.grad_checkpointing_keeps} is not a choice",
            fix=f"choose {' or '.join(CHECKPOINT_KEEPS)}",
        )
    if cfg.grad_checkpointing_keeps != "nothing" and not cfg.grad_checkpointing:
        raise BadValue(
            f"grad_checkpointing_keeps={cfg.grad_checkpointing_keeps} chooses what gradient checkpointing "
            "keeps, and checkpointing is off",
            fix="add grad_checkpointing=true",
        )


def training_weights(gpt, keys) -> dict:
    """The GPT weights as trained (without the inference wrapper eval audio adds)."""
    return {k: v for k, v in gpt.state_dict().items() if k in keys}


def setup_lora(gpt, cfg: DictConfig, model_dir: Path) -> None:
    """Wrap the GPT with PEFT's LoRA (in place) and say what trains."""
    new_rows = lora.new_text_rows(model_dir)
    lora.apply_lora(gpt, cfg.lora, new_rows)
    trainable = sum(p.numel() for p in gpt.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in gpt.named_parameters() if "lora_" not in n and "modules_to_save" not in n)
    log.info(
        "LoRA rank %d on %s: %.2fM trainable parameters of %.1fM (%d new token rows)",
        cfg.lora.rank,
        ", ".join(cfg.lora.targets),
        trainable / 1e6,
        total / 1e6,
        len(new_rows),
    )


def check_resumable_method(state_path: Path, state: dict, cfg: DictConfig, base_hash: str) -> None:
    """A state continues only under the method (and, for LoRA, the base weights) it was trained with:
    a LoRA adapter means nothing on other base weights; a full fine-tune holds every weight itself."""
    saved = (state.get("config") or {}).get("method", "full")
    if saved != cfg.method:
        raise BadValue(
            f"{state_path} was trained with method={saved}, not method={cfg.method}",
            fix=f"resume it with method={saved}, or use another run_name",
        )
    if cfg.method == "lora" and state.get("base_model_hash") not in (None, base_hash):
        raise BadValue(
            f"{state_path} holds a LoRA adapter of another base model (model.pth changed since): "
            "its adapter means nothing on these weights",
            fix="use the run's own base or another run_name",
        )
    saved_dropout = ((state.get("config") or {}).get("lora") or {}).get("dropout")
    if cfg.method == "lora" and saved_dropout is not None and float(saved_dropout) != float(cfg.lora.dropout):
        # Dropout holds no weights, so the adapter loads either way; but the run would change course
        # silently (e.g. a run begun when lora.dropout defaulted to 0.05, resumed under today's 0).
        log.warning(
            "%s was trained with lora.dropout=%s; resuming with lora.dropout=%s (add lora.dropout=%s to keep it)",
            state_path,
            saved_dropout,
            cfg.lora.dropout,
            saved_dropout,
        )


class GptRecipe:
    """One train-gpt run in one process (a rank under torchrun): setup(cfg), load_state(),
    train(), cleanup(); save_state() writes state.pt, a step checkpoint and progress.json."""

    def __init__(self, runtime: rt.Runtime, out: Path):
        self.runtime, self.device, self.out = runtime, runtime.device, out
        self.state_path, self.checkpoints = out / "state.pt", out / "checkpoints"
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_score = math.inf  # the best (lowest) `best_metric` so far
        self.last_eval: dict = {}  # the latest eval's metrics and step, which checkpoints record
        self.audio_seconds, self.samples_seen, self.train_seconds = 0.0, 0, 0.0  # this process's training steps
        self.writer = self.progress = None

    def setup(self, cfg: DictConfig) -> None:
        """The frozen base with the GPT to train, the data and its codes, the optimizer."""
        self.cfg = cfg
        check_fresh(self.state_path, cfg.resume)
        rt.warn_slow_bf16(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()

    def setup_model(self) -> None:
        """The base model with only the GPT trainable (fully, or its LoRA adapter), the frozen DVAE."""
        cfg = self.cfg
        self.model_dir = resolve_model_cfg(cfg.model)
        self.config, self.xtts = load_xtts(self.model_dir, self.device, for_inference=False)
        # Not xtts.eval(): coqui's Xtts.eval() also builds the inference wrapper around the GPT.
        self.xtts.requires_grad_(False)
        self.xtts.hifigan_decoder.eval()
        gpt = self.gpt = self.xtts.gpt.train()
        select_trainable(gpt, cfg.freeze_text_embeddings, cfg.train_last_layers)
        if cfg.method == "lora":
            setup_lora(gpt, cfg, self.model_dir)
        # The base weights a checkpoint builds on (a LoRA state is meaningless without them).
        self.base_hash = file_hash(Path(self.model_dir) / "model.pth")
        if cfg.grad_checkpointing:
            enable_activation_checkpointing(gpt.gpt, cfg.grad_checkpointing_keeps)
        # What a state holds: every GPT weight (full), or only the trainable tensors (lora: adapter, new rows).
        self.weight_keys = (
            {n for n, p in gpt.named_parameters() if p.requires_grad}
            if cfg.method == "lora"
            else set(gpt.state_dict())
        )
        # The DVAE whose codes the GPT learns (dvae=null: the base's); its hash keys the code cache and the run.
        self.dvae_dir = dvae_dir_of(cfg.dvae, self.model_dir)
        self.dvae_hash = dvae_hash(self.dvae_dir)
        dvae, mel_stats = load_dvae(self.dvae_dir, self.xtts.args.gpt_num_audio_tokens)
        self.features = GptFeatures(dvae, mel_stats, self.xtts.args.gpt_use_perceiver_resampler).to(self.device)
        rt.return_freed_host_memory()  # the loader's copy of the weights

    def setup_data(self) -> None:
        """Encoded clips (skips recorded), their DVAE codes (cached once: the DVAE is frozen), the sampler."""
        cfg, out, runtime = self.cfg, self.out, self.runtime
        self.data_dir = data_dir = Path(cfg.paths.processed_dir) / cfg.data.name
        max_samples = int(cfg.max_audio_seconds * GPT_SAMPLE_RATE)
        manifests = {split: data_dir / f"{split}.jsonl" for split in ("train", "eval")}
        tokenizer = self.xtts.tokenizer
        train_items, skipped = encode_samples(
            read_manifest(manifests["train"]), tokenizer, cfg.max_text_tokens, max_samples, manifests["train"]
        )
        eval_items, eval_skipped = encode_samples(
            read_manifest(manifests["eval"]), tokenizer, cfg.max_text_tokens, max_samples, manifests["eval"]
        )
        if (skipped or eval_skipped) and runtime.is_main:
            write_jsonl(out / "skipped.jsonl", skipped + eval_skipped)
            log.warning(
                "skipped %d clip(s) the GPT cannot train on; see %s",
                len(skipped) + len(eval_skipped),
                out / "skipped.jsonl",
            )
        if not train_items:
            raise BadValue(f"no trainable clips in {manifests['train']} (see {out / 'skipped.jsonl'})")
        # Audio codes once: the DVAE is frozen, so a clip's codes never change while it and the DVAE don't.
        # The cache is keyed by the DVAE's hash: another DVAE (dvae=) re-caches every clip's codes.
        started, features, device, key = time.perf_counter(), self.features, self.device, self.dvae_hash
        self.train_items, computed = attach_codes(
            train_items, features, data_dir / "train.codes.pt", key, device, runtime, "DVAE codes (train)"
        )
        self.eval_items, eval_computed = attach_codes(
            eval_items, features, data_dir / "eval.codes.pt", key, device, runtime, "DVAE codes (eval)"
        )
        if computed + eval_computed:
            log.info(
                f"computed DVAE codes for {computed + eval_computed} clip(s) in {time.perf_counter() - started:.1f} s "
                f"with DVAE {key[:12]}… ({self.dvae_dir}; cached in {data_dir}, keyed by that DVAE)"
            )
        self.pick_references = ReferencePicker(self.train_items)  # the speaker groups, built once
        self.sampler = LengthBucketSampler(
            [i.duration for i in self.train_items],
            [i.language for i in self.train_items],
            cfg.batch_size,
            cfg.grad_accum_steps,
            runtime.world_size,
            runtime.rank,
            cfg.seed,
            cfg.bucket_batches,
            dict(cfg.language_weights),
        )
        self.sampler_key = {  # what the sampler's saved position is tied to
            "manifest": manifest_hash(manifests["train"]),
            "global_batch": self.sampler.global_batch,
            "bucket_batches": cfg.bucket_batches,
            "language_weights": dict(cfg.language_weights),
            "seed": cfg.seed,
        }

    def setup_optimizer(self) -> None:
        """DDP around the GPT under torchrun; AdamW, linear warm-up, the fp16 grad scaler."""
        cfg, gpt, device = self.cfg, self.gpt, self.device
        self.model = gpt
        if self.runtime.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(
                gpt, device_ids=[device] if device.type == "cuda" else None
            )
        self.trainable = [p for p in gpt.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(gpt, cfg)
        warmup = max(cfg.warmup_steps, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def load_state(self) -> None:
        """Continue the same run if a training state exists (same data path, method and base)."""
        cfg, state_path = self.cfg, self.state_path
        if not state_path.is_file():
            self.warn_on_dvae_change(None, str(self.model_dir))  # the base's GPT learnt the base's DVAE
            return
        state = ckpt.load_state(state_path, "gpt")
        ckpt.check_sampler_key(state_path, state.get("sampler", {}), self.sampler_key)
        check_resumable_method(state_path, state, cfg, self.base_hash)
        self.warn_on_dvae_change(state, str(state_path))
        if cfg.method == "lora":
            lora.load_adapter_weights(self.gpt, state["gpt"], str(state_path))
        else:
            self.gpt.load_state_dict(state["gpt"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])  # each micro-batch reseeds; this covers anything outside them
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        # A run resumed with another best_metric starts its best anew (the scores do not compare).
        if state.get("best_metric", "eval_loss") == cfg.best_metric:
            self.best_score = state["best_eval_loss"]
        self.last_eval = state.get("last_eval", {})
        if self.runtime.is_main:
            log.info(f"resuming {state_path} at step {self.step}")

    def warn_on_dvae_change(self, state: dict | None, weights_where: str) -> None:
        """The GPT weights this run starts from (the base's, or a resumed state's) learnt another DVAE's codes
        than this run's: the intended retrain onto a new DVAE, or a resume across a DVAE change; either way
        the GPT must relearn the codes, and the warning says how many changed (train-dvae's measured drift)."""
        both_the_bases = Path(self.dvae_dir).resolve() == Path(self.model_dir).resolve()
        if not self.runtime.is_main or (both_the_bases and not (state or {}).get("dvae_hash")):
            return
        trained_hash, trained_dir = recorded_dvae(state, self.model_dir)
        if trained_hash != self.dvae_hash:
            log.warning(retrain_warning(weights_where, trained_hash, self.dvae_hash, self.dvae_dir, trained_dir))

    def train(self) -> Path:
        """The loop: one optimizer step per sampler step, logged, evaluated and saved on schedule."""
        cfg, runtime = self.cfg, self.runtime
        self.data_stats = start_run_dir(cfg, self.out, self.data_dir, runtime.is_main)
        if runtime.is_main:
            self.writer = summary_writer(self.out, self.step)
            weights = [training_weights(self.gpt, self.weight_keys)]
            ckpt.check_run_space(self.out, cfg, weights, [self.optimizer], self.model_dir)  # warns if it will not fit
        steps = self.sampler.steps(self.epoch, self.batch_in_epoch)
        self.progress = tqdm(
            total=cfg.max_steps, initial=self.step, desc="train-gpt", unit="step", disable=not runtime.is_main
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
            if (
                runtime.is_main
                and self.eval_items
                and cfg.eval_every > 0
                and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps)
            ):
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
                f"trained GPT for {self.step} steps → {self.state_path} (TensorBoard: {self.out / 'tensorboard'})"
            )
        return self.state_path

    def train_step(self, plan) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the plan's micro-batches; returns this rank's (text, mel) losses
        (CPU) and the gradient norm before clipping."""
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        losses = torch.zeros(
            2, device=self.device
        )  # summed on the device: one host sync per step, not per micro-batch
        for a, indices in enumerate(plan.micro_batches):
            rng = micro_batch_rng(cfg.seed, plan.epoch, plan.batch, plan.micro_offset + a)
            last = a == len(plan.micro_batches) - 1
            losses += self.micro_step(indices, rng, last)
        losses = losses.cpu()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        check_diverged(
            losses,
            [grad_norm],
            cfg.precision,
            self.step + 1,
            f"loss text {losses[0]:.4g}, audio {losses[1]:.4g}, grad norm {float(grad_norm):.4g}",
            self.state_path,
            "Lower lr, raise warmup_steps or use precision=fp32.",
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, grad_norm

    def micro_step(self, indices, rng: np.random.Generator, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its (text, mel) losses / grad_accum_steps."""
        cfg = self.cfg
        batch = collate(
            [self.train_items[i] for i in indices],
            self.pick_references(indices, rng),
            (cfg.cond_min_seconds, cfg.cond_max_seconds),
            rng,
        )
        # DDP all-reduces gradients only after the last micro-batch of the step.
        sync = self.model.no_sync() if self.runtime.distributed and not last else contextlib.nullcontext()
        with sync:
            with rt.autocast(cfg.precision, self.device):
                loss_text, loss_mel = gpt_losses(self.model, self.features, batch, self.device)
                loss = cfg.text_ce_weight * loss_text + cfg.mel_ce_weight * loss_mel
            self.scaler.scale(loss / cfg.grad_accum_steps).backward()
        self.audio_seconds += batch["wav_lengths"].sum().item() / GPT_SAMPLE_RATE
        self.samples_seen += len(indices)
        return torch.stack([loss_text.detach().float(), loss_mel.detach().float()]) / cfg.grad_accum_steps

    def log_step(self, losses: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The step's losses (mean over ranks), learning rate, gradient norm, throughput and memory."""
        if self.writer is None:
            return
        cfg, world_size = self.cfg, self.runtime.world_size
        elapsed = max(self.train_seconds, 1e-9)
        loss_value = float(cfg.text_ce_weight * losses[0] + cfg.mel_ce_weight * losses[1])
        scalars = {
            "train/loss": loss_value,
            "train/loss_text_ce": float(losses[0]),
            "train/loss_mel_ce": float(losses[1]),
            "train/lr": self.scheduler.get_last_lr()[0],
            "train/grad_norm": float(grad_norm),
            "train/audio_seconds_per_second": self.audio_seconds * world_size / elapsed,
            "train/samples_per_second": self.samples_seen * world_size / elapsed,
            "train/peak_memory_mb": rt.peak_memory_mb(self.device),
        }
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, self.step)
        self.progress.set_postfix(loss=f"{loss_value:.3f}")

    def evaluate(self) -> None:
        """Eval loss, eval audio (and CER with best_metric=cer) to TensorBoard; best.pt on a new best (rank 0)."""
        cfg = self.cfg
        metrics = evaluate_loss(self.gpt, self.features, self.eval_items, cfg, self.device)
        metrics.update(log_eval_audio(self.writer, self.xtts, self.config, self.gpt, self.eval_items, cfg, self.step))
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.step)
        self.last_eval = {"step": self.step, **metrics}
        score = metrics["eval/cer"] if cfg.best_metric == "cer" else metrics["eval/loss"]
        if score < self.best_score:
            self.best_score = score
            self.save_best(metrics)

    def save_best(self, metrics: dict) -> None:
        """checkpoints/best.pt: the weights of the best eval so far, describing themselves."""
        torch_save(
            {
                "gpt": training_weights(self.gpt, self.weight_keys),
                **self.description(),
                "eval_loss": metrics["eval/loss"],
                **({"cer": metrics["eval/cer"]} if "eval/cer" in metrics else {}),
            },
            self.checkpoints / "best.pt",
        )

    def description(self) -> dict:
        """What every state and checkpoint of this run says about itself: what export needs besides
        the weights (config: a LoRA checkpoint is an adapter, which export and train-decoder rebuild from it)."""
        return {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.step,
            "base_model_dir": str(Path(self.model_dir).resolve()),
            "base_model_hash": self.base_hash,
            "dvae_hash": self.dvae_hash,  # the DVAE whose codes the GPT trained on: export ships it (issue 34)
            "dvae_dir": str(Path(self.dvae_dir).resolve()),
            "config": to_container(self.cfg),
            "data_stats": self.data_stats,
            "best_metric": self.cfg.best_metric,
            "last_eval": self.last_eval,
        }

    def save_state(self) -> None:
        """state.pt (everything resume needs), checkpoints/step_*.pt (the weights, described), progress.json."""
        weights = training_weights(self.gpt, self.weight_keys)
        state = {
            "gpt": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler": self.sampler_key,
            "train_items": len(self.train_items),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "best_eval_loss": self.best_score,  # of `best_metric` (named so for older states)
            **self.description(),
        }
        ckpt.save_state(state, self.state_path)  # the state it replaces kept as state.prev.pt
        ckpt.save_checkpoint(self.checkpoints, self.step, {"gpt": weights, **self.description()}, self.cfg.keep_last)
        # Throughput of this process's training steps (evals and checkpoint writes excluded).
        write_json(
            self.out / "progress.json",
            {
                "step": self.step,
                "max_steps": self.cfg.max_steps,
                "train_seconds": round(self.train_seconds, 3),
                "samples": self.samples_seen,
                "audio_seconds": round(self.audio_seconds, 2),
                "world_size": self.runtime.world_size,
            },
        )

    def cleanup(self) -> None:
        """Close the progress bar and TensorBoard (also after a failure: what was logged is kept)."""
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
