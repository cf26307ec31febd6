"""One fix per error line (issue 31, item 6): a remedy written in a message's prose ("...; run
`xtts-ft train-gpt` first") used to get the CLI's generic fix appended after it, naming a literal
`<verb>`. Each remedy now travels in `UserError.fix`, and the line carries exactly one."""

import sys

import pytest

from xtts_ft import cli
from xtts_ft.cli import GENERIC_FIX, one_line


def error_line(capsys, monkeypatch, argv: list) -> str:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(lines) == 1, lines
    return lines[0]


def assert_one_fix(line: str, fix: str) -> None:
    assert line.startswith("error: ") and line.count("fix:") == 1, line
    assert "<verb>" not in line and GENERIC_FIX.split(" (")[0] not in line, line
    assert line.split(" — fix: ", 1)[1].startswith(fix), line


@pytest.mark.parametrize(
    "argv, fix",
    [
        (
            ["export", "run_name=nope", "paths.runs_dir={tmp}"],
            "run `xtts-ft train-gpt` (and/or `xtts-ft train-decoder`) first",
        ),
        (["evaluate", "checkpoint=x", "probes=sentences", "out_dir={tmp}/eval"], "reference=<audio file>"),
        (["evaluate", "checkpoint=x", "out_dir={tmp}/eval"], "give manifest=<eval.jsonl> and/or probes="),
        (["push", "export_dir={tmp}/nothing", "repo_id=me/x"], "run `xtts-ft export run_name=...` first"),
        (["train-gpt", "max_steps=-5"], "max_steps=<an integer ≥ 1>"),
        (["train-gpt", "run_name=../x"], "run_name=<a name such as mine>"),
        (["prepare", "min_seconds=20"], "make min_seconds ≤ max_seconds"),
        (["trian-gpt"], "did you mean train-gpt?"),
    ],
)
def test_a_failing_command_prints_one_line_with_one_fix(argv, fix, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # Hydra's log folder
    assert_one_fix(error_line(capsys, monkeypatch, [a.format(tmp=tmp_path) for a in argv]), fix)


def test_a_header_only_csv_prints_one_fix(capsys, monkeypatch, tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metadata.csv").write_text("audio_file|text|speaker_name\n")
    monkeypatch.chdir(tmp_path)
    line = error_line(
        capsys,
        monkeypatch,
        [
            "prepare",
            "data.name=c",
            "max_text_tokens=0",
            f"paths.processed_dir={tmp_path}/p",
            f"data.sources=[{{path: {tmp_path / 'c'}, formatter: coqui_csv, language: en}}]",
        ],
    )
    assert line.startswith("error: ") and line.count("fix:") == 1 and "<verb>" not in line, line


def test_library_refusals_carry_their_fix(tmp_path):
    """Raised below the stages (a resume refusal, an export in the way, a missing manifest): the remedy is
    the error's `fix`, and the one line says it once."""
    from xtts_ft.data.sample import read_manifest
    from xtts_ft.model.extension import check_replaceable
    from xtts_ft.train.rundir import check_fresh

    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "state.pt").write_bytes(b"")
    refusals = []
    for refuse in (
        lambda: check_fresh(tmp_path / "gpt" / "state.pt", resume=False),
        lambda: read_manifest(tmp_path / "train.jsonl"),
        lambda: check_replaceable(tmp_path / "gpt", overwrite=False),
    ):
        with pytest.raises(Exception) as raised:
            refuse()
        refusals.append(raised.value)
    fixes = [error.fix for error in refusals]
    assert fixes[0].startswith("resume=true continues it; to start over, delete ")
    assert fixes[1] == "run `xtts-ft prepare` first"
    for error in refusals:
        assert error.fix and one_line(error).count("fix:") == 1 and "<verb>" not in one_line(error)


def test_no_user_error_in_the_package_says_its_fix_only_in_prose():
    """Every raise of a UserError kind whose message reads like a remedy ("; run `xtts-ft ...` first",
    "; use ...", "; pass ...", ". Choose ...") gives it as fix= instead."""
    import ast
    import re

    from tests.helpers.settings import REPO

    kinds = {
        "UserError",
        "BadValue",
        "MissingFile",
        "FileInTheWay",
        "MissingPackage",
        "RunRefused",
        "ConfigValueError",
    }
    prose = re.compile(
        r"(; |\. )(run `|run prepare|use |pass |add |give |choose |resume |prepare the data|extend it)", re.I
    )
    found = []
    for path in sorted((REPO / "xtts_ft").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(source)):
            if not (
                isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in kinds
            ):
                continue
            if any(k.arg == "fix" for k in node.keywords) or not node.args:
                continue
            message = "".join(
                part.value
                for part in ast.walk(node.args[0])
                if isinstance(part, ast.Constant) and isinstance(part.value, str)
            )
            if prose.search(message) and "fix:" not in message:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {message[:80]}")
    assert found == []
