"""One console (xtts_ft.console): a stage's lines are plain (no Hydra timestamps), warnings and errors are
prefixed on stderr, other libraries' INFO chatter stays off the console (kept in Hydra's log file),
progress bars are tqdm's and never share a line with a logged one, a bar with nothing to do is not
shown, the `xtts_ft` logger prints once in plain Python, the pipeline ends with one readable line, and
`web` names our `share=true`, not gradio's `share=True`."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys

import pytest
import yaml
from tqdm import tqdm

from tests.helpers.settings import DEMO, REPO
from xtts_ft.config import compose
from xtts_ft.console import ConsoleHandler, progress
from xtts_ft.errors import UserError
from xtts_ft.stages import pipeline, prepare

CLI = [sys.executable, "-m", "xtts_ft.cli"]
HYDRA_PREFIX = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[")  # Hydra's stock `[2026-...][name][INFO] - `


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def _corpus(tmp_path, clips: int):
    """The first `clips` clips of the demo's English speaker andy, as a coqui CSV corpus."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "wavs").symlink_to(DEMO / "en" / "wavs")
    header, *rows = (DEMO / "en" / "metadata.csv").read_text().splitlines()
    (corpus / "metadata.csv").write_text("\n".join([header, *[r for r in rows if r.endswith("|andy")][:clips]]) + "\n")
    return corpus


