"""The house rules of the runtime, read from the source: the device core never imports its tools or its CLI,
tools never import the CLI, nothing in the runtime imports the host side or a host library, and no module
takes part in an import circle.  A predict in a fresh interpreter loads no tools module."""

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
    if module.startswith("edgetl.runtime.cli") or module == "edgetl.runtime.__main__":
        return "cli"
    if module.startswith("edgetl.runtime.tools"):
        return "tools"
    if module.startswith("edgetl.runtime"):
        return "core"
    if module.startswith("edgetl.devices") or module == "edgetl":
        return "devices"          # torch-free and tiny: the package's own __init__ and the device profiles
    if module == "edgetl" or module.startswith("edgetl."):
        return "host"
    return "library"


ALLOWED = {"core": {"core", "devices"}, "tools": {"core", "tools", "devices"},
           "cli": {"core", "tools", "cli", "devices"}, "devices": {"core", "devices"}}
DEVICES = ROOT / "devices" / "__init__.py"


def test_layers_import_only_downwards():
    problems = []
    for name, path in {**runtime_modules(), "edgetl.devices": DEVICES}.items():
        for target, _ in imports_of(name, path):
            if layer(target) == "library":
                if target.split(".")[0] in HOST_LIBRARIES:
                    problems.append(f"{name} imports the host library {target}")
            elif layer(target) not in ALLOWED[layer(name)]:
                problems.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
    assert problems == []


def test_the_rule_checker_sees_a_violation(tmp_path):
    """The checker is not vacuous: a core module importing a tool, the CLI or the host is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from .tools.bench import run_matrix\nfrom edgetl.finetune import finetune\n"
                   "from edgetl import exporters\nfrom edgetl.runtime import tools\n"
                   "def f():\n    from .cli import main\n")
    found = {target for target, _ in imports_of("edgetl.runtime.bad", bad)}
    assert {"edgetl.runtime.tools.bench", "edgetl.finetune", "edgetl.exporters", "edgetl.runtime.tools",
            "edgetl.runtime.cli"} <= found
    assert {layer(t) for t in found} >= {"tools", "host", "cli"}
    assert {layer(t) for t in found if t.startswith(("edgetl.exporters", "edgetl.runtime.tools"))} == \
        {"host", "tools"}


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


def test_core_folder_holds_no_tool_or_host_module():
    names = {path.stem for path in RUNTIME.glob("*.py")}
    assert not names & {"bench", "benchmark", "bench_report", "doctor", "compare", "archive", "cluster",
                        "tensorrt_build", "tensorrt_plan", "cli"}


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
    assert "edgetl.runtime.model" in loaded
    assert [m for m in loaded if layer(m) in ("tools", "host")] == []


@pytest.mark.parametrize("module", ["edgetl", "edgetl.runtime"])
def test_python_dash_m_runs_each_cli(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
