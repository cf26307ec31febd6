import json
import subprocess
import sys
import textwrap

import numpy as np
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
                              max_new_tokens=ours._max_codes(text, 0.25), **ours.decoding_settings())
        theirs = np.asarray(out["wav"], dtype=np.float32)
        print("SAME", theirs.shape == mine.wav.shape and bool(np.array_equal(theirs, mine.wav)), mine.wav.size)
        api = TTS(model_path="{exported}", config_path="{exported}/config.json", progress_bar=False)
        wav = np.asarray(api.tts(text="hello there.", speaker_wav="{reference}", language="en"), dtype=np.float32)
        print("API", wav.size, bool(np.isfinite(wav).all()))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    same = [l for l in result.stdout.splitlines() if l.startswith("SAME")][0].split()
    assert same[1] == "True" and int(same[2]) > 0
    api = [l for l in result.stdout.splitlines() if l.startswith("API")][0].split()
    assert int(api[1]) > 0 and api[2] == "True"


def test_half_precision_safetensors_and_named_voices(tmp_path, workdir, exported, prepared):
    from safetensors.torch import load_file

    from xtts_ft import export
    from xtts_ft.config import compose
    from xtts_ft.inference import XttsSynthesizer
    from tests.conftest import demo_overrides

    reference = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    out = export.run(compose("export", paths + ["run_name=demo", f"out_dir={tmp_path / 'half'}", "half=true",
                                                "safetensors=true", f"+voices={{alicia: {reference}}}"]))
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
