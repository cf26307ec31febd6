"""The `xtts-ft` command: one verb per stage, Hydra overrides after it.

    xtts-ft prepare data=demo
    xtts-ft extend data=wolof languages=[wo] emotions=[happy,sad]
    xtts-ft train-gpt data=demo model=tiny max_steps=200
    xtts-ft train-decoder data=demo model=tiny max_steps=200 adversarial=false
    xtts-ft export run_name=demo
    xtts-ft synth checkpoint=exports/demo text="Hello." language=en reference=ref.wav out=hello.wav
    xtts-ft web checkpoint=exports/demo                    (then open http://127.0.0.1:7860)
    xtts-ft evaluate checkpoint=exports/demo manifest=data/processed/demo/eval.jsonl out_dir=runs/demo/eval
    xtts-ft pipeline recipe=demo        (xtts-ft demo is its short form)

Stage verbs run under Hydra (so --cfg job, --multirun and --help work); Hydra's own logs
go to runs/.hydra/<stage>/<time>/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

VERBS = {
    "prepare": "corpus → data/processed/<name>/ (wavs, train/eval/dropped.jsonl, stats.json)",
    "extend": "add languages ([xx] + BPE tokens) and emotion tokens to a base → models/<name>-extended",
    "train-gpt": "fine-tune the GPT on a prepared dataset → runs/<run_name>/gpt/",
    "train-decoder": "fine-tune the HiFiGAN decoder on the GPT's latents → runs/<run_name>/decoder/",
    "train-dvae": "fine-tune the DVAE (mel → audio codes), measuring code drift → runs/<run_name>/dvae/",
    "export": "training state → exports/<run_name>/ in the stock XTTS-v2 layout",
    "synth": "clone a voice and speak a text → a 24 kHz WAV",
    "web": "a Gradio page to try an export in the browser (needs the `web` extra)",
    "serve": "an OpenAI-compatible speech server (POST /v1/audio/speech) batching concurrent requests",
    "evaluate": "synthesize a probe set and measure it → CSV + Markdown report",
    "push": "upload an export to a Hugging Face Hub model repo (dry_run=true shows what would go)",
    "pipeline": "run a recipe's stages in order, skipping finished ones (recipe=demo)",
    "demo": "the demo recipe: the whole pipeline on the shipped corpus and a tiny model",
}


def usage() -> str:
    lines = ["usage: xtts-ft <verb> [key=value ...]", "", "verbs:"]
    lines += [f"  {verb:<13} {text}" for verb, text in VERBS.items()]
    lines += ["", "`xtts-ft <verb> --help` lists a stage's configuration; `--cfg job` prints it resolved."]
    return "\n".join(lines)


# Two commands per verb for its help page; tests/unit/test_cli_help.py composes each of them.
EXAMPLES = {
    "prepare": ["xtts-ft prepare data=demo", "xtts-ft prepare data=ljspeech num_workers=4 max_seconds=11"],
    "extend": [
        "xtts-ft extend data=wolof_demo model=tiny languages=[wo]",
        "xtts-ft extend data=emotion_demo model=tiny emotions=[happy,sad]",
    ],
    "train-gpt": [
        "xtts-ft train-gpt data=demo model=tiny max_steps=200",
        "xtts-ft train-gpt data=demo model=tiny method=lora lora.rank=16",
    ],
    "train-decoder": [
        "xtts-ft train-decoder data=demo model=tiny max_steps=200",
        "xtts-ft train-decoder data=demo model=tiny max_steps=200 adversarial=false",
    ],
    "train-dvae": [
        "xtts-ft train-dvae data=demo model=tiny max_steps=200",
        "xtts-ft train-dvae data=demo model=tiny max_steps=200 mode=full",
    ],
    "export": ["xtts-ft export run_name=demo", "xtts-ft export run_name=demo checkpoint=best half=true"],
    "synth": [
        "xtts-ft synth checkpoint=exports/demo text=Hello. language=en reference=ref.wav out=hello.wav",
        "xtts-ft synth checkpoint=exports/demo texts=lines.txt language=en reference=ref.wav out_dir=synth",
    ],
    "web": ["xtts-ft web checkpoint=exports/demo", "xtts-ft web checkpoint=exports/demo host=0.0.0.0 auth=me:secret"],
    "serve": [
        "xtts-ft serve checkpoint=exports/demo voices=data/demo/en/wavs",
        "xtts-ft serve checkpoint=exports/demo port=8080 max_batch_size=16",
    ],
    "evaluate": [
        "xtts-ft evaluate checkpoint=exports/demo manifest=data/processed/demo/eval.jsonl out_dir=runs/demo/eval",
        "xtts-ft evaluate checkpoints=[models/tiny-xtts,exports/demo] probes=sentences reference=ref.wav out_dir=cmp",
    ],
    "push": [
        "xtts-ft push run_name=demo repo_id=me/xtts-demo dry_run=true",
        "xtts-ft push run_name=demo repo_id=me/xtts-demo",
    ],
}
HELP_WIDTH = 100


def stage_examples(verb: str) -> List[str]:
    """The verb's example commands: EXAMPLES', else the launch command its YAML opens with."""
    from xtts_ft.config import CONF_DIR

    if verb in EXAMPLES:
        return EXAMPLES[verb]
    header = (CONF_DIR / f"{verb.replace('-', '_')}.yaml").read_text(encoding="utf-8").split("\ndefaults:")[0]
    return [
        re.sub(r"\s{2,}\(.*$", "", line.split(": ", 1)[-1] if ": xtts-ft" in line else line.lstrip("# ")).strip()
        for line in header.splitlines()
        if f"xtts-ft {verb}" in line
    ]


def shown_value(value) -> str:
    """A default as the user would type it: `???` (required), null, true, [a, b], ${data.name}."""
    import json

    if value == "???":
        return "??? (required)"
    if isinstance(value, (dict, list)):
        shown = json.dumps(value, ensure_ascii=False).replace('"', "")
        return shown if len(shown) <= 60 else shown[:57] + "..."
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def stage_help(verb: str) -> str:
    """`xtts-ft <verb> --help`: what the verb does, two examples, its groups and every setting with its
    type, default (the composed YAML's) and what it does (the comment beside the default, conf/*.yaml)."""
    import dataclasses
    import textwrap
    import typing

    from omegaconf import OmegaConf

    from xtts_ft.config import (
        CONF_DIR,
        SCHEMAS,
        compose,
        group_options,
        schema_settings,
        setting_descriptions,
        type_name,
    )

    stage = verb.replace("-", "_")
    composed = OmegaConf.to_container(compose(stage), resolve=False)
    defaults_list = OmegaConf.load(CONF_DIR / f"{stage}.yaml").get("defaults", [])
    groups = {k: v for entry in defaults_list if not isinstance(entry, str) for k, v in entry.items()}
    lines = [
        f"usage: xtts-ft {verb} [key=value ...] [--cfg job [--resolve]] [-m key=a,b ...] [--hydra-help]",
        "",
        VERBS[verb],
        "",
        "examples:",
        *[f"  {example}" for example in stage_examples(verb)],
    ]
    if groups:
        lines += ["", "groups (a whole part chosen by name, from conf/<group>/<name>.yaml):"]
        lines += [
            f"  {group}=NAME  {', '.join(o + (' (default)' if o == chosen else '') for o in group_options(group))}"
            for group, chosen in groups.items()
        ]
    lines += ["", "settings (key: type = default, then what it does; change one with key=value):"]
    descriptions, settings = setting_descriptions(stage), schema_settings(SCHEMAS[stage])
    # The verb's own settings first, then the parts (data., model., paths., decoding., ...).
    for key, hint in sorted(settings.items(), key=lambda item: "." in item[0]):
        value = composed
        for part in key.split("."):  # as written in the YAML: an interpolation is shown, not resolved
            value = value.get(part, "???") if isinstance(value, dict) else "???"
        lines.append(f"  {key}: {type_name(hint)} = {shown_value(value)}")
        lines += textwrap.wrap(
            descriptions.get(key, ""), HELP_WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6
        )
        entry = typing.get_args(hint)[0] if typing.get_origin(hint) is list and typing.get_args(hint) else None
        if dataclasses.is_dataclass(entry):  # data.sources: the keys an entry {...} takes
            lines += textwrap.wrap(
                f"each entry takes: {', '.join(f.name for f in dataclasses.fields(entry))} (see {entry.__name__} "
                "in xtts_ft/config.py and docs/prepare.md)",
                HELP_WIDTH,
                initial_indent=" " * 6,
                subsequent_indent=" " * 6,
            )
    lines += [
        "",
        "--cfg job prints the composed configuration and runs nothing; --hydra-help shows Hydra's own flags.",
    ]
    return "\n".join(lines)


PIPELINE_KEYS = ("recipe", "force")


def recipes_help(verb: str) -> str:
    from xtts_ft.config import RECIPES_DIR

    recipes = sorted(p.name for p in RECIPES_DIR.iterdir() if (p / "recipe.yaml").is_file())
    recipes += sorted(f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml") if p.name != "recipe.yaml")
    return (
        f"usage: xtts-ft {verb} [recipe=NAME] [force=true] [stage overrides ...] [--cfg job [--resolve] | --info]\n\n"
        f"{VERBS[verb]}\nrecipes: {', '.join(recipes)} (in {RECIPES_DIR})\n"
        "Other key=value arguments go to every stage whose config has that key, e.g. paths.runs_dir=/scratch/runs;\n"
        "a key no stage has is an error. --cfg job prints every stage's configuration and runs nothing."
    )


def split_top_level(text: str) -> List[str]:
    """`a=1,b=[x,y],c={k: v}` → ["a=1", "b=[x,y]", "c={k: v}"]: commas inside brackets or quotes stay."""
    items, depth, quote, current = [], 0, None, ""
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(current.strip())
            current = ""
            continue
        current += char
    return [item for item in [*items, current.strip()] if item]


def pipeline_overrides(arg: str) -> List[str]:
    """The list in `overrides=[...]`. Hydra's grammar wants each element holding `=` quoted
    (`overrides='["paths.runs_dir=/x"]'`); the plain form `overrides=[paths.runs_dir=/x]`, which
    its parser rejects, is read element by element."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        value = OverridesParser.create().parse_override(arg).value()
    except HydraException:
        body = arg.split("=", 1)[1].strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise
        return split_top_level(body[1:-1])
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def run_pipeline(verb: str, args: List[str]) -> None:
    """`xtts-ft demo paths.runs_dir=/x model.device=cuda`: keys the pipeline does not have go to every
    stage that has them. --help, --cfg and --info print and run nothing."""
    from xtts_ft.config import compose
    from xtts_ft.errors import BadValue
    from xtts_ft.stages import pipeline

    options, arguments = split_hydra_args(args)
    if any(o in ("-h", "--help") for o in options):
        print(recipes_help(verb))
        return
    own = [a for a in arguments if a.split("=", 1)[0] in PIPELINE_KEYS]
    overrides = []
    for arg in arguments:
        if arg.startswith("overrides="):
            overrides += pipeline_overrides(arg)
        elif arg not in own:
            overrides.append(arg)
    cfg = compose("pipeline", own)
    cfg.overrides = overrides
    if "--cfg" in options or "-c" in options:
        print(pipeline.show(cfg, resolve="--resolve" in options))
    elif "--info" in options or "-i" in options:
        print(pipeline.describe(cfg))
    elif options:
        raise BadValue(
            f"xtts-ft {verb} does not take {' '.join(options)}",
            fix="leave it out (the pipeline takes --help, --cfg job [--resolve] and --info)",
        )
    else:
        pipeline.run(cfg)


PACKAGE_DIR = Path(__file__).resolve().parent
# The verb `main` is running, for the generic fix to name (`run_stage` hands Hydra an argv of its own).
RUNNING_VERB: Optional[str] = None
# The fix printed after a user error whose message does not carry its own.
FIX_BY_TYPE = {FileNotFoundError: "check the path (a relative path starts in the current directory)"}
GENERIC_FIX = "correct the setting or file named above (`xtts-ft <verb> --help` lists the settings)"


def is_user_error(error: BaseException) -> bool:
    """A mistake the user can fix, by its type: a `UserError` (raised on purpose, with its fix),
    Hydra's word on a bad override, a required setting (`???`) left out, or the system's word on a
    file (an OSError naming it: missing, not readable, the disk full). Anything else is a bug and
    keeps its traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import MissingMandatoryValue

    from xtts_ft.errors import UserError

    if isinstance(error, (UserError, HydraException, MissingMandatoryValue)):
        return True
    return isinstance(error, OSError) and error.filename is not None


def one_line(error: BaseException) -> str:
    """`error: <what> — fix: <how>` for the console."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(error, MissingMandatoryValue) and getattr(error, "full_key", None):
        key = error.full_key
        where = f" (inside a source's {{...}}: {key.rsplit('.', 1)[-1]}: <value>)" if "sources[" in key else ""
        return f"error: {key} is required and was not given — fix: give it a value, {key}=<value>{where}"
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    fix = getattr(error, "fix", None)
    # A message that says its own fix ("...; fix: ...") gets no generic one.
    if fix is None and not re.search(r"\bfix:", message, flags=re.IGNORECASE):
        verb = RUNNING_VERB or (sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in VERBS else "<verb>")
        generic = GENERIC_FIX.replace("<verb>", verb)
        fix = next((fix for kind, fix in FIX_BY_TYPE.items() if isinstance(error, kind)), generic)
    if fix is not None:
        message += f" — fix: {fix}"
    return f"error: {message}"


@contextlib.contextmanager
def user_errors_in_one_line():
    """A user's mistake (an unknown language, an empty text, a missing file, a value out of range)
    prints one line and exits 1, instead of its message at the end of a traceback under Hydra's
    "Error executing job"; HYDRA_FULL_ERROR=1 keeps the traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # Every stage writes through temporary names, so nothing it left looks finished.
        print(
            "interrupted — nothing unfinished was left looking complete; run the same command again "
            "(prepare and training continue where they stopped)",
            file=sys.stderr,
        )
        sys.exit(130)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_user_error(error):
            raise
        print(one_line(error), file=sys.stderr)
        sys.exit(1)


def run_stage(verb: str, args: List[str]) -> None:
    import hydra

    from xtts_ft import stages
    from xtts_ft.config import CONF_DIR, register_configs, validate

    stage = verb.replace("-", "_")
    module = stages.load(stage)
    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def hydra_entry(cfg):
        from xtts_ft.train.sweep import job_value  # what the job gives its sweeper (Optuna: the eval loss)

        with user_errors_in_one_line():
            return job_value(stage, module.run(validate(cfg, stage)))

    defaults = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        defaults.append(f"hydra.run.dir=runs/.hydra/{stage}/${{now:%Y-%m-%d_%H-%M-%S}}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        defaults.append(f"hydra.sweep.dir=runs/.hydra/{stage}-multirun/${{now:%Y-%m-%d_%H-%M-%S}}")
    options, overrides = split_hydra_args(args)
    if any(o in ("-h", "--help") for o in options):
        print(stage_help(verb))
        return
    if overrides and not any(o in HYDRA_OWN_FLAGS for o in options):
        with user_errors_in_one_line():
            check_overrides(stage, overrides, multirun=any(o in ("-m", "--multirun") for o in options))
    if "-m" in options or "--multirun" in options:  # each job of a training sweep gets its own run directory
        from xtts_ft.train.sweep import sweep_run_overrides

        overrides = sweep_run_overrides(verb, overrides)
    # argparse wants Hydra's overrides as one contiguous run of positionals, and before the flags:
    # a flag whose value is optional (`--info`) would otherwise take the next override as its value.
    sys.argv = [f"xtts-ft {verb}", *overrides, *defaults, *options]
    hydra_entry()


# Flags after which Hydra composes from elsewhere (another config, a search path) or composes nothing
# (its own help, version, shell completion): the overrides are left for Hydra alone to check.
HYDRA_OWN_FLAGS = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--hydra-help",
    "--version",
    "--shell-completion",
    "-sc",
    "--experimental-rerun",
}


def sweep_runs(overrides: List[str]) -> List[List[str]]:
    """The override lists that compose every value a multirun names, once each: as many lists as its
    longest sweep (`lr=1e-5,1e-4 data=demo,ljspeech` → [lr=1e-05 data=demo], [lr=0.0001 data=ljspeech]),
    not every combination. A sweep with no list of values (an Optuna `interval(...)`) is left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return [overrides]  # compose reports the override it cannot read
    columns = []
    for override, text in zip(parsed, overrides):
        if not override.is_sweep_override():
            columns.append([text])
        elif override.is_discrete_sweep():
            columns.append([f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()])
    longest = max((len(column) for column in columns), default=0)
    return [[column[i % len(column)] for column in columns] for i in range(longest)] or [[]]


def check_overrides(stage: str, overrides: List[str], multirun: bool = False) -> None:
    """Compose the stage's config from the overrides before Hydra does: a mistake in one (an unknown key or
    group option, a wrong type, a value no stage can run with) is our one line with a near name
    (xtts_ft.config.override_error), where Hydra would print its own lines and exit before the stage."""
    from xtts_ft.config import compose

    for overrides_of_a_run in sweep_runs(overrides) if multirun else [overrides]:
        compose(stage, overrides_of_a_run)


# Hydra flags that take a value (`--cfg job`, `-cn name`, `--info defaults`, ...).
VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
}


def quoted_if_needed(override: str) -> str:
    """`text=Ça va !` as Hydra can read it. Hydra's grammar takes only ASCII letters and a few symbols
    in an unquoted value, so a sentence in French or Wolof, or one ending in "!", fails to parse unless
    the user knows to quote it inside the shell's quotes; a plain `key=value` that fails to parse and
    reads back unchanged once quoted is quoted here."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"[{":
        return override
    parser = OverridesParser.create()
    try:
        parser.parse_override(override)
        return override
    except Exception:  # Hydra's parse errors have several types; any of them means "try quoted"
        pass
    candidate = f"{key}='{value.replace(chr(39), chr(92) + chr(39))}'"
    try:
        if parser.parse_override(candidate).value() == value:
            return candidate
    except Exception:
        pass
    return override


def split_hydra_args(args: List[str]) -> tuple:
    options, overrides = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            options.append(arg)
            if arg in VALUE_FLAGS and i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                options.append(args[i + 1])
                i += 1
        else:
            overrides.append(quoted_if_needed(arg))
        i += 1
    return options, overrides


def unknown_verb(verb: str) -> str:
    """The one line for a verb the table lacks, with the near verbs (`trian-gpt` → train-gpt)."""
    import difflib

    close = difflib.get_close_matches(verb, list(VERBS), n=2, cutoff=0.6)
    fix = f"did you mean {' or '.join(close)}?" if close else "use one of the verbs `xtts-ft --help` lists"
    return f"error: unknown verb {verb!r} — fix: {fix} (the verbs: {', '.join(VERBS)})"


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        print(unknown_verb(verb), file=sys.stderr)
        sys.exit(1)
    global RUNNING_VERB
    RUNNING_VERB = verb
    root = logging.getLogger()
    handlers_before, level_before = list(root.handlers), root.level
    try:
        if verb in ("demo", "pipeline"):
            with user_errors_in_one_line():
                run_pipeline(verb, ["recipe=demo", *args] if verb == "demo" else args)
        else:
            run_stage(verb, args)
    finally:  # a notebook or a test may call main() again, or one_line() on its own
        RUNNING_VERB = None
        restore_root_logging(handlers_before, level_before)


def restore_root_logging(handlers_before: List[logging.Handler], level_before: int) -> None:
    """Undo the job_logging Hydra installed on the root logger, so that main() called in-process (a notebook,
    a test) leaves logging as it found it: Hydra's file handler would otherwise stay attached, and reopen its
    log file in a run folder that may be gone by the next line anything logs."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h not in handlers_before]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers_before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level_before)


if __name__ == "__main__":
    main()
