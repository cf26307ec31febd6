"""train-dvae on the tiny model: only the intended parts train (the codebook bit-identical under
mode=encoder), the product loads as a DVAE and says what it is, drift is 0 before training and measured
after, a crashed or stopped run resumes to the same bits, a diverged step stops the run, two torchrun ranks
follow one process, and mistakes are refused before any step."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers.settings import demo_overrides
from xtts_ft.config import compose
from xtts_ft.errors import BadValue, MissingFile
from xtts_ft.model.loading import dvae_hash, load_dvae
from xtts_ft.stages import train_dvae
from xtts_ft.train import dvae as dvae_recipe
from xtts_ft.train.preemption import EXIT_STOPPED, RunStopped
from xtts_ft.train.steps import TrainingDiverged

CODEBOOK = ("codebook.embed", "codebook.embed_avg", "codebook.cluster_size")
# Affordable runs: 1 s crops of 4 clips, one thread (2 shared cores), no eval audio unless a test asks.
DVAE_OVERRIDES = [
    "model=tiny",
    "run_name=demo",
    "lr=1e-3",
    "batch_size=4",
    "segment_seconds=1.0",
    "log_every=1",
    "eval_every=0",
    "save_every=2",
    "num_threads=1",
    "eval_audio=0",
]


def dvae_cfg(workdir: Path, runs: Path, *extra: str):
    return compose("train_dvae", demo_overrides(workdir) + DVAE_OVERRIDES + [f"paths.runs_dir={runs}", *extra])


def base_weights(tiny_model_dir: Path) -> dict:
    return torch.load(tiny_model_dir / "dvae.pth", map_location="cpu", weights_only=True)


def test_code_metrics_on_known_codes():
    codes, base = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])
    metrics = dvae_recipe.code_metrics(codes, base, codebook_size=4)
    # shares 1/2, 1/4, 1/4: entropy 1.5 bits, perplexity 2^1.5
    assert metrics["perplexity"] == pytest.approx(2**1.5)
    assert (metrics["dead_codes"], metrics["codebook_size"], metrics["eval_frames"]) == (1, 4, 4)
    assert metrics["code_drift"] == 0.25
    assert dvae_recipe.code_metrics(codes, codes, 4)["code_drift"] == 0.0


def test_encoder_mode_keeps_the_codebook_and_writes_a_loadable_product(tmp_path, tiny_model_dir, prepared, workdir):
    cfg = dvae_cfg(workdir, tmp_path, "max_steps=3", "eval_audio=1")
    out = train_dvae.run(cfg)
    assert out == train_dvae.run_dir(cfg) and train_dvae.is_done(cfg)

    base, product = base_weights(tiny_model_dir), torch.load(out / "dvae.pth", map_location="cpu", weights_only=True)
    assert list(product) == list(base)  # a plain DiscreteVAE state dict, as the base's
    for key in CODEBOOK:
        assert torch.equal(product[key], base[key]), key  # bit-identical: a code keeps its meaning
    changed = {key.split(".")[0] for key in base if not torch.equal(product[key], base[key])}
    assert changed == {"encoder", "decoder"}

    # load_dvae reads the product unchanged; its mel normalisation is the base's, byte for byte.
    dvae, mel_stats = load_dvae(out)
    assert all(torch.equal(dvae.state_dict()[k], v) for k, v in product.items())
    assert (out / "mel_stats.pth").read_bytes() == (tiny_model_dir / "mel_stats.pth").read_bytes()

    info = json.loads((out / "dvae.json").read_text())
    assert (info["kind"], info["format_version"], info["mode"], info["step"]) == ("xtts-ft-dvae", 1, "encoder", 3)
    assert info["dvae_hash"] == dvae_hash(out) != info["base_dvae_hash"] == dvae_hash(tiny_model_dir)
    assert set(info["metrics"]) == set(info["base_metrics"]) == set(dvae_recipe.METRIC_KEYS)
    assert info["base_metrics"]["code_drift"] == 0.0  # the base against itself, measured
    assert isinstance(info["metrics"]["code_drift"], float) and 0.0 < info["metrics"]["code_drift"] <= 1.0
    assert info["metrics_step"] == 3 and info["metrics"]["codebook_size"] == base["codebook.embed"].shape[1]
    assert dvae_recipe.read_product(out) == info
    with pytest.raises(MissingFile, match="holds no finished DVAE"):
        dvae_recipe.read_product(tiny_model_dir)

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "audio": 0})
    events.Reload()
    drift = [(e.step, e.value) for e in events.Scalars("eval/code_drift")]
    assert drift[0] == (0, 0.0) and [s for s, _ in drift] == [0, 3]
    assert [e.step for e in events.Scalars("train/recon_loss")] == [1, 2, 3]
    assert "eval_mel/0" in events.Tags()["images"]
    assert {"eval_audio/0", "eval_target/0"} <= set(events.Tags()["audio"])
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "state.prev.pt").is_file()


def test_full_mode_moves_the_codebook(tmp_path, tiny_model_dir, prepared, workdir):
    out = train_dvae.run(dvae_cfg(workdir, tmp_path, "max_steps=2", "mode=full"))
    base, product = base_weights(tiny_model_dir), torch.load(out / "dvae.pth", map_location="cpu", weights_only=True)
    for key in CODEBOOK:
        assert not torch.equal(product[key], base[key]), key
    product_info = json.loads((out / "dvae.json").read_text())
    assert product_info["mode"] == "full"
    # The codebook moves without collapsing to a few codes: the tiny base carries usage counts, as a trained DVAE.
    assert product_info["metrics"]["perplexity"] > 0.2 * product_info["base_metrics"]["perplexity"]  # collapsed: ~1


def test_full_mode_refuses_a_codebook_without_usage_counts(tmp_path, tiny_model_dir, prepared, workdir):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    weights = base_weights(base)
    weights["codebook.cluster_size"].zero_()  # never trained with its moving average
    torch.save(weights, base / "dvae.pth")
    with pytest.raises(BadValue, match="no usage counts") as bad:
        train_dvae.run(dvae_cfg(workdir, tmp_path, "mode=full", f"model.source={base}", "model.build_tiny=false"))
    assert "mode=encoder" in bad.value.fix
    assert not (tmp_path / "demo" / "dvae" / "state.pt").exists()


class Crash(Exception):
    pass


def assert_same_run(straight: Path, resumed: Path) -> None:
    """The resumed run ended where the uninterrupted one did: position, every weight and buffer (bit for
    bit), the product's metrics."""
    a, b = (torch.load(d / "state.pt", map_location="cpu", weights_only=True) for d in (straight, resumed))
    assert (b["step"], b["epoch"], b["batch_in_epoch"]) == (a["step"], a["epoch"], a["batch_in_epoch"])
    for key, value in a["dvae"].items():
        assert torch.equal(b["dvae"][key], value), key
    info_a, info_b = (json.loads((d / "dvae.json").read_text()) for d in (straight, resumed))
    assert info_b["metrics"] == info_a["metrics"] and info_b["dvae_hash"] == dvae_hash(resumed)


