import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.conftest import DEMO, demo_overrides
from xtts_ft import pipeline
from xtts_ft.config import compose

CLI = [sys.executable, "-m", "xtts_ft.cli"]


def test_help_lists_every_verb():
    result = subprocess.run(CLI + ["--help"], capture_output=True, text=True, check=True)
    for verb in ("prepare", "train-gpt", "export", "synth", "evaluate", "pipeline", "demo"):
        assert verb in result.stdout


def test_unknown_verb_fails():
    result = subprocess.run(CLI + ["train-everything"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown verb" in result.stderr


def test_stage_runs_through_hydra_cli(tmp_path):
    overrides = [o for o in demo_overrides(tmp_path) if not o.startswith("paths.models")]
    result = subprocess.run(CLI + ["prepare", *overrides], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prepared 37 train + 3 eval clips, dropped 2" in result.stdout
    assert (tmp_path / "processed" / "demo" / "stats.json").is_file()
    assert list((tmp_path / "runs" / ".hydra" / "prepare").iterdir())  # Hydra's logs, not ./outputs
    assert not (tmp_path / "outputs").exists()


def test_pipeline_runs_a_recipe_then_skips_finished_stages(tmp_path, workdir, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"stage": "prepare", "overrides": ["data=demo"]},
                    {"stage": "train_gpt", "overrides": ["data=demo", "model=tiny", "run_name=p", "max_steps=2", "batch_size=2"]},
                    {"stage": "export", "overrides": ["run_name=p"]},
                ]
            }
        )
    )
    extra = demo_overrides(tmp_path)[:2] + [
        f"paths.processed_dir={tmp_path / 'processed'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.exports_dir={tmp_path / 'exports'}",
        f"paths.models_dir={tiny_model_dir.parent}",
    ]
    cfg = compose("pipeline", [f"recipe={recipe}", f"overrides={json.dumps(extra)}"])
    first = pipeline.run(cfg)
    assert [s["skipped"] for s in first] == [False, False, False]
    assert (tmp_path / "exports" / "p" / "model.pth").is_file()
    second = pipeline.run(cfg)
    assert [s["skipped"] for s in second] == [True, True, True]
    # Training further (max_steps reaches only train_gpt) makes the export stale: it re-runs.
    longer = compose("pipeline", [f"recipe={recipe}", f"overrides={json.dumps(extra + ['max_steps=3'])}"])
    third = pipeline.run(longer)
    assert [s["skipped"] for s in third] == [True, False, False]


def test_demo_help_lists_recipes():
    result = subprocess.run(CLI + ["demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "recipes: demo" in result.stdout


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="known recipes: demo"):
        pipeline.load_recipe("nope")


@pytest.mark.slow
def test_demo_end_to_end_from_a_clean_directory(tmp_path):
    """What `make demo` leaves behind, checked as a new user would."""
    (tmp_path / "data").mkdir()
    os.symlink(DEMO, tmp_path / "data" / "demo")
    result = subprocess.run(CLI + ["demo"], capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]

    wav, rate = sf.read(str(tmp_path / "runs" / "demo" / "synth" / "alicia.wav"), dtype="float32")
    assert rate == 24000 and np.isfinite(wav).all() and np.abs(wav).max() > 0.01
    text = "The birch canoe slid on the smooth planks."
    assert 0.3 < wav.size / rate <= 2.0 + 0.25 * len(text)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "demo" / "gpt" / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])

    processed = tmp_path / "data" / "processed" / "demo"
    assert (processed / "dropped.jsonl").read_text().count("\n") == 2
    assert json.loads((processed / "stats.json").read_text())["train"]["clips"] == 37
    report = (tmp_path / "runs" / "demo" / "eval" / "report.md").read_text()
    assert "Summary per model and language" in report and "Beside the published XTTS v2.0.2" in report
    assert "| en |" in (tmp_path / "exports" / "demo" / "README.md").read_text()  # evaluate filled the card

    # A separate process loads the export with plain coqui-tts.
    export = tmp_path / "exports" / "demo"
    check = (
        "from TTS.tts.configs.xtts_config import XttsConfig\n"
        "from TTS.tts.models.xtts import Xtts\n"
        f"c = XttsConfig(); c.load_json('{export}/config.json'); m = Xtts(c)\n"
        f"m.load_checkpoint(c, checkpoint_dir='{export}', eval=True); print('LOADED', len(m.gpt.gpt.h))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert "LOADED 2" in loaded.stdout, loaded.stderr[-2000:]

    again = subprocess.run(CLI + ["demo"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already, skipping") == 5


def test_hydra_flags_and_overrides_are_separated():
    from xtts_ft.cli import split_hydra_args

    options, overrides = split_hydra_args(["a=1", "--cfg", "job", "b=2", "-m", "--info", "defaults"])
    assert options == ["--cfg", "job", "-m", "--info", "defaults"]
    assert overrides == ["a=1", "b=2"]


def test_cfg_job_prints_the_resolved_config():
    result = subprocess.run(CLI + ["synth", "checkpoint=x", "--cfg", "job", "text=hi", "reference=r.wav"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "checkpoint: x" in result.stdout and "reference: r.wav" in result.stdout
