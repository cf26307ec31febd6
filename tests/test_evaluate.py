import numpy as np
import pandas as pd
import soundfile as sf

from xtts_ft import evaluate, metrics
from xtts_ft.config import compose


def test_cer_and_wer():
    assert metrics.cer("Hello, World!", "hello world") == 0.0
    assert metrics.cer("hello world", "") == 1.0
    assert metrics.wer("the cat sat", "the cat sat down") == 1 / 3
    assert metrics.cer("abcd", "abed") == 0.25


def test_speaker_similarity_separates_voices(prepared):
    def clip(pattern, index):
        path = sorted((prepared / "wavs").glob(pattern))[index]
        audio, rate = sf.read(str(path), dtype="float32")
        return audio, rate

    a1, a2, b = clip("0_wavs__alicia*", 0), clip("0_wavs__alicia*", 1), clip("1_wavs__annie*", 0)
    same = metrics.speaker_similarity(*a1, *a2)
    different = metrics.speaker_similarity(*a1, *b)
    assert same > different + 0.05
    assert 0.5 < same <= 1.0


def test_evaluate_stage_writes_a_table_and_report(exported, prepared, tmp_path):
    cfg = compose("evaluate", [f"checkpoint={exported}", f"manifest={prepared / 'eval.jsonl'}", f"out_dir={tmp_path}", "max_utterances=3"])
    table = evaluate.run(cfg)
    assert list(table["language"]) == ["en", "en", "fr"]
    assert (table["seconds"] > 0).all() and np.isfinite(table["rtf"]).all()
    assert table["speaker_similarity"].between(-1, 1).all()
    assert table["dnsmos"].between(1, 5).all()
    english = table[table["language"] == "en"]
    assert english["cer"].notna().all() and (english["cer"] >= 0).all()
    # The bundled Whisper is English-only: French is not scored rather than scored wrongly.
    assert np.isnan(table[table["language"] == "fr"]["cer"]).all()
    saved = pd.read_csv(tmp_path / "utterances.csv")
    assert len(saved) == 3 and (tmp_path / saved["wav"][0]).is_file()
    report = (tmp_path / "report.md").read_text()
    assert "Summary per language" in report and "not the XTTS paper's models" in report


def test_dnsmos_prefers_clean_speech_to_noise(prepared):
    path = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    speech, rate = sf.read(str(path), dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.1, speech.size).astype(np.float32)
    clean, noisy = metrics.dnsmos(speech, rate), metrics.dnsmos(noise, rate)
    assert set(clean) == {"ovrl_mos", "sig_mos", "bak_mos", "p808_mos"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["ovrl_mos"] > noisy["ovrl_mos"] + 0.5, (clean, noisy)
    assert clean["p808_mos"] > noisy["p808_mos"] + 0.5
