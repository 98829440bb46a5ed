"""Static checks: no unused imports or undefined names; the library never imports the recipes."""
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
