import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.helpers.speech import espeak as espeak_voice
from xtts_ft.config import compose
from xtts_ft.evaluation import asr, forgetting, metrics, probes, scoring
from xtts_ft.evaluation.report import paper_metrics
from xtts_ft.stages import evaluate


def test_cer_and_wer():
    assert metrics.cer("Hello, World!", "hello world") == 0.0
    assert metrics.cer("hello world", "") == 1.0
    assert metrics.wer("the cat sat", "the cat sat down") == 1 / 3
    assert metrics.cer("abcd", "abed") == 0.25
    assert metrics.cer("Il a 6 ans.", "il a six ans", "fr") == 0.0  # the language's cleaner on both sides


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


def files_under(folder) -> dict:
    """Every file below `folder`, path -> its bytes' digest: what a run left changed or added."""
    import hashlib

    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_evaluate_stage_writes_a_table_and_report(exported, prepared, tmp_path, tiny_mms):  # noqa: F811
    """Evaluate writes under out_dir and nowhere else by default (it rewrote the card of every export it
    scored); the report says honestly what it measured."""
    cfg = compose(
        "evaluate",
        [
            f"checkpoint={exported}",
            f"manifest={prepared / 'eval.jsonl'}",
            f"out_dir={tmp_path}",
            "max_utterances=3",
            f"asr={{default: bundled, fr: {tiny_mms}}}",
        ],
    )
    before = {**files_under(exported), **files_under(prepared)}
    table = evaluate.run(cfg)
    assert {**files_under(exported), **files_under(prepared)} == before  # the export's card and record untouched
    # What its card would record is in out_dir, for `export ... metrics=<out_dir>`.
    (entry,) = json.loads((tmp_path / "metrics.json").read_text())["models"]
    assert entry["checkpoint"] == str(exported) and entry["metrics"]["per_language"]["en"]["utterances"] == 2
    from xtts_ft.model.export import sha256

    assert entry["model_sha256"] == sha256(exported / "model.pth")
    assert list(table["language"]) == ["en", "en", "fr"]
    assert (table["seconds"] > 0).all() and np.isfinite(table["rtf"]).all()
    # The tiny model's 0.28 s have no voice in them: nothing to compare, so NaN and a flag, not the
    # similarity of an empty embedding (once 0.365 for every clip of every model).
    assert table["no_speech"].all() and table["flagged"].all()
    assert table["speaker_similarity"].isna().all() and table["dnsmos"].isna().all()
    assert table["flags"].str.startswith("no_speech (no voice detected").all()
    english, french = table[table["language"] == "en"], table.iloc[2]
    assert (english["transcript"] == "").all() and (english["cer"] == 1.0).all() and english["asr_heard_nothing"].all()
    # French is scored by the CTC model configured for it (its fra adapter always says "e"), against the cleaned text.
    assert french["transcript"] == "e" and french["asr"] == f"transformers `{tiny_mms}` (fra)"
    assert french["cer"] == metrics.cer(french["text"], "e", "fr") and 0.9 < french["cer"] < 1.0
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["no_speech"].tolist() == [2, 1] and summary["asr_heard_nothing"].tolist() == [2, 0]
    assert summary["dnsmos"].isna().all()  # no clip to average, rather than the score of silence
    saved = pd.read_csv(tmp_path / "utterances.csv")
    assert len(saved) == 3 and (tmp_path / saved["wav"][0]).is_file()
    report = (tmp_path / "report.md").read_text()
    assert "Summary per model and language" in report and "Different protocols" in report
    assert "- `en`: faster-whisper `Whisper tiny.en, bundled` (en)\n- `fr`: transformers" in report
    assert "## Not measurable" in report
    assert set(table["model"]) == {exported.name} and table["flagged"].dtype == bool
    # No probe set was used: no "shipped probe sets in the voice of `None`"; indexes as columns, not tuples;
    # CER a fraction everywhere, said once, the paper's percent converted beside it.
    assert "None" not in report.split("## Summary")[0] and "voice of their own recording." in report
    assert "('" not in report and re.search(rf"\| {exported.name} +\| en +\|", report)
    assert "CER and WER are fractions" in report and "paper_cer " in report and "cer_percent" not in report


