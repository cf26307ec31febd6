"""A Hydra multirun sweep of train-gpt, as a user types it: one run per combination, each in its own
run directory named from the values it sweeps; the runs exported in one multirun, then compared by
one evaluate report."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.helpers.settings import TRAIN_OVERRIDES, demo_overrides
from xtts_ft import cli
from xtts_ft.train.sweep import sweep_run_overrides


def test_a_training_multirun_names_each_run_from_its_swept_values():
    given = ["data=demo", "lr=1e-5,5e-6", "lora.rank=8,16", "paths.runs_dir=/scratch/runs", "hydra/launcher=slurm"]
    named = sweep_run_overrides("train-gpt", given)
    assert named[:5] == given and named[5] == "run_name=${data.name}-sweep/${hydra:job.override_dirname}"
    assert (
        named[6]
        == "hydra.job.config.override_dirname.exclude_keys=['data','hydra/launcher','paths.runs_dir','run_name']"
    )
    # A run_name given becomes the sweep's folder; a sweep over run_name, another verb or one job: left alone.
    assert (
        sweep_run_overrides("train-gpt", ["run_name=wo", "lr=1,2"])[1]
        == "run_name=wo-sweep/${hydra:job.override_dirname}"
    )
    for verb, overrides in [
        ("train-gpt", ["run_name=a,b"]),
        ("train-gpt", ["lr=1,2", "run_name=lr${lr}"]),
        ("export", ["run_name=a,b"]),
        ("train-gpt", ["lr=1"]),
    ]:
        assert sweep_run_overrides(verb, overrides) == overrides


def test_evaluate_takes_a_pattern_for_a_sweeps_exports(tmp_path):
    from xtts_ft.config import compose
    from xtts_ft.errors import ConfigValueError
    from xtts_ft.stages import evaluate

    for name in ("lr-1e-05", "lr-5e-06"):
        (tmp_path / "exports" / "demo-sweep" / name).mkdir(parents=True)
    (tmp_path / "exports" / "demo-sweep" / "notes.txt").write_text("not an export")
    cfg = compose("evaluate", [f"out_dir={tmp_path / 'eval'}", "probes=short"])
    cfg.checkpoints = ["coqui/XTTS-v2", f"{tmp_path}/exports/demo-sweep/*"]
    sweep = tmp_path / "exports" / "demo-sweep"
    assert evaluate.checkpoints(cfg) == ["coqui/XTTS-v2", str(sweep / "lr-1e-05"), str(sweep / "lr-5e-06")]
    cfg.checkpoints = [f"{tmp_path}/exports/other-sweep/*"]
    with pytest.raises(ConfigValueError, match="matches no folder"):
        evaluate.checkpoints(cfg)


@pytest.mark.slow
def test_a_two_by_two_sweep_trains_four_runs_then_one_report_compares_them(tmp_path, workdir, prepared, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Hydra's own folders (runs/.hydra/...) go here
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    paths = [o for o in demo_overrides(workdir) if not o.startswith(("paths.runs_dir", "paths.exports_dir"))]
    paths += [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.exports_dir={tmp_path / 'exports'}"]
    train = [o for o in TRAIN_OVERRIDES if not o.startswith("lr=")]
    train += ["method=lora", "lora.alpha=8", "max_steps=1", "batch_size=2", "eval_every=0", "eval_sentences=[]"]
    cli.main(["train-gpt", "-m", "lr=1e-3,5e-4", "lora.rank=2,4", *paths, *train])

    sweep = tmp_path / "runs" / "demo-sweep"
    names = sorted(p.name for p in sweep.iterdir())
    assert names == ["lora.rank-2_lr-0.0005", "lora.rank-2_lr-0.001", "lora.rank-4_lr-0.0005", "lora.rank-4_lr-0.001"]
    for name in names:  # each run its own state, lock and TensorBoard folder, trained with its own values
        run = sweep / name / "gpt"
        assert (run / "run.lock").is_file() and any((run / "tensorboard").iterdir())
        state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
        rank, lr = int(name.split("_")[0].split("-")[1]), float(name.split("lr-")[1])
        assert state["step"] == 1 and state["config"]["lr"] == lr
        assert {v.shape[0] for k, v in state["gpt"].items() if "lora_A" in k} == {rank}

    runs = "run_name=" + ",".join(f"demo-sweep/{name}" for name in names)
    cli.main(["export", "-m", runs, *[o for o in paths if o.startswith("paths.")]])
    exports = sorted(p.name for p in (tmp_path / "exports" / "demo-sweep").iterdir())
    assert exports == names

    reference = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    cli.main(
        [
            "evaluate",
            f"checkpoints=[{tmp_path / 'exports' / 'demo-sweep'}/*]",
            "probes=short",
            f"reference={reference}",
            "languages=[en]",
            "max_utterances=1",
            f"out_dir={tmp_path / 'eval'}",
            "write_metrics=false",
        ]
    )
    report = (tmp_path / "eval" / "report.md").read_text()
    summary = (tmp_path / "eval" / "summary.csv").read_text()
    for name in names:
        assert name in report and name in summary


@pytest.mark.slow
def test_an_optuna_sweep_minimises_the_runs_eval_loss(tmp_path, workdir, prepared, monkeypatch):
    """hydra/sweeper=eval_loss: each trial a run of its own, its best eval loss the value Optuna gets back."""
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    overrides = [o for o in demo_overrides(workdir) if not o.startswith("paths.runs_dir")]
    overrides += [f"paths.runs_dir={tmp_path / 'runs'}", f"hydra.sweep.dir={tmp_path / 'optuna'}"]
    overrides += [o for o in TRAIN_OVERRIDES if not o.startswith("lr=")]
    overrides += ["max_steps=1", "eval_every=1", "eval_sentences=[]", "batch_size=2"]
    search = [
        "hydra/sweeper=eval_loss",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=2",
        "lr=choice(1e-3,1e-2)",
    ]
    cli.main(["train-gpt", "-m", *search, *overrides])

    sweep = tmp_path / "runs" / "demo-sweep"
    scores = {p.name: torch.load(p / "gpt" / "state.pt", weights_only=True)["best_eval_loss"] for p in sweep.iterdir()}
    assert set(scores) == {"lr-0.001", "lr-0.01"} and scores["lr-0.001"] != scores["lr-0.01"]
    found = yaml.safe_load((tmp_path / "optuna" / "optimization_results.yaml").read_text())
    assert found["best_value"] == pytest.approx(min(scores.values()))
    assert f"lr-{found['best_params']['lr']}" == min(scores, key=scores.get)
