#!/usr/bin/env bash
# The GPU check: every CUDA path of xtts-ft at full size, unattended, in under 8 minutes on one GPU, written
# to one JSON (each path: pass | fail | timeout | skipped, its seconds, its numbers, and on failure the end
# of its log).
#
#   scripts/gpu_check.sh [--out FILE] [--work DIR] [--budget SECONDS] [--print-commands]
#
# The model is XTTS-v2's architecture at full size with random weights (xtts_ft.model.tiny with the
# 30-layer, 1024-wide GPT and the real DVAE, as scripts/bench_*.py build it): no download. The data is the
# demo corpus (data/demo), prepared with its 24 kHz copies. The paths, in order:
#   train_gpt_full_bf16   train-gpt, every GPT weight, bf16 autocast
#   train_gpt_lora_bf16   train-gpt method=lora, bf16
#   train_decoder_bf16    train-decoder (HiFiGAN + discriminator), bf16, on the full fine-tune's GPT
#   export                the full fine-tune with its decoder, as a stock XTTS-v2 folder
#   synth_batched         synth of 8 texts in one batch (batched generate)
#   synth_stream          synth stream=true (time to first audio)
#   serve                 xtts-ft serve (OpenAI's speech API) answering one request; skipped, with the
#                         reason, where xtts_ft/stages/serve.py does not exist
#   ddp_nccl_1rank        train-gpt under torchrun through the DDP path on one NCCL rank (scripts/nccl_check.py)
# Each path runs under its own time limit (and what is left of --budget, 470 s by default); a failure is
# recorded and the next path runs; the JSON is written however the script ends. --print-commands prints
# each path's command (name, a tab, the command) and runs nothing: tests/unit/test_gpu_check.py composes
# them on CPU. Without a CUDA device it refuses: one line, exit 2.
set -u
cd "$(dirname "$0")/.." || exit 2

PY=${PYTHON:-.venv/bin/python}
WORK=/tmp/xtts-ft-gpu-check
OUT=""
PRINT=0
BUDGET=470
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --print-commands | --dry-run) PRINT=1; shift ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-$WORK/gpu_check.json}
LOGS=$WORK/logs
STEPS=$WORK/steps.tsv
MODEL=$WORK/models/full
EXPORT=$WORK/exports/gc-full
PORT=${GPU_CHECK_PORT:-8765}
REFERENCE=data/demo/en/wavs/alicia_000.flac
CLI=("$PY" -m xtts_ft.cli)
PATHS=("paths.processed_dir=$WORK/processed" "paths.runs_dir=$WORK/runs" "paths.exports_dir=$WORK/exports" "paths.models_dir=$WORK/models")
MODEL_ARGS=(model=tiny "model.source=$MODEL" model.build_tiny=false model.device=cuda)
# Short runs: no evals (no eval audio), one save at the end, one kept checkpoint.
TRAIN_ARGS=(data=demo run_name=gc-full resume=false log_every=1 eval_every=0 save_every=100000 keep_last=1)

