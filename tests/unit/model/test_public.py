"""What of an export goes public (xtts_ft.model.public): the record with every local path replaced by a
Hub id or a name, from a record alone."""

import json

from xtts_ft.model.card import model_card
from xtts_ft.model.public import hub_id_of, public_record, public_sources

SNAPSHOT = "/home/ana/.cache/huggingface/hub/models--coqui--XTTS-v2/snapshots/" + "a" * 40


def record(tmp_path) -> dict:
    return {
        "kind": "export",
        "xtts_ft_version": "0.1.0",
        "languages": ["en", "wo"],
        "base_model": {
            "source": str(tmp_path / "models" / "wolof-extended"),
            "name": "wolof-extended",
            "kind": "released",
            "model_sha256": "ab" * 32,
            "hub_id": None,
            "revision": None,
            "derived_from": "coqui/XTTS-v2",
        },
        "training": {"run_name": "wolof", "gpt_steps": 10, "decoder_gpt": str(tmp_path / "runs/wolof/gpt/state.pt")},
        "data": {
            "train": {"clips": 3},
            "source_paths": [str(tmp_path / "corpora" / "wolof" / "a"), "corpora/wolof/b", "galsenai/wolof_tts"],
            "config": {"sources": [{"path": str(tmp_path / "corpora")}]},
        },
        "metrics": {
            "metric_models": {
                "asr": f"en: bundled; wo: transformers `{tmp_path}/mms` (wol)",
                "speaker": "resemblyzer",
            },
            "per_language": {"en": {"cer": 0.5, "utterances": 2}},
            "forgetting": {"base": str(tmp_path / "models" / "tiny-xtts"), "per_language": {}},
        },
    }


def test_the_public_record_names_places_by_hub_id_or_name(tmp_path, monkeypatch):
    (tmp_path / "corpora" / "wolof" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # `corpora/wolof/b` is a relative path that exists here
    public = public_record(record(tmp_path))
    assert str(tmp_path) not in json.dumps(public) and "corpora/wolof" not in json.dumps(public)
    assert (
        public["base_model"]["source"] == "wolof-extended" and public["base_model"]["derived_from"] == "coqui/XTTS-v2"
    )
    assert public["data"]["source_paths"] == ["wolof/a", "wolof/b", "galsenai/wolof_tts"]  # a Hub dataset id stays
    assert "config" not in public["data"] and public["training"]["decoder_gpt"] == "state.pt"
    assert public["metrics"]["metric_models"]["asr"] == "en: bundled; wo: transformers `mms` (wol)"
    assert public["metrics"]["forgetting"]["base"] == "tiny-xtts"
    card = model_card(public)
    # Extended from a Hub model: the metadata names that model; the text says the base itself is local.
    assert "base_model: coqui/XTTS-v2\n" in card and str(tmp_path) not in card
    assert "`wolof-extended` (released; model.pth sha256 `abababababab…`), made from `coqui/XTTS-v2`" in card


def test_a_base_is_known_on_the_hub_by_its_id_or_its_cache_snapshot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_id_of("coqui/XTTS-v2") == ("coqui/XTTS-v2", None)
    assert hub_id_of("/data/XTTS-v2", SNAPSHOT) == ("coqui/XTTS-v2", "a" * 40)
    (tmp_path / "models" / "tiny-xtts").mkdir(parents=True)
    assert hub_id_of("models/tiny-xtts") == (None, None)  # a folder here, not a Hub id
    assert public_sources(["/x/data/demo/en", "/x/data/demo/fr"]) == ["demo/en", "demo/fr"]
    assert public_sources(["data/demo/en"]) == ["en"]  # relative, deeper than owner/name: a place, not a Hub id
    assert public_sources(["/srv/LJSpeech-1.1"]) == ["LJSpeech-1.1"]
