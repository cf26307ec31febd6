"""`xtts-ft push`: what goes to the Hub and what comes back. The round trip runs through
huggingface_hub itself against a local stand-in for the Hub (tests/helpers/fake_hub.py, real HTTP on
localhost); the other tests replace single HfApi calls; offline behaviour is tested against an
address that refuses."""

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers.fake_hub import FakeHub
from tests.helpers.fake_hub import hub_error as _hub_error
from tests.helpers.settings import REPO, demo_overrides
from xtts_ft.config import compose
from xtts_ft.errors import MissingFile, RunRefused
from xtts_ft.model.layout import ADAPTER_FILES, EXPORT_FILES
from xtts_ft.stages import export, push, synth

SECRET = "hf_notARealTokenButSecret123"


def _cfg(workdir, *extra):
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    return compose("push", paths + ["run_name=demo", "repo_id=someone/xtts-demo", *extra])


@pytest.fixture(scope="module")
def full_export(tmp_path_factory, workdir, trained, prepared):
    """An export with every optional file: a named voice, emotion presets, safetensors."""
    alicia = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    other = sorted((prepared / "wavs").glob("0_wavs__*.wav"))[-1]
    out = tmp_path_factory.mktemp("full") / "export"
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    return export.run(
        compose(
            "export",
            paths
            + [
                "run_name=demo",
                f"out_dir={out}",
                "safetensors=true",
                f"+voices={{alicia: {alicia}}}",
                f"+emotions={{happy: {alicia}, sad: {other}}}",
            ],
        )
    )


