"""Time to first result of a one-shot `edgetl-rt predict`, against a plain onnxruntime script, in one run.

Three whole processes classify the same image: `edgetl-rt predict BUNDLE IMAGE` with the runtime's default
choice, the same with `--artifact onnx`, and an eight-line script that opens the bundle's fused `model.onnx`
with onnxruntime, preprocesses with Pillow and numpy and prints the class (what a user would write without
edgetl).  The rounds run back to back in rotating order and the figures are the medians of the paired
ratios (this machine drifts by tens of percent within minutes).  Before timing, one default run lets the
runtime measure the artifacts on this machine, as the first run on a device does; Python's bytecode cache
is on, as on an installed system.  Targets: default / plain at most 1.3; default never slower than
`--artifact onnx` (ratio at most 1, within noise).
Run: python benchmarks/cold_start.py [--bundle demo-output/bundle] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict

PLAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    from PIL import Image
    bundle, image = sys.argv[1], sys.argv[2]
    m = json.load(open(bundle + "/manifest.json")); p = m["preprocess"]
    session = ort.InferenceSession(bundle + "/model.onnx", providers=["CPUExecutionProvider"])
    pixels = Image.open(image).convert("RGB").resize((p["input_size"], p["input_size"]))
    x = ((np.asarray(pixels, np.float32) / 255 - p["mean"]) / p["std"]).transpose(2, 0, 1)[None].astype(np.float32)
    print(m["labels"][int(session.run(None, {session.get_inputs()[0].name: x})[0].argmax())])
""")


def demo_bundle(folder: Path) -> Path:
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune

    run = finetune("builtin:digits", folder / "run", FinetuneConfig())
    return export_run(run.run_dir, folder / "bundle", formats="onnx,onnx-int8,openvino,openvino-int8").bundle


def one_image(bundle: Path, folder: Path) -> Path:
    from edgetl.runtime.bundle.checkset import CHECK_FILE

    with np.load(bundle / CHECK_FILE, allow_pickle=False) as data:
        pixels = data["images"][0]
    from PIL import Image

    path = folder / "one.png"
    Image.fromarray(pixels).save(path)
    return path


def timed(command: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {out.stderr[-1000:]}")
    return elapsed, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=None, help="Bundle to use (default: build the make-demo bundle).")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    runtime = shutil.which("edgetl-rt") or str(Path(sys.executable).with_name("edgetl-rt"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bundle = Path(args.bundle) if args.bundle else demo_bundle(tmp)
        image = one_image(bundle, tmp)
        commands = {
            "default": [runtime, "predict", str(bundle), str(image), "--json"],
            "onnx": [runtime, "predict", str(bundle), str(image), "--artifact", "onnx"],
            "plain": [sys.executable, "-c", PLAIN_SCRIPT, str(bundle), str(image)],
        }
        first, _ = timed(commands["default"], env)            # measures the artifacts once, as on a device
        for command in commands.values():                      # warm the OS file cache and the bytecode
            timed(command, env)
        _, chosen = timed(commands["default"], env)
        choice = json.loads(chosen)
        times = {name: [] for name in commands}
        names = list(commands)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(timed(commands[name], env)[0])
    ratio = {
        "default_over_plain": [d / p for d, p in zip(times["default"], times["plain"])],
        "default_over_onnx": [d / o for d, o in zip(times["default"], times["onnx"])],
    }
    median = {k: float(np.median(v)) for k, v in times.items()}
    paired = {k: float(np.median(v)) for k, v in ratio.items()}
    quartiles = {k: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for k, v in ratio.items()}
    print(f"bundle {bundle}, {args.rounds} paired rounds; default choice: {choice['artifact']} on "
          f"{choice['backend']} ({choice['artifact_choice']})")
    print(f"first run (measures the artifacts once): {first:.2f} s")
    for name, label in (("default", "edgetl-rt predict (default)"), ("onnx", "edgetl-rt predict --artifact onnx"),
                        ("plain", "plain onnxruntime script")):
        print(f"{label:34s} median {median[name] * 1000:6.0f} ms")
    print(f"default / plain script: {paired['default_over_plain']:.3f} (quartiles "
          f"{quartiles['default_over_plain'][0]:.2f}..{quartiles['default_over_plain'][1]:.2f})  "
          f"{verdict(paired['default_over_plain'], 1.3)}")
    print(f"default / --artifact onnx: {paired['default_over_onnx']:.3f} (quartiles "
          f"{quartiles['default_over_onnx'][0]:.2f}..{quartiles['default_over_onnx'][1]:.2f})  "
          f"{verdict(paired['default_over_onnx'], 1.05)} (1.05: noise allowance for 'never slower')")
    path = save_result("cold_start", {
        "command": "python benchmarks/cold_start.py " + " ".join(sys.argv[1:]), "bundle": str(bundle),
        "choice": {k: choice[k] for k in ("artifact", "backend", "artifact_choice")}, "first_run_s": first,
        "seconds": times, "medians_s": median, "paired_ratios": ratio, "paired_ratio_medians": paired,
        "paired_ratio_quartiles": quartiles,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
