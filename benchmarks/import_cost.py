"""What the device runtime imports: modules and import time of `import edgetl.runtime`, of `EdgeModel`, and of
a whole `edgetl-rt predict BUNDLE IMAGE` process, in one run.

Each case runs in a fresh interpreter with `-X importtime`; the figures are the medians over the rounds of
the cumulative import time of the top-level modules and the count of `edgetl.*` modules loaded.  The predict
case also lists any module of `edgetl.runtime.tools`, `edgetl.runtime.cli` beyond the CLI itself, or the host
(`edgetl.*` outside the runtime) that the predict path loads: the target is none of them.
Run: python benchmarks/import_cost.py [--bundle demo-output/bundle] [--rounds 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import save_result

LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")

CASES = {
    "import edgetl.runtime": ["-c", "import edgetl.runtime"],
    "EdgeModel": ["-c", "from edgetl.runtime import EdgeModel"],
}


def imports(argv: list[str]) -> tuple[float, list[str]]:
    """Cumulative import seconds of top-level modules and every module imported, for one process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    total, modules = 0.0, []
    for match in LINE.finditer(out.stderr):
        modules.append(match.group(4))
        if len(match.group(3)) == 1:                   # one space of indent: a top-level import
            total += int(match.group(2)) / 1e6
    return total, modules


def source_lines(module: str) -> int:
    """Lines of an edgetl module's source file (0 when it has none, e.g. a namespace)."""
    spec = importlib.util.find_spec(module)
    return len(Path(spec.origin).read_text().splitlines()) if spec and spec.origin else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="demo-output/bundle")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cases = dict(CASES)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle)
        if bundle.is_dir():
            from cold_start import one_image

            image = one_image(bundle, Path(tmp))
            cli = "from edgetl.runtime.cli import main; main()"
            cases["edgetl-rt predict"] = ["-c", cli, "predict", str(bundle), str(image), "--artifact", "onnx"]
        else:
            print(f"no bundle at {bundle}: the predict case is left out (run make demo)")
        report = {}
        for name, argv in cases.items():
            seconds, modules = [], []
            for _ in range(args.rounds):
                s, modules = imports(argv)
                seconds.append(s)
            ours = [m for m in modules if m == "edgetl" or m.startswith("edgetl.")]
            runtime = [m for m in ours if m.startswith("edgetl.runtime")]
            foreign = [m for m in ours if m.startswith(("edgetl.runtime.tools", "edgetl.runtime.bench"))
                       or not (m == "edgetl" or m.startswith(("edgetl.runtime", "edgetl.devices")))]
            lines = sum(source_lines(m) for m in ours)
            report[name] = {"import_s_median": float(np.median(seconds)), "modules_total": len(modules),
                            "edgetl_modules": len(ours), "runtime_modules": len(runtime), "edgetl_lines": lines,
                            "tools_or_host_modules": foreign, "edgetl_module_names": ours}
            print(f"{name:24s} {np.median(seconds) * 1000:7.1f} ms  {len(modules):4d} modules, "
                  f"{len(ours):3d} of edgetl ({len(runtime)} runtime, {lines} lines); "
                  f"tools/host: {', '.join(foreign) or 'none'}")
    path = save_result("import_cost", {"command": "python benchmarks/import_cost.py " + " ".join(sys.argv[1:]),
                                       "rounds": args.rounds, "cases": report})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
