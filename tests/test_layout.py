"""The package's shape holds (design.md, "Layout"): arrows point down only, no import cycle, no
stage imports another stage, data/ imports nothing above it, and functions stay short enough to
read. Read from the source with `ast` (every import, module-level or inside a function), so a
lazy import cannot hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xtts_ft"

# Lower layers first. A module may import its own layer's package (data → data) and any lower layer.
LAYERS = (
    ("errors",),  # the user's mistakes, by type: imported by every layer
    ("io_utils", "model.constants"),  # leaves: atomic writes and locks; rates and hops
    ("data",),  # Samples, manifests, audio, formatters, cleaners, batches, samplers
    ("model", "config"),  # loading, tokenizer, decoder framing, LoRA, model cards; the config schema
    ("inference",),  # the one synthesis path
    ("evaluation",),  # ASR, metrics, transcript validation, scoring checkpoints (through inference)
    ("train",),  # the training recipes and what they share
    ("stages",),  # one thin module per verb
    ("cli",),  # the command line, which reaches the stages
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """The xtts_ft modules `name` imports, anywhere in its source."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{MODULES[name]}:{node.lineno}: relative import; write the absolute xtts_ft.… path")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xtts_ft":
            for alias in node.names:  # `from xtts_ft.stages import evaluate` imports a module
                as_module = f"{node.module}.{alias.name}"
                found.add(as_module if as_module in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "xtts_ft")
    found.discard(name)
    # The package root only re-exports lazily (`compose`, `XttsSynthesizer`) and holds __version__.
    found.discard("xtts_ft")
    return found


def layer_of(name: str) -> tuple[int, str]:
    """(layer index, the layer entry that owns `name`), e.g. xtts_ft.data.text → (1, "data")."""
    short = name.removeprefix("xtts_ft.")
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            if short == entry or short.startswith(entry + "."):
                return index, entry
    raise AssertionError(f"{name} belongs to no layer of test_layout.LAYERS: place it there (and in design.md)")


GRAPH = {name: imports_of(name) for name in MODULES if name != "xtts_ft"}


def test_every_arrow_points_down():
    upward = []
    for name, targets in GRAPH.items():
        level, owner = layer_of(name)
        for target in targets:
            target_level, target_owner = layer_of(target)
            if target_level > level or (target_level == level and target_owner != owner):
                upward.append(f"{name} → {target}")
    assert not upward, "imports against the layering (design.md, Layout):\n" + "\n".join(sorted(upward))


def test_no_stage_imports_another_stage():
    stages = {name for name in GRAPH if name.startswith("xtts_ft.stages.")}
    crossing = [f"{name} → {target}" for name in stages for target in GRAPH[name] if target in stages]
    assert not crossing, "a stage reaches another only by name (xtts_ft.stages.load):\n" + "\n".join(crossing)
    # The registry itself imports no stage either: it loads them by name.
    assert not GRAPH["xtts_ft.stages"] & stages


def test_data_imports_nothing_above_it():
    allowed = {"xtts_ft.errors", "xtts_ft.io_utils", "xtts_ft.model.constants"}
    leaks = [
        f"{name} → {target}"
        for name, targets in GRAPH.items()
        if name.startswith("xtts_ft.data")
        for target in targets
        if not (target.startswith("xtts_ft.data") or target in allowed)
    ]
    assert not leaks, "data/ may import only data/, io_utils and model.constants:\n" + "\n".join(leaks)


def test_no_import_cycle():
    """Depth-first search over every import; a cycle is printed as the modules around it."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str):
        state[name] = "open"
        path.append(name)
        for target in sorted(GRAPH.get(name, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = "done"
        return None

    for name in sorted(GRAPH):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checks_above_catch_what_they_look_for():
    """The rules see real violations: an upward arrow, a stage-to-stage import, a cycle."""
    assert layer_of("xtts_ft.data.text") == (2, "data") and layer_of("xtts_ft.stages.prepare")[1] == "stages"
    assert layer_of("xtts_ft.model.constants") == (1, "model.constants")
    down, up = layer_of("xtts_ft.stages.export")[0], layer_of("xtts_ft.model.loading")[0]
    assert down > up
    assert "xtts_ft.model.card" in GRAPH["xtts_ft.stages.export"]  # `from xtts_ft.model.card import model_card`
    assert "xtts_ft.config" in GRAPH["xtts_ft.stages"]


def functions_longer_than(limit: int, paths, only_methods: bool = False) -> list[str]:
    long = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = (
            [n for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for n in c.body]
            if only_methods
            else ast.walk(tree)
        )
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return long


def test_no_function_longer_than_80_lines():
    long = functions_longer_than(80, PACKAGE.rglob("*.py"))
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_training_recipe_methods_fit_on_a_screen():
    """torchtune's recipes: setup / load_state / train / save_state / cleanup, each readable at once."""
    long = functions_longer_than(60, (PACKAGE / "train").rglob("*.py"), only_methods=True)
    assert not long, "recipe methods longer than 60 lines:\n" + "\n".join(long)
