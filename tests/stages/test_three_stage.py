"""The three-stage tiny recipe (issue 34): prepare → extend → train-dvae → train-gpt on the new DVAE's codes →
train-decoder → export → evaluate, end to end on the shipped Wolof data, and what ties the stages together: the
DVAE run's drift in dvae.json, the GPT and decoder runs recording its hash, the export shipping its dvae.pth."""

import json
import logging

import pytest
import torch

from tests.helpers.settings import REPO
from xtts_ft.config import compose
from xtts_ft.model.loading import dvae_hash

RUN = "wolof_demo_three_stage"


def test_the_three_stage_recipes_train_the_gpt_and_decoder_on_the_dvae_they_train():
    """Both recipes (GPU and tiny) plan train-dvae before train-gpt, and hand its run directory to the GPT and
    the decoder as their DVAE; the export takes the DVAE the GPT trained on (dvae=null)."""
    from xtts_ft.recipe_plan import plan

    for recipe in ("wolof/three_stage", "wolof/three_stage_tiny"):
        planned = plan(compose("pipeline", [f"recipe={recipe}"]))
        stages = [stage for stage, _, _ in planned]
        assert stages == ["prepare", "extend", "train_dvae", "train_gpt", "train_decoder", "export", "evaluate"], (
            recipe
        )
        cfgs = {stage: cfg for stage, _, cfg in planned}
        dvae_run = f"{cfgs['train_dvae'].paths.runs_dir}/{cfgs['train_dvae'].run_name}/dvae"
        assert cfgs["train_dvae"].mode == "encoder", recipe  # the codebook frozen: codes keep their meaning
        assert cfgs["train_gpt"].dvae == dvae_run and cfgs["train_decoder"].dvae == dvae_run, recipe
        assert cfgs["export"].dvae is None and cfgs["export"].run_name == cfgs["train_gpt"].run_name, recipe


@pytest.mark.slow
def test_tiny_three_stage_recipe_runs_end_to_end(tmp_path, monkeypatch, caplog):
    from xtts_ft.stages import pipeline

    monkeypatch.chdir(REPO)  # the recipe names the shipped corpora relative to the repository
    paths = [f"paths.{k}={tmp_path / k}" for k in ("processed_dir", "runs_dir", "exports_dir", "models_dir")]
    cfg = compose("pipeline", ["recipe=wolof/three_stage_tiny"])
    cfg.overrides = paths + ["max_utterances=1"]
    with caplog.at_level(logging.WARNING):
        report = pipeline.run(cfg)
    assert [r["stage"] for r in report] == [
        "prepare",
        "extend",
        "train_dvae",
        "train_gpt",
        "train_decoder",
        "export",
        "evaluate",
    ]
    assert not any(r["skipped"] for r in report)

    # The DVAE run: its product, with the drift measured on held-out clips (0 for the base, a number after).
    dvae_dir = tmp_path / "runs_dir" / RUN / "dvae"
    record = json.loads((dvae_dir / "dvae.json").read_text())
    assert record["kind"] == "xtts-ft-dvae" and record["mode"] == "encoder" and record["step"] == 6
    assert record["base_metrics"]["code_drift"] == 0.0
    assert 0.0 <= record["metrics"]["code_drift"] <= 1.0 and record["metrics"]["eval_frames"] > 0
    trained = dvae_hash(dvae_dir)
    assert record["base_dvae_hash"] == dvae_hash(tmp_path / "models_dir" / "wolof_demo-extended")
    assert record["dvae_hash"] == trained != record["base_dvae_hash"]  # it trained: not the base's DVAE any more

    # The GPT and the decoder trained on its codes, and say so.
    gpt = torch.load(tmp_path / "runs_dir" / RUN / "gpt" / "state.pt", map_location="cpu", weights_only=True)
    decoder = torch.load(tmp_path / "runs_dir" / RUN / "decoder" / "state.pt", map_location="cpu", weights_only=True)
    assert gpt["dvae_hash"] == trained and decoder["dvae_hash"] == trained
    # The GPT started from weights that knew the base DVAE's codes: the run warned, with the measured drift.
    warnings = [r.getMessage() for r in caplog.records if r.name == "xtts_ft.train.gpt"]
    assert any("% of held-out codes" in w and "must retrain" in w for w in warnings), warnings

    # The export ships that DVAE (its bytes), records its hash, and the evaluation ran on it.
    export_dir = tmp_path / "exports_dir" / RUN
    assert (export_dir / "dvae.pth").read_bytes() == (dvae_dir / "dvae.pth").read_bytes()
    assert dvae_hash(export_dir) == trained
    assert json.loads((export_dir / "xtts_ft.json").read_text())["dvae_hash"] == trained
    assert (tmp_path / "runs_dir" / RUN / "eval" / "report.md").is_file()
