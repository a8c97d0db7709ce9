"""The house: no import circle among mea's modules (lazy imports inside functions count too), no
module over 800 lines, and a public API that is what `mea/__init__.py` says it is."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MAX_LINES = 800


def import_graph() -> dict[str, set[str]]:
    """Module -> the mea modules it imports anywhere (TYPE_CHECKING blocks aside); a submodule's
    import imports its packages too."""
    modules = {}
    for path in (SRC / "mea").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for sub in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                for end in range(2, len(parts) + 1):  # the package chain, "mea" itself aside
                    module = ".".join(parts[:end])
                    if module in modules and module != name:
                        graph[name].add(module)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50 and "mea.config" in graph
    assert cycles(graph) == []
    # The configuration records import no attack, oracle or defense code.
    assert not {m for m in graph["mea.config"] if m.startswith(("mea.attacks", "mea.oracle", "mea.defenses"))}


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_800_lines():
    files = [*(SRC / "mea").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    long = {str(path.relative_to(ROOT)): n for path in files if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert len(files) > 100 and long == {}


def test_the_public_api_is_documented_and_loads_lazily():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, mea; print(len(sys.modules.get('torch') is None and mea.__all__));"
            "import inspect; print(all(inspect.getdoc(getattr(mea, n)) for n in mea.__all__))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    count, documented = done.stdout.split()
    assert int(count) >= 8 and documented == "True"
