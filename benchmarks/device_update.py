"""On-device learning cost, measured in one run: head math against backbone time, and memory.

A ridge head is trained on the host on digits 0-4 (Lite0 at 224 px, its native size), exported, and
then updated on the "device" with 100 new images of digits 5-9 through ``update_bundle``, which times
the backbone over those 100 images (decode + preprocess + inference on ONNX Runtime) and the head math
(statistics, regularisation, solve, held-out accuracy) separately.  A second 100-image update follows.
Target: head math at most 20% of the backbone time.

Memory: peak RSS of a runtime process that updates and predicts, against a bare onnxruntime session
that runs the same backbone over the same number of images (both fresh interpreters).
Run: python benchmarks/device_update.py [--image-size 224] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import save_result, verdict

from edgetl.data_export import export_image_folder
from edgetl.exporters.bundle import export_run
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig

RUNTIME_PROCESS = textwrap.dedent("""
    import json, sys
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.engines.latency import peak_rss_mb
    from edgetl.runtime.learning import update_bundle
    bundle, data, image = sys.argv[1:4]
    report = update_bundle(bundle, data)
    with EdgeModel(bundle) as model:
        model.predict([image])
    print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                      "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))}))
""")

BARE_ORT = textwrap.dedent("""
    import json, sys
    import numpy as np, onnxruntime as ort
    from edgetl.runtime.engines.latency import peak_rss_mb
    model, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32)
    for start in range(0, n, 16):
        session.run(None, {session.get_inputs()[0].name: x[: min(16, n - start)]})
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
""")


def _run(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--n", type=int, default=100, help="Images per device update.")
    args = parser.parse_args()
    from edgetl.runtime.learning import update_bundle

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_image_folder("builtin:digits", tmp / "host", classes=["0", "1", "2", "3", "4"])
        export_image_folder("builtin:digits", tmp / "new", classes=["5", "6", "7", "8", "9"])
        run = finetune(str(tmp / "host"), tmp / "run",
                       FinetuneConfig(head=HeadConfig(kind="ridge"), image_size=args.image_size))
        bundle = export_run(run.run_dir, tmp / "bundle").bundle
        images = sorted((tmp / "new" / "train").rglob("*.png"))
        batches = []
        for b in range(3):
            folder = tmp / f"update{b}"
            for path in images[b * args.n:(b + 1) * args.n]:
                (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
                (folder / path.parent.name / path.name).write_bytes(path.read_bytes())
            batches.append(folder)
        updates = []
        for folder in batches[:2]:
            report = update_bundle(bundle, str(folder))
            t = report["timings"]
            updates.append({"version": report["version"], "n_new": report["n_new"], "backbone_s": t["backbone_s"],
                            "head_math_s": t["head_s"], "commit_s": t["commit_s"],
                            "ratio": t["head_s"] / t["backbone_s"], "accuracy": report["accuracy"],
                            "classes": len(report["classes"])})
            print(f"update v{report['version']}: {report['n_new']} images, backbone {t['backbone_s']:.3f} s, "
                  f"head math {t['head_s']:.3f} s (ratio {t['head_s'] / t['backbone_s']:.3f}), "
                  f"commit {t['commit_s']:.3f} s, held-out accuracy {report['accuracy']:.4f}")
        runtime = _run(RUNTIME_PROCESS, bundle, batches[2], images[-1])
        bare = _run(BARE_ORT, bundle / "backbone.onnx", args.n, args.image_size)
    worst = max(u["ratio"] for u in updates)
    rss_ratio = runtime["peak_rss_mb"] / bare["peak_rss_mb"]
    print(f"head math / backbone: worst {worst:.3f}  {verdict(worst, 0.20)}")
    print(f"peak RSS: runtime update+predict {runtime['peak_rss_mb']:.0f} MB, bare onnxruntime "
          f"{bare['peak_rss_mb']:.0f} MB -> {rss_ratio:.2f}x (torch/onnx loaded: {runtime['modules'] or 'none'})")
    path = save_result(f"device_update_{args.image_size}px", {
        "command": f"python benchmarks/device_update.py --image-size {args.image_size} --n {args.n}",
        "image_size": args.image_size, "updates": updates, "head_math_over_backbone_worst": worst,
        "peak_rss_mb": {"runtime_update_and_predict": runtime["peak_rss_mb"], "bare_onnxruntime": bare["peak_rss_mb"],
                        "ratio": rss_ratio},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
