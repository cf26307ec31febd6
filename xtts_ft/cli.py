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

import importlib
import sys
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


PIPELINE_KEYS = ("recipe", "force", "overrides")


def run_pipeline(verb: str, args: List[str]) -> None:
    """`xtts-ft demo paths.runs_dir=/x model.device=cuda`: keys the pipeline does not have go to every stage."""
    from xtts_ft import pipeline
    from xtts_ft.config import RECIPES_DIR, compose

    if any(a in ("-h", "--help") for a in args):
        recipes = sorted(p.name for p in RECIPES_DIR.iterdir() if (p / "recipe.yaml").is_file())
        recipes += sorted(f"{p.parent.name}/{p.stem}" for p in RECIPES_DIR.glob("*/*.yaml") if p.name != "recipe.yaml")
        print(
            f"usage: xtts-ft {verb} [recipe=NAME] [force=true] [stage overrides ...]\n\n"
            f"{VERBS[verb]}\nrecipes: {', '.join(recipes)} (in {RECIPES_DIR})\n"
            "Other key=value arguments go to every stage whose config has that key, e.g. paths.runs_dir=/scratch/runs."
        )
        return
    own = [a for a in args if a.split("=", 1)[0] in PIPELINE_KEYS]
    cfg = compose("pipeline", own)
    cfg.overrides = [*cfg.overrides, *(a for a in args if a not in own)]
    pipeline.run(cfg)


def run_stage(verb: str, args: List[str]) -> None:
    import hydra

    from xtts_ft.config import CONF_DIR, register_configs

    stage = verb.replace("-", "_")
    module = importlib.import_module(f"xtts_ft.{stage}")
    register_configs()

    @hydra.main(config_path=str(CONF_DIR), config_name=stage, version_base="1.3")
    def hydra_entry(cfg) -> None:
        module.run(cfg)

    defaults = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        defaults.append(f"hydra.run.dir=runs/.hydra/{stage}/${{now:%Y-%m-%d_%H-%M-%S}}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        defaults.append(f"hydra.sweep.dir=runs/.hydra/{stage}-multirun/${{now:%Y-%m-%d_%H-%M-%S}}")
    options, overrides = split_hydra_args(args)
    # argparse wants Hydra's overrides as one contiguous run of positionals.
    sys.argv = [f"xtts-ft {verb}", *options, *overrides, *defaults]
    hydra_entry()


# Hydra flags that take a value (`--cfg job`, `-cn name`, `--info defaults`, ...).
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}


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
            overrides.append(arg)
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
    if verb == "demo":
        run_pipeline(verb, ["recipe=demo", *args])
    elif verb == "pipeline":
        run_pipeline(verb, args)
    else:
        run_stage(verb, args)


if __name__ == "__main__":
    main()
