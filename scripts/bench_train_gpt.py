"""Benchmark GPT fine-tuning throughput and memory: our loop against coqui-tts's own GPTTrainer.

What it measures, on CPU, for each GPT size (--sizes) and path (--paths), each run alone in a
fresh child process (this script with --child):

  samples/s   samples trained / seconds of the training loop, over whole epochs of the same
              prepared corpus (the loop only: model building, checkpoint loading and the
              one-off DVAE code cache are excluded; data loading, DVAE/mel features, forward,
              backward, grad clip and optimizer steps are included).
  peak RSS    the child's resident-memory high-water mark (VmHWM from /proc, exact; the
              parent also samples the child's RSS every 5 ms and the larger value is kept) over
              set-up plus training, as a machine must hold it. Ours also evaluates and writes
              checkpoints after its last step (coqui's path here does neither): its peak is read
              just before those, and the whole-process peak is reported beside it.

The data: `scripts/make_bench_corpus.py` speaks English with two espeak-ng voices, clip
durations spread evenly over 1-11 s as in real fine-tuning sets; `xtts_ft.stages.prepare` turns it
into train.jsonl (--clips clips; one extra clip per voice goes to eval.jsonl, which prepare
insists on). Both paths train on exactly these 22.05 kHz files.

The sizes: `tiny` (xtts_ft.model.tiny: 2 GPT layers of width 64) and `full` (the XTTS-v2 GPT:
30 layers, width 1024, 16 heads, the real DVAE shape), both randomly initialised by
`build_tiny_xtts` in the stock layout and cached under --work-dir/models.

The paths:
  coqui          the reference: coqui-tts's GPTTrainer built as its XTTS-v2 recipe
                 (recipes/ljspeech/xtts_v2/train_gpt_xtts.py) builds it, from GPTTrainerConfig/
                 GPTArgs matching the model's config.json (mel_norm_file = the model's
                 mel_stats.pth, dvae_checkpoint/xtts_checkpoint/tokenizer_file from the model
                 dir, conditioning 3-6 s, max_wav_length 255995, max_text_length 200, masking-GT
                 prompt approach, perceiver); its XTTSDataset through trainer.get_data_loader,
                 batch --batch-size, 0 loader workers; per batch what coqui's Trainer does:
                 format_batch -> format_batch_on_device -> train_step -> backward -> grad clip
                 1.0 -> step of trainer.get_optimizer()'s AdamW (lr 5e-6, betas 0.9/0.96, wd
                 0.01 on weights only). All cores: torch.set_num_threads(os.cpu_count()) after
                 the import. XTTSDataset ignores the index and draws clips at random with
                 replacement, so an "epoch" is len(loader) batches of random clips: samples are
                 counted as trained, and audio seconds are reported next to them.
  coqui-shipped  the same, as shipped: importing TTS.tts.layers.xtts.trainer.dataset calls
                 torch.set_num_threads(1), and nothing resets it.
  ours           `xtts_ft.stages.train_gpt.run` (what `xtts-ft train-gpt` runs) on the same manifest,
                 fp32, all cores (num_threads=0), same batch, lr 5e-6, max_steps = whole epochs,
                 its default length bucketing (bucket_batches), no eval audio (eval_sentences=[]);
                 its runs/<run>/gpt/progress.json gives train_seconds (the training steps only:
                 evals and checkpoint writes excluded, as the coqui path does neither; eval_every=0
                 here), samples and audio seconds. A throwaway max_steps=1 run first builds the
                 DVAE code cache next to the manifest; its time is reported apart.
  ours-ckpt      ours with gradient checkpointing alone (grad_checkpointing=true, fp32).
  ours-mem       ours with the memory options: grad_checkpointing=true precision=bf16. Left out
                 at full size by default where the CPU has no bf16 matmul kernels (no
                 AVX512-BF16/AMX: torch falls back to a scalar kernel, ~90x slower than fp32 for
                 a 1024x4096 linear); name it in --paths to run it anyway.
  lora           ours with method=lora (🤗 PEFT adapters, the config's default lora.* settings),
                 fp32: against `ours` (the full fine-tune) in the same invocation, the table's
                 notes give samples/s and peak memory as ratios to it and each path's state.pt
                 size. After training, the adapter is merged (PEFT's merge_and_unload, what
                 export does) and the max abs difference of the GPT's logits, base+adapter
                 against merged, on fixed inputs in fp32 is reported.
  lora-ckpt      lora with gradient checkpointing alone (grad_checkpointing=true, fp32), keeping
                 nothing of each block's forward: the least memory, beside ours-ckpt.
  lora-sel       lora with selective checkpointing (grad_checkpointing=true
                 grad_checkpointing_keeps=linear_outputs, fp32): the linear layers' outputs kept,
                 only the element-wise ops and attention products recomputed: the CPU memory setting.
  lora-mem       lora with grad_checkpointing=true precision=bf16 (the GPU memory setting).

On a GPU (--device cuda) the same children train on cuda:0 and report, instead of peak RSS,
the peak CUDA memory (torch.cuda.max_memory_allocated over set-up plus training; the reserved
peak beside it). The first --skip-steps steps of each path (default 2 on cuda, 0 on CPU) are
left out of the timing (CUDA context, cuBLAS/cuDNN set-up and the caching allocator's first
growth fall there), the device is synchronised before the clock is read, and the default paths
add our precisions:
  ours-bf16      ours with bf16 autocast (precision=bf16), no checkpointing.
  ours-fp16      ours with fp16 autocast and a GradScaler (precision=fp16).
  coqui-amp      the coqui path as its Trainer runs with mixed_precision=True (precision fp16):
                 torch.autocast(cuda, float16) around train_step, a GradScaler, unscale before
                 the clip.
On cuda the coqui path moves the GPTTrainer to the GPU (what coqui's Trainer does: model.cuda())
and each batch with trainer.generic_utils.to_cuda before format_batch_on_device. Where
torchcodec is missing (torchaudio >= 2.9 decodes through it), coqui's load_audio is replaced
by the same steps on soundfile (mono mean, resample if needed, clip to [-1, 1]); the JSON says
so. Neither path enables TF32: fp32 is full fp32 in both.

    .venv/bin/python scripts/bench_train_gpt.py --device cuda --sizes full --wait-idle 0

Run it from the repository root (all sizes and paths; the full size takes the longest):

    .venv/bin/python scripts/bench_train_gpt.py --sizes tiny,full

Smaller: `--sizes tiny`, `--paths coqui,ours`, `--clips 4 --epochs 1` (or per size,
`--clips tiny=16,full=8`). Results: a Markdown table on stdout and JSON in --out. Child logs
are kept in --work-dir/logs. Another job on the same cores changes every number: before each
run the script waits (--wait-idle, default up to 300 s) for the other processes to leave the
cores idle, and it records how many cores they kept busy during the run; a ratio marked
"(contended)" came from a run during which they used more than 0.2 of a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SIZES = ("tiny", "full")
PATHS = ("coqui", "coqui-shipped", "ours", "ours-ckpt", "ours-mem", "lora")  # the CPU default, in run order
# On cuda the default runs ours first and the reference last (a late failure keeps the rest).
GPU_PATHS = ("ours", "ours-bf16", "ours-fp16", "ours-mem", "lora-mem", "coqui", "coqui-amp")
ALL_PATHS = PATHS + ("ours-bf16", "ours-fp16", "lora-ckpt", "lora-sel", "lora-mem", "coqui-amp")
REFERENCE = "coqui"
FULL_GPT = dict(gpt_layers=30, gpt_n_model_channels=1024, gpt_n_heads=16)
# Our overrides per path (the keys are xtts_ft.config.TrainGptConfig's): explicit, so that the
# benchmark does not silently follow a changed default.
OURS_VARIANTS = {
    "ours": ["precision=fp32", "grad_checkpointing=false", "num_threads=0"],
    "ours-ckpt": ["precision=fp32", "grad_checkpointing=true", "num_threads=0"],
    "ours-mem": ["precision=bf16", "grad_checkpointing=true", "num_threads=0"],
    "ours-bf16": ["precision=bf16", "grad_checkpointing=false", "num_threads=0"],
    "ours-fp16": ["precision=fp16", "grad_checkpointing=false", "num_threads=0"],
    "lora": ["method=lora", "precision=fp32", "grad_checkpointing=false", "num_threads=0"],
    "lora-ckpt": ["method=lora", "precision=fp32", "grad_checkpointing=true", "num_threads=0"],
    "lora-sel": [
        "method=lora",
        "precision=fp32",
        "grad_checkpointing=true",
        "grad_checkpointing_keeps=linear_outputs",
        "num_threads=0",
    ],
    "lora-mem": ["method=lora", "precision=bf16", "grad_checkpointing=true", "num_threads=0"],
}
BF16_PATHS = ("ours-mem", "ours-bf16", "lora-mem")  # too slow on a CPU without bf16 matmul kernels
# Full size: 2 steps of 4 per path keep all paths together under ~25 min on 2 cores.
DEFAULT_CLIPS, DEFAULT_EPOCHS = {"tiny": 16, "full": 8}, {"tiny": 2, "full": 1}
MARK = "BENCH_RESULT "


def per_size(value: str, name: str, default: dict) -> dict:
    """'8' -> 8 for every size; 'tiny=16,full=8' -> per size (sizes not named keep the default)."""
    if "=" not in value:
        return {size: int(value) for size in SIZES}
    out = dict(default)
    for part in value.split(","):
        size, _, number = part.partition("=")
        if size not in SIZES:
            raise SystemExit(f"--{name}: unknown size {size!r} (choose from {', '.join(SIZES)})")
        out[size] = int(number)
    return out


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny", help="comma list of: tiny, full (default tiny)")
    parser.add_argument(
        "--paths",
        help=f"comma list of: {', '.join(ALL_PATHS)} (default on CPU: {', '.join(PATHS)}, ours-mem only where the CPU "
        f"has bf16 matmuls; on cuda: {', '.join(GPU_PATHS)}, in the order given)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where every path trains (default cpu)"
    )
    parser.add_argument(
        "--skip-steps",
        type=int,
        default=None,
        help="leave each path's first N steps out of the timing (default 0 on cpu, 2 on cuda)",
    )
    parser.add_argument("--clips", default="", help=f"training clips, N or tiny=N,full=M (default {DEFAULT_CLIPS})")
    parser.add_argument("--epochs", default="", help=f"epochs per path, N or tiny=N,full=M (default {DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=int, default=4, help="global batch for every path")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shortest clip of the generated corpus")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=11.0,
        help="longest clip; e.g. --clips 4 --min-seconds 10 --max-seconds 11 makes every batch the same worst case, "
        "for peak memory at the same batch",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=REPO / "runs" / "bench_train_gpt", help="models, corpus, logs (reused)"
    )
    parser.add_argument("--out", type=Path, help="JSON results (default <work-dir>/results.json)")
    parser.add_argument("--coqui-workers", type=int, default=0, help="coqui DataLoader workers (its recipe: 8)")
    parser.add_argument(
        "--ours-overrides", default="", help="extra space-separated Hydra overrides for every ours path"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=300,
        help="before each run, wait up to this many seconds for other processes to leave the cores idle",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip our throwaway DVAE-cache run")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # child mode: a JSON spec
    args = parser.parse_args()
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.paths_explicit = args.paths is not None
    default_paths = PATHS if args.device == "cpu" else GPU_PATHS
    args.paths = [p for p in (args.paths or ",".join(default_paths)).split(",") if p]
    if args.skip_steps is None:
        args.skip_steps = 0 if args.device == "cpu" else 2
    for size in args.sizes:
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}")
    for path in args.paths:
        if path not in ALL_PATHS:
            raise SystemExit(f"--paths: unknown path {path!r}")
    args.clips = per_size(args.clips, "clips", DEFAULT_CLIPS) if args.clips else dict(DEFAULT_CLIPS)
    args.epochs = per_size(args.epochs, "epochs", DEFAULT_EPOCHS) if args.epochs else dict(DEFAULT_EPOCHS)
    args.work_dir = args.work_dir.resolve()
    args.out = (args.out or args.work_dir / "results.json").resolve()
    return args


# =============================================================================================
# Child side: each function runs in a fresh process and returns a JSON-able dict.
# =============================================================================================
def vm_hwm_bytes() -> int:
    """This process's peak RSS since exec (ru_maxrss would include the parent's at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def child_setup(spec: dict) -> dict:
    """Build (or reuse) the model of this size and the prepared corpus of this clip count."""
    sys.path.insert(0, str(REPO / "scripts"))
    import torch

    from xtts_ft.config import compose
    from xtts_ft.model.layout import REAL_DVAE
    from xtts_ft.model.tiny import build_tiny_xtts
    from xtts_ft.stages import prepare

    work, size, clips = Path(spec["work"]), spec["size"], spec["clips"]
    model_dir, built_s = work / "models" / size, None
    if not (model_dir / "model.pth").is_file():
        started = time.perf_counter()
        if size == "full":
            build_tiny_xtts(model_dir, seed=0, gpt=FULL_GPT, dvae=REAL_DVAE)
        else:
            build_tiny_xtts(model_dir, seed=0)
        built_s = time.perf_counter() - started
    # One extra clip per voice: prepare puts at least one clip per speaker in eval.jsonl.
    lo, hi = spec.get("min_seconds", 1.0), spec.get("max_seconds", 11.0)
    span = "" if (lo, hi) == (1.0, 11.0) else f"-{lo:g}to{hi:g}s"
    name = f"{size}-clips{clips}{span}"  # one prepared dir per size: the DVAE code cache depends on the DVAE
    data_dir = work / "processed" / name
    if not (data_dir / "train.jsonl").is_file():
        # The corpus is only needed to prepare (a machine without espeak-ng can take a prepared dir).
        from make_bench_corpus import make_corpus

        corpus = make_corpus(work / "corpus" / f"clips{clips + 2}{span}", clips + 2, lo, hi)
        prepare.run(
            compose(
                "prepare",
                [
                    f"data.name={name}",
                    f"data.sources=[{{path: {json.dumps(str(corpus))}, formatter: coqui_csv, language: en}}]",
                    f"paths.processed_dir={work / 'processed'}",
                    f"model.source={model_dir}",
                    "model.build_tiny=false",
                    "eval_fraction=0",
                    "min_eval_per_speaker=1",
                    "num_workers=1",
                ],
            )
        )
    train = [json.loads(line) for line in (data_dir / "train.jsonl").read_text().splitlines() if line.strip()]
    import TTS

    return {
        # Without AVX512-BF16/AMX, oneDNN has no bf16 matmul and torch falls back to a scalar
        # kernel: a 1024x4096 linear's forward+backward under bf16 autocast measured 62 s vs
        # 0.7 s in fp32 on this machine's EPYC.
        "cpu_bf16_matmul": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "model_dir": str(model_dir),
        "model_built_s": built_s,
        "data_dir": str(data_dir),
        "data_name": name,
        "train_clips": len(train),
        "train_durations": sorted(s["duration"] for s in train),
        "torch": torch.__version__,
        "coqui_tts": TTS.__version__,
        "python": platform.python_version(),
        "transformers": __import__("transformers").__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda,
    }