@pytest.fixture
def no_repo(monkeypatch):
    """repo_info as the Hub answers for a repo that does not exist yet."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    def repo_info(self, repo_id, **kw):
        raise _hub_error(
            RepositoryNotFoundError, 404, f"404 Client Error. Repository Not Found for url: .../{repo_id}"
        )

    monkeypatch.setattr(HfApi, "repo_info", repo_info)


def _existing_repo(monkeypatch, private: bool):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: type("Info", (), {"private": private})())


def test_every_file_of_an_export_survives_push_and_download(full_export, workdir, tmp_path, monkeypatch, capsys):
    """Push → the Hub → snapshot_download (through our Hub-id loading) gives back every file of the
    export byte for byte, and synth with a named voice and an emotion preset works on the Hub id."""
    import huggingface_hub.hf_api as hf_api
    from huggingface_hub import constants

    on_disk = sorted(p.name for p in full_export.iterdir())
    # Every kind of file an export may hold, but a LoRA adapter's (tests/stages/test_lora.py pushes those).
    assert on_disk == sorted(set(EXPORT_FILES) - set(ADAPTER_FILES))
    # The stand-in speaks the Hub's plain-HTTP protocol, not its Xet storage: huggingface_hub's
    # single-commit upload (what it does without hf_xet) is the path exercised.
    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with FakeHub() as hub:
        push.run(_cfg(workdir, f"export_dir={full_export}", f"endpoint={hub.endpoint}"))
        assert sorted(hub.repos["someone/xtts-demo"]["files"]) == on_disk and hub.repos["someone/xtts-demo"]["private"]
        # Downloading the Hub id goes wherever HF_ENDPOINT points, into the HF cache.
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        out = synth.run(
            compose(
                "synth",
                [
                    "checkpoint=someone/xtts-demo",
                    "text=Hello there.",
                    "language=en",
                    "voice=alicia",
                    "emotion=happy",
                    f"out={tmp_path / 'hub.wav'}",
                    "device=cpu",
                ],
            )
        )
    downloaded = next((tmp_path / "hf_cache").glob("models--someone--xtts-demo/snapshots/*"))
    assert sorted(p.name for p in downloaded.iterdir()) == on_disk
    for name in on_disk:  # the card and the record go in their public form (no local path: the test below)
        if name not in ("README.md", "xtts_ft.json"):
            assert (downloaded / name).read_bytes() == (full_export / name).read_bytes(), name
    # The same request on the local export gives the same audio: nothing was lost on the way.
    local = synth.run(
        compose(
            "synth",
            [
                f"checkpoint={full_export}",
                "text=Hello there.",
                "language=en",
                "voice=alicia",
                "emotion=happy",
                f"out={tmp_path / 'local.wav'}",
                "device=cpu",
            ],
        )
    )
    hub_wav, local_wav = sf.read(out)[0], sf.read(local)[0]
    assert hub_wav.size > 0 and np.array_equal(hub_wav, local_wav)
    assert SECRET not in capsys.readouterr().out


def test_dry_run_lists_the_files_and_the_card(workdir, full_export, no_repo, capsys):
    files = push.run(_cfg(workdir, f"export_dir={full_export}", "dry_run=true"))
    assert [f.name for f in files] == [
        n for n in EXPORT_FILES if n not in ADAPTER_FILES
    ]  # the presets and safetensors included
    out = capsys.readouterr().out
    assert "would push to https://huggingface.co/someone/xtts-demo (a new private repo, branch main)" in out
    assert "emotions_xtts.pth" in out and "pipeline_tag: text-to-speech" in out


def test_an_existing_public_repo_is_not_called_private(workdir, exported, monkeypatch, capsys):
    from huggingface_hub import HfApi

    _existing_repo(monkeypatch, private=False)
    push.run(_cfg(workdir, "dry_run=true"))
    out = capsys.readouterr().out
    assert "(the existing public repo, branch main)" in out and "private" not in out.split("\n")[0]
    assert "but the push would be refused: someone/xtts-demo exists and is public, but private=true" in out
    # The real push refuses before sending anything.
    sent = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **kw: sent.append("create_repo"))
    monkeypatch.setattr(HfApi, "create_commit", lambda self, **kw: sent.append("create_commit"))
    with pytest.raises(RunRefused, match="pushing would publish this model. Pass private=false"):
        push.run(_cfg(workdir))
    assert sent == []
    # Asked for public, it goes ahead; an existing private repo stays private and the output says so.
    push.run(_cfg(workdir, "private=false"))
    _existing_repo(monkeypatch, private=True)
    push.run(_cfg(workdir, "private=false"))
    assert sent == ["create_repo", "create_commit"] * 2
    assert (
        "the existing private repo (private=False does not change an existing repo: it stays private)"
        in capsys.readouterr().out
    )


def test_push_sends_the_export_and_never_shows_the_token(workdir, exported, no_repo, monkeypatch, capsys):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", SECRET)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(
        HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("create_branch", repo_id, kw))
    )

    def create_commit(self, **kw):
        calls.append(("create_commit", kw["repo_id"], kw))
        return type("Commit", (), {"commit_url": "https://huggingface.co/someone/xtts-demo/commit/abc"})()

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    push.run(_cfg(workdir, "revision=v1", "private=false"))
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "create_commit"]
    assert calls[0][2]["private"] is False and calls[0][2]["exist_ok"] is True
    assert calls[1][2]["branch"] == "v1"
    upload = calls[2][2]
    # Exactly the files this export has (it has no presets, voices file aside, nor safetensors).
    sent = {op.path_in_repo: op.path_or_fileobj for op in upload["operations"]}
    assert sorted(sent) == sorted(p.name for p in exported.iterdir()) and upload["revision"] == "v1"
    assert sent["model.pth"] == str(exported / "model.pth")  # the weights as they are; the card rewritten
    assert sent["README.md"].startswith(b"---\n")
    out = capsys.readouterr()
    assert f"pushed {len(list(exported.iterdir()))} files" in out.out and SECRET not in out.out + out.err


def test_the_token_never_goes_over_plain_http(workdir, exported, monkeypatch):
    from huggingface_hub import HfApi, constants

    sent = []
    monkeypatch.setattr(HfApi, "repo_info", lambda self, *a, **kw: sent.append("repo_info"))
    with pytest.raises(
        ValueError, match=r"Hub endpoint http://hub.example.com is not https: the token would be sent in clear text"
    ):
        push.run(_cfg(workdir, "endpoint=http://hub.example.com/"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example.org")  # HF_ENDPOINT=http://...
    with pytest.raises(ValueError, match=r"http://mirror.example.org is not https"):
        push.run(_cfg(workdir, "dry_run=true"))
    assert sent == []


def test_a_programming_error_is_not_reported_as_the_network(workdir, exported, no_repo, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **kw: None)

    def broken(self, **kw):
        raise TypeError("create_commit() got an unexpected keyword argument 'operation'")

    monkeypatch.setattr(HfApi, "create_commit", broken)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        push.run(_cfg(workdir))


def test_refused_credentials_say_log_in(workdir, exported, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    def unauthorized(self, *a, **kw):
        raise _hub_error(HfHubHTTPError, 401, "401 Client Error: Unauthorized")

    monkeypatch.setattr(HfApi, "repo_info", unauthorized)
    with pytest.raises(
        RunRefused, match=r"failed \(HfHubHTTPError: 401 Client Error: Unauthorized\). Fix: log in with"
    ):
        push.run(_cfg(workdir))


def test_offline_push_fails_fast_with_a_clear_message(workdir, exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(
        RunRefused, match=r"push to http://127.0.0.1:9/someone/xtts-demo failed .*Fix: check the network"
    ) as err:
        push.run(_cfg(workdir, "endpoint=http://127.0.0.1:9"))
    assert SECRET not in str(err.value)


def test_pushing_something_that_is_not_an_export_is_refused(tmp_path, workdir):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="is not an XTTS-v2 model directory: missing"):
        push.run(_cfg(workdir, f"export_dir={tmp_path / 'half'}"))
    with pytest.raises(MissingFile, match="export .*nothing does not exist$"):
        push.run(_cfg(workdir, f"export_dir={tmp_path / 'nothing'}"))


def test_a_download_with_a_token_never_goes_over_plain_http(monkeypatch, tmp_path):
    """model.source=<owner/name> downloads with the user's token: not to a plain-http mirror elsewhere;
    without a token (a public mirror) the download is attempted and fails only on the network."""
    import huggingface_hub
    from huggingface_hub import constants

    from xtts_ft.model.loading import resolve_model_dir

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: asked.append(kw) or str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example.org")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with pytest.raises(
        ValueError, match=r"http://mirror.example.org is not https: the token would be sent in clear text"
    ):
        resolve_model_dir("owner/model")
    assert asked == []
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    assert resolve_model_dir("owner/model") == tmp_path and asked[0]["repo_id"] == "owner/model"


def _push_to(hub, monkeypatch, workdir, export_dir, *extra):
    """A real push through huggingface_hub to the local stand-in (its plain-HTTP single-commit path)."""
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api, "is_xet_available", lambda: False)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    return push.run(_cfg(workdir, f"export_dir={export_dir}", f"endpoint={hub.endpoint}", *extra))


def _local_places(workdir, export_dir) -> set:
    """Paths of this machine a pushed file must not hold: the tests' tmp folder, the export's folder, the
    checkout (the working directory, where data/demo lies), the home, and the repo's relative paths."""
    places = {str(workdir), str(export_dir.resolve().parent), str(REPO), os.getcwd(), "models/tiny-xtts", "data/demo"}
    if len(Path.home().parts) > 2:  # /root (a container's home) is too short to tell from chance bytes
        places.add(str(Path.home()))
    return places


