"""A GPT never silently pairs with a DVAE it was not trained on (issue 34): train-gpt dvae=<dir> re-caches
the codes and records the DVAE; export ships the DVAE the GPT trained on and refuses any other; train-decoder
refuses to teacher-force a GPT on another DVAE's codes; starting or resuming GPT weights across a DVAE change
warns with the measured drift.

The other DVAE is the tiny base's with its encoder perturbed (`tests.helpers.dvae`): a real DiscreteVAE
state dict, saved with a dvae.json as train-dvae writes it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.dvae import clip_codes, perturbed_dvae
from tests.helpers.settings import DECODER_OVERRIDES, TRAIN_OVERRIDES, demo_overrides
from xtts_ft.config import compose
from xtts_ft.errors import RunRefused
from xtts_ft.model.loading import dvae_hash

ONE_STEP = ["max_steps=1", "eval_every=0", "eval_sentences=[]", "save_every=1"]


class Lines(logging.Handler):
    """The messages the package logged while it was attached (a module fixture has no caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def other_dvae(workdir, tiny_model_dir, prepared) -> Path:
    clips = sorted((prepared / "wavs").glob("*.wav"))[:4]
    return perturbed_dvae(tiny_model_dir, workdir / "dvae_perturbed", clips)


@pytest.fixture(scope="module")
def pairing_dir(workdir, prepared) -> Path:
    """A copy of the prepared demo (the session's code cache stays keyed by the base's DVAE)."""
    root = workdir / "dvae_pairing"
    if not (root / "processed" / "demo").is_dir():
        shutil.copytree(prepared, root / "processed" / "demo")
    return root


def pairing_overrides(workdir: Path, root: Path) -> list:
    return demo_overrides(workdir) + [
        f"paths.processed_dir={root / 'processed'}",
        f"paths.runs_dir={root / 'runs'}",
        f"paths.exports_dir={root / 'exports'}",
    ]


@pytest.fixture(scope="module")
def retrained(workdir, tiny_model_dir, other_dvae, pairing_dir):
    """A GPT trained (one step, from the tiny base) on the other DVAE's codes, and what it logged."""
    from xtts_ft.stages import train_gpt

    lines = Lines()
    logger = logging.getLogger("xtts_ft")
    logger.addHandler(lines)
    try:
        cfg = compose(
            "train_gpt", pairing_overrides(workdir, pairing_dir) + TRAIN_OVERRIDES + ONE_STEP + [f"dvae={other_dvae}"]
        )
        state = train_gpt.run(cfg)
    finally:
        logger.removeHandler(lines)
    return state, lines.messages


def export_overrides(workdir: Path, root: Path) -> list:
    return [o for o in pairing_overrides(workdir, root) if o.startswith("paths.")] + ["run_name=demo"]


def test_train_gpt_on_another_dvae_recaches_its_codes_and_records_it(
    retrained, other_dvae, tiny_model_dir, pairing_dir
):
    state_path, messages = retrained
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    assert state["dvae_hash"] == dvae_hash(other_dvae)
    assert state["dvae_dir"] == str(other_dvae.resolve())
    step = torch.load(state_path.parent / "checkpoints" / "step_00000001.pt", map_location="cpu", weights_only=True)
    assert step["dvae_hash"] == dvae_hash(other_dvae)  # every checkpoint describes its DVAE too
    # The cache is keyed by the new DVAE and holds its codes, not those the base's DVAE gives the same clips.
    cache = torch.load(pairing_dir / "processed" / "demo" / "train.codes.pt", weights_only=True)
    assert cache["model_hash"] == dvae_hash(other_dvae) != dvae_hash(tiny_model_dir)
    clips = sorted((pairing_dir / "processed" / "demo" / "wavs").glob("*.wav"))[:6]
    cached = [
        cache["entries"][f"wavs/{clip.name}"]["value"].long()
        for clip in clips
        if f"wavs/{clip.name}" in cache["entries"]
    ]
    assert len(cached) >= 4
    new, old = clip_codes(other_dvae, clips[: len(cached)]), clip_codes(tiny_model_dir, clips[: len(cached)])
    assert all(torch.equal(c, n) for c, n in zip(cached, new))
    assert not all(torch.equal(c, o) for c, o in zip(cached, old))
    assert any(
        m.startswith("computed DVAE codes for 40 clip(s)") and f"with DVAE {dvae_hash(other_dvae)[:12]}…" in m
        for m in messages
    ), messages


def test_starting_from_a_base_trained_on_another_dvae_warns_with_the_measured_drift(
    retrained, other_dvae, tiny_model_dir
):
    _, messages = retrained
    drift = json.loads((other_dvae / "dvae.json").read_text())["metrics"]["code_drift"]
    expected = (
        f"the GPT weights in {tiny_model_dir} were trained on DVAE codes {dvae_hash(tiny_model_dir)[:12]}…; "
        f"this run's DVAE {dvae_hash(other_dvae)[:12]}… ({other_dvae}) changes {100 * drift:.1f} % of held-out codes "
        f"({other_dvae / 'dvae.json'}): the GPT must retrain on them"
    )
    assert expected in messages, messages
    assert 0.05 < drift < 0.95


def test_export_ships_the_dvae_the_gpt_trained_on_and_refuses_another(
    workdir, retrained, other_dvae, tiny_model_dir, pairing_dir
):
    from xtts_ft.stages import export

    overrides = export_overrides(workdir, pairing_dir)
    with pytest.raises(RunRefused) as refused:
        export.run(compose("export", overrides + [f"dvae={tiny_model_dir}"]))
    assert dvae_hash(tiny_model_dir)[:12] in str(refused.value) and dvae_hash(other_dvae)[:12] in str(refused.value)
    out = export.run(compose("export", overrides))  # dvae=null: the one it trained on
    assert (out / "dvae.pth").read_bytes() == (other_dvae / "dvae.pth").read_bytes()
    assert (out / "mel_stats.pth").read_bytes() == (other_dvae / "mel_stats.pth").read_bytes()
    assert json.loads((out / "xtts_ft.json").read_text())["dvae_hash"] == dvae_hash(other_dvae) == dvae_hash(out)


def test_export_refuses_a_gpt_trained_on_the_base_dvae_with_another(
    tmp_path, workdir, trained, other_dvae, tiny_model_dir
):
    from xtts_ft.stages import export

    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")] + [f"paths.exports_dir={tmp_path}"]
    with pytest.raises(RunRefused) as refused:
        export.run(compose("export", paths + ["run_name=demo", f"dvae={other_dvae}"]))
    message = str(refused.value)
    assert (
        f"DVAE to ship, {dvae_hash(other_dvae)[:12]}…" in message
        and f"trained on, {dvae_hash(tiny_model_dir)[:12]}…" in message
    )
    assert "% of held-out codes" in message
    assert refused.value.fix == (
        "train the GPT on the new DVAE's codes (xtts-ft train-gpt ... dvae=<dir>), "
        "or export with the DVAE the GPT trained on (dvae=null)"
    )
    assert not (tmp_path / "demo").exists()


def test_resuming_gpt_weights_across_a_dvae_change_warns_and_records_nothing(
    tmp_path, workdir, trained, other_dvae, tiny_model_dir, pairing_dir, caplog
):
    from xtts_ft.stages import train_gpt

    run = tmp_path / "runs" / "demo" / "gpt"
    run.mkdir(parents=True)
    for name in ("state.pt", "progress.json"):
        shutil.copy2(trained.parent / name, run / name)
    before = (run / "state.pt").read_bytes()
    overrides = pairing_overrides(workdir, pairing_dir) + [f"paths.runs_dir={tmp_path / 'runs'}"]
    with caplog.at_level(logging.WARNING, logger="xtts_ft"):
        train_gpt.run(
            compose(
                "train_gpt", overrides + TRAIN_OVERRIDES + ["max_steps=30", "eval_sentences=[]", f"dvae={other_dvae}"]
            )
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        w.startswith(
            f"the GPT weights in {run / 'state.pt'} were trained on DVAE codes {dvae_hash(tiny_model_dir)[:12]}…"
        )
        and "% of held-out codes" in w
        for w in warnings
    ), warnings
    # Nothing trained (the run was done): the state still says which DVAE its weights learnt, so export refuses.
    assert (run / "state.pt").read_bytes() == before


def test_train_decoder_refuses_a_gpt_trained_on_another_dvae(
    tmp_path, workdir, trained, retrained, other_dvae, tiny_model_dir
):
    from xtts_ft.stages import train_decoder

    common = demo_overrides(workdir) + DECODER_OVERRIDES + [f"paths.runs_dir={tmp_path}"]
    with pytest.raises(RunRefused) as refused:  # the base-DVAE GPT, teacher-forced on the other DVAE's codes
        train_decoder.run(compose("train_decoder", common + [f"gpt={trained}", f"dvae={other_dvae}"]))
    message = str(refused.value)
    assert dvae_hash(tiny_model_dir)[:12] in message and dvae_hash(other_dvae)[:12] in message
    assert refused.value.fix.startswith("dvae=null (the GPT's DVAE)")
    with pytest.raises(RunRefused) as refused:  # the retrained GPT on the base's DVAE (dvae=null)
        train_decoder.run(compose("train_decoder", common + [f"gpt={retrained[0]}"]))
    assert refused.value.fix.startswith(f"dvae={other_dvae} (the GPT's DVAE)")
    assert not (tmp_path / "demo" / "decoder" / "state.pt").exists()