def coqui_config(model_dir: Path, dvae_checkpoint: Path, batch_size: int, workers: int, mixed_precision: bool = False):
    """GPTTrainerConfig as coqui's XTTS-v2 recipe builds it, with the sizes of this model's config.json."""
    import dataclasses

    from TTS.tts.configs.xtts_config import XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTArgs, GPTTrainerConfig

    stock = XttsConfig()
    stock.load_json(str(model_dir / "config.json"))
    fields = {f.name for f in dataclasses.fields(GPTArgs)}
    model_args = GPTArgs(**{k: v for k, v in stock.model_args.to_dict().items() if k in fields})
    recipe = dict(  # recipes/ljspeech/xtts_v2/train_gpt_xtts.py
        max_conditioning_length=132300,  # 6 s
        min_conditioning_length=66150,  # 3 s
        debug_loading_failures=False,
        max_wav_length=255995,  # ~11.6 s
        max_text_length=200,
        gpt_use_masking_gt_prompt_approach=True,
        gpt_use_perceiver_resampler=True,
        tokenizer_file=str(model_dir / "vocab.json"),
        mel_norm_file=str(model_dir / "mel_stats.pth"),  # never the URL default
        xtts_checkpoint=str(model_dir / "model.pth"),
        dvae_checkpoint=str(dvae_checkpoint),
    )
    for key, value in recipe.items():
        setattr(model_args, key, value)
    # The recipe's token ids follow the DVAE (1024 codes + start + stop): config.json has them.
    assert model_args.gpt_num_audio_tokens == model_args.gpt_stop_audio_token + 1, model_args
    return GPTTrainerConfig(
        model_args=model_args,
        audio=XttsAudioConfig(sample_rate=22050, dvae_sample_rate=22050, output_sample_rate=24000),
        batch_size=batch_size,
        eval_batch_size=batch_size,
        num_loader_workers=workers,
        optimizer="AdamW",
        optimizer_wd_only_on_weights=True,
        optimizer_params={"betas": [0.9, 0.96], "eps": 1e-8, "weight_decay": 1e-2},
        lr=5e-06,
        grad_clip=1.0,  # coqui's default is 0 (off); ours clips at 1.0, so the reference does too
        mixed_precision=mixed_precision,  # the recipe leaves it False; coqui-amp sets it (precision fp16)
        precision="fp16",
    )


