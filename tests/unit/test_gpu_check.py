"""scripts/gpu_check.sh: it refuses without a GPU (one line, exit 2), and every xtts-ft command it
would run composes and validates here, so the day a GPU is lent the check does not fail on a typo."""

import os
import shlex
import subprocess

import pytest

from tests.helpers.settings import REPO
from xtts_ft.config import compose, validate

SCRIPT = REPO / "scripts" / "gpu_check.sh"
PATHS = {"build_full_model", "prepare", "train_gpt_full_bf16", "train_gpt_lora_bf16", "train_decoder_bf16", "export"}
PATHS |= {"synth_batched", "synth_stream", "serve", "ddp_nccl_1rank"}


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--work", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "gpu_check.sh: refused: no CUDA device here (torch.cuda.is_available() is False): "
        "this check runs every CUDA path and needs one GPU"
    ]
    assert '"status": "refused"' in (tmp_path / "gpu_check.json").read_text()  # the JSON, however it ends


def test_every_command_it_runs_composes(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "--print-commands", "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    commands = dict(line.split("\t", 1) for line in done.stdout.splitlines())
    assert set(commands) == PATHS
    composed = 0
    for name, command in commands.items():
        words = shlex.split(command)
        for entry in ("xtts_ft.cli", "scripts/nccl_check.py"):  # the CLI, also behind serve's client and torchrun
            if entry in words:
                verb, *overrides = words[words.index(entry) + 1 :]
                stage = verb.replace("-", "_")
                cfg = validate(compose(stage, overrides), stage)
                composed += 1
                if stage.startswith("train_"):
                    assert cfg.model.device == "cuda" and cfg.precision == "bf16", name
                    assert cfg.model.source == str(tmp_path / "models" / "full"), name
    assert composed == 9  # every path but the model's build
    assert "method=lora" in commands["train_gpt_lora_bf16"] and "nproc_per_node=1" in commands["ddp_nccl_1rank"]


@pytest.mark.gpu
def test_the_gpu_check_passes(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and '"status": "pass"' in (tmp_path / "gpu_check.json").read_text(), done.stdout