write_json() {  # the JSON from the steps recorded so far, with each path's numbers read from its outputs
    "$PY" - "$WORK" "$OUT" "${1:-}" <<'EOF'
import json, re, sys, time
from pathlib import Path

work, out, refused = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
doc = {"script": "scripts/gpu_check.sh", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
if refused:
    doc.update(status="refused", reason=refused)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    sys.exit(0)
try:
    import torch

    doc["device"] = torch.cuda.get_device_name(0)
    doc["torch"], doc["cuda"] = torch.__version__, torch.version.cuda
except Exception as err:  # the record matters more than the device's name
    doc["device"] = f"unknown ({err})"
steps = {}
rows = (work / "steps.tsv").read_text().splitlines() if (work / "steps.tsv").is_file() else []
for row in rows:
    name, status, rc, seconds, reason = (row.split("\t") + [""] * 5)[:5]
    steps[name] = {"status": status, "rc": int(rc), "seconds": round(float(seconds), 1)}
    if reason:
        steps[name]["reason"] = reason


def log_lines(name):
    path = work / "logs" / f"{name}.log"
    return path.read_text(errors="replace").replace("\r", "\n").splitlines() if path.is_file() else []


RUNS = {
    "train_gpt_full_bf16": "gc-full/gpt",
    "train_gpt_lora_bf16": "gc-lora/gpt",
    "train_decoder_bf16": "gc-full/decoder",
    "ddp_nccl_1rank": "gc-ddp/gpt",
}
for name, rel in RUNS.items():
    run = work / "runs" / rel
    if name not in steps or not (run / "progress.json").is_file():
        continue
    progress = json.loads((run / "progress.json").read_text())
    seconds = max(progress.get("train_seconds", 0), 1e-9)
    numbers = {"steps": progress["step"], "train_seconds": progress.get("train_seconds")}
    for key in ("samples", "segments"):
        if key in progress:
            numbers[f"{key}_per_second"] = round(progress[key] / seconds, 2)
    if (run / "state.pt").is_file():
        numbers["state_bytes"] = (run / "state.pt").stat().st_size
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        for tag in ("train/peak_memory_mb", "train/loss", "train/loss_gen"):
            if tag in events.Tags().get("scalars", []):
                values = [e.value for e in events.Scalars(tag)]
                numbers[tag.split("/")[1] + ("_max" if "memory" in tag else "_last")] = round(
                    max(values) if "memory" in tag else values[-1], 4
                )
    except Exception as err:
        numbers["tensorboard"] = f"unread ({err})"
    steps[name].update(numbers)
for name in ("ddp_nccl_1rank",):
    checks = [line.split("NCCL_CHECK ", 1)[1] for line in log_lines(name) if "NCCL_CHECK " in line]
    if checks and name in steps:
        steps[name]["nccl"] = checks
        if not any("all_reduce_ok=True" in c for c in checks) or not any("DDP wraps" in c for c in checks):
            steps[name]["status"] = "fail"
if "synth_batched" in steps:
    steps["synth_batched"]["wavs"] = len(list((work / "synth").glob("*.wav")))
for name in ("synth_batched", "synth_stream", "export", "serve"):
    said = [line for line in log_lines(name) if re.search(r"wrote|exported|first|answered|latency", line)]
    if said and name in steps:
        steps[name]["console"] = said[-3:]
for name, step in steps.items():
    if step["status"] in ("fail", "timeout"):
        step["log_tail"] = log_lines(name)[-20:]
doc["steps"] = steps
doc["passed"] = [n for n, s in steps.items() if s["status"] == "pass"]
doc["failed"] = [n for n, s in steps.items() if s["status"] in ("fail", "timeout")]
doc["skipped"] = [n for n, s in steps.items() if s["status"] == "skipped"]
doc["status"] = "pass" if steps and not doc["failed"] else "fail"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(doc, indent=2) + "\n")
print(f"gpu_check: {doc['status']}: {len(doc['passed'])} passed, {len(doc['failed'])} failed, "
      f"{len(doc['skipped'])} skipped → {out}")
EOF
}

quoted() {  # the command on one line, as a shell (and Python's shlex) reads it; inline Python abridged
    local words=() word
    for word in "$@"; do
        case "$word" in
            *$'\n'*) words+=("'<inline Python>'") ;;
            *) words+=("$(printf '%q' "$word")") ;;
        esac
    done
    echo "${words[*]}"
}

record() {  # name status rc seconds [reason]
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$STEPS"
}

skip() {  # name reason
    if [ "$PRINT" = 1 ]; then printf '%s\t# skipped: %s\n' "$1" "$2"; return 0; fi
    record "$1" skipped 0 0 "$2"
    echo "gpu_check: $1 skipped: $2"
}

step() {  # name limit_s command...: run it under its limit (and the budget's), record how it went
    local name=$1 limit=$2
    shift 2
    if [ "$PRINT" = 1 ]; then printf '%s\t%s\n' "$name" "$(quoted "$@")"; return 0; fi
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 15 ]; then skip "$name" "no time left in the ${BUDGET} s budget"; return 0; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "gpu_check: $name (limit ${limit} s)"
    local started rc status
    started=$(date +%s%N)
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    status=pass
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=fail; fi
    record "$name" "$status" "$rc" "$((($(date +%s%N) - started) / 1000000))e-3"
    echo "gpu_check: $name $status (rc $rc)"
}

if [ "$PRINT" = 0 ]; then
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        reason="no CUDA device here (torch.cuda.is_available() is False): this check runs every CUDA path and needs one GPU"
        mkdir -p "$WORK" && write_json "$reason" >/dev/null 2>&1
        echo "gpu_check.sh: refused: $reason" >&2
        exit 2
    fi
    # The script's own work folder: what an earlier check left there is replaced (the model is kept).
    rm -rf "$WORK/runs" "$WORK/exports" "$WORK/synth" "$LOGS" "$STEPS"
    mkdir -p "$LOGS"
    DEADLINE=$(($(date +%s) + BUDGET))
    trap 'write_json' EXIT
