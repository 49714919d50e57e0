"""The house rules of the runtime, read from the source: its folder is grouped by job into floors, and a module
imports only from its own floor or the floors below it (data and bundle below engines, engines below inference,
inference below learning, learning below serving, tools and CLI on top), so the device core never imports its tools
or its CLI; nothing in the runtime imports the host side or a host library, and no module takes part in an import
circle.  A predict in a fresh interpreter loads no tools module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtime"
#: Packages only the host installs: the runtime must run without every one of them.
HOST_LIBRARIES = {"torch", "onnx", "onnxscript", "torchvision", "timm", "sklearn", "nncf", "transformers"}
#: The runtime's floors, lowest first.  The foundation is the runtime folder's own modules; each other floor is a
#: sub-package (the CLI includes ``python -m edgetl.runtime``).
FLOORS = ("foundation", "data", "bundle", "engines", "inference", "learning", "serving", "tools", "cli")
#: What the runtime folder itself holds: the foundation every floor may use, and the package's entry points.
FOUNDATION = {"errors", "deps", "progress", "fsutil", "documents", "machine", "metrics", "exports", "compat",
              "signing"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["edgetl", "runtime", *parts])


def runtime_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(RUNTIME.rglob("*.py"))}


def imports_of(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported name, at module level) for every import of the file, relative ones resolved.  For
    ``from X import Y`` both ``X`` and ``X.Y`` are listed: Y may be a module (``from edgetl import finetune``)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((target, id(node) in top_level))
            found += [(f"{target}.{alias.name}", id(node) in top_level) for alias in node.names]
    return found


def layer(module: str) -> str:
    """The floor of a module of ours: one of :data:`FLOORS`, ``devices`` (the device profiles: torch-free, over the
    foundation, read by tools), ``host``, or ``library`` for anything not ours."""
    if module == "edgetl.runtime.__main__":
        return "cli"
    if module == "edgetl.runtime" or module.startswith("edgetl.runtime."):
        parts = module.split(".")
        if len(parts) == 2 or parts[2] in FOUNDATION:
            return "foundation"
        return parts[2] if parts[2] in FLOORS else "unknown"
    if module.startswith("edgetl.devices") or module == "edgetl":
        return "devices"          # torch-free and tiny: the package's own __init__ and the device profiles
    if module.startswith("edgetl."):
        return "host"
    return "library"


def allowed(importer: str, target: str) -> bool:
    """Whether a module on floor ``importer`` may import one on floor ``target``."""
    if importer == "devices":
        return target in ("foundation", "devices")
    if target == "devices":
        return importer in ("tools", "cli")
    if importer not in FLOORS or target not in FLOORS:
        return False
    return FLOORS.index(target) <= FLOORS.index(importer)


DEVICES = ROOT / "devices" / "__init__.py"


def test_floors_import_only_downwards():
    problems = []
    for name, path in {**runtime_modules(), "edgetl.devices": DEVICES}.items():
        for target, _ in imports_of(name, path):
            if layer(target) == "library":
                if target.split(".")[0] in HOST_LIBRARIES:
                    problems.append(f"{name} imports the host library {target}")
            elif not allowed(layer(name), layer(target)):
                problems.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
    assert problems == []


def test_every_runtime_module_has_a_floor():
    """A module added at the top of the runtime folder, or in a new sub-package, must be given its floor here."""
    assert {name: layer(name) for name in runtime_modules() if layer(name) not in FLOORS} == {}
    assert {p.stem for p in RUNTIME.glob("*.py")} - {"__init__", "__main__"} == FOUNDATION


def test_each_folder_says_what_lives_in_it():
    """Every runtime package opens with a docstring whose first line says what it holds."""
    for init in RUNTIME.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.splitlines()[0]) > 20, init


def test_the_floors_hold_in_both_directions():
    """The rule is not vacuous: a lower floor importing a higher one is refused, the other way allowed."""
    assert not allowed("data", "bundle") and not allowed("engines", "learning") and not allowed("learning", "serving")
    assert not allowed("serving", "tools") and not allowed("bundle", "engines") and not allowed("inference", "cli")
    assert allowed("learning", "inference") and allowed("engines", "bundle") and allowed("cli", "tools")
    assert allowed("tools", "devices") and not allowed("engines", "devices") and not allowed("devices", "data")


def test_the_rule_checker_sees_a_violation(tmp_path):
    """The checker is not vacuous: a learning module importing a tool, the CLI, serving or the host is caught, with
    relative imports resolved from its own package."""
    bad = tmp_path / "bad.py"
    bad.write_text("from ..tools.bench import run_matrix\nfrom edgetl.finetune import finetune\n"
                   "from edgetl import exporters\nfrom edgetl.runtime import tools\nfrom ..serving import http\n"
                   "from ..inference.model import EdgeModel\n"
                   "def f():\n    from ..cli import main\n")
    found = {target for target, _ in imports_of("edgetl.runtime.learning.bad", bad)}
    assert {"edgetl.runtime.tools.bench", "edgetl.finetune", "edgetl.exporters", "edgetl.runtime.tools",
            "edgetl.runtime.cli", "edgetl.runtime.serving.http", "edgetl.runtime.inference.model"} <= found
    assert {layer(t) for t in found} >= {"tools", "host", "cli", "serving", "inference"}
    refused = {t for t in found if not allowed("learning", layer(t)) and layer(t) != "library"}
    assert refused >= {"edgetl.runtime.tools.bench", "edgetl.finetune", "edgetl.exporters",
                       "edgetl.runtime.serving.http", "edgetl.runtime.cli"}
    assert "edgetl.runtime.inference.model" not in refused


def test_no_import_circles():
    """No cycle among the runtime's modules, counting imports inside functions too."""
    modules = runtime_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for target, _ in imports_of(name, path):
            while target and target not in modules:     # `from .x import name` names a module or an attribute
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):   # a package's own __init__
                targets.add(target)
        graph[name] = targets
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


PREDICT = textwrap.dedent("""
    import json, sys
    from edgetl.runtime.cli import main
    try:
        main(sys.argv[1:], standalone_mode=False)
    finally:
        loaded = sorted(m for m in sys.modules if m.startswith("edgetl"))
        print(json.dumps(loaded), file=sys.stderr)
""")


def test_predict_loads_no_tools_module(digits_bundle, digits_folder):
    image = sorted((digits_folder / "val" / "4").glob("*.png"))[0]
    out = subprocess.run([sys.executable, "-c", PREDICT, "predict", str(digits_bundle.bundle), str(image), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stderr.strip().splitlines()[-1])
    assert "edgetl.runtime.inference.model" in loaded
    assert [m for m in loaded if layer(m) in ("tools", "host")] == []


@pytest.mark.parametrize("module", ["edgetl", "edgetl.runtime"])
def test_python_dash_m_runs_each_cli(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
