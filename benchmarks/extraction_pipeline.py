"""The host extraction pipeline against its engine alone, and its memory as the record count grows.

1. Throughput (``--records``, default 1,500 rows of ``data/clothing10`` photos repeated through a CSV,
   Lite0 at 224 px): the engine alone on batches already decoded and preprocessed, against the whole pass
   (decode and resize, normalize, engine, cache writes); target: the whole pass at least 0.9 of the engine alone.
   On a CPU the engine alone is the faster of one engine on every core and one single-threaded copy per core
   (what the pass's lanes run); the default pass (lanes where decoding would run in threads) is shown beside
   decoding threads next to one engine (``--workers 0``) and two worker processes.  On CUDA, the compute-only rate with
   the batch already on the GPU and the end-to-end rate over the photos (target 0.8); without CUDA that figure is
   missing and said so.
2. Flat memory: the pass over a CSV of 10,000 and of 100,000 records (repeated builtin digits PNGs, 32 px so the
   run stays short), each in a fresh process: peak RSS of the process and of its largest decoding worker.

Results: ``benchmarks/results/extraction_pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from _common import save_result

from edgetl.backbones import create_backbone
from edgetl.cache import FeatureCache
from edgetl.engines import choose_engine
from edgetl.extract import output_shape, prepare, resolve_device, run_frozen
from edgetl.pipeline import usable_cores
from edgetl.runtime.data.preprocess import crop, preprocess
from edgetl.runtime.data.sources import open_data

ROOT = Path(__file__).resolve().parents[1]
CLOTHING = ROOT / "data" / "clothing10"

PASS = textwrap.dedent("""
    import json, resource, sys, time
    from edgetl.backbones import create_backbone
    from edgetl.cache import FeatureCache
    from edgetl.features import backbone_pass, feature_key, preprocess_for
    from edgetl.extract import resolve_device
    from edgetl.runtime.data.sources import open_data

    def peak_rss_mb():
        # VmHWM starts afresh at exec; ru_maxrss keeps the parent's peak across fork and exec on Linux
        try:
            status = open("/proc/self/status").read()
            return int(status.split("VmHWM:")[1].split()[0]) / 1024
        except (OSError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    csv_path, cache_dir, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = open_data(csv_path)
    records = data.split("all")
    backbone = create_backbone("efficientnet_lite0")
    frozen, _ = backbone.split(0)
    preprocess = preprocess_for(backbone, data, size)
    compute = resolve_device("cpu")
    weights = backbone.weights_sha256()
    cache = FeatureCache(cache_dir)
    key = feature_key(backbone, weights, frozen, preprocess, compute, records, False)
    started = time.perf_counter()
    result = backbone_pass(frozen, key, records, preprocess, compute, cache, weights, engine="onnxruntime")
    elapsed = time.perf_counter() - started
    print(json.dumps({"records": len(records), "seconds": elapsed, "engine": result.engine,
                      "peak_rss_mb": peak_rss_mb(),
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                      "valid": int(result.cached.valid.sum())}))
""")


def _csv(path: Path, files: list[Path], labels: list[str], count: int) -> Path:
    lines = ["path,label"] + [f"{files[i % len(files)]},{labels[i % len(files)]}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def throughput(records_count: int, workers: list[int | None], tmp: Path) -> dict:
    files = sorted(CLOTHING.glob("*/*/*.jpg"))
    csv_path = _csv(tmp / "clothing.csv", files, [f.parent.name for f in files], records_count)
    data = open_data(str(csv_path))
    records = data.split("all")
    backbone = create_backbone("efficientnet_lite0")
    frozen, _ = backbone.split(0)
    config = backbone.pretrained.preprocess(224, None)
    compute = resolve_device("auto")
    module = prepare(frozen, compute)
    shape = output_shape(module, config.input_size, compute.device)
    cache = FeatureCache(tmp / "cache")
    figures: dict = {"records": len(records), "device": str(compute.device)}
    batch = compute.batch_size
    if compute.device.type == "cuda":
        x = torch.randn(batch, 3, 224, 224, device=compute.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
            for _ in range(5):
                module(x)
            torch.cuda.synchronize()
            started, n = time.perf_counter(), 0
            while n < len(records):
                module(x)
                n += batch
            torch.cuda.synchronize()
        figures["compute_only_ips"] = n / (time.perf_counter() - started)
        runner, engine = None, "torch (cuda, fp16 autocast, channels_last)"
    else:
        choice = choose_engine("onnxruntime", frozen, records, config, compute, tmp / "cache", "bench", 0)
        runner, engine = choice.runner, choice.name
        pre = np.stack([preprocess(r.source, config) for r in records[:batch]])
        runner.infer(pre)

        lanes = [runner.replica(threads=1).open() for _ in range(usable_cores())]

        def engine_alone() -> float:
            """The faster of one engine on every core and one single-threaded copy per core (the lanes'
            engine), on batches already decoded and preprocessed."""
            started, n = time.perf_counter(), 0
            while n < len(records):
                runner.infer(pre)
                n += batch
            whole = n / (time.perf_counter() - started)
            per_lane = -(-len(records) // (batch * len(lanes)))
            with ThreadPoolExecutor(len(lanes)) as pool:
                started = time.perf_counter()
                list(pool.map(lambda copy: [copy.infer(pre) for _ in range(per_lane)], lanes))
            figures["compute_only_ips[one engine]"] = max(figures.get("compute_only_ips[one engine]", 0), whole)
            figures["compute_only_ips[copy per core]"] = max(figures.get("compute_only_ips[copy per core]", 0),
                                                             per_lane * batch * len(lanes) /
                                                             (time.perf_counter() - started))
            return max(figures["compute_only_ips[one engine]"], figures["compute_only_ips[copy per core]"])

        for copy in lanes:
            copy.infer(pre)
        figures["compute_only_ips"] = engine_alone()
    figures["engine"] = engine
    started = time.perf_counter()
    for record in records[:100]:                       # decoding's own cost, one image at a time
        crop(record.source, config)
    figures["decode_ms_per_image"] = (time.perf_counter() - started) * 10
    cores = usable_cores()
    if compute.device.type != "cuda":    # decoding and the engine share the cores: the most the pass can reach
        figures["cpu_bound_ceiling"] = cores / (cores + figures["decode_ms_per_image"] / 1000 *
                                                figures["compute_only_ips"])
    for count in workers:
        label = {None: "default", 0: "threads beside one engine"}.get(count, f"{count} workers")
        with cache.writer(f"run-{count}", len(records), shape) as writer:
            started = time.perf_counter()
            run_frozen(module, records, config, compute, writer, batch_size=batch, workers=count, runner=runner)
            seconds = time.perf_counter() - started
        figures[f"end_to_end_ips[{label}]"] = len(records) / seconds
    if runner is not None:          # this VM drifts: the engine alone again after the passes, the faster counts
        figures["compute_only_ips"] = max(figures["compute_only_ips"], engine_alone())
        for copy in lanes + [runner]:
            copy.close()
    return figures


def memory(counts: list[int], tmp: Path) -> list[dict]:
    from edgetl.data_export import export_image_folder

    export_image_folder("builtin:digits", tmp / "digits")
    files = sorted((tmp / "digits").glob("*/*/*.png"))
    rows = []
    for count in counts:
        csv_path = _csv(tmp / f"digits-{count}.csv", files, [f.parent.name for f in files], count)
        out = subprocess.run([sys.executable, "-c", PASS, str(csv_path), str(tmp / f"cache-{count}"), "32"],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        workers = rows[-1]["worker_peak_rss_mb"]
        print(f"  {count:>7,d} records: {rows[-1]['seconds']:.1f} s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MB"
              + (f" (largest decoding worker {workers:.0f} MB)" if workers else " (decoding in threads)"), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1500)
    parser.add_argument("--memory", default="10000,100000", help="Record counts of the memory runs ('' skips).")
    args = parser.parse_args()
    if not CLOTHING.is_dir():
        raise SystemExit(f"{CLOTHING} not found (the repository's data/ folder, data/README.md)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"throughput over {args.records} clothing10 photos at 224 px", flush=True)
        figures = throughput(args.records, [None, 0, 2], tmp)
        base = figures["compute_only_ips"]
        print(f"  {figures['engine']} alone on preprocessed batches: {base:.1f} images/s")
        for key, value in figures.items():
            if key.startswith("end_to_end"):
                print(f"  {key}: {value:.1f} images/s = {value / base:.3f} of the engine alone")
        print(f"  decoding alone: {figures['decode_ms_per_image']:.2f} ms per photo on one core")
        if "cpu_bound_ceiling" in figures:
            print(f"  the most a pass can reach on {usable_cores()} cores shared by decoding and the engine: "
                  f"{figures['cpu_bound_ceiling']:.3f} of the engine alone")
        if figures["device"] != "cuda":
            print("  GPU figure missing: no CUDA device here (target 0.8 of compute-only on a GPU)")
        counts = [int(c) for c in args.memory.split(",") if c]
        print("memory of the pass (Lite0, 32 px, onnxruntime, repeated digits PNGs)", flush=True)
        rows = memory(counts, tmp) if counts else []
    if len(rows) == 2:
        print(f"  peak RSS {rows[1]['records']:,d} / {rows[0]['records']:,d} records: "
              f"{rows[1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")
    path = save_result("extraction_pipeline", {
        "command": f"python benchmarks/extraction_pipeline.py --records {args.records} --memory {args.memory}",
        "throughput": figures, "memory": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
