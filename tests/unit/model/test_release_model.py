"""The released XTTS-v2's formats, not only our tiny twin: the flagship Wolof chain (prepare → extend
`[wo]` → train-gpt → train-decoder → export → plain coqui-tts → push's file list → synth → evaluate) on a
base written by plain coqui-tts / `tokenizers` in the release's formats (tests/helpers/release_model.py), at a
small width and, marked slow, at the release's sizes; and `extend`'s vocabulary merge in either BPE
merge format."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.release_model import VOICES, build_release_like
from tests.helpers.settings import REPO
from xtts_ft.config import compose

WOLOF_DEMO = REPO / "data" / "wolof_demo"


# --- the merge formats ------------------------------------------------------------------------


def vocab_with(merges) -> dict:
    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "a": 3, "b": 4, "ab": 5, "[START]": 6, "c": 7}
    added = [
        {
            "id": i,
            "content": t,
            "special": True,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
        }
        for t, i in vocab.items()
        if t.startswith("[")
    ]
    return {"added_tokens": added, "model": {"vocab": dict(vocab), "merges": merges}}


@pytest.mark.parametrize(
    "base_merges, new_merges",
    [
        (["a b"], [["a", "b"], ["c", "a"], ["ca", "b"]]),  # the release's strings + today's pairs (the crash)
        ([["a", "b"]], ["a b", "c a", "ca b"]),  # today's pairs + strings
    ],
)
def test_merge_vocabulary_takes_either_merge_format_and_keeps_the_bases(base_merges, new_merges):
    from xtts_ft.model.extension import merge_vocabulary

    vocab_json = vocab_with(base_merges)
    before = dict(vocab_json["model"]["vocab"])
    bpe = {"vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "ca": 4, "cab": 5}, "merges": new_merges}
    added = merge_vocabulary(vocab_json, bpe, ["[wo]"])
    model = vocab_json["model"]
    assert added == ["ca", "cab", "[wo]"]
    assert all(model["vocab"][t] == i for t, i in before.items())
    assert model["vocab"]["ca"] == 8 and model["vocab"]["cab"] == 9 and model["vocab"]["[wo]"] == 10
    as_string = isinstance(base_merges[0], str)
    assert model["merges"] == (["a b", "c a", "ca b"] if as_string else [["a", "b"], ["c", "a"], ["ca", "b"]])
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(
        json.dumps(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": vocab_json["added_tokens"],
                "normalizer": None,
                "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": None,
                "decoder": None,
                "model": {"type": "BPE", **model, "unk_token": "[UNK]"},
            }
        )
    )
    assert tokenizer.encode("ca").ids == [8] and tokenizer.encode("cab").ids == [7, 5]  # merges apply in rank order


def test_a_malformed_merge_is_named():
    from xtts_ft.model.extension import merge_pair

    with pytest.raises(ValueError, match="malformed BPE merge 'ab'"):
        merge_pair("ab")


# --- the chain on a release-format base -------------------------------------------------------


def small_corpus(source: Path, dest: Path, per_speaker: int) -> Path:
    """The first clips of each speaker of a shipped coqui_csv corpus: the chain's cost is per clip."""
    header, *rows = (source / "metadata.csv").read_text(encoding="utf-8").splitlines()
    kept, count = [], {}
    for row in rows:
        speaker = row.rsplit("|", 1)[-1]
        count[speaker] = count.get(speaker, 0) + 1
        if count[speaker] <= per_speaker:
            kept.append(row)
            (dest / "wavs").mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / row.split("|", 1)[0], dest / row.split("|", 1)[0])
    (dest / "metadata.csv").write_text("\n".join([header, *kept]) + "\n", encoding="utf-8")
    return dest


def chain_overrides(tmp: Path) -> list:
    wolof = small_corpus(WOLOF_DEMO, tmp / "corpus_wo", per_speaker=5)
    english = small_corpus(REPO / "data" / "demo" / "en", tmp / "corpus_en", per_speaker=5)
    return [
        f"paths.processed_dir={tmp / 'processed'}",
        f"paths.runs_dir={tmp / 'runs'}",
        f"paths.exports_dir={tmp / 'exports'}",
        f"paths.models_dir={tmp / 'models'}",
        "data=wolof_demo",
        f"data.sources.0.path={wolof}",
        f"data.sources.1.path={english}",
    ]


