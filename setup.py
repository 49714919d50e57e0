"""Which folders become which packages, found by walking the tree (issue 26: a hand-kept list in pyproject.toml
missed ``edgetl/selection/`` and the wheel shipped without it).

The metadata stays in pyproject.toml; this file only maps the four top-level folders onto their import names and
hands setuptools every folder below them as a package, with every file that is not Python source as its package
data. So a new sub-package, or a data file moved into another folder, is in the sdist and the wheel without
anyone editing a list; ``tests/test_wheel.py`` compares what the built wheel holds with what git tracks.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent
#: top-level folder -> the import name it is installed as
ROOTS = {"edgetl": "edgetl", "exporters": "edgetl.exporters", "runtime": "edgetl.runtime", "devices": "edgetl.devices"}
#: never shipped: interpreter caches (hidden folders such as .mypy_cache are skipped as well)
CACHE_DIRS = {"__pycache__"}
CACHE_SUFFIXES = {".pyc", ".pyo"}


def _ignored(root: Path) -> set[Path]:
    """Files and folders git ignores under the mapped roots (a device's timings, editors' leftovers), when this is a
    git checkout; an sdist has no such files, and no git."""
    if not (root / ".git").exists():
        return set()
    try:
        out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--directory", "-z",
                              *ROOTS], cwd=root, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {(root / name.rstrip("/")).resolve() for name in out.decode().split("\0") if name}


def _shipped(path: Path, ignored: set[Path]) -> bool:
    return not path.name.startswith(".") and path.name not in CACHE_DIRS and path.resolve() not in ignored


def discover(root: Path = HERE) -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    """``packages``, ``package_dir`` and ``package_data`` for ``setup()``: every folder under a mapped root is a
    package (with or without ``__init__.py``, so a data-only folder such as ``runtime/data/datasets/`` counts), and each
    of its files other than ``.py`` and caches is its data, named exactly."""
    packages, package_dir, package_data = [], {}, {}
    ignored = _ignored(root)
    for folder, name in ROOTS.items():
        package_dir[name] = folder
        pending = [root / folder]
        while pending:
            directory = pending.pop()
            package = ".".join([name, *directory.relative_to(root / folder).parts])
            packages.append(package)
            entries = sorted(p for p in directory.iterdir() if _shipped(p, ignored))
            pending.extend(p for p in entries if p.is_dir())
            data = [p.name for p in entries if p.is_file() and p.suffix not in {".py", *CACHE_SUFFIXES}]
            if data:
                package_data[package] = data
    return sorted(packages), package_dir, package_data


found_packages, found_dirs, found_data = discover()
setup(packages=found_packages, package_dir=found_dirs, package_data=found_data)