fi

step build_full_model 240 "$PY" -c "
from pathlib import Path
from xtts_ft.model.layout import REAL_DVAE
from xtts_ft.model.tiny import build_tiny_xtts
if not (Path('$MODEL') / 'model.pth').is_file():
    build_tiny_xtts(Path('$MODEL'), seed=0, gpt=dict(gpt_layers=30, gpt_n_model_channels=1024, gpt_n_heads=16), dvae=REAL_DVAE)
"
step prepare 120 "${CLI[@]}" prepare data=demo "${MODEL_ARGS[@]}" "${PATHS[@]}" decoder_copies=true
step train_gpt_full_bf16 150 "${CLI[@]}" train-gpt "${TRAIN_ARGS[@]}" "${MODEL_ARGS[@]}" "${PATHS[@]}" \
    "eval_sentences=[]" precision=bf16 max_steps=30 batch_size=4
step train_gpt_lora_bf16 120 "${CLI[@]}" train-gpt "${TRAIN_ARGS[@]}" "${MODEL_ARGS[@]}" "${PATHS[@]}" \
    "eval_sentences=[]" run_name=gc-lora method=lora precision=bf16 max_steps=30 batch_size=4
step train_decoder_bf16 120 "${CLI[@]}" train-decoder "${TRAIN_ARGS[@]}" "${MODEL_ARGS[@]}" "${PATHS[@]}" \
    gpt=auto precision=bf16 max_steps=20 batch_size=8
step export 90 "${CLI[@]}" export run_name=gc-full "${PATHS[@]}" "out_dir=$EXPORT"
if [ "$PRINT" = 0 ]; then
    printf '%s\n' "The birch canoe slid on the smooth planks." "Glue the sheet to the dark blue background." \
        "It's easy to tell the depth of a well." "These days a chicken leg is a rare dish." \
        "Rice is often served in round bowls." "The juice of lemons makes fine punch." \
        "The box was thrown beside the parked truck." "Four hours of steady work faced us." >"$WORK/texts.txt"
fi
# Random weights never draw the stop code: the babble guard (seconds per character) bounds each sentence.
step synth_batched 90 "${CLI[@]}" synth "checkpoint=$EXPORT" "texts=$WORK/texts.txt" "reference=$REFERENCE" \
    batch_size=8 device=cuda "out_dir=$WORK/synth" decoding.max_seconds_per_char=0.08
step synth_stream 60 "${CLI[@]}" synth "checkpoint=$EXPORT" "text=The birch canoe slid on the smooth planks." \
    "reference=$REFERENCE" stream=true device=cuda "out=$WORK/stream.wav" decoding.max_seconds_per_char=0.08
if [ -f xtts_ft/stages/serve.py ]; then
    # The server in the background, one request through OpenAI's speech API, then SIGTERM (it drains).
    step serve 120 "$PY" -c "
import json, subprocess, sys, time, urllib.request
server = subprocess.Popen(sys.argv[1:])
base = 'http://127.0.0.1:$PORT/v1'
try:
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            models = json.load(urllib.request.urlopen(base + '/models', timeout=2))
            break
        except OSError:
            if server.poll() is not None:
                sys.exit('the server exited before answering')
            time.sleep(1)
    else:
        sys.exit('the server did not answer within 90 s')
    body = {'model': models['data'][0]['id'], 'input': 'The birch canoe slid on the smooth planks.',
            'voice': 'alicia_000', 'response_format': 'wav'}
    request = urllib.request.Request(base + '/audio/speech', json.dumps(body).encode(), {'Content-Type': 'application/json'})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        audio = response.read()
    print(f'answered {response.status} with {len(audio)} bytes of audio, latency {time.perf_counter() - started:.2f} s', flush=True)
    sys.exit(0 if response.status == 200 and len(audio) > 1000 else 1)
finally:
    server.terminate()
    server.wait(timeout=30)
" "${CLI[@]}" serve "checkpoint=$EXPORT" device=cuda "port=$PORT" voices=data/demo/en/wavs
else
    skip serve "xtts_ft/stages/serve.py does not exist in this checkout (xtts-ft serve not built yet)"
fi
step ddp_nccl_1rank 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 scripts/nccl_check.py \
    train-gpt "${TRAIN_ARGS[@]}" "${MODEL_ARGS[@]}" "${PATHS[@]}" "eval_sentences=[]" run_name=gc-ddp \
    precision=bf16 max_steps=10 batch_size=4