def ids_of(vocab_json: dict) -> dict:
    return {**vocab_json["model"]["vocab"], **{t["content"]: t["id"] for t in vocab_json["added_tokens"]}}


def run_chain(tmp: Path, base: Path, free_disk: bool = False) -> dict:
    """The Wolof recipe's stages, as a user runs them with `model=xtts_v2 model.source=<base>`.
    Returns what each stage produced. `free_disk` removes each stage's big inputs once used."""
    from xtts_ft.stages import export, extend, prepare, push, synth, train_decoder, train_gpt

    paths = chain_overrides(tmp)
    released = ["model=xtts_v2", f"model.source={base}"]
    extended = ["model=extended"]
    out = {"prepared": prepare.run(compose("prepare", paths + released + ["decoder_copies=true"]))}
    out["extended"] = extend.run(
        compose("extend", paths + released + ["languages=[wo]", "emotions=[happy]", "bpe_vocab_size=200"])
    )
    if free_disk:
        (base / "model.pth").unlink()  # the extended base has its own copy
    train_gpt.run(
        compose(
            "train_gpt",
            paths
            + extended
            + [
                "run_name=wolof",
                "max_steps=2",
                "batch_size=2",
                "train_last_layers=1",
                "lr=1e-4",
                "eval_every=0",
                "save_every=2",
                "keep_last=1",
                "log_every=1",
                "+language_weights={en: 0.5}",
            ],
        )
    )
    train_decoder.run(
        compose(
            "train_decoder",
            paths
            + extended
            + [
                "run_name=wolof",
                "max_steps=1",
                "batch_size=1",
                "segment_samples=2048",
                "adversarial=false",
                "eval_every=0",
                "save_every=1",
                "keep_last=1",
                "log_every=1",
            ],
        )
    )
    out["export"] = export.run(compose("export", paths[:4] + ["run_name=wolof"]))
    if free_disk:
        shutil.rmtree(tmp / "runs" / "wolof")
        (out["extended"] / "model.pth").unlink()
    out["pushed"] = push.run(compose("push", paths[:4] + ["run_name=wolof", "repo_id=me/xtts-wolof", "dry_run=true"]))
    out["synth"] = synth.run(
        compose(
            "synth",
            [
                f"checkpoint={out['export']}",
                "text='Dafa baŋ. Na nga def?'",
                "language=wo",
                f"voice={VOICES[0]}",
                f"out={tmp / 'wo.wav'}",
                "device=cpu",
                "decoding.seed=0",
            ],
        )
    )
    return out


def check_chain(tmp: Path, base: Path, base_vocab: dict, base_config: dict, out: dict) -> None:
    # prepare checked the English text against the release's vocabulary and kept the Wolof for extend
    stats = json.loads((out["prepared"] / "stats.json").read_text())
    kept = {x: stats["train"]["languages"].get(x, 0) + stats["eval"]["languages"].get(x, 0) for x in ("wo", "en")}
    assert kept["wo"] == 10 and kept["en"] == 10, (kept, stats["dropped"])

    # extend: the release's merge format and every existing id kept; the new tokens after them
    new_vocab = json.loads((out["extended"] / "vocab.json").read_text(encoding="utf-8"))
    assert all(isinstance(m, str) for m in new_vocab["model"]["merges"])
    assert new_vocab["model"]["merges"][: len(base_vocab["model"]["merges"])] == base_vocab["model"]["merges"]
    old_ids, new_ids = ids_of(base_vocab), ids_of(new_vocab)
    assert all(new_ids[t] == i for t, i in old_ids.items())
    assert min(new_ids[t] for t in set(new_ids) - set(old_ids)) == max(old_ids.values()) + 1
    from xtts_ft.model.layout import read_sidecar
    from xtts_ft.model.tokenizer import tokenizer_for

    tokenizer = tokenizer_for(out["extended"], read_sidecar(out["extended"]))
    unk = tokenizer.tokenizer.token_to_id("[UNK]")
    assert "ŋ" not in (WOLOF_DEMO / "metadata.csv").read_text(encoding="utf-8")  # seeded by the cleaner's letters
    assert unk not in tokenizer.encode("Dafa baŋ.", "wo")
    config = json.loads((out["extended"] / "config.json").read_text())
    assert config["model_args"]["gpt_num_audio_tokens"] == 1026 and config["languages"][-1] == "wo"
    assert config["max_audio_len"] == float("inf")  # the release's own values carried over

    # export: the stock layout, named voices of the release carried, loadable by plain coqui-tts
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    export_dir = out["export"]
    coqui_config = XttsConfig()
    coqui_config.load_json(str(export_dir / "config.json"))
    model = Xtts(coqui_config)
    model.load_checkpoint(coqui_config, checkpoint_dir=str(export_dir), eval=True)
    assert model.speaker_manager.speaker_names == list(VOICES)
    assert model.gpt.start_text_token == old_ids["[START]"] != max(old_ids.values())
    latent, embedding = model.speaker_manager.speakers[VOICES[0]].values()
    torch.manual_seed(0)
    wav = np.asarray(model.inference("Hello there.", "en", latent, embedding, max_new_tokens=40)["wav"])
    assert wav.size > 0 and np.isfinite(wav).all()
    record = json.loads((export_dir / "xtts_ft.json").read_text())
    assert "wo" in record["languages"] and record["emotion_tokens"] == ["happy"]

    # push sends the whole export; synth speaks Wolof with the release's named voice
    assert {p.name for p in out["pushed"]} >= {
        "config.json",
        "model.pth",
        "vocab.json",
        "dvae.pth",
        "mel_stats.pth",
        "speakers_xtts.pth",
        "xtts_ft.json",
        "README.md",
    }
    import soundfile

    audio, rate = soundfile.read(out["synth"])
    assert rate == 24000 and audio.size > 0 and np.isfinite(audio).all()


