import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from xtts_ft.model.layout import EXPORT_FILES, STOCK_FILES, is_export


def test_export_has_the_stock_layout_and_is_slim(exported):
    for name in STOCK_FILES + ("xtts_ft.json", "README.md"):
        assert (exported / name).is_file(), name
    checkpoint = torch.load(exported / "model.pth", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"model"}  # no optimizer, no config object, no training step
    keys = checkpoint["model"].keys()
    assert not any(k.startswith(("dvae.", "torch_mel_spectrogram", "optimizer", "gpt.gpt_inference")) for k in keys)
    assert any(k.startswith("hifigan_decoder.") for k in keys) and "mel_stats" in keys


def test_exported_gpt_equals_the_trained_gpt(exported, trained):
    state = torch.load(trained, map_location="cpu", weights_only=True)["gpt"]
    weights = torch.load(exported / "model.pth", map_location="cpu", weights_only=True)["model"]
    assert len(state) > 50
    for key, value in state.items():
        assert torch.equal(weights[f"gpt.{key}"], value), key


def test_sidecar_and_model_card_describe_the_export(exported):
    record = json.loads((exported / "xtts_ft.json").read_text())
    assert record["base_model"]["kind"] == "tiny-random"
    assert record["training"]["gpt_steps"] == 30
    assert record["data"]["train"]["clips"] == 37
    assert "en" in record["languages"] and "fr" in record["languages"]
    assert len(record["files"]["model.pth"]) == 64
    card = (exported / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-to-speech" in card
    # The tiny base is on no Hub: the Hub metadata names no base_model rather than a path of this machine.
    assert "base_model:" not in card and record["base_model"]["hub_id"] is None
    assert "(tiny-random; model.pth sha256 `" in card and "a local model, not on the Hub" in card
    assert record["training"]["checkpoint"] == {"choice": "latest", "step": 30, "run_steps": 30}
    assert "Exported: the last saved step, 30 of 30 (`checkpoint=latest`)." in card


@pytest.mark.slow
def test_plain_coqui_tts_loads_the_export_and_speaks_like_our_module(exported, prepared):
    """In a fresh process: coqui-tts's own loaders (Xtts.load_checkpoint and TTS.api.TTS) take the
    export unchanged, and coqui's Xtts.inference with our decoding settings and seed gives
    exactly the audio of our inference module."""
    reference = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    script = textwrap.dedent(
        f"""
        import numpy as np, soundfile as sf, torch
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts
        from TTS.api import TTS
        from xtts_ft.inference import XttsSynthesizer
        text = "The birch canoe slid on the smooth planks."
        config = XttsConfig()
        config.load_json("{exported}/config.json")
        model = Xtts(config)
        model.load_checkpoint(config, checkpoint_dir="{exported}", eval=True)
        ours = XttsSynthesizer("{exported}", device="cpu")
        mine = ours.synthesize(text=text, language="en", reference="{reference}", decoding={{"seed": 7}})
        voice = ours.clone_voice("{reference}")
        torch.manual_seed(7)
        out = model.inference(text, "en", voice.gpt_cond_latent, voice.speaker_embedding, enable_text_splitting=False,
                              max_new_tokens=ours._max_codes(text, "en", 0.25), **ours.decoding_settings())
        theirs = np.asarray(out["wav"], dtype=np.float32)
        print("SAME", theirs.shape == mine.wav.shape and bool(np.array_equal(theirs, mine.wav)), mine.wav.size)
        api = TTS(model_path="{exported}", config_path="{exported}/config.json", progress_bar=False)
        wav = np.asarray(api.tts(text="hello there.", speaker_wav="{reference}", language="en"), dtype=np.float32)
        print("API", wav.size, bool(np.isfinite(wav).all()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    same = [line for line in result.stdout.splitlines() if line.startswith("SAME")][0].split()
    assert same[1] == "True" and int(same[2]) > 0
    api = [line for line in result.stdout.splitlines() if line.startswith("API")][0].split()
    assert int(api[1]) > 0 and api[2] == "True"


def test_half_precision_safetensors_and_named_voices(tmp_path, workdir, exported, prepared):
    from safetensors.torch import load_file

    from tests.helpers.settings import demo_overrides
    from xtts_ft.config import compose
    from xtts_ft.inference import XttsSynthesizer
    from xtts_ft.stages import export

    reference = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    out = export.run(
        compose(
            "export",
            paths
            + [
                "run_name=demo",
                f"out_dir={tmp_path / 'half'}",
                "half=true",
                "safetensors=true",
                f"+voices={{alicia: {reference}}}",
            ],
        )
    )
    full = torch.load(exported / "model.pth", map_location="cpu", weights_only=True)["model"]
    half = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]
    assert set(half) == set(full)
    assert all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
    ratio = (out / "model.pth").stat().st_size / (exported / "model.pth").stat().st_size
    assert 0.45 < ratio < 0.55, ratio  # half precision halves the weights file
    for key in ("gpt.mel_head.weight", "hifigan_decoder.waveform_decoder.conv_post.weight"):
        torch.testing.assert_close(half[key].float(), full[key], rtol=1e-3, atol=1e-3)
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == set(half) and all(torch.equal(tensors[k], half[k]) for k in half)
    record = json.loads((out / "xtts_ft.json").read_text())
    assert record["voices"] == ["alicia"] and record["weights_dtype"] == "float16" and record["safetensors"]

    # The named voice is stored the stock way and speaks through the shared module.
    speakers = torch.load(out / "speakers_xtts.pth", map_location="cpu", weights_only=True)
    assert set(speakers["alicia"]) == {"gpt_cond_latent", "speaker_embedding"}
    synthesizer = XttsSynthesizer(out, device="cpu")
    assert synthesizer.voice_names == ["alicia"]
    cloned = synthesizer.clone_voice(reference)
    torch.testing.assert_close(speakers["alicia"]["gpt_cond_latent"], cloned.gpt_cond_latent)
    by_name = synthesizer.synthesize(text="Hello there.", language="en", voice="alicia", decoding={"seed": 1})
    by_file = synthesizer.synthesize(text="Hello there.", language="en", reference=reference, decoding={"seed": 1})
    assert by_name.wav.size > 0 and np.array_equal(by_name.wav, by_file.wav)


def _export_cfg(workdir, *extra):
    from tests.helpers.settings import demo_overrides
    from xtts_ft.config import compose

    return compose(
        "export", [o for o in demo_overrides(workdir) if o.startswith("paths.")] + ["run_name=demo", *extra]
    )


def test_export_replaces_only_its_own_exports(tmp_path, workdir, trained, tiny_model_dir):
    from xtts_ft.errors import FileInTheWay
    from xtts_ft.stages import export

    run_dir = trained.parent
    before = sorted(p.name for p in run_dir.iterdir())
    with pytest.raises(
        FileInTheWay,
        match=rf"out_dir={run_dir} exists and is not an xtts-ft export \(no xtts_ft.json of kind 'export'\)",
    ):
        export.run(_export_cfg(workdir, f"out_dir={run_dir}"))
    assert sorted(p.name for p in run_dir.iterdir()) == before and trained.is_file()  # the training run is untouched
    # A base model (its sidecar has another kind) and a folder of anything are refused as well.
    with pytest.raises(FileInTheWay, match="is not an xtts-ft export"):
        export.run(_export_cfg(workdir, f"out_dir={tiny_model_dir}"))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    with pytest.raises(FileInTheWay, match="export only ever replaces its own exports"):
        export.run(_export_cfg(workdir, f"out_dir={notes}"))
    assert (notes / "todo.txt").read_text() == "keep me"

    # An empty directory and an earlier export are replaced (overwrite=true, the default) ...
    (tmp_path / "mine").mkdir()
    out = export.run(_export_cfg(workdir, f"out_dir={tmp_path / 'mine'}"))
    assert json.loads((out / "xtts_ft.json").read_text())["kind"] == "export" and is_export(out)
    (out / "stale.txt").write_text("from an older export")
    export.run(_export_cfg(workdir, f"out_dir={out}"))
    assert not (out / "stale.txt").exists() and is_export(out)
    # ... unless overwrite=false.
    with pytest.raises(FileInTheWay, match="exists$"):
        export.run(_export_cfg(workdir, f"out_dir={out}", "overwrite=false"))


def test_exports_made_before_the_sidecar_had_a_kind_are_still_exports(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "xtts_ft.json").write_text(
        json.dumps({"xtts_ft_version": "0.1.0", "exported_at": "2026-01-01T00:00:00+00:00"})
    )
    assert is_export(legacy)
    (legacy / "xtts_ft.json").write_text(json.dumps({"kind": "tiny-random", "exported_at": "2026-01-01"}))
    assert not is_export(legacy)
    (legacy / "xtts_ft.json").write_text("{not json")
    assert not is_export(legacy) and not is_export(tmp_path / "absent")


def test_an_export_writes_only_the_listed_files(tmp_path, exported):
    from xtts_ft.model.export import check_listed

    assert set(p.name for p in exported.iterdir()) <= set(EXPORT_FILES)
    check_listed(exported)
    (tmp_path / "model.pth").write_bytes(b"x")
    (tmp_path / "voices.extra").write_bytes(b"x")
    with pytest.raises(
        RuntimeError, match="export wrote voices.extra, which xtts_ft.model.layout.EXPORT_FILES does not list"
    ):
        check_listed(tmp_path)


def _run_copy(tmp_path, trained):
    """A copy of the shared training run (runs/demo/gpt) to alter, and the export overrides that read it."""
    import shutil

    from tests.helpers.settings import demo_overrides

    runs = tmp_path / "runs"
    shutil.copytree(trained.parent, runs / "demo" / "gpt")
    paths = [o for o in demo_overrides(tmp_path) if o.startswith("paths.") and "runs_dir" not in o]
    return runs / "demo" / "gpt", paths + [f"paths.runs_dir={runs}", "run_name=demo"]


def test_a_checkpoint_describes_itself_and_exports_without_its_state(tmp_path, trained, tiny_model_dir):
    from xtts_ft.config import compose
    from xtts_ft.errors import MissingFile
    from xtts_ft.io_utils import file_hash
    from xtts_ft.stages import export

    run_dir, overrides = _run_copy(tmp_path, trained)
    state = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
    (run_dir / "state.pt").unlink()
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    step20 = torch.load(run_dir / "checkpoints" / "step_00000020.pt", map_location="cpu", weights_only=True)
    for checkpoint in (best, step20):
        assert checkpoint["format_version"] == state["format_version"] == 2
        assert checkpoint["base_model_hash"] == file_hash(tiny_model_dir / "model.pth") == state["base_model_hash"]
        assert checkpoint["base_model_dir"] == state["base_model_dir"] and checkpoint["config"] == state["config"]
        assert checkpoint["data_stats"]["train"]["clips"] == 37 and checkpoint["best_metric"] == "eval_loss"
        assert set(checkpoint["gpt"]) == set(state["gpt"]) and "optimizer" not in checkpoint
    assert best["last_eval"]["eval/loss"] == best["eval_loss"] and best["last_eval"]["step"] == best["step"]
    assert step20["step"] == 20 and step20["last_eval"]["step"] == 20  # eval_every=10: the eval of that step

    for choice, checkpoint in (("best", best), ("20", step20)):
        out = export.run(compose("export", overrides + [f"checkpoint={choice}", f"out_dir={tmp_path / choice}"]))
        record = json.loads((out / "xtts_ft.json").read_text())
        assert record["training"]["gpt_steps"] == checkpoint["step"] and record["data"]["train"]["clips"] == 37
        assert record["base_model"]["kind"] == "tiny-random" and record["training"]["run_name"] == "demo"
        weights = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]
        assert all(torch.equal(weights[f"gpt.{k}"], v) for k, v in checkpoint["gpt"].items())
        # The card says which step went out and why (the run went on to step 30: progress.json).
        card = (out / "README.md").read_text()
        if choice == "best":
            assert record["training"]["checkpoint"] == {
                "choice": "best",
                "step": best["step"],
                "metric": "eval_loss",
                "value": round(best["eval_loss"], 4),
                "run_steps": 30,
            }
            assert (
                f"Exported: the best eval loss {best['eval_loss']:.3g} at step {best['step']} of 30 (`checkpoint=best`)."
                in card
            )
        else:
            assert "Exported: step 20 of 30, chosen by number (`checkpoint=20`)." in card
    with pytest.raises(MissingFile, match="state.pt does not exist"):  # latest is the state, which is gone
        export.run(compose("export", overrides + [f"out_dir={tmp_path / 'latest'}"]))


def test_checkpoints_from_before_format_version_2_export_with_their_state(tmp_path, trained):
    from xtts_ft.config import compose
    from xtts_ft.stages import export

    run_dir, overrides = _run_copy(tmp_path, trained)
    # What the files held before they described themselves (best.pt: weights, step, eval loss, config).
    old = {
        "state.pt": ("format_version", "base_model_hash", "last_eval"),
        "checkpoints/best.pt": (
            "format_version",
            "base_model_hash",
            "last_eval",
            "best_metric",
            "base_model_dir",
            "data_stats",
        ),
    }
    for name, new_keys in old.items():
        payload = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        torch.save({k: v for k, v in payload.items() if k not in new_keys}, run_dir / name)
    best = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    out = export.run(compose("export", overrides + ["checkpoint=best", f"out_dir={tmp_path / 'best'}"]))
    record = json.loads((out / "xtts_ft.json").read_text())
    assert record["training"]["gpt_steps"] == best["step"] and record["data"]["train"]["clips"] == 37  # from state.pt
    weights = torch.load(out / "model.pth", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(weights[f"gpt.{k}"], v) for k, v in best["gpt"].items())


def test_a_newer_format_version_is_refused_by_name(tmp_path, trained):
    from xtts_ft.config import compose
    from xtts_ft.stages import export
    from xtts_ft.train import checkpoints

    run_dir, overrides = _run_copy(tmp_path, trained)
    for name in ("state.pt", "checkpoints/best.pt"):
        payload = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        torch.save({**payload, "format_version": 3}, run_dir / name)
    newer = r"has format_version 3, newer than this xtts-ft reads \(2\): upgrade xtts-ft to use it"
    with pytest.raises(ValueError, match=rf"best.pt {newer}"):
        export.run(compose("export", overrides + ["checkpoint=best", f"out_dir={tmp_path / 'best'}"]))
    with pytest.raises(ValueError, match=rf"state.pt {newer}"):
        export.run(compose("export", overrides + [f"out_dir={tmp_path / 'latest'}"]))
    with pytest.raises(ValueError, match=rf"state.pt {newer}"):  # nor does a training resume it
        checkpoints.load_state(run_dir / "state.pt", "gpt")


def shipped_recipes() -> list:
    from xtts_ft.config import RECIPES_DIR

    return sorted(
        p.parent.name if p.name == "recipe.yaml" else f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml")
    )


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_recipes_export_the_best_checkpoint_when_evals_ran(recipe):
    """A run that evaluated exports the step of its best eval, not the last one (the demo's eval loss was lowest at
    step 200 of 600); a decoder trained after it voices that same GPT; and the recipe's evaluate records its
    metrics in the export's card by asking for it (write_metrics=true)."""
    from xtts_ft.config import compose
    from xtts_ft.recipe_plan import plan

    stages = {}
    for stage, _, cfg in plan(compose("pipeline", [f"recipe={recipe}"])):
        stages.setdefault(stage, cfg)
    export = stages["export"]
    gpt, decoder = stages.get("train_gpt"), stages.get("train_decoder")
    if gpt is not None and gpt.eval_every > 0:
        assert export.checkpoint == "best", f"{recipe}: train_gpt evaluates every {gpt.eval_every} steps"
        if decoder is not None:
            assert str(decoder.gpt).endswith(f"{export.run_name}/gpt/checkpoints/best.pt"), decoder.gpt
    if decoder is not None and decoder.eval_every > 0:
        assert export.decoder_checkpoint == "best", f"{recipe}: train_decoder evaluates every {decoder.eval_every}"
    if "evaluate" in stages:
        evaluated = [str(c) for c in [stages["evaluate"].checkpoint, *stages["evaluate"].checkpoints] if c]
        assert stages["evaluate"].write_metrics and str(export.out_dir) in evaluated, recipe


def test_metrics_go_into_a_new_export_by_name_and_only_those_of_the_same_model(tmp_path, workdir, exported):
    """`export metrics=<evaluate out_dir>` records that evaluation's summary of this very model (the same run
    and checkpoint export to the same model.pth bytes); one of another model is refused, naming what it scored."""
    from tests.helpers.settings import demo_overrides
    from xtts_ft.config import compose
    from xtts_ft.model.export import sha256
    from xtts_ft.stages import export

    metrics = {"evaluated_at": "2026-01-01T00:00:00+00:00", "probes": "eval.jsonl", "metric_models": {}}
    metrics["per_language"] = {"en": {"cer": 0.25, "utterances": 2}}
    entry = {"label": "demo", "checkpoint": str(exported), "model_sha256": sha256(exported / "model.pth")}
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"models": [{**entry, "metrics": metrics}]}))
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")] + ["run_name=demo"]
    out = export.run(compose("export", paths + [f"out_dir={tmp_path / 'again'}", f"metrics={tmp_path / 'eval'}"]))
    assert json.loads((out / "xtts_ft.json").read_text())["metrics"] == metrics
    assert "| en | 0.25 |" in (out / "README.md").read_text()
    other = {**entry, "checkpoint": "exports/other", "model_sha256": "0" * 64, "metrics": metrics}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"models": [other]}))
    with pytest.raises(ValueError, match=r"that evaluation scored exports/other, not this export"):
        export.run(compose("export", paths + [f"out_dir={tmp_path / 'third'}", f"metrics={tmp_path / 'eval'}"]))
    assert not (tmp_path / "third").exists()
