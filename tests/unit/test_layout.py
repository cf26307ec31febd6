"""The package's shape holds (ARCHITECTURE.md, design.md "Layout"): arrows point down only, no
import cycle, no stage imports another stage, data/ imports nothing above it, each stage module
stays thin, evaluation/ and inference/ are packages, and functions stay short enough to read.

Read from the source with `ast` (every import, module-level or inside a function), so a lazy
import cannot hide an upward arrow. Each rule is a plain function over an import graph (module →
the xtts_ft modules it imports) or over source text, so that the last tests can feed every rule a
violation made up for it and see it reported.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "xtts_ft"

# Lower layers first. A module may import its own layer's package (data → data) and any lower layer.
LAYERS = (
    ("errors",),  # the user's mistakes, by type: imported by every layer
    ("io_utils", "model.constants", "console"),  # leaves: atomic writes and locks; rates and hops; the console
    ("data",),  # Samples, manifests, audio, formatters, cleaners, batches, samplers
    ("model", "config"),  # loading, tokenizer, decoder framing, LoRA, model cards; the config schema
    ("recipe_plan",),  # a pipeline recipe read and planned: its stages' composed configs (over config)
    ("inference",),  # the one synthesis path
    ("evaluation",),  # ASR, metrics, transcript validation, reports, plots, forgetting (through inference)
    ("train",),  # the training recipes and what they share
    ("serving",),  # the HTTP layer over inference/
    ("stages",),  # one thin module per verb
    ("cli",),  # the command line, which reaches the stages
)
DATA_MAY_IMPORT = {"xtts_ft.errors", "xtts_ft.io_utils", "xtts_ft.model.constants"}
STAGE_CEILING = 150  # lines per stages/*.py: check the settings, call the library, write the outputs
FUNCTION_CEILING = 80
RECIPE_METHOD_CEILING = 60
PACKAGES = ("evaluation", "inference")  # rooms that are directories with an __init__.py
GONE = ("asr", "metrics", "validation", "inference")  # top-level modules that moved into those rooms


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_in(source: str, modules, where: str = "<source>") -> set[str]:
    """The xtts_ft modules a source imports, anywhere in it (`modules`: the package's module names,
    to tell `from xtts_ft.stages import evaluate`, a module, from `from xtts_ft.config import compose`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{where}:{node.lineno}: relative import; write the absolute xtts_ft.… path")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xtts_ft":
            for alias in node.names:
                as_module = f"{node.module}.{alias.name}"
                found.add(as_module if as_module in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "xtts_ft")
    # The package root only re-exports lazily (`compose`, `XttsSynthesizer`) and holds __version__.
    found.discard("xtts_ft")
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {
        name: imports_in(path.read_text(encoding="utf-8"), modules, str(path)) - {name}
        for name, path in modules.items()
        if name != "xtts_ft"
    }


GRAPH = import_graph(MODULES)


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, the layer entry that owns `name`), e.g. xtts_ft.data.text → (2, "data")."""
    short = name.removeprefix("xtts_ft.")
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if short == entry or short.startswith(entry + "."):
                return index, entry
    raise AssertionError(f"{name} belongs to no layer of test_layout.LAYERS: place it there (and in ARCHITECTURE.md)")


# The rules: each returns what breaks it, empty when the graph or source keeps it.


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for name, targets in graph.items():
        level, owner = layer_of(name)
        for target in targets:
            target_level, target_owner = layer_of(target)
            if target_level > level or (target_level == level and target_owner != owner):
                upward.append(f"{name} → {target}")
    return sorted(upward)


def stage_to_stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """A stage reaches another only by name (xtts_ft.stages.load); the registry itself imports none."""
    stages = {name for name in graph if name.startswith("xtts_ft.stages.")}
    importers = stages | {"xtts_ft.stages"}
    return sorted(f"{name} → {target}" for name in importers for target in graph.get(name, ()) if target in stages)


def data_leaks(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} → {target}"
        for name, targets in graph.items()
        if name == "xtts_ft.data" or name.startswith("xtts_ft.data.")
        for target in targets
        if not (target == "xtts_ft.data" or target.startswith("xtts_ft.data.") or target in DATA_MAY_IMPORT)
    )


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """Depth-first search over every import; a cycle comes back as the modules around it."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str):
        state[name] = "open"
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return []


def modules_over(limit: int, sources: dict[str, str]) -> list[str]:
    """`sources`: where → source text."""
    return [
        f"{where} ({len(text.splitlines())} lines)"
        for where, text in sources.items()
        if len(text.splitlines()) > limit
    ]