@pytest.fixture(scope="module")
def release_chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("release")
    base = build_release_like(tmp / "XTTS-v2")
    base_vocab = json.loads((base / "vocab.json").read_text(encoding="utf-8"))
    base_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    return tmp, base, base_vocab, base_config, run_chain(tmp, base)


def test_the_wolof_chain_runs_on_a_base_in_the_released_formats(release_chain):
    check_chain(*release_chain)


def test_evaluate_scores_an_export_of_the_released_formats(release_chain):
    from xtts_ft.stages import evaluate

    tmp, _, _, _, out = release_chain
    evaluate.run(
        compose(
            "evaluate",
            [
                f"checkpoint={out['export']}",
                f"manifest={out['prepared'] / 'eval.jsonl'}",
                f"out_dir={tmp / 'eval'}",
                "max_utterances=2",
                "device=cpu",
            ],
        )
    )
    rows = (tmp / "eval" / "utterances.csv").read_text().splitlines()
    assert len(rows) == 3 and (tmp / "eval" / "report.md").is_file()


def test_a_dvae_of_another_size_loads_from_its_own_shapes(tmp_path, release_chain):
    """coqui's XttsConfig() default (8194 audio tokens, an 8192-code DVAE) in the stock layout."""
    from TTS.tts.layers.xtts.dvae import DiscreteVAE

    from tests.helpers.release_model import SMALL_DVAE
    from xtts_ft.model.loading import load_dvae

    _, base, _, _, _ = release_chain
    big = tmp_path / "dvae8192"
    big.mkdir()
    torch.save(DiscreteVAE(**{**SMALL_DVAE, "num_tokens": 8192}).state_dict(), big / "dvae.pth")
    shutil.copy2(base / "mel_stats.pth", big / "mel_stats.pth")
    dvae, _ = load_dvae(big, num_audio_tokens=8194)
    assert dvae.codebook.n_embed == 8192
    with pytest.raises(ValueError, match="has 8192 codes but the GPT .* gpt_num_audio_tokens=1026"):
        load_dvae(big, num_audio_tokens=1026)


@pytest.mark.slow
def test_the_wolof_chain_at_the_releases_sizes(tmp_path):
    """30 x 1024 GPT, 1024-wide decoder input, the real DVAE: the chain end to end, big files
    removed as soon as no later stage needs them."""
    base = build_release_like(tmp_path / "XTTS-v2", layers=30, width=1024, heads=16, full_dvae=True)
    base_vocab = json.loads((base / "vocab.json").read_text(encoding="utf-8"))
    base_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    out = run_chain(tmp_path, base, free_disk=True)
    check_chain(tmp_path, base, base_vocab, base_config, out)
    state = torch.load(out["export"] / "model.pth", map_location="cpu", weights_only=True)
    assert state["model"]["gpt.gpt.h.29.attn.c_attn.weight"].shape == (1024, 3072)