def _readable(data: bytes) -> list:
    """A file's bytes, and each member of a zip (a torch file: its pickle holds any string the file keeps)."""
    parts = [data]
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            parts += [archive.read(name) for name in archive.namelist()]
    return parts


def test_nothing_pushed_holds_a_path_of_this_machine(full_export, workdir, monkeypatch):
    """Every file that reaches the Hub, text or binary (model.pth's pickle included), is free of this machine's
    paths: the base is named by Hub id or name (no `base_model: <a local path>`), the corpus by name."""
    with FakeHub() as hub:
        _push_to(hub, monkeypatch, workdir, full_export)
        sent = hub.repos["someone/xtts-demo"]["files"]
    assert sorted(sent) == sorted(p.name for p in full_export.iterdir())
    places = _local_places(workdir, full_export)
    for name, data in sent.items():
        leaks = [place for place in places if any(place.encode() in part for part in _readable(data))]
        assert not leaks, f"{name} holds {leaks}"
    record = json.loads(sent["xtts_ft.json"])
    assert record["base_model"]["source"] == "tiny-xtts" and record["base_model"]["hub_id"] is None
    assert record["data"]["source_paths"] == ["demo/en", "demo/fr"]  # relative to the corpus root
    card = sent["README.md"].decode()
    assert "base_model:" not in card and "`tiny-xtts` (tiny-random; model.pth sha256 `" in card
    # The export folder itself keeps its provenance, for later local loads.
    assert json.loads((full_export / "xtts_ft.json").read_text())["base_model"]["source"] == str(
        workdir / "models" / "tiny-xtts"
    )


