"""Fine-tuning cost on cached features, measured in one run.

(a) wall time of a full 10-epoch ``finetune`` (cold cache) / one backbone pass
    over the same images (target <= 1.3: training costs about one pass);
(b) wall time of a second ``finetune`` with other head settings that hits the
    cache / the first one (target <= 0.05: no backbone pass at all).

Default: builtin:digits at the backbone's native 224 px, so the backbone's
share is that of real photos; ``--image-size 64`` shows the small-image case.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import save_result, verdict

from edgetl.backbones import create_backbone
from edgetl.extract import extract_features, resolve_device
from edgetl.features import resolve_splits
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.heads import HeadConfig
from edgetl.runtime.data.sources import open_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="builtin:digits")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = open_data(args.data)
        train, val, _ = resolve_splits(data, 0.2, 0)
        backbone = create_backbone()
        preprocess = backbone.pretrained.preprocess(args.image_size, data.recommended_crop_pct)
        frozen, _ = backbone.split(0)
        compute = resolve_device(args.device)
        extract_features(frozen, (train + val)[:16], preprocess, compute)  # warm-up: thread pools, kernel selection
        t0 = time.perf_counter()
        extract_features(frozen, train + val, preprocess, compute)
        backbone_pass_s = time.perf_counter() - t0

        cache = str(tmp / "cache")
        first_config = FinetuneConfig(image_size=args.image_size, cache_dir=cache, device=args.device,
                                      head=HeadConfig(kind="linear", epochs=10, patience=10))
        t1 = time.perf_counter()
        first = finetune(args.data, tmp / "first", first_config)
        first_s = time.perf_counter() - t1

        second_config = FinetuneConfig(image_size=args.image_size, cache_dir=cache, device=args.device,
                                       head=HeadConfig(kind="linear", epochs=10, lr=1e-3, patience=10))
        t2 = time.perf_counter()
        second = finetune(args.data, tmp / "second", second_config)
        second_s = time.perf_counter() - t2

    ratio_a = first_s / backbone_pass_s
    ratio_b = second_s / first_s
    n = len(train) + len(val)
    print(f"data {args.data} ({n} images) at {args.image_size} px on {compute.device} ({compute.precision})")
    print(f"one backbone pass                     {backbone_pass_s:8.2f} s")
    print(f"finetune, 10 epochs, cold cache       {first_s:8.2f} s  (val acc {first.metrics['accuracy']:.4f})")
    print(f"finetune, other lr, cache hit         {second_s:8.2f} s  (val acc {second.metrics['accuracy']:.4f}, "
          f"cache hit: {second.cache_hit})")
    print(f"(a) finetune / backbone pass   {ratio_a:6.3f}  {verdict(ratio_a, 1.3)}")
    print(f"(b) cache-hit / first finetune {ratio_b:6.3f}  {verdict(ratio_b, 0.05)}")
    path = save_result(f"finetune_cache_{args.image_size}px", {
        "command": f"python benchmarks/finetune_cache.py --data {args.data} --image-size {args.image_size}",
        "data": args.data, "images": n, "image_size": args.image_size, "device": str(compute.device),
        "backbone_pass_s": backbone_pass_s, "finetune_cold_s": first_s, "finetune_cache_hit_s": second_s,
        "ratio_finetune_to_backbone_pass": ratio_a, "ratio_cache_hit_to_cold": ratio_b,
        "second_run_cache_hit": second.cache_hit,
        "val_accuracy": {"first": first.metrics["accuracy"], "second": second.metrics["accuracy"]},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
