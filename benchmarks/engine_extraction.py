"""Host feature-extraction throughput: eager torch against OpenVINO and ONNX Runtime, in one run.

The same images (default: builtin:digits at 224 px) go through the frozen
EfficientNet-Lite0 with eager torch (channels-last, the faster layout) and
through each installed engine on the exported frozen part; the one-off
export is timed separately.  Prints images/s, the ratio to torch (target
>= 3x for the fastest engine) and the max feature difference.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict

from edgetl.backbones import create_backbone
from edgetl.engines import choose_engine
from edgetl.extract import extract_features, resolve_device
from edgetl.features import resolve_splits
from edgetl.runtime.data.sources import open_data
from edgetl.runtime.engines.backends import installed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    data = open_data(args.data)
    train, val, _ = resolve_splits(data, 0.2, 0)
    records = (train + val)[: args.images]
    backbone = create_backbone()
    preprocess = backbone.pretrained.preprocess(args.image_size, data.recommended_crop_pct)
    frozen, _ = backbone.split(0)
    compute = resolve_device("cpu")
    digest = backbone.weights_sha256()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        extract_features(frozen, records[:16], preprocess, compute)  # warm-up
        t0 = time.perf_counter()
        reference, _, _ = extract_features(frozen, records, preprocess, compute)
        results["torch"] = {"images_per_s": len(records) / (time.perf_counter() - t0)}
        for engine in installed(["openvino", "onnxruntime"]):
            t1 = time.perf_counter()
            choice = choose_engine(engine, frozen, records, preprocess, compute, Path(tmp), digest, len(frozen))
            setup_s = time.perf_counter() - t1
            extract_features(frozen, records[:16], preprocess, compute, runner=choice.runner)  # warm-up
            t2 = time.perf_counter()
            features, _, _ = extract_features(frozen, records, preprocess, compute, runner=choice.runner)
            elapsed = time.perf_counter() - t2
            choice.runner.close()
            results[engine] = {"images_per_s": len(records) / elapsed, "export_and_load_s": setup_s,
                               "max_abs_diff": float(np.abs(features - reference).max())}
    base = results["torch"]["images_per_s"]
    print(f"frozen EfficientNet-Lite0, {len(records)} images of {args.data} at {args.image_size} px, CPU, "
          "decode + preprocess included")
    for name, r in results.items():
        r["ratio_to_torch"] = r["images_per_s"] / base
        extra = (f"  export+load {r['export_and_load_s']:.1f} s, max |diff| {r['max_abs_diff']:.1e}"
                 if name != "torch" else "")
        print(f"{name:12s} {r['images_per_s']:8.1f} images/s  {r['ratio_to_torch']:5.2f}x{extra}")
    best = max((n for n in results if n != "torch"), key=lambda n: results[n]["images_per_s"])
    print(f"fastest engine {best}: {results[best]['ratio_to_torch']:.2f}x torch  "
          f"{verdict(results[best]['ratio_to_torch'], 3.0, lower_is_better=False)}")
    path = save_result(f"engine_extraction_{args.image_size}px", {
        "command": f"python benchmarks/engine_extraction.py --data {args.data} --image-size {args.image_size} "
                   f"--images {args.images}",
        "images": len(records), "results": results, "fastest_engine": best,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