def test_text_with_characters_the_vocabulary_lacks_is_flagged(exported, prepared, tmp_path):
    """A probe whose text the model can only read as [UNK] (ɓ) is scored, but flagged for it."""
    row = json.loads((prepared / "eval.jsonl").read_text().splitlines()[0])
    (tmp_path / "wavs").mkdir()
    shutil.copy(prepared / row["audio"], tmp_path / row["audio"])
    rows = [row, {**row, "text": "ɓaawo " + row["text"]}]
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose(
        "evaluate",
        [
            f"checkpoint={exported}",
            f"manifest={tmp_path / 'probes.jsonl'}",
            f"out_dir={tmp_path / 'out'}",
            "write_metrics=false",
        ],
    )
    flags = evaluate.run(cfg)["flags"].tolist()
    assert "unknown_characters" not in flags[0]
    assert "unknown_characters ɓ (not in the vocabulary: read as [UNK])" in flags[1]


def test_dnsmos_prefers_clean_speech_to_noise(prepared):
    path = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    speech, rate = sf.read(str(path), dtype="float32")
    noise = np.random.default_rng(0).normal(0, 0.1, speech.size).astype(np.float32)
    clean, noisy = metrics.dnsmos(speech, rate), metrics.dnsmos(noise, rate)
    assert set(clean) == {"ovrl_mos", "sig_mos", "bak_mos", "p808_mos"}
    assert 2.0 < clean["ovrl_mos"] < 4.0 and noisy["ovrl_mos"] < 1.5, (clean, noisy)  # espeak-ng: robotic, not bad
    assert clean["ovrl_mos"] > noisy["ovrl_mos"] + 0.5, (clean, noisy)
    assert clean["p808_mos"] > noisy["p808_mos"] + 0.5


def espeak(text: str, voice: str = "en-us+Alicia"):
    wav = subprocess.run(["espeak-ng", "--stdout", "-v", voice, text], check=True, capture_output=True).stdout
    import io

    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return audio, rate


def test_hallucination_check_flags_babbling_and_truncation_not_clean_speech():
    text = "The birch canoe slid on the smooth planks."
    speech, rate = espeak(text)
    tail, _ = espeak("and then the boat kept going on and on across the wide blue sea for many hours until night")
    babble = np.concatenate([speech, tail])  # the right audio, then a long tail
    truncated = speech[: int(0.35 * speech.size)]
    results = {}
    for name, audio in (("clean", speech), ("babble", babble), ("truncated", truncated)):
        transcript = metrics.transcribe(audio, rate, "en")
        results[name] = metrics.hallucination_check(audio.size / rate, text, "en", transcript)
    assert not results["clean"]["flagged"], results["clean"]
    assert 0.5 < results["clean"]["text_duration_ratio"] < 2.0
    assert results["babble"]["flagged"] and results["babble"]["asr_insertions"] >= 8, results["babble"]
    assert "asr_insertions" in results["babble"]["flags"]
    assert results["truncated"]["flagged"] and results["truncated"]["asr_deletions"] >= 3, results["truncated"]
    # Without ASR the duration alone still catches a long babble.
    long_babble = np.concatenate([speech, tail, tail])
    assert "too_long" in metrics.hallucination_check(long_babble.size / rate, text, "en")["flags"]


def test_expected_seconds_follow_the_language():
    assert metrics.expected_seconds("a" * 150, "en") == pytest.approx(10.3)
    assert metrics.expected_seconds("字" * 50, "zh-cn") == pytest.approx(10.3)
    assert metrics.expected_seconds("a" * 130, "wo", {"wo": 13.0}) == pytest.approx(10.3)