def test_a_stage_prints_plain_lines_and_keeps_whisper_quiet(tmp_path):
    """`xtts-ft prepare validate_transcripts=true`: our lines as they are, a bar over the clips heard, none
    of faster-whisper's INFO lines on the console; Hydra's log file keeps every line, timestamped."""
    sources = f"data.sources=[{{path: {_corpus(tmp_path, 2)}, formatter: coqui_csv, language: en}}]"
    overrides = ["data.name=v", sources, f"paths.processed_dir={tmp_path / 'p'}", "max_text_tokens=0"]
    result = subprocess.run(
        CLI + ["prepare", *overrides, "validate_transcripts=true"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert "prepared 1 train + 1 eval clips, dropped 0 → " + str(tmp_path / "p" / "v") in lines
    assert [line for line in lines if HYDRA_PREFIX.match(line) or not line.strip()] == []
    console = result.stdout + result.stderr
    assert "Processing audio with duration" not in console and "VAD filter" not in console
    assert "validate transcripts (en): 100%" in result.stderr and "2/2" in result.stderr
    [log_file] = (tmp_path / "runs" / ".hydra" / "prepare").glob("*/cli.log")
    logged = log_file.read_text()
    assert "[xtts_ft.stages.prepare][INFO] - prepared 1 train + 1 eval clips" in logged
    assert "[faster_whisper][INFO] - Processing audio with duration" in logged  # said, and kept off the console


def test_warnings_and_errors_are_prefixed_on_stderr_and_other_libraries_info_left_out(capsys):
    handler = ConsoleHandler()
    for name, level, message in [
        ("xtts_ft.stages.prepare", logging.INFO, "prepared 3 clips"),
        ("xtts_ft.data.text", logging.WARNING, "some numbers are left as digits"),
        ("xtts_ft.cli", logging.ERROR, "no such file"),
        ("faster_whisper", logging.INFO, "Processing audio with duration 00:03.000"),
        ("httpx", logging.INFO, "HTTP Request: GET http://127.0.0.1:7860/ 200"),
        ("transformers.modeling_utils", logging.WARNING, "weights not used"),
    ]:
        handler.handle(_record(name, level, message))
    printed = capsys.readouterr()
    assert printed.out == "prepared 3 clips\n"
    assert printed.err.splitlines() == [
        "warning: some numbers are left as digits",
        "error: no such file",
        "warning: weights not used",
    ]


def test_a_line_logged_under_a_progress_bar_has_its_own_line(capsys):
    handler = ConsoleHandler()
    with tqdm(total=10, desc="prepare audio", file=sys.stderr, mininterval=0) as bar:
        bar.update(5)
        handler.handle(_record("xtts_ft.data.dataset", logging.WARNING, "clip 3 is clipped"))
        bar.update(5)
    err = capsys.readouterr().err
    # What the terminal shows of the line the warning ends: what follows the last carriage return.
    [shown] = [line.split("\r")[-1] for line in err.split("\n") if "clip 3" in line]
    assert shown == "warning: clip 3 is clipped"
    assert "prepare audio: 100%" in err  # the bar is drawn again, and finishes


def test_the_xtts_ft_logger_prints_once_in_plain_python():
    """No logging configured: our console shows the line; once the user configures logging, theirs does,
    and ours steps aside (never twice)."""
    script = (
        "import logging, xtts_ft\n"
        "log = logging.getLogger('xtts_ft.stages.prepare')\n"
        "log.info('alone')\n"
        "logging.basicConfig(format='%(name)s: %(message)s')\n"
        "log.info('configured')\n"
        "log.warning('careful')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout == "alone\n"
    assert result.stderr == "xtts_ft.stages.prepare: configured\nxtts_ft.stages.prepare: careful\n"


def test_under_hydras_console_the_fallback_steps_aside(capsys):
    root = logging.getLogger()
    handler = ConsoleHandler()
    root.addHandler(handler)
    try:
        logging.getLogger("xtts_ft.stages.export").info("exported exports/demo")
    finally:
        root.removeHandler(handler)
    assert capsys.readouterr().out == "exported exports/demo\n"


def test_the_shipped_job_logging_has_one_console_handler_and_hydras_log_file():
    config = yaml.safe_load((REPO / "xtts_ft" / "conf" / "hydra" / "job_logging" / "xtts_ft.yaml").read_text())
    assert config["root"]["handlers"] == ["console", "file"]
    assert config["handlers"]["console"]["class"] == "xtts_ft.console.ConsoleHandler"
    assert config["handlers"]["file"]["filename"] == "${hydra.runtime.output_dir}/${hydra.job.name}.log"
    # Every verb selects it (a verb's YAML lists `console` in its defaults).
    for verb in ("prepare", "train_gpt", "export", "synth", "evaluate", "push", "web", "extend", "train_decoder"):
        text = (REPO / "xtts_ft" / "conf" / f"{verb}.yaml").read_text()
        assert re.search(r"^  - console\b", text, re.M), verb


def test_a_bar_with_nothing_to_do_is_not_shown(tmp_path, capsys):
    """A header-only metadata.csv: nothing to process, and no `0clip` bar (it was printed twice)."""
    with progress(total=0, desc="nothing") as bar:
        bar.update(0)
    sources = f"data.sources=[{{path: {_corpus(tmp_path, 0)}, formatter: coqui_csv, language: en}}]"
    with pytest.raises(UserError):
        prepare.run(
            compose("prepare", ["data.name=h", sources, f"paths.processed_dir={tmp_path}", "max_text_tokens=0"])
        )
    err = capsys.readouterr().err
    assert "0clip" not in err and "nothing" not in err


def test_the_pipeline_speaks_in_lines_without_blanks_or_raw_json(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    sources = f"data.sources=[{{path: {_corpus(tmp_path, 2)}, formatter: coqui_csv, language: en}}]"
    stage = {"stage": "prepare", "overrides": ["data.name=p", sources, "max_text_tokens=0"]}
    recipe.write_text(yaml.safe_dump({"stages": [stage], "outputs": {"prepared data": "${paths.processed_dir}/p"}}))
    cfg = compose("pipeline", [f"recipe={recipe}", f"overrides=['paths.processed_dir={tmp_path / 'p'}']"])
    pipeline.run(cfg)
    pipeline.run(cfg)
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.strip() or "{" in line or line.startswith("pipeline:")] == []
    assert lines[0] == "── prepare"
    assert re.fullmatch(r"── finished in \d+\.\d s: prepare \d+\.\d s", lines[2]), lines
    assert lines[3:5] == ["outputs:", "  prepared data:"] and lines[5].endswith("/p/p")
    assert "── nothing to run: prepare done already (force=true re-runs them)" in lines


def test_building_the_tiny_vocabulary_prints_nothing(tmp_path, capfd):
    """tokenizers' trainer wrote its own progress (three bare newlines in a pipe) to fd 1, around our lines."""
    from xtts_ft.model.tiny import build_tokenizer

    build_tokenizer(tmp_path / "vocab.json")
    assert capfd.readouterr().out == ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_web_names_our_share_setting_not_gradios(capsys):
    gr = pytest.importorskip("gradio")
    from xtts_ft.serving.web import launch

    with gr.Blocks(analytics_enabled=False) as app:
        gr.Markdown("hello")
    port = _free_port()
    try:
        launch(app, "127.0.0.1", port, False, prevent_thread_lock=True)
    finally:
        app.close()
    printed = capsys.readouterr()
    assert "share=True" not in printed.out + printed.err  # gradio's "set `share=True` in `launch()`"
    assert f"starting the page at http://127.0.0.1:{port} (Ctrl-C stops it); share=true adds" in printed.out