def interrupt_in_step_3(monkeypatch, interrupt) -> None:
    """Run `interrupt(recipe)` once step 3's update is made in memory (before it reaches the disk)."""
    step = dvae_recipe.DvaeRecipe.train_step

    def train_step(recipe, plan):
        result = step(recipe, plan)
        if recipe.step == 2:
            interrupt(recipe)
        return result

    monkeypatch.setattr(dvae_recipe.DvaeRecipe, "train_step", train_step)


def test_a_crashed_or_stopped_run_resumes_to_the_same_bits(tmp_path, tiny_model_dir, prepared, workdir, monkeypatch):
    """mode=full, so the codebook's moving averages must come back from the state too."""
    straight = train_dvae.run(dvae_cfg(workdir, tmp_path / "a", "max_steps=4", "mode=full"))

    # A crash in step 3: the run continues from step 2's state.
    cfg = dvae_cfg(workdir, tmp_path / "b", "max_steps=4", "mode=full")

    def crash(recipe):
        raise Crash

    interrupt_in_step_3(monkeypatch, crash)
    with pytest.raises(Crash):
        train_dvae.run(cfg)
    monkeypatch.undo()
    progress = json.loads((train_dvae.run_dir(cfg) / "progress.json").read_text())
    assert not train_dvae.is_done(cfg) and progress["step"] == 2
    assert_same_run(straight, train_dvae.run(cfg))

    # SIGTERM in step 3 (no save due before the end): the run stops at the step boundary, saving step 3.
    cfg = dvae_cfg(workdir, tmp_path / "c", "max_steps=4", "mode=full", "save_every=10")
    interrupt_in_step_3(monkeypatch, lambda recipe: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(RunStopped) as stopped:
        train_dvae.run(cfg)
    monkeypatch.undo()
    assert (stopped.value.step, stopped.value.code) == (3, EXIT_STOPPED)
    assert json.loads((train_dvae.run_dir(cfg) / "progress.json").read_text())["step"] == 3
    assert_same_run(straight, train_dvae.run(cfg))

    with pytest.raises(BadValue, match="mode=full") as refused:  # a state continues only in its own mode
        train_dvae.run(dvae_cfg(workdir, tmp_path / "b", "max_steps=5", "mode=encoder"))
    assert refused.value.fix.startswith("resume it with mode=full")


def test_a_diverged_step_stops_the_run_saving_nothing(tmp_path, tiny_model_dir, prepared, workdir, monkeypatch):
    make_batch = dvae_recipe.make_batch
    monkeypatch.setattr(dvae_recipe, "make_batch", lambda *a: make_batch(*a) * float("nan"))
    with pytest.raises(TrainingDiverged, match="training diverged at step 1: reconstruction loss nan"):
        train_dvae.run(dvae_cfg(workdir, tmp_path, "max_steps=2"))
    assert not (tmp_path / "demo" / "dvae" / "state.pt").exists()


def test_mistakes_are_refused_before_any_step(tmp_path, tiny_model_dir, prepared, workdir):
    with pytest.raises(BadValue, match="mode=both is not a mode") as bad:
        train_dvae.run(dvae_cfg(workdir, tmp_path, "mode=both"))
    assert "mode=encoder" in bad.value.fix
    with pytest.raises(BadValue, match="eval_clips=0"):
        train_dvae.run(dvae_cfg(workdir, tmp_path, "eval_clips=0"))
    with pytest.raises(BadValue, match="shorter than one DVAE code"):
        train_dvae.run(dvae_cfg(workdir, tmp_path, "segment_seconds=0.01"))
    with pytest.raises(BadValue, match="no clip of .* lasts segment_seconds=60") as long:
        train_dvae.run(dvae_cfg(workdir, tmp_path, "segment_seconds=60"))
    assert long.value.fix == "lower segment_seconds, or prepare longer clips"
    assert not (tmp_path / "demo" / "dvae" / "state.pt").exists()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir, prepared, workdir):
    """torchrun with DDP around the DVAE: two ranks of 2 crops follow one process accumulating both
    micro-batches (the same crops: each micro-batch draws its own), and the codebook stays the base's."""
    import os
    import subprocess
    import sys

    from tests.helpers.settings import REPO

    common = demo_overrides(workdir) + DVAE_OVERRIDES + ["max_steps=3", "batch_size=2"]
    single = train_dvae.run(
        compose("train_dvae", common + [f"paths.runs_dir={tmp_path / 'one'}", "grad_accum_steps=2"])
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "xtts_ft.cli"]
    done = subprocess.run(
        launch + ["train-dvae", *common, f"paths.runs_dir={tmp_path / 'two'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    two = tmp_path / "two" / "demo" / "dvae"
    assert json.loads((two / "progress.json").read_text())["world_size"] == 2
    a, b = (torch.load(d / "state.pt", map_location="cpu", weights_only=True) for d in (single, two))
    assert a["sampler"]["global_batch"] == b["sampler"]["global_batch"] == 4
    base = base_weights(tiny_model_dir)
    for key, value in a["dvae"].items():
        torch.testing.assert_close(b["dvae"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        if key in CODEBOOK:
            assert torch.equal(b["dvae"][key], base[key]), key
