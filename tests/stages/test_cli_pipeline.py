import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.helpers.settings import DEMO, REPO, demo_overrides
from xtts_ft.config import compose
from xtts_ft.stages import pipeline

CLI = [sys.executable, "-m", "xtts_ft.cli"]


def test_help_lists_every_verb():
    from xtts_ft.cli import VERBS
    from xtts_ft.config import STAGES

    result = subprocess.run(CLI + ["--help"], capture_output=True, text=True, check=True)
    listed = result.stdout.split("verbs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split()[0] for line in listed] == list(VERBS)
    # Every stage module has its verb, and every verb runs a stage (`demo`: the pipeline with recipe=demo).
    modules = {path.stem for path in (REPO / "xtts_ft" / "stages").glob("*.py") if path.stem != "__init__"}
    assert set(STAGES) == modules  # the registry xtts_ft.stages.load reaches them by
    assert {verb.replace("-", "_") for verb in VERBS if verb != "demo"} == modules


def test_unknown_verb_fails():
    result = subprocess.run(CLI + ["train-everything"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown verb" in result.stderr


def test_stage_runs_through_hydra_cli(tmp_path):
    overrides = [o for o in demo_overrides(tmp_path) if not o.startswith("paths.models")]
    result = subprocess.run(CLI + ["prepare", *overrides], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "prepared 37 train + 3 eval clips, dropped 2" in result.stdout
    assert (tmp_path / "processed" / "demo" / "stats.json").is_file()
    assert list((tmp_path / "runs" / ".hydra" / "prepare").iterdir())  # Hydra's logs, not ./outputs
    assert not (tmp_path / "outputs").exists()


def test_pipeline_runs_a_recipe_then_skips_finished_stages(tmp_path, workdir, tiny_model_dir):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"stage": "prepare", "overrides": ["data=demo"]},
                    {
                        "stage": "train_gpt",
                        "overrides": ["data=demo", "model=tiny", "run_name=p", "max_steps=2", "batch_size=2"],
                    },
                    {"stage": "export", "overrides": ["run_name=p"]},
                ]
            }
        )
    )
    extra = demo_overrides(tmp_path)[:2] + [
        f"paths.processed_dir={tmp_path / 'processed'}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        f"paths.exports_dir={tmp_path / 'exports'}",
        f"paths.models_dir={tiny_model_dir.parent}",
    ]
    cfg = compose("pipeline", [f"recipe={recipe}", f"overrides={json.dumps(extra)}"])
    first = pipeline.run(cfg)
    assert [s["skipped"] for s in first] == [False, False, False]
    assert (tmp_path / "exports" / "p" / "model.pth").is_file()
    second = pipeline.run(cfg)
    assert [s["skipped"] for s in second] == [True, True, True]
    # Training further (max_steps reaches only train_gpt) makes the export stale: it re-runs.
    longer = compose("pipeline", [f"recipe={recipe}", f"overrides={json.dumps(extra + ['max_steps=3'])}"])
    third = pipeline.run(longer)
    assert [s["skipped"] for s in third] == [True, False, False]
    # force=true runs every stage again and reaches prepare's own force (a rebuild, not "up to date"); the
    # finished training run is continued (resume), never deleted.
    stats, state = tmp_path / "processed" / "demo" / "stats.json", tmp_path / "runs" / "p" / "gpt" / "state.pt"
    before = (stats.stat().st_mtime_ns, state.stat().st_mtime_ns)
    forced = compose(
        "pipeline", [f"recipe={recipe}", "force=true", f"overrides={json.dumps(extra + ['max_steps=3'])}"]
    )
    assert [c.force for stage, _, c in pipeline.plan(forced) if stage == "prepare"] == [True]
    fourth = pipeline.run(forced)
    assert [s["skipped"] for s in fourth] == [False, False, False]
    assert stats.stat().st_mtime_ns != before[0] and state.is_file()


