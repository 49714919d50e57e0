"""Is `edgetl bench` measuring what the engines' own tools measure?  Both ratios in one run.

For the same OpenVINO IR and settings (CPU, inference precision f32, one stream, batch 1, static shape,
the same thread count: the command `edgetl bench` records beside each OpenVINO row, so benchmark_app
cannot run the IR in bf16 on a CPU with bf16 while we run f32) the median latency of an `edgetl bench`
cell is set against OpenVINO's benchmark_app (sync API); for
the fp32 ONNX model against a plain onnxruntime loop (one session, same threads, same input, same
duration).  Every measurement runs in its own fresh process; ours and theirs run back to back,
in alternating order, over several rounds, and the median of the paired ratios is the figure
(this machine's speed drifts by tens of percent within minutes, so unpaired medians mislead).  Target: both ratios
within 10% (0.9..1.1).  Our figure includes what the device pays per call beyond the engine: the input check and the
numpy head.
Run: python benchmarks/bench_fidelity.py [--bundle BUNDLE] [--threads N] [--seconds 2] [--rounds 15]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from _common import save_result

from edgetl.runtime.bundle.manifest import read_bundle_manifest
from edgetl.runtime.engines.backends.openvino import benchmark_app_command
from edgetl.runtime.engines.latency import BenchSettings
from edgetl.runtime.machine import default_threads
from edgetl.runtime.tools.bench import Cell, measure_cell_isolated


def demo_bundle(folder: Path) -> Path:
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune

    run = finetune("builtin:digits", folder / "run", FinetuneConfig())
    return export_run(run.run_dir, folder / "bundle", formats="onnx,openvino").bundle


def benchmark_app_median(xml: Path, size: int, threads: int, seconds: float) -> float:
    """benchmark_app with exactly the settings our OpenVINO backend states (see benchmark_app_command)."""
    command = benchmark_app_command(str(xml), size, 1, "fp32", threads, seconds=max(1, int(seconds)))
    command[0] = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([\d.]+)\s*(ms|us)", out)      # it switches to us below 1 ms
    if not match:
        raise RuntimeError(f"no median in benchmark_app output:\n{out[-2000:]}")
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


PLAIN_ORT_LOOP = textwrap.dedent("""
    import json, sys, time
    import numpy as np, onnxruntime as ort
    model, size, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feed = {session.get_inputs()[0].name: pixels}
    start = time.perf_counter()
    while time.perf_counter() - start < 1.0:
        session.run(None, feed)
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, feed)
        samples.append(time.perf_counter() - t0)
    print(json.dumps({"median_ms": float(np.median(samples) * 1000), "runs": len(samples)}))
""")


def plain_onnxruntime_median(model: Path, size: int, threads: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", PLAIN_ORT_LOOP, str(model), str(size), str(threads),
                          str(seconds)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["median_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", default=None, help="Bundle with onnx and openvino artifacts (default: build one).")
    parser.add_argument("--threads", type=int, default=None,
                        help="Default: one per usable physical core, stated to every engine and tool.")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    threads = args.threads or default_threads()
    rounds = {"edgetl_openvino": [], "benchmark_app": [], "edgetl_onnxruntime": [], "plain_onnxruntime": []}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else demo_bundle(Path(tmp))
        manifest = read_bundle_manifest(bundle)
        size = manifest.preprocess_config.input_size
        settings = BenchSettings(min_runs=200, min_seconds=args.seconds)
        measurements = {
            "edgetl_openvino": lambda: measure_cell_isolated(str(bundle), Cell("openvino", "openvino", threads),
                                                         (1,), settings)["batches"][0]["p50_ms"],
            "benchmark_app": lambda: benchmark_app_median(bundle / manifest.artifact("openvino").file, size,
                                                          threads, args.seconds),
            "edgetl_onnxruntime": lambda: measure_cell_isolated(str(bundle), Cell("onnx", "onnxruntime", threads),
                                                            (1,), settings)["batches"][0]["p50_ms"],
            "plain_onnxruntime": lambda: plain_onnxruntime_median(bundle / manifest.artifact("onnx").file, size,
                                                                  threads, args.seconds),
        }
        pairs = (("edgetl_openvino", "benchmark_app"), ("edgetl_onnxruntime", "plain_onnxruntime"))
        for r in range(args.rounds):   # each pair back to back (this machine drifts by tens of % within minutes)
            for ours, theirs in pairs:
                for name in ((ours, theirs) if r % 2 == 0 else (theirs, ours)):
                    rounds[name].append(measurements[name]())
    ratios = {ours: [a / b for a, b in zip(rounds[ours], rounds[theirs])] for ours, theirs in pairs}
    median = {name: float(np.median(values)) for name, values in rounds.items()}
    ov_ratio = float(np.median(ratios["edgetl_openvino"]))
    ort_ratio = float(np.median(ratios["edgetl_onnxruntime"]))
    spread = {k: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for k, v in ratios.items()}
    ok = lambda r: "PASS" if 0.9 <= r <= 1.1 else "MISS"  # noqa: E731
    label = f"{threads} threads"
    print(f"OpenVINO IR, {size} px, batch 1, {label}: edgetl bench p50 {median['edgetl_openvino']:.3f} ms, "
          f"benchmark_app median {median['benchmark_app']:.3f} ms -> paired ratio {ov_ratio:.3f} {ok(ov_ratio)} "
          f"(target 0.9..1.1; "
          f"quartiles {spread['edgetl_openvino'][0]:.2f}..{spread['edgetl_openvino'][1]:.2f})")
    print(f"ONNX fp32, {size} px, batch 1, {label}: edgetl bench p50 {median['edgetl_onnxruntime']:.3f} ms, "
          f"plain onnxruntime loop median {median['plain_onnxruntime']:.3f} ms -> paired ratio {ort_ratio:.3f} "
          f"{ok(ort_ratio)} (target 0.9..1.1; quartiles {spread['edgetl_onnxruntime'][0]:.2f}.."
          f"{spread['edgetl_onnxruntime'][1]:.2f})")
    path = save_result("bench_fidelity", {
        "command": "python benchmarks/bench_fidelity.py " + " ".join(sys.argv[1:]),
        "input_size": size, "threads": threads, "rounds": rounds, "medians_ms": median,
        "paired_ratios": ratios, "paired_ratio_quartiles": spread, "openvino_ratio": ov_ratio,
        "onnxruntime_ratio": ort_ratio,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