def functions_longer_than(limit: int, sources: dict[str, str], only_methods: bool = False) -> list[str]:
    """`sources`: where → source text; `only_methods`: only the functions defined in a class body."""
    long = []
    for where, text in sources.items():
        tree = ast.parse(text)
        nodes = (
            [n for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body]
            if only_methods
            else ast.walk(tree)
        )
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    return long


def misplaced_rooms(package: Path) -> list[str]:
    """evaluation/ and inference/ are packages, and the modules they replaced are gone."""
    wrong = [
        f"{package.name}/{room}/ is not a package"
        for room in PACKAGES
        if not (package / room / "__init__.py").is_file()
    ]
    wrong += [f"{package.name}/{old}.py remains" for old in GONE if (package / f"{old}.py").exists()]
    return wrong


def sources_of(paths) -> dict[str, str]:
    return {str(path.relative_to(PACKAGE.parent)): path.read_text(encoding="utf-8") for path in paths}


# The package as it is.


def test_every_arrow_points_down():
    upward = upward_arrows(GRAPH)
    assert not upward, "imports against the layering (ARCHITECTURE.md):\n" + "\n".join(upward)


def test_no_stage_imports_another_stage():
    crossing = stage_to_stage_imports(GRAPH)
    assert not crossing, "a stage reaches another only by name (xtts_ft.stages.load):\n" + "\n".join(crossing)


def test_data_imports_nothing_above_it():
    leaks = data_leaks(GRAPH)
    assert not leaks, "data/ may import only data/, errors, io_utils and model.constants:\n" + "\n".join(leaks)


def test_no_import_cycle():
    cycle = import_cycle(GRAPH)
    assert not cycle, "import cycle: " + " → ".join(cycle)


def test_stage_modules_only_orchestrate():
    """A stage checks its settings, calls the library and writes its outputs: the logic lives below it."""
    heavy = modules_over(STAGE_CEILING, sources_of((PACKAGE / "stages").glob("*.py")))
    why = f"stage modules over {STAGE_CEILING} lines: move their logic into data/, model/, evaluation/, train/"
    assert not heavy, why + "\n" + "\n".join(heavy)


def test_evaluation_and_inference_are_packages():
    wrong = misplaced_rooms(PACKAGE)
    assert not wrong, "\n".join(wrong)


def test_no_function_longer_than_80_lines():
    long = functions_longer_than(FUNCTION_CEILING, sources_of(PACKAGE.rglob("*.py")))
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_training_recipe_methods_fit_on_a_screen():
    """torchtune's recipes: setup / load_state / train / save_state / cleanup, each readable at once."""
    long = functions_longer_than(
        RECIPE_METHOD_CEILING, sources_of((PACKAGE / "train").rglob("*.py")), only_methods=True
    )
    assert not long, f"recipe methods longer than {RECIPE_METHOD_CEILING} lines:\n" + "\n".join(long)


# The rules, fed violations made up for them.


def with_edge(graph: dict[str, set[str]], source: str, target: str) -> dict[str, set[str]]:
    """A copy of `graph` where `source` also imports `target`."""
    changed = {name: set(targets) for name, targets in graph.items()}
    changed.setdefault(source, set()).add(target)
    changed.setdefault(target, set())
    return changed


def newly_reported(rule, graph, source: str, target: str) -> set[str]:
    """What `rule` reports once `source` imports `target`, beyond what it reports on `graph` alone."""
    return set(rule(with_edge(graph, source, target))) - set(rule(graph))


def function_of(lines: int) -> str:
    return "def long():\n" + "    x = 1\n" * (lines - 1)