def test_pipeline_force_leaves_a_stage_force_the_recipe_set(tmp_path):
    """force=true reaches prepare, unless the recipe's (or the user's) overrides set prepare's force already:
    no contradictory `force=false force=true` pair, the recipe's word stands."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "stages": [
                    {"stage": "prepare", "overrides": ["data=demo", "force=false"]},
                    {"stage": "prepare", "overrides": ["data=demo"]},
                ]
            }
        )
    )
    planned = pipeline.plan(compose("pipeline", [f"recipe={recipe}", "force=true"]))
    assert [
        (o.count("force=true") + o.count("force=false"), c.force)
        for _, o, c in ((stage, " ".join(overrides), c) for stage, overrides, c in planned)
    ] == [(1, False), (1, True)]


def test_demo_help_lists_recipes():
    result = subprocess.run(CLI + ["demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "recipes: demo" in result.stdout


def test_unknown_recipe_lists_known_ones():
    with pytest.raises(FileNotFoundError, match="known recipes: demo"):
        pipeline.load_recipe("nope")


@pytest.mark.slow
def test_demo_end_to_end_from_a_clean_directory(tmp_path):
    """What `make demo` leaves behind, checked as a new user would."""
    (tmp_path / "data").mkdir()
    os.symlink(DEMO, tmp_path / "data" / "demo")
    result = subprocess.run(CLI + ["demo"], capture_output=True, text=True, cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]

    wav, rate = sf.read(str(tmp_path / "runs" / "demo" / "synth" / "alicia.wav"), dtype="float32")
    assert rate == 24000 and np.isfinite(wav).all() and np.abs(wav).max() > 0.01
    text = "The birch canoe slid on the smooth planks."
    assert 0.3 < wav.size / rate <= 2.0 + 0.25 * len(text)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "runs" / "demo" / "gpt" / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])

    processed = tmp_path / "data" / "processed" / "demo"
    assert (processed / "dropped.jsonl").read_text().count("\n") == 2
    assert json.loads((processed / "stats.json").read_text())["train"]["clips"] == 37
    report = (tmp_path / "runs" / "demo" / "eval" / "report.md").read_text()
    assert "Summary per model and language" in report and "Beside the published XTTS v2.0.2" in report
    assert "| en |" in (tmp_path / "exports" / "demo" / "README.md").read_text()  # evaluate filled the card

    # A separate process loads the export with plain coqui-tts.
    export = tmp_path / "exports" / "demo"
    check = (
        "from TTS.tts.configs.xtts_config import XttsConfig\n"
        "from TTS.tts.models.xtts import Xtts\n"
        f"c = XttsConfig(); c.load_json('{export}/config.json'); m = Xtts(c)\n"
        f"m.load_checkpoint(c, checkpoint_dir='{export}', eval=True); print('LOADED', len(m.gpt.gpt.h))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert "LOADED 2" in loaded.stdout, loaded.stderr[-2000:]

    again = subprocess.run(CLI + ["demo"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already, skipping") == 5


def test_hydra_flags_and_overrides_are_separated():
    from xtts_ft.cli import split_hydra_args

    options, overrides = split_hydra_args(["a=1", "--cfg", "job", "b=2", "-m", "--info", "defaults"])
    assert options == ["--cfg", "job", "-m", "--info", "defaults"]
    assert overrides == ["a=1", "b=2"]


def test_cfg_job_prints_the_resolved_config():
    result = subprocess.run(
        CLI + ["synth", "checkpoint=x", "--cfg", "job", "text=hi", "reference=r.wav"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "checkpoint: x" in result.stdout and "reference: r.wav" in result.stdout


# --- nothing silently wrong on the command line ------------------------------------------------


def _no_stage_may_run(monkeypatch):
    """Every stage's run() fails the test: what calls one is caught."""
    import importlib

    from xtts_ft.config import STAGES

    for stage in STAGES[:-1]:
        module = importlib.import_module(f"xtts_ft.stages.{stage}")
        monkeypatch.setattr(module, "run", lambda cfg, stage=stage: pytest.fail(f"{stage} ran"))


