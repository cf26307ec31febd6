import json
import subprocess
import sys
import textwrap

import pytest
import torch

from xtts_ft.model.layout import STOCK_FILES


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
    assert card.startswith("---\n") and "base_model: " in card and "pipeline_tag: text-to-speech" in card


@pytest.mark.slow
def test_plain_coqui_tts_loads_and_speaks_the_export_in_a_fresh_process(exported, prepared):
    reference = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    script = textwrap.dedent(
        f"""
        import numpy as np, soundfile as sf, torch
        from TTS.tts.configs.xtts_config import XttsConfig
        from TTS.tts.models.xtts import Xtts
        config = XttsConfig()
        config.load_json("{exported}/config.json")
        model = Xtts(config)
        model.load_checkpoint(config, checkpoint_dir="{exported}", eval=True)
        audio, rate = sf.read("{reference}", dtype="float32")
        latent = model.get_gpt_cond_latents(torch.from_numpy(audio)[None], rate)
        speaker = model.get_speaker_embedding(torch.from_numpy(audio)[None], rate)
        torch.manual_seed(0)
        out = model.inference("hello there.", "en", latent, speaker, max_new_tokens=120, repetition_penalty=2.0)
        wav = np.asarray(out["wav"])
        print("SAMPLES", wav.size, "FINITE", bool(np.isfinite(wav).all()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("SAMPLES")][0].split()
    assert int(line[1]) > 0 and line[3] == "True"
