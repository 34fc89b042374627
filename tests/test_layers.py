"""The project's shape: imports point one way (CLI -> experiments / service -> library), with no cycle.

The graph is read from the source (ast), so imports inside functions and under
``if __name__ == "__main__"`` count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dynbn", "simulator", "streamer")
UPPER = ("dynbn.cli", "dynbn.experiments", "simulator", "streamer")  # what the library may never import


def modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported dotted name lives in (a module, else its closest package), or None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            # ``from pkg import name`` imports the module pkg.name when there is one, else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out |= {m for t in targets if (m := _resolve(t, known)) and m != module}
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {m: imports(m, p, known) for m, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def _in(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles (a cycle means a piece sits in the wrong layer): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_library_imports_neither_cli_nor_experiments_nor_service():
    bad = [f"{m} imports {t}" for m, targets in graph().items() if m.startswith("dynbn") and not _in(m, UPPER)
           for t in sorted(targets) if _in(t, UPPER)]
    assert not bad, "the library must not import the layers above it: " + "; ".join(bad)


def test_service_and_experiments_do_not_import_the_cli():
    bad = [f"{m} imports {t}" for m, targets in graph().items() if _in(m, UPPER) and not _in(m, ("dynbn.cli",))
           for t in sorted(targets) if _in(t, ("dynbn.cli",))]
    assert not bad, "only the CLI imports the CLI: " + "; ".join(bad)


def test_streamer_never_imports_simulator():
    bad = [f"{m} imports {t}" for m, targets in graph().items() if _in(m, ("streamer",))
           for t in sorted(targets) if _in(t, ("simulator",))]
    assert not bad, "the simulator uses the streamer's wire format and transports, never the other way: " + "; ".join(bad)


@pytest.mark.parametrize("source, expect", [
    ({"a/__init__.py": "", "a/x.py": "from . import y\n", "a/y.py": "def f():\n    from .x import g\n"}, [["a.x", "a.y"]]),
    ({"a/__init__.py": "", "a/x.py": "from .y import f\n", "a/y.py": "import math\n"}, []),
])
def test_the_check_sees_imports_inside_functions(tmp_path, source, expect):
    for name, text in source.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    known = modules(tmp_path, ("a",))
    assert cycles({m: imports(m, p, known) for m, p in known.items()}) == expect
