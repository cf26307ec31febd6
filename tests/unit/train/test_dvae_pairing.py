"""The rules of issue 34 that need no model: a `dvae=` directory checked in one line, what a run from before
recorded, the drift a warning quotes (or that it was not measured), the export's decoder check, and a recipe
that trains the DVAE without training the GPT after it."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest

from xtts_ft import recipe_plan
from xtts_ft.config import compose
from xtts_ft.errors import BadValue, MissingFile, RunRefused
from xtts_ft.model import dvae_pairing
from xtts_ft.model.loading import dvae_hash


def fake_dvae(folder: Path, content: bytes, record: dict | None = None) -> Path:
    """A DVAE directory for what only hashes its files (dvae_hash reads bytes, not weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dvae.pth").write_bytes(content)
    (folder / "mel_stats.pth").write_bytes(b"mel stats")
    if record is not None:
        (folder / "dvae.json").write_text(json.dumps(record), encoding="utf-8")
    return folder


def run_record(base: Path, folder: Path, drift: float) -> dict:
    return {
        "kind": "xtts-ft-dvae",
        "format_version": 1,
        "base_dvae_hash": dvae_hash(base),
        "dvae_hash": dvae_hash(folder),
        "metrics": {"code_drift": drift},
    }


def test_a_dvae_setting_names_a_directory_holding_both_files(tmp_path):
    base = fake_dvae(tmp_path / "base", b"base")
    assert dvae_pairing.dvae_dir_of(None, base) == base
    with pytest.raises(MissingFile, match=r"^dvae=.*nope: no such directory$") as missing:
        dvae_pairing.dvae_dir_of(str(tmp_path / "nope"), base)
    assert missing.value.fix.startswith(
        "dvae=null (the base's DVAE), or a directory holding dvae.pth and mel_stats.pth"
    )
    with pytest.raises(BadValue, match="is a file") as a_file:
        dvae_pairing.dvae_dir_of(str(base / "dvae.pth"), base)
    assert a_file.value.fix == f"dvae={base}"
    run = tmp_path / "runs" / "x"
    fake_dvae(run / "dvae", b"trained")
    with pytest.raises(MissingFile, match="holds no dvae.pth and no mel_stats.pth") as run_root:
        dvae_pairing.dvae_dir_of(str(run), base)
    assert run_root.value.fix == f"dvae={run / 'dvae'}"


def test_a_run_from_before_runs_recorded_their_dvae_means_the_bases(tmp_path):
    base = fake_dvae(tmp_path / "base", b"base")
    assert dvae_pairing.recorded_dvae({"step": 3}, base) == (dvae_hash(base), base)
    assert dvae_pairing.recorded_dvae(None, base) == (dvae_hash(base), base)
    moved = {"dvae_hash": "abc", "dvae_dir": "/gone/base", "base_model_dir": "/gone/base"}
    assert dvae_pairing.recorded_dvae(moved, base) == ("abc", base)  # the base, where it lies now


def test_the_warning_quotes_the_measured_drift_or_says_it_was_not_measured(tmp_path):
    base = fake_dvae(tmp_path / "base", b"base")
    other = fake_dvae(tmp_path / "other", b"other")
    old, new = dvae_hash(base), dvae_hash(other)
    assert "drift not measured" in dvae_pairing.retrain_warning("runs/x/gpt/state.pt", old, new, other, base)
    (other / "dvae.json").write_text(json.dumps(run_record(base, other, 0.234)), encoding="utf-8")
    assert dvae_pairing.retrain_warning("runs/x/gpt/state.pt", old, new, other, base) == (
        f"the GPT weights in runs/x/gpt/state.pt were trained on DVAE codes {old[:12]}…; this run's DVAE "
        f"{new[:12]}… ({other}) changes 23.4 % of held-out codes ({other / 'dvae.json'}): the GPT must retrain on them"
    )
    # Going back from the trained DVAE to the base: the trained run's record measured the same pair.
    assert "changes 23.4 % of held-out codes" in dvae_pairing.drift_phrase(new, old, base, other)
    # A record that no longer describes the dvae.pth beside it (a killed run) is not quoted.
    (other / "dvae.pth").write_bytes(b"newer weights")
    assert "drift not measured" in dvae_pairing.drift_phrase(old, dvae_hash(other), other, base)


def test_export_refuses_a_decoder_trained_on_another_dvae_than_the_gpts(tmp_path):
    base = fake_dvae(tmp_path / "base", b"base")
    other = fake_dvae(tmp_path / "other", b"other")
    gpt_state = {"dvae_hash": dvae_hash(other), "dvae_dir": str(other), "base_model_dir": str(base)}
    decoder_state = {"step": 2}  # from before runs recorded it: the base's DVAE
    where = (tmp_path / "gpt.pt", tmp_path / "decoder.pt")
    assert dvae_pairing.shipped_dvae(None, gpt_state, None, base, *where) == (other, dvae_hash(other))
    with pytest.raises(RunRefused) as refused:
        dvae_pairing.shipped_dvae(None, gpt_state, decoder_state, base, *where)
    assert dvae_hash(base)[:12] in str(refused.value) and dvae_hash(other)[:12] in str(refused.value)
    assert "decoder" in str(refused.value) and "train-decoder" in refused.value.fix
    # Only the decoder trained: the GPT is the base's, whose DVAE is the base's.
    assert dvae_pairing.shipped_dvae(None, None, decoder_state, base, *where) == (base, dvae_hash(base))
    with pytest.raises(RunRefused, match="base GPT of"):
        dvae_pairing.shipped_dvae(str(other), None, decoder_state, base, *where)
    gone = {**gpt_state, "dvae_dir": str(tmp_path / "gone")}
    with pytest.raises(MissingFile, match="the DVAE the GPT in .* trained on .* is gone"):
        dvae_pairing.shipped_dvae(None, gone, None, base, *where)


def test_a_dvae_run_that_trained_on_after_the_gpt_is_refused_as_changed(tmp_path):
    """train-dvae refreshes its dvae.pth at every save: the GPT trained on the codes of the DVAE as it was."""
    base = fake_dvae(tmp_path / "base", b"base")
    run = fake_dvae(tmp_path / "runs" / "x" / "dvae", b"step 100")
    gpt_state = {"dvae_hash": dvae_hash(run), "dvae_dir": str(run), "base_model_dir": str(base)}
    then = dvae_hash(run)
    (run / "dvae.pth").write_bytes(b"step 200")
    where = (tmp_path / "gpt.pt", tmp_path / "decoder.pt")
    with pytest.raises(
        RunRefused, match=rf"^{run} changed since the GPT in .* trained on its codes: DVAE {then[:12]}…"
    ):
        dvae_pairing.shipped_dvae(None, gpt_state, None, base, *where)
    with pytest.raises(RunRefused, match="changed since") as refused:
        dvae_pairing.check_teacher_dvae("GPT in g.pt", then, run, dvae_hash(run), run, base)
    assert refused.value.fix == f"train the GPT on this DVAE first (xtts-ft train-gpt ... dvae={run})"


def recipe(tmp_path: Path, stages: list) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text("stages:\n" + "".join(f"  - stage: {s}\n" for s in stages), encoding="utf-8")
    return path


@pytest.mark.parametrize("stages", [["prepare", "train_dvae", "export"], ["train_gpt", "train_dvae", "train_decoder"]])
def test_a_recipe_that_trains_the_dvae_must_train_the_gpt_after_it(tmp_path, stages):
    path = recipe(tmp_path, stages)
    with pytest.raises(RunRefused, match=rf"^{path}: stages\[1\] train_dvae has no train_gpt after it") as refused:
        recipe_plan.load_recipe(str(path))
    assert "add a train_gpt stage after it with dvae=" in refused.value.fix


def test_a_gpt_after_the_dvae_that_does_not_train_on_it_is_warned_about(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="xtts_ft.recipe_plan"):
        recipe_plan.load_recipe(str(recipe(tmp_path, ["prepare", "train_dvae", "train_gpt", "export"])))
    assert "stages[2] train_gpt has no dvae= override" in caplog.text
    path = tmp_path / "uses.yaml"
    path.write_text(
        "stages:\n  - stage: train_dvae\n  - stage: train_gpt\n    overrides: ['dvae=${paths.runs_dir}/x/dvae']\n",
        encoding="utf-8",
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xtts_ft.recipe_plan"):
        recipe_plan.load_recipe(str(path))
    assert "no dvae= override" not in caplog.text


def test_a_dvae_that_trained_again_makes_the_gpt_after_it_train_again(tmp_path, monkeypatch, caplog):
    """Already how the pipeline works (every stage after one that ran runs again): checked for train_dvae."""
    from xtts_ft.stages import pipeline

    path = recipe(tmp_path, ["train_dvae", "train_gpt"])
    done = {"train_dvae": False, "train_gpt": True}
    ran = []
    fakes = {
        s: types.SimpleNamespace(is_done=lambda cfg, s=s: done[s], run=lambda cfg, s=s: ran.append(s)) for s in done
    }
    monkeypatch.setattr(pipeline.stages, "load", lambda stage: fakes[stage])
    monkeypatch.setattr(pipeline, "plan", lambda cfg: [(s, [], None) for s in done])
    with caplog.at_level(logging.INFO, logger="xtts_ft.stages.pipeline"):
        pipeline.run(compose("pipeline", [f"recipe={path}"]))
    assert ran == ["train_dvae", "train_gpt"]
    assert "── train_gpt: runs again, as train_dvae ran before it (its inputs changed)" in caplog.messages