def test_the_checks_above_catch_what_they_look_for(tmp_path):
    """Every rule reports a violation made up for it, and only that one; the real package passes (above)."""
    assert layer_of("xtts_ft.data.text") == (2, "data") and layer_of("xtts_ft.stages.prepare")[1] == "stages"
    assert layer_of("xtts_ft.model.constants") == (1, "model.constants")
    assert layer_of("xtts_ft.serving.app")[0] == layer_of("xtts_ft.train.gpt")[0] + 1
    assert layer_of("xtts_ft.stages.export")[0] == layer_of("xtts_ft.serving")[0] + 1

    # The parser sees a lazy import inside a function, and refuses a relative one.
    lazy = "import os\n\ndef f():\n    from xtts_ft.stages import prepare\n    import xtts_ft.model.tokenizer\n"
    assert imports_in(lazy, MODULES) == {"xtts_ft.stages.prepare", "xtts_ft.model.tokenizer"}
    assert imports_in("from xtts_ft.config import compose\n", MODULES) == {"xtts_ft.config"}
    try:
        imports_in("from .audio import load_audio\n", MODULES, "xtts_ft/data/x.py")
    except AssertionError as error:
        assert "xtts_ft/data/x.py:1: relative import" in str(error)
    else:
        raise AssertionError("a relative import went unnoticed")

    # An upward arrow (data → stages) and a sideways one between rooms of one layer (model → config).
    upward = newly_reported(upward_arrows, GRAPH, "xtts_ft.data.sample", "xtts_ft.stages.prepare")
    assert upward == {"xtts_ft.data.sample → xtts_ft.stages.prepare"}
    assert newly_reported(upward_arrows, GRAPH, "xtts_ft.model.card", "xtts_ft.config") == {
        "xtts_ft.model.card → xtts_ft.config"
    }
    assert not newly_reported(upward_arrows, GRAPH, "xtts_ft.stages.export", "xtts_ft.model.card")  # down is fine

    # A stage importing another, and the registry importing one.
    crossing = newly_reported(stage_to_stage_imports, GRAPH, "xtts_ft.stages.export", "xtts_ft.stages.prepare")
    assert crossing == {"xtts_ft.stages.export → xtts_ft.stages.prepare"}
    assert newly_reported(stage_to_stage_imports, GRAPH, "xtts_ft.stages", "xtts_ft.stages.synth") == {
        "xtts_ft.stages → xtts_ft.stages.synth"
    }

    # data/ importing model/ (beyond model.constants).
    leak = newly_reported(data_leaks, GRAPH, "xtts_ft.data.batches", "xtts_ft.model.tokenizer")
    assert leak == {"xtts_ft.data.batches → xtts_ft.model.tokenizer"}
    assert not newly_reported(data_leaks, GRAPH, "xtts_ft.data.batches", "xtts_ft.model.constants")

    # A cycle of two, and one closed through the real graph (cli imports errors).
    assert import_cycle({"xtts_ft.model.a": {"xtts_ft.model.b"}, "xtts_ft.model.b": {"xtts_ft.model.a"}}) == [
        "xtts_ft.model.a",
        "xtts_ft.model.b",
        "xtts_ft.model.a",
    ]
    assert import_cycle({"xtts_ft.model.a": {"xtts_ft.model.b"}, "xtts_ft.model.b": set()}) == []
    assert "xtts_ft.errors" in GRAPH["xtts_ft.cli"]
    cycle = import_cycle(with_edge(GRAPH, "xtts_ft.errors", "xtts_ft.cli"))
    assert cycle[0] == cycle[-1] and {"xtts_ft.errors", "xtts_ft.cli"} <= set(cycle)

    # A stage module one line over its ceiling; one at the ceiling passes.
    at, over = "x = 1\n" * STAGE_CEILING, "x = 1\n" * (STAGE_CEILING + 1)
    assert modules_over(STAGE_CEILING, {"stages/fat.py": over, "stages/thin.py": at}) == ["stages/fat.py (151 lines)"]

    # A function one line over its ceiling (a method, for the recipes' rule); one at the ceiling passes.
    assert functions_longer_than(FUNCTION_CEILING, {"x.py": function_of(81), "y.py": function_of(80)}) == [
        "x.py:1 long (81 lines)"
    ]
    recipe = "class Recipe:\n" + "".join("    " + line + "\n" for line in function_of(61).splitlines())
    assert functions_longer_than(RECIPE_METHOD_CEILING, {"r.py": recipe}, only_methods=True) == [
        "r.py:2 long (61 lines)"
    ]
    assert not functions_longer_than(RECIPE_METHOD_CEILING, {"r.py": function_of(61)}, only_methods=True)

    # evaluation/ as a bare directory, no inference/ at all, and top-level modules left behind.
    fake = tmp_path / "xtts_ft"
    (fake / "evaluation").mkdir(parents=True)
    for old in ("asr", "inference"):
        (fake / f"{old}.py").write_text("")
    assert misplaced_rooms(fake) == [
        "xtts_ft/evaluation/ is not a package",
        "xtts_ft/inference/ is not a package",
        "xtts_ft/asr.py remains",
        "xtts_ft/inference.py remains",
    ]
    (fake / "evaluation" / "__init__.py").write_text("")
    (fake / "inference").mkdir()
    (fake / "inference" / "__init__.py").write_text("")
    (fake / "asr.py").unlink()
    (fake / "inference.py").unlink()
    assert misplaced_rooms(fake) == []
