"""Runtime latency (onnxruntime, batch 1) against eager torch for the same model, in one run.

Fine-tunes EfficientNet-Lite0 on real photos (../shared/data/flowers3, or
builtin:digits at 224 px when absent), exports the bundle, then times the
full model (backbone + head) on the same 224x224 input both ways with the
same warm-up and measurement rules.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import save_result, verdict

from edgetl.exporters.bundle import export_run, rebuild_feature_model
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import torch_head
from edgetl.run import RunManifest
from edgetl.runtime import EdgeModel
from edgetl.runtime.bench import BenchSettings, latency_stats, measure

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--min-seconds", type=float, default=5.0)
    parser.add_argument("--min-runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None, help="Same thread count for torch and onnxruntime.")
    args = parser.parse_args()
    data = str(FLOWERS) if FLOWERS.is_dir() else "builtin:digits"
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    settings = BenchSettings(batch=1, min_runs=args.min_runs, min_seconds=args.min_seconds)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = finetune(data, tmp / "run", FinetuneConfig(image_size=224, cache_dir=str(tmp / "cache")))
        bundle = export_run(run.run_dir, tmp / "bundle")
        manifest = RunManifest.read(run.run_dir)
        from edgetl.runtime.heads import load_head

        eager = torch.nn.Sequential(rebuild_feature_model(manifest, run.run_dir),
                                    torch_head(load_head(run.run_dir / "head.npz"))).eval()
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        xt = torch.from_numpy(x)
        # eager is given its best layout (channels-last is faster on CPU) so the ratio is not flattered
        eager_cl = torch.nn.Sequential(rebuild_feature_model(manifest, run.run_dir),
                                       torch_head(load_head(run.run_dir / "head.npz"))).eval()
        eager_cl = eager_cl.to(memory_format=torch.channels_last)
        xt_cl = xt.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager_nchw = latency_stats(measure(lambda: eager(xt), settings), 1)
            eager_channels_last = latency_stats(measure(lambda: eager_cl(xt_cl), settings), 1)
        eager_stats = min(eager_nchw, eager_channels_last, key=lambda s: s["p50_ms"])
        with EdgeModel(bundle.bundle, threads=threads) as model:
            ort_stats = latency_stats(measure(lambda: model.logits(x), settings), 1)
            with torch.inference_mode():
                diff = float(np.abs(model.logits(x) - eager(xt).numpy()).max())

    ratio = ort_stats["p50_ms"] / eager_stats["p50_ms"]
    print(f"EfficientNet-Lite0 + linear head, 224x224, batch 1, {threads} threads, data {data}")
    for name, s in (("eager torch NCHW", eager_nchw), ("eager channels-last", eager_channels_last),
                    ("onnxruntime fp32", ort_stats)):
        print(f"{name:18s} p50 {s['p50_ms']:7.2f} ms  p90 {s['p90_ms']:7.2f}  p99 {s['p99_ms']:7.2f}  runs {s['runs']}")
    print(f"max |logit difference| {diff:.2e}")
    print(f"(c) runtime / best eager torch (p50)  {ratio:.3f}  (speed-up {1 / ratio:.2f}x)  {verdict(ratio, 1.0)}")
    path = save_result("runtime_vs_eager", {
        "command": "python benchmarks/runtime_vs_eager.py", "data": data, "threads": threads,
        "torch": torch.__version__, "eager_nchw": eager_nchw,
        "eager_channels_last": eager_channels_last, "onnxruntime_fp32": ort_stats,
        "ratio_runtime_to_best_eager_p50": ratio, "max_abs_logit_diff": diff,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
