"""Benchmark one GPT training step: ours (xtts_ft.train_gpt) against coqui-tts's own GPTTrainer.

What it measures, on CPU, on the tiny XTTS (xtts_ft.model.tiny, 2 GPT layers of width 64)
and the same fixed batches of the prepared demo corpus:

  ours       xtts_ft.train_gpt.gpt_losses (DVAE codes + conditioning mels + GPT forward)
             + backward + grad clip + AdamW step on xtts.gpt — what `xtts-ft train-gpt` does.
  coqui      TTS.tts.layers.xtts.trainer.gpt_trainer.GPTTrainer on the same tiny model:
             format_batch + format_batch_on_device (conditioning mels + DVAE codes) + train_step
             + backward + grad clip + AdamW step from its own get_optimizer — what coqui's
             Trainer.optimize does per step. Fed exactly our inputs (our reference crops,
             cond_idxs = cond_lens = None), so both paths do the same work.
  coqui-ds   the same GPTTrainer fed conditioning the way coqui's XTTSDataset builds it by
             default (gpt_use_masking_gt_prompt_approach): a 3-6 s slice of the clip itself (half of it
             when shorter), zero-padded to max_conditioning_length (6 s), with cond_idxs.

Time: the three steps run interleaved in this one process (the order rotates every round), and
the table gives the median seconds per step over --steps rounds after --warmup rounds.
Memory: each path also runs alone in a fresh child process (this script with --memory-of),
which reports the peak RSS (psutil, sampled every 2 ms) during its steps above its RSS just
before the first step (after building the model, optimizer and batches, and malloc_trim), and
the RSS the set-up itself added. RSS deltas in one shared process would mean nothing: the
allocator keeps what the first path freed and ru_maxrss never goes down.
CPU only, fp32, --threads torch threads for all paths (default 1, see --help).

Run it from the repository root:

    .venv/bin/python scripts/bench_train_gpt.py --steps 20

It builds the tiny model and prepares the demo corpus in a temporary directory unless given
--model-dir (a tiny model directory) and --data-dir (a prepared dir with train.jsonl).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xtts_ft.config import compose  # noqa: E402
from xtts_ft.data.batches import collate, encode_samples, iterate_batches, pick_references  # noqa: E402
from xtts_ft.data.sample import read_manifest  # noqa: E402
from xtts_ft.model.features import GptFeatures  # noqa: E402
from xtts_ft.model.layout import REAL_DVAE  # noqa: E402
from xtts_ft.model.loading import load_dvae, load_xtts  # noqa: E402
from xtts_ft.train_gpt import gpt_losses, parameter_groups  # noqa: E402

# Importing coqui's GPT trainer imports its dataset module, which calls torch.set_num_threads(1)
# at import time: note the counts, then set --threads explicitly so that every path gets it.
THREADS_BEFORE_COQUI = torch.get_num_threads()
from TTS.tts.configs.xtts_config import XttsConfig  # noqa: E402
from TTS.tts.layers.xtts.trainer.dataset import get_prompt_slice  # noqa: E402
from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainer, GPTTrainerConfig  # noqa: E402

THREADS_AFTER_COQUI = torch.get_num_threads()
PATHS = ("ours", "coqui", "coqui-ds")
CPU = torch.device("cpu")

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=20, help="timed steps per path (after warm-up)")
parser.add_argument("--warmup", type=int, default=3, help="untimed steps per path first")
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument(
    "--threads", type=int, default=1,
    help="torch intra-op threads for every path (default 1: what importing coqui's GPT trainer sets, "
    "and the only stable setting when other jobs share the cores)",
)
parser.add_argument("--model-dir", type=Path, help="an existing tiny XTTS directory (default: build one)")
parser.add_argument("--data-dir", type=Path, help="an existing prepared dir with train.jsonl (default: prepare the demo)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--memory-of", choices=PATHS, help=argparse.SUPPRESS)  # child mode: one path, print its RSS
args = parser.parse_args()
torch.set_num_threads(args.threads)

# The training settings of the demo (`xtts-ft train-gpt data=demo model=tiny lr=1e-3`).
cfg = compose("train_gpt", ["model=tiny", "lr=1e-3", f"batch_size={args.batch_size}", f"seed={args.seed}"])


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def malloc_trim() -> None:
    """Give freed heap memory back to the OS, so the baseline RSS is what is really in use."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRss:
    """Sample this process's RSS every `interval` seconds in a thread; keep the maximum."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# ---------------------------------------------------------------------------------------------
# 1. The tiny model and the prepared demo data (built once; children reuse the parent's).
# ---------------------------------------------------------------------------------------------
workdir = Path(tempfile.mkdtemp(prefix="bench_train_gpt_"))
atexit.register(shutil.rmtree, workdir, ignore_errors=True)
if args.model_dir is None:
    from xtts_ft.model.tiny import build_tiny_xtts

    args.model_dir = build_tiny_xtts(workdir / "tiny-xtts", seed=0)
if args.data_dir is None:
    from xtts_ft import prepare

    demo = REPO / "data" / "demo"
    args.data_dir = prepare.run(
        compose(
            "prepare",
            [f"paths.processed_dir={workdir}/processed", f"data.sources.0.path={demo / 'en'}", f"data.sources.1.path={demo / 'fr'}"],
        )
    )
model_dir, data_dir = Path(args.model_dir), Path(args.data_dir)
tiny_sidecar = json.loads((model_dir / "xtts_ft.json").read_text())


# ---------------------------------------------------------------------------------------------
# 2. The two training set-ups.
# ---------------------------------------------------------------------------------------------
def build_ours():
    """As xtts_ft.train_gpt.run: coqui's loader, only the GPT trainable, our frozen DVAE."""
    _, xtts = load_xtts(model_dir, CPU, for_inference=False)
    xtts.requires_grad_(False)
    xtts.hifigan_decoder.eval()
    gpt = xtts.gpt.requires_grad_(True).train()
    features = GptFeatures(*load_dvae(model_dir), xtts.args.gpt_use_perceiver_resampler)
    optimizer = torch.optim.AdamW(
        parameter_groups(gpt, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    return xtts, gpt, features, optimizer


def coqui_config(dvae_checkpoint: Path) -> GPTTrainerConfig:
    """GPTTrainerConfig for the tiny model: its config.json's model_args + the trainer's file paths."""
    tiny = XttsConfig()
    tiny.load_json(str(model_dir / "config.json"))
    fields = {f.name for f in dataclasses.fields(GPTArgs)}
    model_args = GPTArgs(**{k: v for k, v in tiny.model_args.to_dict().items() if k in fields})
    sizes = dict(
        gpt_layers=2, gpt_n_model_channels=64, gpt_n_heads=4, gpt_num_audio_tokens=1026,
        gpt_start_audio_token=1024, gpt_stop_audio_token=1025, gpt_use_perceiver_resampler=True,
    )
    for key, value in sizes.items():
        assert getattr(model_args, key) == value, f"tiny model has {key}={getattr(model_args, key)}, expected {value}"
        setattr(model_args, key, value)
    model_args.tokenizer_file = str(model_dir / "vocab.json")
    model_args.mel_norm_file = str(model_dir / "mel_stats.pth")  # never the URL default
    model_args.xtts_checkpoint = str(model_dir / "model.pth")
    model_args.dvae_checkpoint = str(dvae_checkpoint)
    return GPTTrainerConfig(
        model_args=model_args,
        batch_size=args.batch_size,
        lr=cfg.lr,
        optimizer="AdamW",
        optimizer_params={"betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay},
        optimizer_wd_only_on_weights=True,  # as coqui's XTTS-v2 recipe
        grad_clip=cfg.grad_clip,
        mixed_precision=False,
    )


def build_coqui(try_tiny_dvae_first: bool):
    """GPTTrainer on the tiny model, with its DVAE replaced by the tiny one.

    GPTTrainer.__init__ hard-codes the released DVAE's shape (codebook_dim=hidden_dim=512,
    3 resnet blocks) and load_state_dict(strict=False) still refuses size mismatches, so the
    tiny dvae.pth cannot go in through dvae_checkpoint. We give it an empty state dict instead
    (strict=False loads nothing), then replace `.dvae` by the tiny DVAE from xtts_ft's loader.
    Nothing in coqui is monkeypatched.
    """
    refusal = None
    if try_tiny_dvae_first:
        try:
            GPTTrainer(coqui_config(model_dir / "dvae.pth"))
        except RuntimeError as err:
            refusal = str(err).strip().splitlines()
            refusal = refusal[0] + " " + next((line.strip() for line in refusal[1:] if "size mismatch" in line), "")
    empty = workdir / "empty_dvae.pth"
    torch.save({}, empty)
    config = coqui_config(empty)
    trainer = GPTTrainer(config)
    trainer.dvae = load_dvae(model_dir)[0]  # the tiny DVAE (xtts_ft.json "dvae"), frozen, eval
    # coqui's Trainer: on_train_epoch_start puts the whole model in eval and only the GPT in train.
    trainer.eval()
    trainer.xtts.gpt.train()
    optimizer = trainer.get_optimizer()
    return trainer, optimizer, refusal


# ---------------------------------------------------------------------------------------------
# 3. The fixed batches: the first warmup+steps batches `xtts-ft train-gpt` would draw.
# ---------------------------------------------------------------------------------------------
def build_batches(tokenizer, count: int):
    manifest = data_dir / "train.jsonl"
    items, _ = encode_samples(
        read_manifest(manifest), tokenizer, cfg.max_text_tokens, int(cfg.max_audio_seconds * 22050), manifest
    )
    order = iterate_batches(len(items), cfg.batch_size, cfg.seed, 0, 0)
    ours, dataset_cond = [], []
    random.seed(args.seed)  # get_prompt_slice draws with the `random` module, as XTTSDataset does
    for _ in range(count):
        epoch, b, indices = next(order)
        chosen = [items[i] for i in indices]
        rng = np.random.default_rng([cfg.seed, epoch, b])  # exactly as xtts_ft.train_gpt.run
        references = pick_references(items, indices, rng)
        ours.append(collate(chosen, references, (cfg.cond_min_seconds, cfg.cond_max_seconds), rng))
        # coqui's default conditioning: a slice of the clip itself padded to 6 s, with its indices.
        slices = [
            get_prompt_slice(str(item.audio), GPTArgs.max_conditioning_length, GPTArgs.min_conditioning_length, 22050)
            for item in chosen
        ]
        dataset_cond.append(
            {"conditioning": torch.stack([s[0].unsqueeze(1) for s in slices]), "cond_idxs": torch.tensor([s[2] for s in slices])}
        )
    return ours, dataset_cond


def coqui_batch(batch: dict, dataset_cond: dict | None = None) -> dict:
    """Our collated batch in the layout of XTTSDataset.collate_fn (what format_batch receives)."""
    out = {
        "padded_text": batch["text_inputs"].int(),  # collate_fn builds an IntTensor
        "text_lengths": batch["text_lengths"],
        "wav": batch["wavs"].unsqueeze(1),  # (B, 1, T)
        "wav_lengths": batch["wav_lengths"],
        "conditioning": batch["cond_wavs"][:, None, None, :],  # (B, num_cond_samples=1, 1, T)
        "cond_idxs": None,
        "cond_lens": None,
    }
    if dataset_cond is not None:
        out["conditioning"] = dataset_cond["conditioning"]
        out["cond_idxs"] = dataset_cond["cond_idxs"].clone()  # the GPT rescales it in place
    return out


# ---------------------------------------------------------------------------------------------
# 4. One training step of each path.
# ---------------------------------------------------------------------------------------------
def our_step(gpt, features, optimizer, batch) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss_text, loss_mel = gpt_losses(gpt, features, batch, CPU)
    loss = loss_text + loss_mel
    loss.backward()
    torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.item()


def coqui_step(trainer, optimizer, batch) -> float:
    """What coqui's Trainer.train_step/optimize do for GPTTrainer on one device, fp32, no accumulation."""
    optimizer.zero_grad(set_to_none=True)
    batch = trainer.format_batch_on_device(trainer.format_batch(batch))
    _, loss_dict = trainer.train_step(batch, criterion=None)
    loss_dict["loss"].backward()
    torch.nn.utils.clip_grad_norm_(trainer.xtts.gpt.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss_dict["loss"].item()


rounds = args.warmup + args.steps

# ---------------------------------------------------------------------------------------------
# Child mode: one path alone in a fresh process, for its memory.
# ---------------------------------------------------------------------------------------------
if args.memory_of:
    malloc_trim()
    before_setup = rss_mb()
    if args.memory_of == "ours":
        xtts, gpt, features, optimizer = build_ours()
        batches, _ = build_batches(xtts.tokenizer, rounds)
        step = lambda i: our_step(gpt, features, optimizer, batches[i])  # noqa: E731
    else:
        trainer, optimizer, _ = build_coqui(try_tiny_dvae_first=False)
        batches, dataset_cond = build_batches(trainer.xtts.tokenizer, rounds)
        with_cond = args.memory_of == "coqui-ds"
        step = lambda i: coqui_step(trainer, optimizer, coqui_batch(batches[i], dataset_cond[i] if with_cond else None))  # noqa: E731
    malloc_trim()
    before_steps = rss_mb()
    with PeakRss() as peak:
        for i in range(rounds):
            step(i)
    print(json.dumps({"setup_mb": before_steps - before_setup, "step_peak_growth_mb": peak.peak - before_steps}))
    sys.exit(0)

# ---------------------------------------------------------------------------------------------
# 5. Build both, check they compute the same losses, then time them interleaved.
# ---------------------------------------------------------------------------------------------
load_before = os.getloadavg()
xtts, gpt, features, our_optimizer = build_ours()
trainer, coqui_optimizer, dvae_refusal = build_coqui(try_tiny_dvae_first=True)
batches, dataset_cond = build_batches(xtts.tokenizer, rounds)
assert all(torch.equal(a, b) for a, b in zip(gpt.state_dict().values(), trainer.xtts.gpt.state_dict().values()))

# Same weights, same batch, dropout off: the two paths must give the same unweighted losses.
gpt.eval()
trainer.xtts.gpt.eval()
with torch.no_grad():
    ours_losses = [x.item() for x in gpt_losses(gpt, features, batches[0], CPU)]
    _, loss_dict = trainer.train_step(trainer.format_batch_on_device(coqui_batch(batches[0])), criterion=None)
    coqui_losses = [
        loss_dict["loss_text_ce"].item() / trainer.args.gpt_loss_text_ce_weight,
        loss_dict["loss_mel_ce"].item() / trainer.args.gpt_loss_mel_ce_weight,
    ]
gpt.train()
trainer.xtts.gpt.train()
print(f"batch 0 losses (text, mel), eval mode: ours {ours_losses}, coqui {coqui_losses}")

steps = {
    "ours": lambda i: our_step(gpt, features, our_optimizer, batches[i]),
    "coqui": lambda i: coqui_step(trainer, coqui_optimizer, coqui_batch(batches[i])),
    "coqui-ds": lambda i: coqui_step(trainer, coqui_optimizer, coqui_batch(batches[i], dataset_cond[i])),
}
seconds = {name: [] for name in PATHS}
for i in range(rounds):
    for name in PATHS[i % 3 :] + PATHS[: i % 3]:  # rotate who goes first
        started = time.perf_counter()
        steps[name](i)
        if i >= args.warmup:
            seconds[name].append(time.perf_counter() - started)
load_after = os.getloadavg()

# ---------------------------------------------------------------------------------------------
# 6. Memory: each path alone in a child process.
# ---------------------------------------------------------------------------------------------
memory = {}
for name in PATHS:
    child = [sys.executable, __file__, "--memory-of", name, "--model-dir", str(model_dir), "--data-dir", str(data_dir)]
    child += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    child += ["--threads", str(args.threads), "--seed", str(args.seed)]
    done = subprocess.run(child, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"memory child {name} failed:\n{done.stderr[-3000:]}")
    memory[name] = json.loads(done.stdout.strip().splitlines()[-1])

# ---------------------------------------------------------------------------------------------
# 7. Report.
# ---------------------------------------------------------------------------------------------
def quartiles(xs):
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


median = {name: statistics.median(seconds[name]) for name in PATHS}
audio_seconds = statistics.mean(b["wav_lengths"].sum().item() / 22050 for b in batches[args.warmup :])
labels = {
    "ours": "ours: `gpt_losses` + AdamW",
    "coqui": "coqui `GPTTrainer`, same inputs",
    "coqui-ds": "coqui `GPTTrainer`, XTTSDataset-style cond (6 s padded + cond_idxs)",
}
command = f".venv/bin/python scripts/bench_train_gpt.py --steps {args.steps} --warmup {args.warmup} --batch-size {args.batch_size}"
if args.threads != 1:
    command += f" --threads {args.threads}"
lines = [
    f"Command: `{command}`",
    "",
    f"Machine: {psutil.cpu_count(logical=True)} logical CPU cores ({platform.processor() or platform.machine()}), "
    f"no GPU used; torch {torch.__version__} with {torch.get_num_threads()} threads "
    f"(importing coqui's GPT trainer set it {THREADS_BEFORE_COQUI} -> {THREADS_AFTER_COQUI}; --threads {args.threads}), "
    f"coqui-tts {__import__('TTS').__version__}, Python {platform.python_version()}; "
    f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after the timed rounds.",
    f"Batches: {rounds} fixed batches of {args.batch_size} clips from {data_dir} "
    f"(mean {audio_seconds:.1f} s of audio per batch); first {args.warmup} untimed.",
    "",
    "| path | median s/step | IQR s/step | ours / this (time) | step peak RSS growth MB | set-up RSS MB |",
    "|---|---|---|---|---|---|",
]
for name in PATHS:
    lo, hi = quartiles(seconds[name])
    lines.append(
        f"| {labels[name]} | {median[name]:.3f} | {lo:.3f}–{hi:.3f} | {median['ours'] / median[name]:.2f} "
        f"| {memory[name]['step_peak_growth_mb']:.0f} | {memory[name]['setup_mb']:.0f} |"
    )
lines += [
    "",
    f"Memory ratio ours / coqui (step peak growth): {memory['ours']['step_peak_growth_mb'] / max(memory['coqui']['step_peak_growth_mb'], 1e-9):.2f}",
    f"Batch 0 losses in eval mode (text, mel): ours {ours_losses[0]:.6f}, {ours_losses[1]:.6f}; "
    f"coqui {coqui_losses[0]:.6f}, {coqui_losses[1]:.6f}",
    f"GPTTrainer with dvae_checkpoint=<tiny dvae.pth>: {dvae_refusal or 'accepted'}",
]
print("\n".join(lines))
