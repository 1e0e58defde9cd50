"""The import structure of geotm's packages, read from their source (AST), not by importing them:
no module imports in a cycle (every module-level import counts, those under TYPE_CHECKING too: a
cycle of types is still a cycle of knowledge), and no import sits inside a function unless its line
says, in a comment containing "start-up", which start-up time it saves."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dnsd", "probes", "standin", "drills")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _functions_and_classes(tree: ast.AST):
    return (node for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)))


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: anywhere outside function (and class) bodies."""
    nested = {id(sub) for node in _functions_and_classes(tree) for sub in ast.walk(node) if sub is not node}
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in nested]


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool,
                     known: set[str]) -> set[str]:
    """The project modules an import statement names (`from dnsd import admin` names dnsd.ops.admin)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = set()
    for name in names:
        while name and name not in known:  # `import dnsd.config.reader as r`, an unknown attribute...
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = set()
        for node in module_level_imports(tree):
            edges |= imported_modules(node, name, path.name == "__init__.py", known)
        edges.discard(name)
        # a package's own __init__ importing its submodules is how packages work, not a loop
        graph[name] = {m for m in edges if not (name.startswith(m + ".") and (files[m].name == "__init__.py"))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def imports_inside_functions(path: Path) -> list[str]:
    """'file:line: statement' for every import in a function body whose lines carry no comment
    containing "start-up"."""
    text = path.read_text()
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    lines = text.splitlines()
    bad = []
    tree = ast.parse(text, str(path))
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                span = range(node.lineno, (node.end_lineno or node.lineno) + 1)
                if not any("start-up" in comments.get(line, "") for line in span):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return sorted(set(bad))


# -- the checkers themselves, on small made-up sources ------------------------------------------------

CYCLE_CASES = [
    # (modules: name -> source, a cycle expected)
    ({"p.a": "from p import b", "p.b": "import p.c", "p.c": ""}, False),
    ({"p.a": "from p import b", "p.b": "from p.a import x", "p.c": ""}, True),
    ({"p.a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import B",
      "p.b": "from p.a import A", "p.c": ""}, True),                        # a cycle of types counts
    ({"p.a": "def f():\n    from p.b import x  # start-up: b is heavy", "p.b": "from p.a import f",
      "p.c": ""}, False),                                                    # function-level: not at import time
    ({"p.a": "from . import b", "p.b": "from .a import f", "p.c": ""}, True),  # relative imports
    ({"p.a": "import p.b as bee", "p.b": "from p.c import x", "p.c": "from p.a import y"}, True),
]


@pytest.mark.parametrize("modules, cyclic", CYCLE_CASES)
def test_the_cycle_finder(tmp_path, monkeypatch, modules, cyclic):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path, raising=False)
    files = {}
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "__init__.py").write_text("")
    files["p"] = tmp_path / "p" / "__init__.py"
    for name, source in modules.items():
        path = tmp_path / (name.replace(".", "/") + ".py")
        path.write_text(source + "\n")
        files[name] = path
    assert (find_cycle(import_graph(files)) is not None) == cyclic


FUNCTION_IMPORT_CASES = [
    # (source, flagged)
    ("import json\ndef f():\n    return json", False),
    ("def f():\n    import json\n    return json", True),
    ("def f():\n    import json  # saves start-up time: only `x` needs it\n    return json", False),
    ("def f():\n    import json  # lazy\n    return json", True),                  # a comment, but no reason
    ("async def f():\n    from a import (b,\n        c)  # start-up: a is heavy\n", False),
    ("class C:\n    def m(self):\n        import json\n", True),
]


@pytest.mark.parametrize("source, flagged", FUNCTION_IMPORT_CASES)
def test_the_function_import_finder(tmp_path, monkeypatch, source, flagged):
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path, raising=False)
    path = tmp_path / "m.py"
    path.write_text(source + "\n")
    assert bool(imports_inside_functions(path)) == flagged


# -- the project --------------------------------------------------------------------------------------

def test_no_module_imports_in_a_cycle():
    graph = import_graph(sources())
    assert len(graph) > 40  # the scan found the packages
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_inside_a_function_without_a_start_up_reason(package):
    bad = [line for path in sorted((ROOT / package).rglob("*.py")) for line in imports_inside_functions(path)]
    assert not bad, "imports inside functions with no '# start-up: ...' reason:\n" + "\n".join(bad)


@pytest.mark.parametrize("importer", ["probes", "standin"])
def test_probes_and_standin_do_not_import_the_dns_listeners(importer):
    graph = import_graph(sources())
    reached, todo = set(), [m for m in graph if m == importer or m.startswith(importer + ".")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    assert not reached & {"dnsd.protocol.server", "dnsd.protocol.udp", "dnsd.protocol.tcp"}


# dnsd's folders in the order of ARCHITECTURE.md's flow: a module may import from its own folder and
# from folders later in this list, never earlier ones (the top-level shared values come last)
DNSD_LAYERS = ("cli", "app", "ops", "serving", "forward", "protocol", "answers", "cluster", "routing", "config",
               "model", "records", "names", "common")


def dnsd_layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_dnsd_folders_import_one_way():
    graph = import_graph(sources())
    rank = {layer: index for index, layer in enumerate(DNSD_LAYERS)}
    backwards = sorted(f"{importer} -> {imported}" for importer, edges in graph.items()
                       if importer.startswith("dnsd.") and dnsd_layer(importer) in rank
                       for imported in edges if imported.startswith("dnsd.") and dnsd_layer(imported) in rank
                       and rank[dnsd_layer(imported)] < rank[dnsd_layer(importer)])
    assert not backwards, "imports against ARCHITECTURE.md's flow:\n" + "\n".join(backwards)


def test_every_dnsd_folder_has_a_layer():
    folders = {path.parent.name if path.parent.name != "dnsd" else path.stem
               for path in (ROOT / "dnsd").rglob("*.py")} - {"__init__", "__main__"}
    assert folders <= set(DNSD_LAYERS), f"place these in DNSD_LAYERS: {sorted(folders - set(DNSD_LAYERS))}"
