"""The benchmark scripts import what exists: every ``from edgetl... import name`` in ``benchmarks/*.py`` names a
module and an attribute that are there (read from the source, so no benchmark runs and no heavy import is paid
beyond edgetl's own modules)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_a_benchmark_imports_only_names_that_exist(script):
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("edgetl"):
            module = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                        and not (hasattr(module, "__path__")      # a package's submodule, not yet imported
                                 and importlib.util.find_spec(f"{node.module}.{a.name}") is not None)]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("edgetl") and importlib.util.find_spec(alias.name) is None:
                    missing.append(alias.name)
    assert missing == []


def test_the_check_sees_a_missing_name(tmp_path, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("from edgetl.runtime.inference.model import runnable_backends\n")
    with pytest.raises(AssertionError, match="runnable_backends"):
        test_a_benchmark_imports_only_names_that_exist(bad)
