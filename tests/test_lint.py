"""Static checks: no unused imports or undefined names; the library never imports the recipes; no import cycle."""
from __future__ import annotations

import ast
from pathlib import Path

from pyflakes.api import checkPath
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cllm4rec", "trainer", "data_prep", "ray_jobs", "benchmarks")


class _Collect(Reporter):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def flake(self, message) -> None:  # noqa: D401 (pyflakes callback)
        self.messages.append(str(message))

    def syntaxError(self, filename, msg, lineno, offset, text) -> None:
        self.messages.append(f"{filename}:{lineno}: {msg}")

    def unexpectedError(self, filename, msg) -> None:
        self.messages.append(f"{filename}: {msg}")


def test_pyflakes_clean():
    reporter = _Collect()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            checkPath(str(path), reporter)
    assert reporter.messages == []


def test_library_imports_neither_trainer_nor_data_prep():
    for path in sorted((ROOT / "cllm4rec").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("trainer", "data_prep", "ray_jobs") for n in names), path


CYCLE_PACKAGES = ("trainer", "cllm4rec", "data_prep")


def _module_name(path: Path) -> str:
    """trainer/checkpoint.py → 'trainer.checkpoint', cllm4rec/baselines/__init__.py → 'cllm4rec.baselines'."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_time_imports(path: Path) -> set[str]:
    """The modules `path` imports when it is imported: statements at module level (inside top-level `if`
    and `try` blocks too, but not under `if TYPE_CHECKING:`), relative imports resolved; for
    `from a import b`, both 'a' and 'a.b' (b may be a submodule)."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [node.module])]) \
                    if node.level else node.module
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (module → modules it imports) as [a, b, ..., a], or None when it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for imported in sorted(graph[module]):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    return next(filter(None, map(visit, sorted(graph))), None)


def test_import_cycle_finder_finds_a_cycle_and_only_one():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_the_packages():
    """Module-level imports among trainer/, cllm4rec/ and data_prep/ form no cycle (an import deferred into
    a function to dodge one hides a tangle; the graph's edges are only the packages' own modules)."""
    paths = {_module_name(p): p for package in CYCLE_PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}
    graph = {name: import_time_imports(path) & set(paths) - {name} for name, path in paths.items()}
    assert "trainer.checkpoint" in graph["trainer.serving"] and "trainer.serving" in graph["trainer.pipeline"]
    assert "cllm4rec.templates" in graph["cllm4rec.tokenization"]  # `from .templates import ...`
    assert import_cycle(graph) is None, " → ".join(import_cycle(graph))