def cuda_memory() -> dict:
    import torch

    return {
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(),
        "peak_cuda_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def patch_coqui_audio_loader() -> str:
    """torchaudio >= 2.9 decodes through torchcodec (and FFmpeg); where that is missing, give
    coqui's XTTSDataset its load_audio's steps on soundfile instead. Returns what loads audio."""
    try:
        import torchcodec  # noqa: F401

        return "torchaudio.load (torchcodec)"
    except Exception:  # ImportError, or torchcodec without its FFmpeg libraries
        pass
    import soundfile
    import torch
    import torchaudio
    import TTS.tts.layers.xtts.trainer.dataset as coqui_dataset

    def load_audio(audiopath, sampling_rate):
        data, lsr = soundfile.read(audiopath, dtype="float32", always_2d=True)
        audio = torch.from_numpy(data.T.copy())  # (channels, samples), as torchaudio.load gives
        if audio.size(0) != 1:
            audio = torch.mean(audio, dim=0, keepdim=True)
        if lsr != sampling_rate:
            audio = torchaudio.functional.resample(audio, lsr, sampling_rate)
        audio.clip_(-1, 1)
        return audio

    coqui_dataset.load_audio = load_audio
    return "soundfile (torchcodec missing: coqui's load_audio steps on soundfile)"


def child_coqui(spec: dict) -> dict:
    import torch

    threads_before_import = torch.get_num_threads()
    from TTS.tts.layers.xtts.trainer.gpt_trainer import GPTTrainer  # imports trainer.dataset: 1 thread

    from xtts_ft.model.layout import REAL_DVAE, dvae_kwargs
    from xtts_ft.model.loading import load_dvae

    threads_after_import = torch.get_num_threads()
    if spec["path"] in ("coqui", "coqui-amp"):
        torch.set_num_threads(os.cpu_count())
    cuda = spec.get("device", "cpu") == "cuda"
    amp = spec["path"] == "coqui-amp"
    audio_loader = patch_coqui_audio_loader()
    set_up_started = time.perf_counter()
    model_dir, data_dir = Path(spec["model_dir"]), Path(spec["data_dir"])
    # GPTTrainer.__init__ hard-codes the released DVAE's shape, and load_state_dict(strict=False)
    # still refuses size mismatches: a tiny dvae.pth cannot go in through dvae_checkpoint. Then we
    # give it an empty state dict (nothing to load, nothing refused) and swap in the tiny DVAE.
    real_dvae = dvae_kwargs(torch.load(model_dir / "dvae.pth", map_location="cpu", weights_only=True)) == REAL_DVAE
    dvae_checkpoint = model_dir / "dvae.pth"
    if not real_dvae:
        dvae_checkpoint = Path(spec["work"]) / "empty_dvae.pth"
        torch.save({}, dvae_checkpoint)
    config = coqui_config(model_dir, dvae_checkpoint, spec["batch_size"], spec["coqui_workers"], mixed_precision=amp)
    trainer = GPTTrainer(config)
    if not real_dvae:
        trainer.dvae = load_dvae(model_dir)[0]
    if cuda:
        trainer.cuda()  # coqui's Trainer with use_cuda: model.cuda()
    # Our prepared manifest as coqui sample dicts (what load_tts_samples returns): same files.
    samples = []
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        if line.strip():
            s = json.loads(line)
            samples.append(
                {
                    "audio_file": str(data_dir / s["audio"]),
                    "text": s["text"],
                    "speaker_name": s["speaker"],
                    "language": s["language"],
                    "root_path": str(data_dir),
                    "audio_unique_name": s["audio"],
                }
            )
    loader = trainer.get_data_loader(config, is_eval=False, samples=samples, verbose=False)
    optimizer = trainer.get_optimizer()
    gpt_params = [p for group in optimizer.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler("cuda") if amp else None  # coqui's Trainer: use_amp_scaler with fp16
    set_up_s = time.perf_counter() - set_up_started
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    skip, steady = spec.get("skip_steps", 0), None

    samples_done, audio_s, steps, losses, step_ends = 0, 0.0, 0, [], []
    cpu0, started = cpu_seconds(), time.perf_counter()
    for _ in range(spec["epochs"]):
        # coqui's Trainer.train_epoch: model.train(), then GPTTrainer.on_train_epoch_start puts
        # everything in eval and the GPT back in train.
        trainer.train()
        trainer.eval()
        trainer.xtts.gpt.train()
        for batch in loader:
            batch = trainer.format_batch(batch)
            if cuda:  # coqui's Trainer.format_batch: to_cuda on every entry, then format_batch_on_device
                from trainer.generic_utils import to_cuda

                batch = {k: to_cuda(v) for k, v in batch.items()}
            batch = trainer.format_batch_on_device(batch)  # conditioning mels + DVAE codes, no grad
            if amp:  # coqui's Trainer._compute_loss + optimize with use_amp_scaler
                with torch.autocast(device_type="cuda", dtype=torch.float16):
                    _, loss_dict = trainer.train_step(batch, criterion=None)
                scaler.scale(loss_dict["loss"]).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(gpt_params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                _, loss_dict = trainer.train_step(batch, criterion=None)
                loss_dict["loss"].backward()
                torch.nn.utils.clip_grad_norm_(gpt_params, config.grad_clip)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss_dict["loss"].item())  # coqui's Trainer detaches + logs every step
            samples_done += len(batch["wav_lengths"])
            audio_s += batch["wav_lengths"].sum().item() / 22050
            steps += 1
            step_ends.append(time.perf_counter())  # after loss.item(): the step's forward has finished
            if skip and steps == skip:  # the steady-state clock starts after the first `skip` steps
                sync()
                steady = (time.perf_counter(), samples_done, audio_s)
    sync()
    loop_s = loop_all_s = time.perf_counter() - started
    samples_all, audio_all = samples_done, audio_s
    if steady is not None:
        loop_s = time.perf_counter() - steady[0]
        samples_done, audio_s = samples_all - steady[1], audio_all - steady[2]
    memory = cuda_memory() if cuda else {}
    return {
        **memory,
        "device": spec.get("device", "cpu"),
        "precision": "fp16 autocast + GradScaler" if amp else "fp32",
        "audio_loader": audio_loader,
        "skipped_steps": skip if steady is not None else 0,
        "loop_all_s": loop_all_s,
        "samples_all": samples_all,
        "audio_s_all": audio_all,
        "losses": losses,
        "step_s": [round(b - a, 4) for a, b in zip([started] + step_ends, step_ends)],
        "finite_losses": all(math.isfinite(x) for x in losses),
        "threads": torch.get_num_threads(),
        "threads_before_import": threads_before_import,
        "threads_after_import": threads_after_import,
        "set_up_s": set_up_s,
        "loop_s": loop_s,
        "loop_source": "timed around the loop"
        + (f", steps {skip + 1}-{steps} (synchronised)" if steady is not None else ""),
        "loop_cpu_s": cpu_seconds() - cpu0,
        "steps": steps,
        "samples": samples_done,
        "audio_s": audio_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "dvae": "dvae.pth" if real_dvae else "tiny DVAE swapped in (empty dvae_checkpoint)",
    }


def child_ours(spec: dict) -> dict:
    import torch

    from xtts_ft.config import TrainGptConfig, compose
    from xtts_ft.stages import train_gpt
    from xtts_ft.train import gpt as recipe  # the module whose functions the recipe calls

    # Keys of our variants that this checkout's schema lacks (e.g. before the memory options
    # landed): the default variant runs without them (noted); the memory variant cannot.
    known = set(TrainGptConfig.__dataclass_fields__)
    variant_keys = {o.split("=", 1)[0] for variant in OURS_VARIANTS.values() for o in variant}
    missing = [o for o in spec["overrides"] if o.split("=", 1)[0] in variant_keys and o.split("=", 1)[0] not in known]
    if missing and spec.get("required"):
        raise SystemExit(f"this checkout's train_gpt config has no {missing}: cannot run this variant")
    cfg = compose("train_gpt", [o for o in spec["overrides"] if o not in missing])
    run_dir = train_gpt.run_dir(cfg)
    # progress.json's loop_seconds is taken when the last state is saved, so it also holds the
    # final eval and the checkpoint writes (GBs at full size), which the coqui path does not do.
    # Time those calls (behaviour unchanged) and subtract them.
    excluded, hwm = {}, {}
    cuda = spec.get("device", "cpu") == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    skip, marks, recorded = spec.get("skip_steps", 0), {}, []

    def timed(name, fn):
        def wrapper(*a, **k):
            # The first of these calls comes right after the last training step: the peak RSS so
            # far is set-up + training, what the coqui child's whole-process peak covers.
            if "before_eval_save" not in hwm:
                if cuda:
                    hwm["cuda"] = cuda_memory()
                if skip:
                    sync()
                    marks["end"] = time.perf_counter()
            hwm.setdefault("before_eval_save", vm_hwm_bytes())
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                excluded[name] = excluded.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    for name in ("evaluate_loss", "log_eval_audio", "torch_save"):
        setattr(recipe, name, timed(name, getattr(recipe, name)))
    # Each training micro-batch (batch_size here, no accumulation) is one collate call: the
    # steady-state clock starts at the (skip+1)-th, after a sync, and counts what follows.
    collate, gpt_losses, batches, step_starts = recipe.collate, recipe.gpt_losses, [], []

    def counted_collate(*a, **k):
        if skip and len(batches) == skip:
            sync()
            marks["start"] = time.perf_counter()
        batch = collate(*a, **k)
        batches.append((len(batch["wav_lengths"]), float(batch["wav_lengths"].sum()) / 22050))
        step_starts.append(time.perf_counter())
        return batch

    def recorded_losses(*a, **k):
        out = gpt_losses(*a, **k)
        recorded.append(torch.stack([loss.detach().float() for loss in out]))  # read after the run: no extra sync
        return out

    recipe.collate, recipe.gpt_losses = counted_collate, recorded_losses
    cpu0, started = cpu_seconds(), time.perf_counter()
    train_gpt.run(cfg)
    run_s = time.perf_counter() - started
    progress = json.loads((run_dir / "progress.json").read_text())
    resolved = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    settings = {}
    for line in resolved.splitlines():
        key, _, value = line.partition(":")
        if key in (
            "precision",
            "grad_checkpointing",
            "grad_checkpointing_keeps",
            "bucket_batches",
            "num_threads",
            "batch_size",
            "max_steps",
            "method",
        ):
            settings[key] = value.strip()
    loop_s, source = progress.get("train_seconds"), "progress.json train_seconds (training steps only)"
    if loop_s is None:
        loop_s, source = progress.get("loop_seconds"), "progress.json loop_seconds"
    if loop_s is None:
        loop_s, source = run_s, "run() wall time, INCLUDES set-up"
    elif excluded and "train_seconds" not in progress:
        loop_s -= sum(excluded.values())
        source += " minus " + " + ".join(f"{k} {v:.1f} s" for k, v in excluded.items())
    steady, loop_all_s = {}, loop_s
    if skip and "start" in marks and "end" in marks:
        loop_s, source = marks["end"] - marks["start"], f"timed from step {skip + 1} to the last (synchronised)"
        steady = {"samples": sum(n for n, _ in batches[skip:]), "audio_s": sum(a for _, a in batches[skip:])}
    state_bytes = (run_dir / "state.pt").stat().st_size if (run_dir / "state.pt").is_file() else None
    merge_diff = lora_merge_difference(cfg, run_dir / "state.pt") if cfg.get("method") == "lora" else None
    cfg_weights = (float(cfg.text_ce_weight), float(cfg.mel_ce_weight))
    losses = [cfg_weights[0] * float(t) + cfg_weights[1] * float(m) for t, m in (r.tolist() for r in recorded)]
    return {
        **hwm.get("cuda", {}),
        "device": spec.get("device", "cpu"),
        "precision": settings.get("precision"),
        "skipped_steps": skip if steady else 0,
        "loop_all_s": loop_all_s,
        "samples_all": progress.get("samples"),
        "audio_s_all": progress.get("audio_seconds"),
        "steady": steady,
        # seconds between successive steps' collate calls (the loop reads its losses back every step)
        "step_s": [
            round(b - a, 4)
            for a, b in zip(step_starts, step_starts[1:] + [marks.get("end", step_starts[-1] if step_starts else 0)])
        ],
        "losses": losses,
        "finite_losses": all(math.isfinite(x) for x in losses),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "threads": torch.get_num_threads(),
        "run_s": run_s,
        "run_cpu_s": cpu_seconds() - cpu0,
        "loop_s": loop_s,
        "loop_seconds_raw": progress.get("loop_seconds"),
        "excluded_s": excluded,
        "loop_source": source,
        "audio_s": steady.get("audio_s", progress.get("audio_seconds")),
        "steps": progress.get("step"),
        "samples": steady.get("samples", progress.get("samples")),
        "progress": progress,
        "settings": settings,
        "run_dir": str(run_dir),
        "missing_keys": missing,
        "vm_hwm_training_bytes": hwm.get("before_eval_save"),
        "state_bytes": state_bytes,
        "merge_max_abs_diff": merge_diff,
    }


def lora_merge_difference(cfg, state_path: Path) -> float:
    """Max abs difference of the GPT's text and audio logits (fp32, eval, fixed inputs): the base
    with the trained adapter applied, against the same adapter merged into the weights (export)."""
    import torch

    from xtts_ft.model import lora
    from xtts_ft.model.loading import load_xtts, resolve_model_cfg

    model_dir = resolve_model_cfg(cfg.model)
    _, xtts = load_xtts(model_dir, "cpu", for_inference=False)
    gpt = xtts.gpt
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    adapter = lora.trained_adapter(gpt, state, model_dir, str(state_path))
    gpt.eval()  # after wrapping: PEFT's new LoRA layers (their dropout) start in training mode
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(0, gpt.text_embedding.weight.shape[0], (2, 24), generator=generator)
    codes = torch.randint(0, gpt.mel_embedding.num_embeddings - 2, (2, 64), generator=generator)
    prompt = torch.randn(2, 32, gpt.model_dim, generator=generator)

    @torch.no_grad()
    def logits():
        text_emb = gpt.text_embedding(text) + gpt.text_pos_embedding(text)
        mel_emb = gpt.mel_embedding(codes) + gpt.mel_pos_embedding(codes)
        out = gpt.get_logits(text_emb, gpt.text_head, mel_emb, gpt.mel_head, prompt=prompt)
        return torch.cat([o.flatten() for o in out])

    unmerged = logits()
    adapter.merge_and_unload()
    return float((logits() - unmerged).abs().max())


def child_main(spec: dict) -> None:
    result = {"setup": child_setup, "coqui": child_coqui, "ours": child_ours}[spec["kind"]](spec)
    result["vm_hwm_bytes"] = vm_hwm_bytes()
    result["cpu_s"] = cpu_seconds()
    print(MARK + json.dumps(result), flush=True)


# =============================================================================================
# Parent side: run children one at a time, watch their memory, report.
# =============================================================================================
class RssWatch:
    """Sample a process's RSS (plus its descendants', refreshed each second) every 5 ms."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.proc, self.interval, self.peak = psutil.Process(pid), interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        family, refreshed = [self.proc], 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - refreshed > 1.0:
                try:
                    family = [self.proc] + self.proc.children(recursive=True)
                except psutil.Error:
                    return
                refreshed = now
            total = 0
            for p in family:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine have used since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def wait_idle(limit_s: float) -> float:
    """Wait (at most limit_s) until the other processes use under a quarter of a core; return their use."""
    deadline = time.monotonic() + limit_s
    while True:
        others = psutil.cpu_percent(interval=2.0) / 100 * (os.cpu_count() or 1)
        if others < 0.25 or time.monotonic() >= deadline:
            return others
        time.sleep(5)


def run_child(spec: dict, log: Path, idle_wait_s: float = 0.0) -> dict:
    log.parent.mkdir(parents=True, exist_ok=True)
    others_before = wait_idle(idle_wait_s)
    load_before = os.getloadavg()[0]
    busy0, own0 = busy_cpu_seconds(), cpu_seconds()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        watch = RssWatch(proc.pid)
        code = proc.wait()
        sampled = watch.stop()
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith(MARK)]
    if code != 0 or not lines:
        return {"error": f"exit {code}; see {log}", "error_tail": text[-2500:], "wall_s": wall}
    result = json.loads(lines[-1][len(MARK) :])
    # Cores the rest of the machine kept busy while the child ran (another job skews every number).
    others = busy_cpu_seconds() - busy0 - (cpu_seconds() - own0) - result.get("cpu_s", 0.0)
    result.update(
        wall_s=wall,
        rss_sampled_bytes=sampled,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        others_cores_before=others_before,
        others_cores_during=max(others, 0.0) / wall,
    )
    # Peak RSS of set-up + training: ours also evaluates and writes checkpoints after its last
    # step (the coqui path does neither), so its peak is read just before those when known.
    result["peak_rss_whole_bytes"] = max(sampled, result.get("vm_hwm_bytes", 0))
    result["peak_rss_bytes"] = result.get("vm_hwm_training_bytes") or result["peak_rss_whole_bytes"]
    return result


def ours_overrides(args, setup: dict, size: str, run_name: str, max_steps: int, variant: list) -> list:
    return [
        "model=tiny",  # the group only names the model; source points at this size's directory
        f"model.source={setup['model_dir']}",
        "model.build_tiny=false",
        f"model.device={args.device}",
        f"paths.processed_dir={Path(setup['data_dir']).parent}",
        f"data.name={setup['data_name']}",
        f"paths.runs_dir={args.work_dir / 'runs'}",
        f"run_name={run_name}",
        f"batch_size={args.batch_size}",
        f"max_steps={max_steps}",
        "lr=5e-6",
        "eval_every=0",  # no eval loss, no eval audio: the coqui path evaluates nothing either
        "save_every=1000000",
        "log_every=1",
        "eval_sentences=[]",  # no eval synthesis (it still evaluates the loss at the last step)
        "resume=false",
        *variant,
        *args.ours_overrides.split(),
    ]


def bench_size(args, size: str, on_run=None) -> tuple:
    clips, epochs = args.clips[size], args.epochs[size]
    print(f"\n== {size}: {clips} training clips, {epochs} epoch(s), batch {args.batch_size}", flush=True)
    logs = args.work_dir / "logs"
    setup = run_child(
        {
            "kind": "setup",
            "work": str(args.work_dir),
            "size": size,
            "clips": clips,
            "min_seconds": args.min_seconds,
            "max_seconds": args.max_seconds,
        },
        logs / f"{size}-setup.log",
    )
    if "error" in setup:
        raise SystemExit(f"set-up for {size} failed: {setup['error']}\n{setup['error_tail']}")
    d = setup["train_durations"]
    print(
        f"   data: {setup['train_clips']} clips, {min(d):.2f}-{max(d):.2f} s (mean {sum(d) / len(d):.2f} s), {setup['data_dir']}"
    )
    if setup["model_built_s"]:
        print(f"   built the {size} model in {setup['model_built_s']:.0f} s")
    steps_per_epoch = math.ceil(setup["train_clips"] / args.batch_size)
    runs, warmup = [], None
    order = [p for p in ALL_PATHS if p in args.paths] if args.device == "cpu" else list(dict.fromkeys(args.paths))
    for path in order:
        if (
            path in BF16_PATHS
            and args.device == "cpu"
            and size == "full"
            and not setup["cpu_bf16_matmul"]
            and not args.paths_explicit
        ):
            print(
                "   ours-mem skipped: this CPU has no bf16 matmul kernels (one full-size step ran >16 min in a trial); "
                "name it in --paths to run it anyway",
                flush=True,
            )
            runs.append(
                {
                    "path": path,
                    "size": size,
                    "epochs": epochs,
                    "batch": args.batch_size,
                    "error": "skipped: no bf16 matmul on this CPU",
                    "error_tail": "",
                }
            )
            continue
        spec = {
            "path": path,
            "size": size,
            "work": str(args.work_dir),
            "epochs": epochs,
            "batch_size": args.batch_size,
            "device": args.device,
            "skip_steps": args.skip_steps,
        }
        if path.startswith("coqui"):
            spec.update(
                kind="coqui",
                model_dir=setup["model_dir"],
                data_dir=setup["data_dir"],
                coqui_workers=args.coqui_workers,
            )
        else:
            cached = sorted(p.name for p in Path(setup["data_dir"]).glob("*codes*"))
            if warmup is None and cached and not args.no_warmup:
                warmup = {"skipped": f"the DVAE code cache is already there: {cached}"}
                print(f"   ours warm-up skipped: {warmup['skipped']}", flush=True)
            if warmup is None and not args.no_warmup:
                # The first run on a manifest builds the DVAE code cache next to it: a throwaway
                # run with max_steps=1 (set-up, cache, one step, save; train-gpt refuses 0) pays that, so the measured runs reuse it.
                before = {p.name for p in Path(setup["data_dir"]).iterdir()}
                name = f"{setup['data_name']}-warmup-{os.getpid()}"
                wspec = {
                    "kind": "ours",
                    "device": args.device,
                    "overrides": ours_overrides(args, setup, size, name, 1, OURS_VARIANTS["ours"]),
                }
                print("   ours warm-up (max_steps=1) ...", flush=True)
                warmup = run_child(wspec, logs / f"{size}-ours-warmup.log", args.wait_idle)
                warmup["new_files"] = sorted({p.name for p in Path(setup["data_dir"]).iterdir()} - before)
                said = re.search(
                    r"computed DVAE codes for (\d+) clip\(s\) in ([\d.]+) s",
                    (logs / f"{size}-ours-warmup.log").read_text(),
                )
                warmup["cache_s"] = float(said.group(2)) if said else None  # None: the cache was already there
                shutil.rmtree(args.work_dir / "runs" / name, ignore_errors=True)
                said = warmup.get("error") or f"{warmup['wall_s']:.1f} s wall, new files {warmup['new_files']}"
                print(f"   ours warm-up: {said}", flush=True)
            name = f"{setup['data_name']}-{path}-{os.getpid()}"
            overrides = ours_overrides(args, setup, size, name, epochs * steps_per_epoch, OURS_VARIANTS[path])
            spec.update(kind="ours", overrides=overrides, run_name=name, required=path != "ours")
        print(f"   {path} ...", flush=True)
        result = run_child(spec, logs / f"{size}-{path}.log", args.wait_idle)
        if spec["kind"] == "ours":
            shutil.rmtree(args.work_dir / "runs" / spec["run_name"], ignore_errors=True)  # state.pt: GBs at full size
            if "error" not in result and result.get("samples") is None:
                # progress.json without `samples`: our loop covers each clip once per epoch.
                result["samples"] = epochs * setup["train_clips"]
                result["samples_source"] = "epochs x clips (progress.json has no samples)"
            if "error" not in result and result.get("audio_s") is None:
                result["audio_s"] = epochs * sum(d)  # whole epochs: every clip once per epoch
        result.update(path=path, size=size, epochs=epochs, batch=args.batch_size)
        if "error" in result:
            print(f"   {path} FAILED: {result['error']}\n{result['error_tail'][-1500:]}", flush=True)
        else:
            memory = f"peak RSS {result['peak_rss_bytes'] / 1e9:.2f} GB"
            if result.get("peak_cuda_bytes") is not None:
                memory = (
                    f"peak CUDA {result['peak_cuda_bytes'] / 1e9:.2f} GB (reserved {result['peak_cuda_reserved_bytes'] / 1e9:.2f}), "
                    + memory
                )
            print(
                f"   {path}: {result['samples']} samples in {result['loop_s']:.1f} s = {result['samples'] / result['loop_s']:.3f} samples/s, "
                f"{memory}, {result['threads']} thread(s), child wall {result['wall_s']:.0f} s"
                + (
                    f", losses {result['first_loss']:.4f} -> {result['last_loss']:.4f}"
                    if result.get("first_loss") is not None
                    else ""
                ),
                flush=True,
            )
        runs.append(result)
        if on_run is not None:
            on_run(setup, warmup, runs)
    return setup, warmup, runs


def markdown(all_runs: list) -> str:
    lines = [
        "| path | size | threads | batch | epochs | samples | audio s | loop s | samples/s | vs coqui | peak RSS GB | vs coqui |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in SIZES:
        runs = [r for r in all_runs if r["size"] == size]
        ref = next((r for r in runs if r["path"] == REFERENCE and "error" not in r), None)
        for r in runs:
            if "error" in r:
                said = r["error"] if r["error"].startswith("skipped") else f"failed: {r['error']}"
                lines.append(f"| {r['path']} | {size} | | {r['batch']} | {r['epochs']} | {said} | | | | | | |")
                continue
            rate = r["samples"] / r["loop_s"]
            ratio = f"{rate / (ref['samples'] / ref['loop_s']):.2f}" if ref else "–"
            if r["others_cores_during"] > 0.2:
                ratio += " (contended)"
            mem = f"{r['peak_rss_bytes'] / ref['peak_rss_bytes']:.2f}" if ref else "–"
            lines.append(
                f"| {r['path']} | {size} | {r['threads']} | {r['batch']} | {r['epochs']} | {r['samples']} | {r['audio_s']:.0f} "
                f"| {r['loop_s']:.1f} | {rate:.3f} | {ratio} | {r['peak_rss_bytes'] / 1e9:.2f} | {mem} |"
            )
    return "\n".join(lines)


def markdown_gpu(all_runs: list) -> str:
    """The cuda table: steady-state throughput, peak CUDA memory, losses, each against coqui."""
    lines = [
        "| path | size | precision | batch | steps timed | samples | audio s | loop s | samples/s | vs coqui "
        "| audio s/s | vs coqui | peak CUDA GB | vs coqui | loss first → last |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size in SIZES:
        runs = [r for r in all_runs if r["size"] == size]
        ref = next((r for r in runs if r["path"] == REFERENCE and "error" not in r), None)
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['path']} | {size} | | {r['batch']} | | failed: {r['error']} | | | | | | | | | |")
                continue
            rate, audio_rate = r["samples"] / r["loop_s"], r["audio_s"] / r["loop_s"]
            mem = r.get("peak_cuda_bytes") or 0
            precision = r.get("precision") or ""
            if r["path"] in OURS_VARIANTS and "grad_checkpointing=true" in OURS_VARIANTS[r["path"]]:
                precision += " + grad ckpt"
            ratio = lambda a, b: f"{a / b:.2f}" if ref and b else "–"  # noqa: E731
            steps_timed = r.get("steps", 0) - r.get("skipped_steps", 0)
            losses = f"{r['first_loss']:.3f} → {r['last_loss']:.3f}" if r.get("first_loss") is not None else ""
            if not r.get("finite_losses", True):
                losses += " (NOT finite)"
            lines.append(
                f"| {r['path']} | {size} | {precision} | {r['batch']} | {steps_timed} | {r['samples']} | {r['audio_s']:.0f} "
                f"| {r['loop_s']:.2f} | {rate:.2f} | {ratio(rate, ref['samples'] / ref['loop_s'] if ref else 0)} "
                f"| {audio_rate:.1f} | {ratio(audio_rate, ref['audio_s'] / ref['loop_s'] if ref else 0)} "
                f"| {mem / 1e9:.2f} | {ratio(mem, ref.get('peak_cuda_bytes') if ref else 0)} | {losses} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.child:
        child_main(json.loads(args.child))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    results = {
        "command": " ".join([".venv/bin/python", "scripts/bench_train_gpt.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model,
            "memory_gb": psutil.virtual_memory().total / 1e9,
            "available_gb_at_start": psutil.virtual_memory().available / 1e9,
        },
        "sizes": {},
        "runs": [],
    }
    results["device"], results["skip_steps"] = args.device, args.skip_steps
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        done = list(results["runs"])

        def save(setup, warmup, runs, size=size, done=done):  # after each run, in case a later one dies
            results["sizes"][size] = {"setup": setup, "ours_warmup": warmup}
            results["runs"] = done + runs
            args.out.write_text(json.dumps(results, indent=1))

        setup, warmup, runs = bench_size(args, size, on_run=save)
        save(setup, warmup, runs)

    table = markdown(results["runs"]) if args.device == "cpu" else markdown_gpu(results["runs"])
    setup = next(iter(results["sizes"].values()))["setup"]
    m = results["machine"]
    notes = [
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cpus']} logical CPUs ({m['cpu']}), {m['memory_gb']:.0f} GB RAM, "
        + (
            f"GPU {setup.get('gpu')} (CUDA {setup.get('cuda')}), training on cuda"
            if args.device == "cuda"
            else "no GPU"
        )
        + f"; torch {setup['torch']}, coqui-tts {setup['coqui_tts']}, Python {setup['python']}.",
    ]
    for size, info in results["sizes"].items():
        d = info["setup"]["train_durations"]
        notes.append(f"{size}: {len(d)} training clips of {min(d):.1f}-{max(d):.1f} s (mean {sum(d) / len(d):.2f} s).")
        w = info["ours_warmup"]
        if w and "skipped" in w:
            notes.append(f"{size}: ours warm-up skipped, {w['skipped']}")
        elif w:
            notes.append(
                f"{size}: ours warm-up run (max_steps=1: set-up, the DVAE code cache, one step): "
                + (
                    w.get("error")
                    or f"{w['wall_s']:.1f} s wall for the whole child, of which the DVAE code cache "
                    + (f"{w['cache_s']:.1f} s" if w.get("cache_s") is not None else "0 s (already built)")
                    + f"; new files next to the manifest: {w['new_files']}"
                )
            )
    for r in results["runs"]:
        if "error" in r:
            continue
        extra = (
            f"other processes busy {r['others_cores_during']:.2f} cores during the run ({r['others_cores_before']:.2f} just before); "
            f"loop time from {r['loop_source']}"
        )
        if r.get("loop_cpu_s"):
            extra += f"; loop used {r['loop_cpu_s'] / r['loop_s']:.2f} cores"
        if r.get("skipped_steps"):
            extra += (
                f"; first {r['skipped_steps']} step(s) not timed (whole loop: {r['samples_all']} samples in {r['loop_all_s']:.2f} s"
                f" = {r['samples_all'] / r['loop_all_s']:.2f} samples/s)"
            )
        if r.get("peak_cuda_bytes") is not None:
            extra += f"; peak CUDA reserved {r['peak_cuda_reserved_bytes'] / 1e9:.2f} GB"
        if r.get("audio_loader") and not r["audio_loader"].startswith("torchaudio"):
            extra += f"; audio loader {r['audio_loader']}"
        if r.get("vm_hwm_training_bytes"):
            extra += (
                f"; peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB up to the last step, "
                f"{r['peak_rss_whole_bytes'] / 1e9:.2f} GB with the final eval + checkpoint writes"
            )
        if r.get("state_bytes"):
            extra += f"; state.pt {r['state_bytes'] / 1e6:.2f} MB"
        full = next(
            (f for f in results["runs"] if f["path"] == "ours" and f["size"] == r["size"] and "error" not in f), None
        )
        if r["path"].startswith("lora") and full is not None:
            extra += (
                f"; against ours (full fine-tune, same invocation): seconds/sample "
                f"{(r['loop_s'] / r['samples']) / (full['loop_s'] / full['samples']):.2f}x, "
                f"peak RSS {r['peak_rss_bytes'] / full['peak_rss_bytes']:.2f}x"
                + (
                    f", peak CUDA {r['peak_cuda_bytes'] / full['peak_cuda_bytes']:.2f}x"
                    if r.get("peak_cuda_bytes") and full.get("peak_cuda_bytes")
                    else ""
                )
                + (
                    f", state.pt {r['state_bytes'] / full['state_bytes']:.4f}x"
                    if r.get("state_bytes") and full.get("state_bytes")
                    else ""
                )
            )
        if r.get("merge_max_abs_diff") is not None:
            extra += f"; merged vs base+adapter logits max abs diff {r['merge_max_abs_diff']:.2e}"
        if r["path"].startswith("coqui"):
            extra += f"; threads at import {r['threads_before_import']} -> {r['threads_after_import']}; set-up {r['set_up_s']:.1f} s"
        else:
            extra += f"; settings {r['settings']}"
            if r.get("missing_keys"):
                extra += f"; NOT in this checkout's config, left out: {r['missing_keys']}"
        notes.append(f"{r['size']} {r['path']}: {extra}")
    report = "\n".join([*notes[:3], "", table, "", *notes[3:]])
    print("\n" + report)
    results["markdown"] = report
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
