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
    "export": "training state → exports/<run_name>/ in the stock XTTS-v2 layout",
    "synth": "clone a voice and speak a text → a 24 kHz WAV",
    "web": "a Gradio page to try an export in the browser (needs the `web` extra)",
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
            f"xtts-ft {verb} does not take {' '.join(options)} — fix: leave it out "
            f"(the pipeline takes --help, --cfg job [--resolve] and --info)"
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
    def hydra_entry(cfg) -> None:
        with user_errors_in_one_line():
            module.run(validate(cfg, stage))

    defaults = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        defaults.append(f"hydra.run.dir=runs/.hydra/{stage}/${{now:%Y-%m-%d_%H-%M-%S}}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        defaults.append(f"hydra.sweep.dir=runs/.hydra/{stage}-multirun/${{now:%Y-%m-%d_%H-%M-%S}}")
    options, overrides = split_hydra_args(args)
    # argparse wants Hydra's overrides as one contiguous run of positionals, and before the flags:
    # a flag whose value is optional (`--info`) would otherwise take the next override as its value.
    sys.argv = [f"xtts-ft {verb}", *overrides, *defaults, *options]
    hydra_entry()


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


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        sys.exit(f"xtts-ft: unknown verb {verb!r}\n\n{usage()}")
    global RUNNING_VERB
    RUNNING_VERB = verb
    try:
        if verb in ("demo", "pipeline"):
            with user_errors_in_one_line():
                run_pipeline(verb, ["recipe=demo", *args] if verb == "demo" else args)
        else:
            run_stage(verb, args)
    finally:  # a notebook or a test may call main() again, or one_line() on its own
        RUNNING_VERB = None


if __name__ == "__main__":
    main()
