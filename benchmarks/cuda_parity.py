"""CUDA mixed-precision extraction against CPU float32, measured in one run.

Prints the feature difference between the fp16-autocast CUDA pass and the
float32 CPU pass on the same images, the throughput of both, and the
accuracy of a head trained on CUDA features when the exported bundle runs on
the CPU runtime (what a device sees). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import save_result

from edgetl.backbones import create_backbone
from edgetl.exporters.bundle import export_run
from edgetl.extract import resolve_device, run_frozen
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.runtime import EdgeModel
from edgetl.runtime.data.sources import open_data
from edgetl.runtime.inference.evaluate import evaluate_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark compares CUDA with the CPU")
    data = open_data(args.data)
    records = data.split("all")[: args.images]
    backbone = create_backbone()
    preprocess = backbone.pretrained.preprocess(args.image_size, data.recommended_crop_pct)
    frozen, _ = backbone.split(0)
    results = {}
    for name in ("cuda", "cpu"):
        compute = resolve_device(name)
        run_frozen(frozen, records[:16], preprocess, compute)  # warm-up
        t0 = time.perf_counter()
        features, _, _ = run_frozen(frozen, records, preprocess, compute)
        elapsed = time.perf_counter() - t0
        results[name] = (features, len(records) / elapsed, compute.precision)
    gpu, cpu = results["cuda"][0], results["cpu"][0]
    diff = np.abs(gpu - cpu)
    cosine = np.sum(gpu * cpu, 1) / (np.linalg.norm(gpu, axis=1) * np.linalg.norm(cpu, axis=1))
    with tempfile.TemporaryDirectory() as tmp:
        run = finetune(args.data, Path(tmp) / "run", FinetuneConfig(image_size=args.image_size, device="cuda",
                                                                   cache_dir=str(Path(tmp) / "cache")))
        bundle = export_run(run.run_dir, Path(tmp) / "bundle")
        with EdgeModel(bundle.bundle) as model:
            runtime = evaluate_bundle(model, args.data)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.images} images at {args.image_size} px")
    print(f"CUDA {results['cuda'][2]}: {results['cuda'][1]:8.1f} images/s (decode + preprocess + backbone)")
    print(f"CPU  {results['cpu'][2]}: {results['cpu'][1]:8.1f} images/s")
    print(f"features: max |diff| {diff.max():.4f}, mean |diff| {diff.mean():.5f}, min cosine {cosine.min():.6f}")
    print(f"head trained on CUDA features: val acc {run.metrics['accuracy']:.4f}; "
          f"exported bundle on the CPU runtime: {runtime['accuracy']:.4f} on {runtime['n']} images")
    save_result("cuda_parity", {
        "command": f"python benchmarks/cuda_parity.py --data {args.data} --image-size {args.image_size}",
        "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
        "cuda_images_per_s": results["cuda"][1], "cpu_images_per_s": results["cpu"][1],
        "feature_max_abs_diff": float(diff.max()), "feature_mean_abs_diff": float(diff.mean()),
        "feature_min_cosine": float(cosine.min()),
        "val_accuracy_cuda_training": run.metrics["accuracy"], "runtime_cpu_accuracy": runtime["accuracy"],
    })


if __name__ == "__main__":
    main()