@pytest.fixture
def adapter_export(tmp_path, exported, tiny_model_dir):
    """`exported` dressed as an `adapter=true` export whose base came from the Hub (`someone/tiny-base`, the tiny
    model's hash): PEFT's two files beside it and the record's `adapter`, as export writes them."""
    import shutil

    from safetensors.torch import save_file

    out = tmp_path / "lora"
    shutil.copytree(exported, out)
    record = json.loads((out / "xtts_ft.json").read_text())
    record["base_model"].update(source="someone/tiny-base", hub_id="someone/tiny-base", revision=None)
    record["adapter"] = {
        "format": "peft-lora",
        "files": list(ADAPTER_FILES),
        "base_model": {"source": "someone/tiny-base", "model_sha256": record["base_model"]["model_sha256"]},
        **{"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["c_attn"], "train_heads": False},
    }
    (out / "xtts_ft.json").write_text(json.dumps(record))
    config = {"peft_type": "LORA", "r": 4, "base_model_name_or_path": str(tiny_model_dir)}
    (out / "adapter_config.json").write_text(json.dumps(config))
    save_file({"lora_A": torch.zeros(4, 2)}, str(out / "adapter_model.safetensors"))
    return out


def _snippet_calls_fit_the_api(snippet: str) -> None:
    """The card's Python runs its import, and its calls bind to XttsSynthesizer's and synthesize's signatures."""
    import ast
    import inspect

    from xtts_ft.inference import XttsSynthesizer

    tree = ast.parse(snippet)
    calls = {
        (c.func.id if isinstance(c.func, ast.Name) else c.func.attr): c
        for c in ast.walk(tree)
        if isinstance(c, ast.Call)
    }
    assert set(calls) == {"XttsSynthesizer", "synthesize"}, snippet
    for name, target, bound in (
        ("XttsSynthesizer", XttsSynthesizer, ()),
        ("synthesize", XttsSynthesizer.synthesize, (0,)),
    ):
        call = calls[name]
        inspect.signature(target).bind(
            *bound,
            *[ast.literal_eval(a) for a in call.args],
            **{k.arg: ast.literal_eval(k.value) for k in call.keywords},
        )
    exec(compile(ast.Module([tree.body[0]], []), "card", "exec"), {})  # from xtts_ft import XttsSynthesizer


def test_an_adapter_export_pushes_the_adapter_alone_with_a_card_that_loads_it(
    adapter_export, exported, workdir, monkeypatch
):
    with FakeHub() as hub:
        _push_to(hub, monkeypatch, workdir, adapter_export)
        sent = hub.repos["someone/xtts-demo"]["files"]
        # adapter_only=false: the merged model too; the adapter's base not on the Hub: everything, and it says why.
        assert "model.pth" in [
            f.name for f in _push_to(hub, monkeypatch, workdir, adapter_export, "dry_run=true", "adapter_only=false")
        ]
        record = json.loads((adapter_export / "xtts_ft.json").read_text())
        record["base_model"].update(source=str(exported), hub_id=None)
        (adapter_export / "xtts_ft.json").write_text(json.dumps(record))
        assert "model.pth" in [f.name for f in _push_to(hub, monkeypatch, workdir, adapter_export, "dry_run=true")]
        with pytest.raises(ValueError, match="adapter_only=true: .* has no LoRA adapter"):
            _push_to(hub, monkeypatch, workdir, exported, "dry_run=true", "adapter_only=true")
        # A file that would still publish a path of this machine stops the push, naming it.
        (adapter_export / "config.json").write_text(json.dumps({"output_path": str(workdir / "runs")}))
        with pytest.raises(RunRefused, match=r"config.json of .* holds .*, a path of this machine"):
            _push_to(hub, monkeypatch, workdir, adapter_export, "dry_run=true")
    assert sorted(sent) == sorted([*ADAPTER_FILES, "xtts_ft.json", "README.md"])  # not the 1.8 GB model.pth
    assert json.loads(sent["adapter_config.json"])["base_model_name_or_path"] == "someone/tiny-base"
    card = sent["README.md"].decode()
    sha = json.loads(sent["xtts_ft.json"])["adapter"]["base_model"]["model_sha256"]
    assert "base_model: someone/tiny-base\n" in card and "# demo — XTTS-v2 LoRA adapter" in card
    assert f"`someone/tiny-base` (tiny-random; model.pth sha256 `{sha[:12]}…`)" in card
    assert "This repo holds only the adapter" in card and "## Use with coqui-tts" not in card
    snippet = card.split("```python\n")[1].split("```")[0]
    assert 'XttsSynthesizer("someone/tiny-base", adapter="someone/xtts-demo")' in snippet
    _snippet_calls_fit_the_api(snippet)
