import pytest
import torch

from xtts_ft.model.layout import STOCK_FILES
from xtts_ft.model.loading import load_dvae, load_xtts, looks_like_hub_id, resolve_model_dir


def test_tiny_model_is_saved_in_the_stock_layout(tiny_model_dir):
    for name in STOCK_FILES:
        assert (tiny_model_dir / name).is_file(), name


def test_tiny_model_loads_with_coqui_loader(tiny_model_dir):
    config, model = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    assert config.model_args.gpt_layers == 2
    assert model.gpt.model_dim == 64
    assert len(model.gpt.gpt.h) == 2
    # Text embedding sized from the vocabulary, special tokens where XTTS expects them.
    vocab = model.tokenizer.tokenizer.get_vocab()
    assert vocab["[STOP]"] == 0 and vocab["[UNK]"] == 1 and vocab["[SPACE]"] == 2
    assert model.gpt.text_embedding.num_embeddings == model.tokenizer.get_number_tokens()
    assert model.gpt.start_text_token == vocab["[START]"]
    # HiFiGAN decoder and speaker encoder are real-sized: only the input width follows the GPT.
    decoder_params = sum(p.numel() for p in model.hifigan_decoder.parameters())
    assert decoder_params > 20_000_000
    assert torch.equal(model.mel_stats, torch.load(tiny_model_dir / "mel_stats.pth", weights_only=True))


def test_building_the_tiny_model_prints_no_transformers_noise(tmp_path):
    """Was, at every build (the first run of any stage with model=tiny): transformers' warnings about coqui's
    GPT-2 config (`bos_token_id must be None or an integer within the vocabulary ...`). A fresh process: it warns once."""
    import subprocess
    import sys

    script = f"from xtts_ft.model.tiny import build_tiny_xtts\nbuild_tiny_xtts({str(tmp_path / 'm')!r})\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "token_id" not in result.stderr + result.stdout and (tmp_path / "m" / "model.pth").is_file()


def test_tokenizer_encodes_demo_text_without_unknowns(tiny_model_dir):
    _, model = load_xtts(tiny_model_dir, "cpu", for_inference=False)
    for text, lang in [("The birch canoe slid on the smooth planks.", "en"), ("Il fait très beau aujourd'hui.", "fr")]:
        ids = model.tokenizer.encode(text, lang)
        assert ids[0] == model.tokenizer.tokenizer.token_to_id(f"[{lang}]")
        assert 1 not in ids  # [UNK]


def test_tiny_dvae_uses_many_codes_on_speech(tiny_model_dir, prepared):
    from xtts_ft.data.audio import load_audio
    from xtts_ft.model.features import GptFeatures

    dvae, mel_stats = load_dvae(tiny_model_dir)
    features = GptFeatures(dvae, mel_stats)
    wav = torch.from_numpy(load_audio(next((prepared / "wavs").glob("*.wav")), 22050)).unsqueeze(0)
    codes = features.audio_codes(wav)
    assert codes.shape[1] == pytest.approx(wav.shape[1] / 1024, abs=2)  # one code per 1024 samples
    assert codes.unique().numel() >= 10
    cond = features.conditioning_mels(wav)
    assert cond.shape[:3] == (1, 1, 80)


def test_model_source_resolution(tmp_path, monkeypatch):
    assert looks_like_hub_id("coqui/XTTS-v2")
    assert not looks_like_hub_id("./models/tiny") and not looks_like_hub_id("/abs/dir/x")
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.pth, vocab.json"):
        resolve_model_dir(str(tmp_path / "incomplete"))
    with pytest.raises(FileNotFoundError, match="neither a directory nor a Hub id"):
        resolve_model_dir(str(tmp_path / "nothing" / "here"))


def test_offline_hub_id_fails_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from xtts_ft.cli import one_line

    with pytest.raises(RuntimeError, match="cannot fetch 'coqui/XTTS-v2' from the Hugging Face Hub") as offline:
        resolve_model_dir("coqui/XTTS-v2")
    # One fix, naming the CLI huggingface_hub installs (`hf`), and no generic tail after it.
    line = one_line(offline.value)
    assert line.count("fix:") == 1 and "`hf download coqui/XTTS-v2 --local-dir XTTS-v2`" in line, line
    assert line.endswith("model.source=/path/to/XTTS-v2 for the training stages)"), line
    # A relative path that reads like owner/name but whose folder is here (exports/nope): said as a missing folder.
    (tmp_path / "exports").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        FileNotFoundError,
        match=r"^exports/nope: no such folder here \(exports has no 'nope'\), and no model "
        r"of that name could be fetched from the Hub — fix: the path of an export",
    ):
        resolve_model_dir("exports/nope")


def test_truncated_or_altered_weights_are_named_in_the_error(tmp_path, tiny_model_dir):
    import shutil

    import pytest

    from xtts_ft.model.loading import check_weights_file, load_xtts

    check_weights_file(tiny_model_dir / "model.pth")  # intact: no error
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    data = (tiny_model_dir / "model.pth").read_bytes()
    (broken / "model.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"broken/model.pth is truncated or corrupted"):
        load_xtts(broken, "cpu")
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor
    (broken / "model.pth").write_bytes(bytes(altered))
    with pytest.raises(ValueError, match=r"broken/model.pth is corrupted: its entry .* fails its checksum"):
        load_xtts(broken, "cpu")
