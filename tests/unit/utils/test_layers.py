"""
The helpers in ``salt/_utils`` sit in layers that only import downward: the bottom
(errors, version, settings, paths, files, commands, probes, manifest, settings files, shared files), the
middle (history, lock, events, naming, notify, freeze, environment, git, python, virtualenv, hooks,
supervisor, privileges), the top (releases, layout, health, webapp, processes, cron, remove), then the pipeline and the
check. Parsed from the sources, so an upward or circular import fails here, not at
some call's run time.
"""

import ast
import pathlib

UTILS = pathlib.Path(__file__).resolve().parents[3] / "salt" / "_utils"

LAYERS = [
    {"errors", "version", "settings", "paths", "files", "commands", "probes", "manifest", "settings_file", "shared"},
    {
        "history",
        "lock",
        "events",
        "naming",
        "freeze",
        "environment",
        "git",
        "virtualenv",
        "hooks",
        "supervisor",
        "privileges",
        "python",
        "notify",
    },
    {"releases", "layout", "health", "webapp", "processes", "cron", "remove"},
    {"pipeline", "check"},
]


def imports():
    """{helper: the helpers it imports}, from each file's import statements (anywhere in it)."""
    found = {}
    for path in sorted(UTILS.glob("vumi_*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        found[path.stem.removeprefix("vumi_")] = {n.removeprefix("vumi_") for n in names if n.startswith("vumi_")}
    return found


def layer(name):
    (index,) = [i for i, names in enumerate(LAYERS) if name in names]
    return index


def test_every_helper_has_a_layer():
    placed = set().union(*LAYERS)
    assert set(imports()) == placed, f"not placed: {set(imports()) - placed}; gone: {placed - set(imports())}"


def test_no_helper_imports_one_above_it():
    upward = [f"vumi_{a} (layer {layer(a)}) imports vumi_{b} (layer {layer(b)})"
              for a, deps in imports().items() for b in sorted(deps) if layer(b) > layer(a)]  # fmt: skip
    assert not upward, upward


def test_no_import_cycle():
    graph = imports()
    state, cycles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(trail[trail.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, trail + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