def test_pipeline_override_no_stage_has_is_an_error_naming_close_keys(tmp_path):
    # Was: dropped silently, and the recipe ran.
    result = subprocess.run(
        CLI + ["pipeline", "recipe=demo", "overrides=['max_step=5']"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: override 'max_step=5' matches no key of any stage of recipe 'demo' — fix: correct the key "
        "(did you mean max_steps or max_seconds or warmup_steps?)"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written


def test_pipeline_checks_dotted_keys_not_only_their_group(monkeypatch):
    from xtts_ft.config import ConfigValueError

    _no_stage_may_run(monkeypatch)
    cfg = compose("pipeline", ["recipe=demo", "overrides=['paths.runs_dirr=/x']"])
    with pytest.raises(ConfigValueError, match="did you mean paths.runs_dir"):
        pipeline.run(cfg)


# The stage verbs all go through one Hydra entry (run_stage), the pipeline verbs through run_pipeline:
# every flag on one stage verb and both pipeline verbs, and --cfg job on every verb.
FLAG_CASES = [
    (verb, flags) for verb in ("synth", "pipeline", "demo") for flags in (["--cfg", "job"], ["--help"], ["--info"])
]
FLAG_CASES += [
    (verb, ["--cfg", "job"])
    for verb in ("prepare", "extend", "train-gpt", "train-decoder", "export", "web", "evaluate", "push")
]


@pytest.mark.parametrize("verb, flags", FLAG_CASES)
def test_cfg_help_and_info_never_run_a_stage(verb, flags, monkeypatch, capsys):
    from xtts_ft import cli

    _no_stage_may_run(monkeypatch)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the stage verbs hand Hydra their arguments through it
    try:
        cli.main([verb, *(["recipe=demo"] if verb == "pipeline" else []), *flags])
    except SystemExit as stop:  # Hydra's --help exits 0
        assert stop.code in (0, None)
    printed = capsys.readouterr().out
    if flags == ["--cfg", "job"] and verb in ("pipeline", "demo"):
        # Every stage's configuration as it would run, e.g. the demo's train-gpt settings.
        assert "# stage 2: train_gpt" in printed and "max_steps: 600" in printed
    elif flags == ["--info"] and verb in ("pipeline", "demo"):
        assert "2. xtts-ft train-gpt data=demo model=tiny run_name=demo max_steps=600" in printed
    elif flags == ["--cfg", "job"]:
        assert "paths:" in printed or "checkpoint: ???" in printed
    else:
        assert printed.strip()


def test_readme_plain_overrides_form_reaches_every_stage_and_outputs_follow(monkeypatch, tmp_path, capsys):
    """The docs' own line (docs/recipes.md): `xtts-ft pipeline recipe=demo overrides='[paths.runs_dir=/scratch/runs]'`
    (Hydra's grammar rejects `=` inside an unquoted list element)."""
    import shlex

    from xtts_ft import cli

    monkeypatch.chdir(tmp_path)
    ran = {}
    _no_stage_may_run(monkeypatch)
    for stage in ("prepare", "train_gpt", "export", "synth", "evaluate"):
        module = __import__(f"xtts_ft.stages.{stage}", fromlist=["run"])
        monkeypatch.setattr(module, "run", lambda cfg, stage=stage: ran.setdefault(stage, cfg.paths.runs_dir))
    monkeypatch.setattr(pipeline, "stage_done", lambda module, cfg: False)
    cli.main(shlex.split("xtts-ft pipeline recipe=demo overrides='[paths.runs_dir=/scratch/runs]'")[1:])
    assert ran == {stage: "/scratch/runs" for stage in ("prepare", "train_gpt", "export", "synth", "evaluate")}
    printed = capsys.readouterr().out
    # Where things really went, not the recipe's default places.
    assert "    /scratch/runs/demo/synth/alicia.wav\n" in printed and "    runs/demo" not in printed
    assert "    /scratch/runs/demo/eval/report.md\n" in printed and "    exports/demo\n" in printed


def test_plain_list_elements_keep_their_own_brackets_and_quotes():
    from xtts_ft.cli import pipeline_overrides

    assert pipeline_overrides(
        "overrides=[paths.runs_dir=/x,+language_weights={en: 0.2, fr: 1},'languages=[wo,fr]']"
    ) == ["paths.runs_dir=/x", "+language_weights={en: 0.2, fr: 1}", "'languages=[wo,fr]'"]
    assert pipeline_overrides("""overrides=['max_step=5', "seed=1"]""") == [
        "max_step=5",
        "seed=1",
    ]  # Hydra's quoted form
    assert pipeline_overrides("overrides=[]") == []


def shipped_recipes() -> list:
    """Every recipe the package ships, named as `recipe=` takes it (as `xtts-ft pipeline --help` lists
    them): each folder's recipe.yaml by the folder's name, each variant beside it as <folder>/<variant>."""
    from xtts_ft.config import RECIPES_DIR

    recipes = sorted(p.parent.name for p in RECIPES_DIR.glob("*/recipe.yaml"))
    variants = sorted(f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml") if p.name != "recipe.yaml")
    return recipes + variants


def test_the_recipes_found_are_those_pipeline_help_lists():
    from xtts_ft.cli import recipes_help

    assert {"demo", "wolof", "wolof/tiny", "emotion", "emotion/tiny"} <= set(shipped_recipes())
    assert f"recipes: {', '.join(shipped_recipes())} (in " in recipes_help("pipeline")


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_recipe_lists_its_outputs_where_paths_put_them(recipe):
    cfg = compose("pipeline", [f"recipe={recipe}"])
    cfg.overrides = [f"paths.{key}=/moved/{key}" for key in ("processed_dir", "runs_dir", "exports_dir", "models_dir")]
    places = pipeline.output_locations(pipeline.load_recipe(recipe)["outputs"], pipeline.plan(cfg))
    assert places and all(where.startswith("/moved/") for where in places.values()), places


def test_a_users_mistake_is_one_line_and_the_traceback_waits_for_hydra_full_error(tmp_path):
    args = CLI + ["synth", f"checkpoint={tmp_path / 'no-such-export'}", "text=Hi.", "reference=r.wav"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: model source '{tmp_path / 'no-such-export'}' is neither a directory nor a Hub id (owner/name) "
        "— fix: check the path (a relative path starts in the current directory)"
    ]
    full = subprocess.run(
        args, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HYDRA_FULL_ERROR": "1"}
    )
    assert full.returncode == 1 and "Traceback" in full.stderr and "resolve_model_dir" in full.stderr


def test_a_value_out_of_range_stops_before_anything_runs(tmp_path):
    result = subprocess.run(
        CLI + ["train-gpt", "data=demo", "model=tiny", "max_steps=-5"], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1  # was 0, after "training" 0 steps
    assert result.stderr.strip().splitlines() == [
        "error: max_steps=-5 is not an integer ≥ 1 — fix: max_steps=<an integer ≥ 1>"
    ]
    assert not (tmp_path / "models").exists() and not (tmp_path / "data").exists()


def test_a_source_without_its_language_is_one_line(tmp_path):
    result = subprocess.run(
        CLI
        + ["prepare", "data.name=x", "max_text_tokens=0", f"data.sources=[{{path: {tmp_path}, formatter: ljspeech}}]"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1  # was omegaconf's MissingMandatoryValue traceback
    assert result.stderr.strip().splitlines() == [
        "error: data.sources[0].language is required and was not given — fix: give it a value, data.sources[0].language=<value> "
        "(inside a source's {...}: language: <value>)"
    ]


def test_unknown_language_from_the_cli_is_one_line(tmp_path, exported, prepared):
    reference = next((prepared / "wavs").glob("0_wavs__alicia*.wav"))
    result = subprocess.run(
        CLI
        + [
            "synth",
            f"checkpoint={exported}",
            "text=Hi.",
            "language=xx",
            f"reference={reference}",
            f"out={tmp_path / 'x.wav'}",
            "device=cpu",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: language 'xx' is not in this model's config.languages: en, "), result.stderr[
        -2000:
    ]
    assert lines[-1].endswith(" — fix: language=<one of those> (a new language is added with `xtts-ft extend`)")
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr


def test_the_generic_fix_names_the_command_that_failed(monkeypatch):
    from xtts_ft.cli import one_line

    monkeypatch.setattr(sys, "argv", ["xtts-ft", "evaluate", "checkpoint=x"])
    assert one_line(ValueError("a value is odd")).endswith("(`xtts-ft evaluate --help` lists the settings)")
    monkeypatch.setattr(sys, "argv", ["python"])  # called from Python: no command to name
    assert one_line(ValueError("a value is odd")).endswith("(`xtts-ft <verb> --help` lists the settings)")


def test_the_generic_fix_names_the_verb_the_cli_ran(monkeypatch, capsys, tmp_path):
    """Hydra runs a stage under an argv of its own (`xtts-ft synth`, no verb at [1]): the fix still names it."""
    from xtts_ft import cli
    from xtts_ft.errors import BadValue
    from xtts_ft.stages import synth

    def run(cfg):
        raise BadValue("a value is odd")  # a mistake whose error carries no fix of its own

    monkeypatch.setattr(synth, "run", run)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.chdir(tmp_path)  # Hydra's log folder
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    with pytest.raises(SystemExit):
        cli.main(["synth", "checkpoint=x", "text=Hi."])
    # main() in-process leaves logging as it found it: no Hydra file handler left to reopen a gone run folder
    assert root.handlers == handlers_before
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        last
        == "error: a value is odd — fix: correct the setting or file named above (`xtts-ft synth --help` lists the settings)"
    )


def test_bugs_keep_their_traceback():
    """One line for a mistake the user can fix, by its type; a traceback for anything else, wherever it
    was raised (inside xtts_ft's own files or a library's)."""
    from hydra.errors import OverrideParseException
    from omegaconf.errors import MissingMandatoryValue

    from xtts_ft import errors
    from xtts_ft.cli import PACKAGE_DIR, is_user_error, one_line

    def raised_by(source: str) -> BaseException:
        """The error a function in (a stand-in file of) the package raises."""
        namespace = {"errors": errors}
        exec(compile(source, str(PACKAGE_DIR / "stand_in.py"), "exec"), namespace)
        try:
            namespace["f"]()
        except Exception as error:
            return error
        raise AssertionError("f did not raise")

    # Every kind of UserError: one line, and still the built-in a Python caller catches.
    for kind, builtin in [
        (errors.BadValue, ValueError),
        (errors.MissingFile, FileNotFoundError),
        (errors.FileInTheWay, FileExistsError),
        (errors.MissingPackage, ImportError),
        (errors.RunRefused, RuntimeError),
        (errors.ConfigValueError, ValueError),
    ]:
        error = raised_by(f"def f():\n    raise errors.{kind.__name__}('language xx is not in this model')")
        assert type(error) is kind and isinstance(error, builtin) and is_user_error(error)
    # A plain ValueError or RuntimeError is a bug, even one raised on purpose inside xtts_ft.
    assert not is_user_error(raised_by("def f():\n    raise ValueError('an invariant broke')"))
    assert not is_user_error(raised_by("def f():\n    raise RuntimeError('an invariant broke')"))
    assert not is_user_error(raised_by("def f():\n    int('x')"))  # a library's ValueError inside xtts_ft
    assert not is_user_error(raised_by("def f():\n    return {}['k']"))  # a KeyError
    try:
        np.zeros(-1)
    except ValueError as library:  # raised outside xtts_ft
        assert not is_user_error(library)
    # The system's word on a file it names is the user's to fix; an OSError naming no file is not.
    assert is_user_error(raised_by("def f():\n    open('/no/such/file')"))
    assert not is_user_error(raised_by("def f():\n    raise OSError(5, 'Input/output error')"))
    # Hydra's word on an override, and a required setting left out.
    assert is_user_error(OverrideParseException("max_steps==5", "mismatched input '='"))
    assert is_user_error(MissingMandatoryValue("Missing mandatory value: data.name"))
    # A UserError's own fix is printed after its message; without one, the generic fix by type.
    assert one_line(errors.BadValue("max_steps=-5 is odd", fix="max_steps=<an integer ≥ 1>")) == (
        "error: max_steps=-5 is odd — fix: max_steps=<an integer ≥ 1>"
    )
    assert one_line(errors.MissingFile("no x.wav")) == (
        "error: no x.wav — fix: check the path (a relative path starts in the current directory)"
    )


def test_ctrl_c_is_one_line_and_exit_status_130(capsys, monkeypatch):
    from xtts_ft.cli import user_errors_in_one_line

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit:
        with user_errors_in_one_line():
            raise KeyboardInterrupt
    assert exit.value.code == 130
    assert capsys.readouterr().err.startswith(
        "interrupted — nothing unfinished was left looking complete; run the same command again"
    )


def test_non_ascii_text_needs_no_extra_quoting(capsys):
    """Hydra reads only ASCII in an unquoted value: `text=Dafa baŋ.` used to stop with an
    OverrideParseException; the CLI quotes such a value for the user, exactly as written."""
    from xtts_ft import cli

    cli.main(["synth", "checkpoint=exports/x", "text=L'été, dafa baŋ !", "language=wo", "--cfg", "job"])
    printed = capsys.readouterr().out
    assert "text: L'été, dafa baŋ !" in printed
    assert cli.quoted_if_needed("language=wo") == "language=wo"  # ASCII values pass untouched
    assert cli.quoted_if_needed("'+voices={a: b}'") == "'+voices={a: b}'"


# The pages whose `xtts-ft` lines a reader copies: the README's quickstart and every docs/ page.
DOC_PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def page_command_lines(text: str) -> list:
    """Every `xtts-ft ...` line of one page's bash blocks (continuations joined, comments cut), a
    torchrun line's `-m xtts_ft.cli ...` as the `xtts-ft ...` it runs, and the inline ones in the prose
    but for templates (`recipe=<name>`, `checkpoint=N`, elisions)."""
    import re
    import shlex

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending += (" " if pending else "") + line.strip()
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quote still open: the command goes on on the next line
                continue
            pending = ""
            if "xtts_ft.cli" in words:  # torchrun ... -m xtts_ft.cli <verb> ...
                words = ["xtts-ft", *words[words.index("xtts_ft.cli") + 1 :]]
            if words[:1] == ["xtts-ft"]:
                lines.append([w for w in words if w != "..."])  # "..." stands for "and your other settings"
    for span in re.findall(r"`(xtts-ft [^`]+)`", text):
        if not re.search(r"<|\.\.\.|…|=N\b", span):
            lines.append(shlex.split(span))
    return lines


def doc_command_lines() -> list:
    """(page, words) for every `xtts-ft` line of README.md and docs/*.md."""
    return [(page.name, words) for page in DOC_PAGES for words in page_command_lines(page.read_text(encoding="utf-8"))]


def first_job_of_sweep(args: list) -> list:
    """`-m lr=1e-5,5e-6 ...` → `lr=1e-5 ...`: a Hydra multirun's first job, as Hydra composes it."""
    import re

    from xtts_ft.cli import split_top_level

    if "-m" not in args and "--multirun" not in args:
        return args
    firsts = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        key, sep, value = arg.partition("=")
        first = split_top_level(value)[0] if sep and value and value[0] not in "[{'\"" else None
        # A sweep function's first value (Hydra's and Optuna's): choice(8,16) → 8, interval(1e-6,1e-4) → 1e-6.
        call = re.fullmatch(r"(?:choice|range|interval)\((.*)\)", first or "")
        first = split_top_level(call.group(1))[0] if call else first
        firsts.append(f"{key}={first}" if first is not None else arg)
    return firsts


def stage_config_problem(cfg, stage: str):
    """Why a composed stage config would not run: a value `validate` refuses, a required `???` left
    empty, an interpolation that does not resolve. None when the stage would take it."""
    from omegaconf import OmegaConf

    from xtts_ft.config import validate

    try:
        validate(cfg, stage)
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            return f"{stage}: required {', '.join(missing)} left empty (???)"
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as error:  # ConfigValueError, Hydra's and OmegaConf's errors: each is a reason
        return f"{stage}: {type(error).__name__}: {error}"
    return None


def command_line_problem(words: list):
    """Why `xtts-ft <verb> ...` would not run as written, checked as the verb itself would take it;
    None when it would. A stage verb: its config composed from the line's overrides (as the CLI hands
    them to Hydra: xtts_ft.config.compose) and validated. `pipeline`/`demo`: the pipeline's config as
    the CLI builds it, then every stage of its plan composed with the overrides it gets, each validated.
    Nothing runs."""
    import contextlib
    import io
    from unittest import mock

    from xtts_ft import cli
    from xtts_ft.config import compose

    verb, args = words[1], first_job_of_sweep(words[2:])
    if verb in ("pipeline", "demo"):
        shown = []
        with mock.patch.object(pipeline, "show", lambda cfg, resolve=False: shown.append(cfg) or ""):
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                    cli.main([verb, *args, "--cfg", "job"])
            except SystemExit as stop:
                return f"exit {stop.code}: {err.getvalue().strip()}"
        try:
            planned = pipeline.plan(shown[0])
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        problems = [stage_config_problem(stage_cfg, stage) for stage, _, stage_cfg in planned]
        return "; ".join(p for p in problems if p) or None
    stage = verb.replace("-", "_")
    _, overrides = cli.split_hydra_args(args)
    try:
        cfg = compose(stage, overrides)
    except Exception as error:  # Hydra's parse and composition errors, ConfigValueError
        return f"{type(error).__name__}: {error}"
    return stage_config_problem(cfg, stage)


def test_every_readme_and_docs_command_line_is_valid_as_run(monkeypatch, capsys):
    """Each `xtts-ft` line README.md and docs/*.md show is a command its verb would run: it parses
    through the CLI (`--cfg job`: printed, nothing run), and its configuration — each planned stage's,
    for a pipeline — passes `validate` with every required value given. The docs cannot rot unseen."""
    from xtts_ft import cli

    lines = doc_command_lines()
    pages = {page for page, _ in lines}
    assert len(lines) >= 40 and {"README.md", "prepare.md", "train.md", "synth.md"} <= pages, pages
    _no_stage_may_run(monkeypatch)
    for page, words in lines:
        args = words[1:]
        where = f"{page}: `{' '.join(words)}`"
        monkeypatch.setattr(sys, "argv", list(sys.argv))
        asks_help = "--help" in args  # prints the settings (Hydra then exits 0): there is no run to validate
        try:
            cli.main(args if asks_help else [*first_job_of_sweep(args), "--cfg", "job"])
        except SystemExit as stop:
            if not (asks_help and stop.code in (0, None)):
                pytest.fail(f"{where} does not compose (exit {stop.code}): {capsys.readouterr().err}")
        assert capsys.readouterr().out.strip(), where
        if asks_help:
            continue
        problem = command_line_problem(words)
        assert problem is None, f"{where} would not run: {problem}"


@pytest.mark.parametrize(
    "line, reason",
    [
        ("xtts-ft train-gpt max_steps=0", "max_steps=0 is not an integer ≥ 1"),
        ("xtts-ft train-gpt lr=-1", "lr=-1.0 is not a number > 0"),
        ("xtts-ft train-gpt +max_step=5", "max_step is not a setting of train-gpt"),
        ("xtts-ft train-gpt max_step=5", "max_step is not a setting of train-gpt"),
        ("xtts-ft synth text=Hello.", "required checkpoint left empty"),
        ("xtts-ft export", "run_name"),
        ("xtts-ft prepare data.name=x 'data.sources=[{path: /x, formatter: table}]'", "data.sources[0].language"),
        ("xtts-ft train-gpt -m lr=1e-5,-1", None),  # the sweep's first job is fine ...
        ("xtts-ft train-gpt -m lr=-1,1e-5", "lr=-1.0 is not"),  # ... and a bad first one is caught
        ("xtts-ft train-gpt -m hydra/sweeper=eval_loss 'lr=interval(-1,1e-4)'", "lr=-1.0 is not"),  # Optuna's form
        ("xtts-ft demo max_step=5", "did you mean max_steps"),
        ("xtts-ft demo batch_size=0", "batch_size=0 is not an integer ≥ 1"),
        ("xtts-ft pipeline recipe=wolof/tiny lr=-1", "lr=-1.0 is not"),
        ("xtts-ft synth checkpoint=exports/demo text=Hello.", None),
        ("xtts-ft pipeline recipe=demo", None),
    ],
)
def test_the_docs_checker_rejects_what_no_verb_would_run(line, reason):
    """The checker of the test above catches what it looks for: out-of-range values, unknown keys,
    required values left empty, in stage verbs and in a pipeline's planned stages."""
    import shlex

    problem = command_line_problem(shlex.split(line))
    if reason is None:
        assert problem is None, problem
    else:
        assert problem is not None and reason in problem, problem
