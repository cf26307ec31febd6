"""Benchmark HiFiGAN decoder fine-tuning: seconds per step and peak memory at the full decoder
size on CPU, for a fixed segment length, with and without the adversarial losses.

Each variant runs `xtts_ft.stages.train_decoder.run` (what `xtts-ft train-decoder` runs) alone in a
fresh child process (this script with --child):

  s/step     seconds per training step (data, forward, losses, backward, clipping, optimizer
             steps), from the run's progress.json over --steps steps, after one warm-up step
             run (and checkpointed) first in the same process: set-up, model loading and the
             one-off latent cache are excluded.
  peak RSS   the child's resident-memory high-water mark (VmHWM from /proc), reset after the
             warm-up run's set-up (`/proc/self/clear_refs`), so it covers the timed run: its
             model loading (GPT included: it computes nothing, the latents are cached, but
             the loader builds the whole XTTS) and its training steps.

The model: XTTS-v2's real HiFiGAN decoder (coqui's loader builds it at its fixed size; its
input width follows the GPT width, 1024 as released) behind a randomly initialised GPT of
width 1024 and one layer (only its width matters to the decoder), built by `build_tiny_xtts`
in the stock layout under --work-dir/models. The data: the shipped demo corpus prepared with
24 kHz copies (`decoder_copies=true`). Segments: --segment samples at 24 kHz (default 8192,
HiFiGAN's), batch --batch-size, fp32, all cores.

Run it from the repository root:

    .venv/bin/python scripts/bench_train_decoder.py            # adversarial on and off
    .venv/bin/python scripts/bench_train_decoder.py --steps 5 --segment 16384 --batch-size 2

Other jobs on the same cores change every number: the script reports the load average and the
CPU seconds other processes used during each timed run ("contended" above 0.2 of a core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_WIDTH_GPT = dict(gpt_layers=1, gpt_n_model_channels=1024, gpt_n_heads=16)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "bench_decoder")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    parser.add_argument("--segment", type=int, default=8192, help="segment length in 24 kHz samples")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--variants", default="spectral,adversarial")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default <work-dir>/results.json)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on the machine spent busy (user+nice+system+irq), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def overrides(spec: dict, max_steps: int) -> list:
    work = Path(spec["work_dir"])
    return [
        f"data.sources.0.path={REPO / 'data' / 'demo' / 'en'}",
        f"data.sources.1.path={REPO / 'data' / 'demo' / 'fr'}",
        f"paths.processed_dir={work / 'processed'}",
        f"paths.runs_dir={work / 'runs' / spec['variant']}",
        f"model.source={work / 'models' / 'xtts-gpt1024'}",
        "model.build_tiny=false",
        "gpt=base",
        f"adversarial={str(spec['variant'] == 'adversarial').lower()}",
        f"segment_samples={spec['segment']}",
        f"batch_size={spec['batch_size']}",
        f"max_steps={max_steps}",
        "eval_every=0",
        "log_every=1",
        "save_every=1000000",
    ]


def child(spec: dict) -> None:
    import shutil

    import torch

    from xtts_ft.config import compose
    from xtts_ft.stages import train_decoder

    shutil.rmtree(Path(spec["work_dir"]) / "runs" / spec["variant"], ignore_errors=True)
    train_decoder.run(compose("train_decoder", overrides(spec, 1)))  # warm-up step, latent cache
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    busy_before, wall_before = busy_cpu_seconds(), time.perf_counter()
    own_before = time.process_time()
    state = train_decoder.run(compose("train_decoder", overrides(spec, 1 + spec["steps"])))
    wall = time.perf_counter() - wall_before
    others = max(0.0, busy_cpu_seconds() - busy_before - (time.process_time() - own_before)) / wall
    progress = json.loads((state.parent / "progress.json").read_text())
    result = {
        "variant": spec["variant"],
        "segment": spec["segment"],
        "batch_size": spec["batch_size"],
        "steps": spec["steps"],
        "threads": torch.get_num_threads(),
        "seconds_per_step": progress["train_seconds"] / spec["steps"],
        "peak_rss_mb": vm_hwm_mb(),
        "other_cores_busy": others,
        "loadavg": os.getloadavg()[0],
        "decoder_params_m": sum(p.numel() for p in torch.load(state, weights_only=True)["decoder"].values()) / 1e6,
    }
    print("RESULT " + json.dumps(result))


def setup(work_dir: Path) -> None:
    """The full-width model and the prepared corpus, built once."""
    from xtts_ft.config import compose
    from xtts_ft.model.tiny import build_tiny_xtts
    from xtts_ft.stages import prepare

    model_dir = work_dir / "models" / "xtts-gpt1024"
    if not model_dir.is_dir():
        build_tiny_xtts(model_dir, gpt=FULL_WIDTH_GPT)
    if not (work_dir / "processed" / "demo" / "train.jsonl").is_file():
        spec = {"work_dir": str(work_dir), "variant": "setup", "segment": 8192, "batch_size": 1}
        keys = ("data.", "paths.processed_dir", "model.")
        prepare.run(
            compose("prepare", [o for o in overrides(spec, 0) if o.startswith(keys)] + ["decoder_copies=true"])
        )


def markdown(results: list) -> str:
    lines = [
        "| variant | segment (24 kHz samples) | batch | threads | steps | s/step | peak RSS GB | other load (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        contended = " (contended)" if r["other_cores_busy"] > 0.2 else ""
        lines.append(
            f"| {r['variant']} | {r['segment']} | {r['batch_size']} | {r['threads']} | {r['steps']} | "
            f"{r['seconds_per_step']:.2f}{contended} | {r['peak_rss_mb'] / 1024:.2f} | {r['other_cores_busy']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        child(json.loads(args.child))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    setup(args.work_dir)
    results = []
    for variant in args.variants.split(","):
        spec = {
            "work_dir": str(args.work_dir),
            "variant": variant,
            "segment": args.segment,
            "batch_size": args.batch_size,
            "steps": args.steps,
        }
        log = args.work_dir / f"{variant}.log"
        with open(log, "w") as f:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
                cwd=REPO,
            )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{variant} failed (exit {proc.returncode}); see {log}")
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(json.dumps(results[-1]), flush=True)
    out = args.out or args.work_dir / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
