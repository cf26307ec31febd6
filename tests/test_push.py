"""`xtts-ft push`: what goes to the Hub. The network boundary (huggingface_hub's HfApi calls) is
replaced in these tests only; offline behaviour is tested against an address that refuses."""

import pytest

from tests.conftest import demo_overrides
from xtts_ft import push
from xtts_ft.config import compose

SECRET = "hf_notARealTokenButSecret123"


def _cfg(workdir, *extra):
    paths = [o for o in demo_overrides(workdir) if o.startswith("paths.")]
    return compose("push", paths + ["run_name=demo", "repo_id=someone/xtts-demo", *extra])


EXPECTED = {"config.json", "model.pth", "vocab.json", "dvae.pth", "mel_stats.pth", "speakers_xtts.pth", "xtts_ft.json", "README.md"}


def test_dry_run_lists_the_files_and_the_card(workdir, exported, capsys):
    files = push.run(_cfg(workdir, "dry_run=true"))
    assert {f.name for f in files} == EXPECTED
    out = capsys.readouterr().out
    assert "would push to https://huggingface.co/someone/xtts-demo (private, branch main)" in out
    assert "pipeline_tag: text-to-speech" in out and "model.pth" in out


def test_push_sends_the_export_and_never_shows_the_token(workdir, exported, monkeypatch, capsys):
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_TOKEN", SECRET)
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("create_branch", repo_id, kw)))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw))
        return type("Commit", (), {"commit_url": "https://huggingface.co/someone/xtts-demo/commit/abc"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    push.run(_cfg(workdir, "revision=v1", "private=false"))
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["private"] is False and calls[0][2]["exist_ok"] is True
    assert calls[1][2]["branch"] == "v1"
    upload = calls[2][2]
    assert set(upload["allow_patterns"]) == EXPECTED and upload["revision"] == "v1"
    assert upload["folder_path"] == str(exported)
    out = capsys.readouterr()
    assert "pushed 8 files" in out.out and SECRET not in out.out + out.err


def test_offline_push_fails_fast_with_a_clear_message(workdir, exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    with pytest.raises(RuntimeError, match=r"push to http://127.0.0.1:9/someone/xtts-demo failed") as err:
        push.run(_cfg(workdir, "endpoint=http://127.0.0.1:9"))
    assert SECRET not in str(err.value)


def test_pushing_something_that_is_not_an_export_is_refused(tmp_path, workdir):
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="is not an XTTS-v2 model directory: missing"):
        push.run(_cfg(workdir, f"export_dir={tmp_path / 'half'}"))
    with pytest.raises(FileNotFoundError, match="does not exist; run `xtts-ft export"):
        push.run(_cfg(workdir, f"export_dir={tmp_path / 'nothing'}"))