def perturbed_copy(export, out, scale: float = 0.5):
    """A copy of `export` whose GPT weights are moved by seeded noise (half their spread): another model that
    says other things, the same files otherwise."""
    import torch

    shutil.copytree(export, out)
    checkpoint = torch.load(out / "model.pth", map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(1)
    for key, value in checkpoint["model"].items():
        if key.startswith("gpt.") and value.is_floating_point():
            noise = torch.randn(value.shape, generator=generator) * scale * (value.float().std().nan_to_num() + 1e-3)
            checkpoint["model"][key] = (value.float() + noise).to(value.dtype)
    torch.save(checkpoint, out / "model.pth")
    return out


def test_two_checkpoints_on_a_shipped_probe_set_with_plots(exported, prepared, tmp_path, monkeypatch):
    import dataclasses

    import soxr

    loads = []
    load_audio = scoring.load_audio
    monkeypatch.setattr(
        scoring, "load_audio", lambda path, rate: loads.append((str(path), rate)) or load_audio(path, rate)
    )
    # The tiny models' own audio has no voice in it. So that the metrics also meet speech, the first model's first
    # clip is espeak-ng (the reference's voice) reading the probe, then what the model said (one clip: DNSMOS costs
    # seconds a clip); the others are the model alone.
    spoken = {}

    class Speaking(scoring.XttsSynthesizer):
        def iter_synthesize(self, requests, *args, **kwargs):
            for i, result in super().iter_synthesize(requests, *args, **kwargs):
                spoken[(self.model_dir.name, i)] = result.wav
                if i == 0 and self.model_dir == exported:
                    speech, rate = espeak(requests[i]["text"])
                    speech = soxr.resample(speech, rate, result.sample_rate).astype(np.float32)
                    result = dataclasses.replace(result, wav=np.concatenate([speech, result.wav]))
                yield i, result

    monkeypatch.setattr(scoring, "XttsSynthesizer", Speaking)
    other = perturbed_copy(exported, tmp_path / "other")
    reference = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    cfg = compose(
        "evaluate",
        [
            f"checkpoints=[{exported},{other}]",
            "probes=short",
            f"reference={reference}",
            "languages=[en,fr]",
            "max_utterances=2",
            f"out_dir={tmp_path / 'eval'}",
        ],
    )
    cfg.checkpoints = [str(exported), str(other)]
    table = evaluate.run(cfg)
    assert list(dict.fromkeys(table["model"])) == [exported.name, "other"]
    assert len(table) == 8 and set(table["language"]) == {"en", "fr"}  # 2 models x 2 languages x 2 probes
    assert loads == [(str(reference), 16000)]  # the one reference is decoded and embedded once, not 8 times
    # The spoken clip has a voice: similarity, DNSMOS and CER are numbers, in range (espeak-ng: robotic, not bad);
    # the tiny export's own audio has none: NaN and `no_speech`, not the score of silence.
    said = table.iloc[0]
    assert table[table["model"] == exported.name]["no_speech"].tolist() == [False, True, True, True]
    assert 0.3 < said["speaker_similarity"] <= 1.0 and 1.5 < said["dnsmos"] < 4.0, said
    assert said["cer"] <= 0.5 and not said["asr_heard_nothing"], said["transcript"]
    assert (table["speaker_similarity"].isna() == table["no_speech"]).all()
    assert (table["dnsmos"].isna() == table["no_speech"]).all()
    first = sf.read(str(tmp_path / "eval" / table["wav"][0]), dtype="float32")
    assert table["speaker_similarity"][0] == pytest.approx(
        metrics.speaker_similarity(*first, *sf.read(str(reference), dtype="float32")), abs=0.02
    )
    assert table[table["language"] == "en"]["cer"].notna().all()
    # The two models said different things, and each clip was measured on its own model's audio (its loudness).
    for i in range(4):
        ours, theirs = spoken[(exported.name, i)], spoken[("other", i)]
        assert ours.size != theirs.size or np.abs(ours - theirs).max() > 1e-3
    base, tuned = (table[table["model"] == name].set_index("utterance") for name in (exported.name, "other"))
    assert (base["rms_dbfs"] != tuned["rms_dbfs"]).all()
    french = table[table["language"] == "fr"]
    # The bundled Whisper is English-only: French is reported not scored, not scored by an English model.
    assert french["cer"].isna().all() and french["transcript"].isna().all()
    assert (french["asr"] == "not scored (no ASR for fr: asr=bundled is an English-only Whisper)").all()
    for png in ("metrics.png", "durations.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(tmp_path / "eval" / "summary.csv")
    assert len(summary) == 4 and summary["utterances"].tolist() == [2, 2, 2, 2]
    report = (tmp_path / "eval" / "report.md").read_text()
    # The paper's English CER, 0.54 %, as a fraction like ours.
    assert "Beside the published XTTS v2.0.2" in report and re.search(r"\| +0\.0054 \|", report)
    assert "- `fr`: not scored (no ASR for fr: asr=bundled is an English-only Whisper)" in report
    # `other` is a sibling of the first (both from the tiny base), not its fine-tune: compared side by side,
    # never as what it "forgot"; and neither export's record was touched.
    assert "`other` is not compared with the first model: it was not fine-tuned from it (its base is " in report
    assert pd.read_csv(tmp_path / "eval" / "forgetting.csv").empty
    assert json.loads((other / "xtts_ft.json").read_text())["metrics"] == {}


def test_metrics_go_into_a_card_only_for_a_base_and_its_own_fine_tune(exported, prepared, tmp_path):
    """write_metrics=true would write "Forgetting: against the base <first>" into each later export's card:
    refused, before any synthesis, when the first is not that export's base (here a sibling export)."""
    from xtts_ft.errors import RunRefused

    other = perturbed_copy(exported, tmp_path / "other")
    reference = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    overrides = ["probes=short", f"reference={reference}", f"out_dir={tmp_path / 'eval'}", "write_metrics=true"]
    cfg = compose("evaluate", overrides)
    cfg.checkpoints = [str(exported), str(other)]
    with pytest.raises(RunRefused, match=r"but .*other was not fine-tuned from it \(its base is .*tiny-xtts\)") as err:
        evaluate.run(cfg)
    assert "put its own base first" in err.value.fix and "write_metrics=false" in err.value.fix
    assert not (tmp_path / "eval").exists()


def test_paper_numbers_ship_with_the_package():
    paper = paper_metrics()
    assert len(paper) == 16 and "hi" not in paper.index
    assert paper.loc["en", "cer_percent"] == 0.54 and paper["utmos"].between(2.5, 4.5).all()


def test_evaluate_needs_probes_and_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no model to evaluate"):
        evaluate.checkpoints(compose("evaluate", [f"out_dir={tmp_path}"]))
    with pytest.raises(ValueError, match="needs a reference recording"):
        probes.probe_rows(compose("evaluate", [f"out_dir={tmp_path}", "probes=short"]))
    with pytest.raises(ValueError, match="'long' is not a shipped probe set"):
        probes.shipped_probes("long")


def test_probes_with_nothing_to_score_are_left_out_and_said(tmp_path, prepared, caplog):
    """A manifest row whose text is only punctuation has no CER to measure: left out with a warning (it stopped
    the run after synthesis); languages= keeping no probe says which languages the probes have."""
    manifest = tmp_path / "probes.jsonl"
    (tmp_path / "wavs").mkdir()
    shutil.copy(sorted((prepared / "wavs").glob("0_*.wav"))[0], tmp_path / "wavs" / "ref.wav")
    rows = [
        {"audio": "wavs/ref.wav", "text": text, "speaker": "s", "language": "en", "duration": 1.0}
        for text in ("Hello there.", "?!...")
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING", logger="xtts_ft.evaluation.probes"):
        kept = probes.probe_rows(compose("evaluate", [f"manifest={manifest}", f"out_dir={tmp_path / 'e'}"]))
    assert [p["text"] for p in kept] == ["Hello there."]
    assert [r.getMessage() for r in caplog.records] == ["1 probe(s) have no words to score, left out: probes: '?!...'"]
    with pytest.raises(ValueError, match=r"languages=\['fr'\] keeps none of the probes \(their languages: en\)"):
        probes.probe_rows(compose("evaluate", [f"manifest={manifest}", f"out_dir={tmp_path / 'e'}", "languages=[fr]"]))


@pytest.mark.slow
def test_the_comparison_notebook_runs(exported, tiny_model_dir, prepared, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from tests.helpers.settings import REPO

    reference = sorted((prepared / "wavs").glob("0_wavs__alicia*"))[0]
    monkeypatch.setenv("XTTS_FT_CHECKPOINTS", f"{exported},{tiny_model_dir}")
    monkeypatch.setenv("XTTS_FT_REFERENCE", str(reference))
    monkeypatch.setenv("XTTS_FT_OUT", str(tmp_path / "eval"))
    notebook = nbformat.read(REPO / "notebooks" / "compare_checkpoints.ipynb", as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    audio = [o for o in outputs if "<audio" in o.get("data", {}).get("text/html", "")]
    assert len(images) == 2 and len(audio) == 2  # both plots; one player per model
    table = pd.read_csv(tmp_path / "eval" / "utterances.csv")
    assert list(dict.fromkeys(table["model"])) == [exported.name, tiny_model_dir.name] and len(table) == 6


def test_optional_metric_models_missing_give_clear_errors(tmp_path, prepared, exported):
    with pytest.raises(FileNotFoundError, match="no SpeechBrain model there"):
        metrics.speaker_similarity(
            np.zeros(16000, np.float32), 16000, np.zeros(16000, np.float32), 16000, model=str(tmp_path)
        )
    with pytest.raises(FileNotFoundError, match="no torch.hub repository there"):
        metrics.utmos(np.zeros(16000, np.float32), 16000, str(tmp_path / "SpeechMOS"))
    cfg = compose(
        "evaluate",
        [
            f"checkpoint={exported}",
            f"manifest={prepared / 'eval.jsonl'}",
            f"out_dir={tmp_path / 'e'}",
            f"utmos_model={tmp_path / 'nowhere'}",
        ],
    )
    with pytest.raises(FileNotFoundError, match="utmos_model="):
        evaluate.run(cfg)  # before any synthesis
    assert not (tmp_path / "e").exists()
    # A checkpoint that is not there (a mistyped export folder) fails before the first model's probes, saying so;
    # an out_dir that is a file too.
    (tmp_path / "exports").mkdir()
    missing = tmp_path / "exports" / "nope"
    cfg = compose(
        "evaluate",
        [f"checkpoints=[{exported},{missing}]", f"manifest={prepared / 'eval.jsonl'}", f"out_dir={tmp_path / 'e'}"],
    )
    with pytest.raises(FileNotFoundError, match=f"model source '{missing}' is neither a directory nor a Hub id"):
        evaluate.run(cfg)
    assert not (tmp_path / "e").exists()
    (tmp_path / "e").write_text("")
    with pytest.raises(ValueError, match=r"out_dir=.* is a file — fix: out_dir=<a folder>"):
        evaluate.run(
            compose(
                "evaluate",
                [f"checkpoint={exported}", f"manifest={prepared / 'eval.jsonl'}", f"out_dir={tmp_path / 'e'}"],
            )
        )


def test_metrics_say_no_speech_instead_of_scoring_silence(monkeypatch):
    """Silence, noise and a real voice through every metric: what cannot be measured is NaN
    (and `no_speech`), what can is a number that tells the three apart."""
    text = "The birch canoe slid on the smooth planks."
    voice, rate = espeak_voice(text)
    same_voice, _ = espeak_voice("Glue the sheet to the dark blue background.")
    silence = np.zeros(2 * rate, np.float32)
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * rate).astype(np.float32)

    assert metrics.speech_seconds(silence, rate) == 0.0
    assert metrics.speech_seconds(noise, rate) > 1.5  # the detector hears sound: noise is measured, and scores low
    assert 2.0 < metrics.speech_seconds(voice, rate) < voice.size / rate
    similarity = {
        name: metrics.speaker_similarity(audio, rate, same_voice, rate)
        for name, audio in (("silence", silence), ("noise", noise), ("voice", voice))
    }
    assert np.isnan(similarity["silence"])  # not the 0.35 of an empty embedding
    assert similarity["voice"] > 0.85 and similarity["noise"] < similarity["voice"] - 0.3, similarity
    assert all(np.isnan(v) for v in metrics.dnsmos(silence, rate).values())  # DNSMOS rates silence ≈ 1.8 otherwise
    assert metrics.dnsmos(voice, rate)["ovrl_mos"] > metrics.dnsmos(noise, rate)["ovrl_mos"] + 1.0

    # UTMOS is gated the same way (a stand-in model: the real one needs a download).
    import torch

    monkeypatch.setattr(metrics, "utmos_model", lambda path: lambda wav, sr: torch.tensor(3.5))
    assert np.isnan(metrics.utmos(silence, rate, "any")) and metrics.utmos(voice, rate, "any") == 3.5

    # ASR: silence is heard as nothing, which is a CER of 1 with the flag, not a missing value.
    english = asr.require("bundled", "en")
    heard = {
        name: scoring.asr_scores(audio, rate, text, "en", english)
        for name, audio in (("silence", silence), ("noise", noise), ("voice", voice))
    }
    assert heard["silence"] == {"transcript": "", "cer": 1.0, "wer": 1.0, "asr_heard_nothing": True}
    assert heard["noise"]["cer"] > 0.8 and heard["voice"]["cer"] < 0.2, heard
    assert not heard["voice"]["asr_heard_nothing"]
    # No ASR for a language: NaN that the `asr` column explains, never a score from another language's model.
    assert np.isnan(scoring.asr_scores(voice, rate, text, "fr", None)["cer"])


def test_forgetting_compares_each_fine_tune_with_the_base_on_the_base_languages():
    summary = pd.DataFrame(
        {
            "cer": [0.10, 0.30, 0.25, 0.60],
            "speaker_similarity": [0.80, 0.70, np.nan, 0.75],
            "flagged": [0.0, 0.5, 0.25, 0.5],
            "utterances": [4, 4, 4, 4],
        },
        index=pd.MultiIndex.from_tuples(
            [("base", "en"), ("base", "fr"), ("tuned", "en"), ("tuned", "wo")], names=["model", "language"]
        ),
    )
    forgotten = forgetting.forgetting(summary)
    assert forgotten[["model", "base", "language"]].values.tolist() == [
        ["tuned", "base", "en"]
    ]  # wo is new, fr not probed
    row = forgotten.iloc[0]
    assert (row["cer_base"], row["cer"], row["cer_change"]) == (0.10, 0.25, pytest.approx(0.15))
    assert row["flagged_change"] == 0.25 and np.isnan(row["speaker_similarity_change"])  # not measurable: blank, not 0
    assert forgetting.forgetting(summary.loc[["base"]]).empty
    assert "checkpoints=[<base>,<fine-tune>]" in forgetting.forgetting_md(forgetting.forgetting(summary.loc[["base"]]))


def test_base_against_fine_tune_writes_forgetting_to_report_sidecar_and_card(
    exported, tiny_model_dir, prepared, tmp_path
):
    reference = sorted((prepared / "wavs").glob("0_wavs__andy*"))[0]
    cfg = compose(
        "evaluate",
        [
            "probes=sentences",
            f"reference={reference}",
            "languages=[en]",
            "max_utterances=2",
            f"out_dir={tmp_path / 'eval'}",
            "write_metrics=true",
        ],
    )
    cfg.checkpoints = [str(tiny_model_dir), str(exported)]
    before = (exported / "xtts_ft.json").read_text()
    try:
        table = evaluate.run(cfg)
        record = json.loads((exported / "xtts_ft.json").read_text())["metrics"]
        card = (exported / "README.md").read_text()
    finally:
        (exported / "xtts_ft.json").write_text(before)  # the shared fixture stays as the other tests expect
        from xtts_ft.model.card import model_card

        (exported / "README.md").write_text(model_card(json.loads(before)))
    means = table.groupby("model")[["cer", "flagged"]].mean()
    forgotten = pd.read_csv(tmp_path / "eval" / "forgetting.csv")
    assert forgotten[["model", "base", "language"]].values.tolist() == [[exported.name, tiny_model_dir.name, "en"]]
    assert forgotten["cer_change"][0] == pytest.approx(
        means.loc[exported.name, "cer"] - means.loc[tiny_model_dir.name, "cer"]
    )
    assert forgotten["flagged_change"][0] == pytest.approx(
        means.loc[exported.name, "flagged"] - means.loc[tiny_model_dir.name, "flagged"]
    )
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"## Forgetting\n\nThe first model, `{tiny_model_dir.name}`, is the base" in report
    english = record["forgetting"]["per_language"]["en"]
    assert record["forgetting"]["base"] == str(tiny_model_dir)
    assert record["per_language"]["en"]["utterances"] == 2 and record["per_language"]["en"]["cer"] == pytest.approx(
        means.loc[exported.name, "cer"], abs=1e-4
    )
    assert english["cer_change"] == pytest.approx(forgotten["cer_change"][0], abs=1e-4) and english["utterances"] == 2
    assert (
        f"### Forgetting: against the base `{tiny_model_dir}`" in card and "| en | " in card.split("### Forgetting")[1]
    )
    asr_line = next(line for line in card.splitlines() if "ASR" in line)
    assert "ASR: en: faster-whisper `Whisper tiny.en, bundled` (en);" in asr_line  # no backticks around backticks
