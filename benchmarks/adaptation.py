"""Adaptation to unlabelled shifted data, measured in one run on real photos and texts (issue 28, item 3).

The source head: a ridge head (the runtime's, alpha by the ridge's own rule) on clothing10 train's EfficientNet-Lite0
224 px features; judged on clothing10 val, clean and with each corruption of ``benchmarks/shifts.py`` at each
severity. For each copy, every method of ``edgetl.runtime.learning.adapters`` is fitted on the copy's own features
(labels unused; the same rows are then scored, as ``adapt`` on a folder followed by ``evaluate`` on it would):

* accuracy before (the source head), after each method (``normalise``, ``coral``, ``prototypes``; ``lame``, the
  batch-level output smoothing), and after ``auto``: the method the label-free guard picks, or no change when
  it refuses (what ``edgetl-rt adapt`` commits);
* the guard's decision (committed / refused) counted, and the clean data's loss (target: at most 0.5 points);
* mean gain at each severity (target: at least +3 points at severity 3);
* cost per adaptation (ms: fitting every candidate and the guard on the batch's features) and per prediction;
* with ``--adabn``: the same for features taken with the backbone's batch-normalisation statistics re-estimated
  on the target (AdaBN: train-mode batch norm over batches of 93 photos, torch on the host), clean and severity 3,
  cached as ``FEATURES/adabn/adabn_val_<shift>_<severity>.npz``: whether an artifact exporting the batch-norm
  moments (for ONNX Runtime's ``add_initializer``) would be worth building.

The same for banking77 (all-MiniLM-L6-v2 features; the source head on train, judged on test with each text shift).
Features come from ``benchmarks/shifts.py``'s cache (``--features``), built there on first use.

Run: python benchmarks/adaptation.py [--features DIR] [--adabn DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict
from shifts import DEFAULT_OUT, IMAGE_SHIFTS, SEVERITIES, TEXT_SHIFTS, load

from edgetl.runtime.bundle.heads import RidgeHead, RidgeStatistics
from edgetl.runtime.inference.features import apply_adapter
from edgetl.runtime.learning.adapters import AUTO_BY_MODALITY, METHODS, SourceStatistics, choose, fit, lame

COLUMNS = (*METHODS, "lame", "auto")
SHORT = {"normalise+prototypes": "norm+proto"}


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def source_head(train: dict) -> tuple[RidgeHead, SourceStatistics]:
    x, y = train["features"].astype(np.float64), train["labels"]
    statistics = RidgeStatistics.empty(x.shape[1], len(train["classes"]))
    statistics.add(x, y)
    head = RidgeHead.solve(statistics, RidgeHead.select_alpha(statistics, None, None))
    return head, SourceStatistics.from_ridge(statistics)


def one_copy(head: RidgeHead, source: SourceStatistics, copy: dict, modality: str) -> dict:
    x, y = copy["features"].astype(np.float32), copy["labels"]
    before = _accuracy(head.logits(x), y)
    row = {"before": before}
    for method in METHODS:
        adapter, adapted = fit(method, head, source, x)
        row[method] = _accuracy(adapted.logits(apply_adapter(x, adapter)), y)
    row["lame"] = _accuracy(lame(head.logits(x), x), y)
    t0 = time.perf_counter()
    choice = choose(head, source, x, AUTO_BY_MODALITY[modality])    # what edgetl-rt adapt runs: auto, guarded
    row["adapt_ms"] = (time.perf_counter() - t0) * 1e3
    row["auto"] = _accuracy(choice.best.logits(x), y) if choice.helped else before
    row["decision"] = "committed" if choice.helped else "refused"
    row["chosen"], row["reason"] = choice.method if choice.helped else None, choice.reason
    row["drift_before"], row["alarm"] = choice.drift_before, choice.alarm
    row["signals"] = {c.method: c.signals() for c in choice.candidates}
    if choice.helped:
        t0 = time.perf_counter()
        for i in range(100):
            choice.best.logits(x[i % len(x):][:1])
        t1 = time.perf_counter()
        for i in range(100):
            head.logits(x[i % len(x):][:1])
        row["predict_overhead_ms"] = ((t1 - t0) - (time.perf_counter() - t1)) / 100 * 1e3
    return row


def run_set(name: str, features: Path, train_split: str, test_split: str, shifts: tuple[str, ...],
            folder: Path | None = None, prefix: str = "") -> dict:
    head, source = source_head(load(features, name, train_split))
    rows = {}
    for shift, severity in [("clean", 0)] + [(s, v) for v in SEVERITIES for s in shifts]:
        path = (folder or features) / f"{prefix or name + '_' + test_split}_{shift}_{severity}.npz"
        if not path.exists():
            print(f"missing {path}: skipped", file=sys.stderr)
            continue
        with np.load(path) as npz:
            copy = {k: npz[k] for k in npz.files}
        rows[f"{shift}_{severity}"] = one_copy(head, source, copy, "text" if name == "banking77" else "image")
    return {"rows": rows, "summary": summarise(rows)}


def summarise(rows: dict) -> dict:
    summary = {}
    for severity in SEVERITIES:
        picked = [r for key, r in rows.items() if key.endswith(f"_{severity}") and not key.startswith("clean")]
        if picked:
            summary[f"severity_{severity}"] = {
                "mean_gain_points": {c: round(100 * float(np.mean([r[c] - r["before"] for r in picked])), 2)
                                     for c in COLUMNS},
                "decisions": {d: sum(r["decision"] == d for r in picked) for d in ("committed", "refused")},
                "chosen": {m: sum(r["chosen"] == m for r in picked) for m in METHODS}}
    if "clean_0" in rows:
        clean = rows["clean_0"]
        summary["clean_loss_points"] = {c: round(100 * (clean["before"] - clean[c]), 2) for c in COLUMNS}
        summary["clean_decision"] = clean["decision"]
    summary["adapt_ms_mean"] = round(float(np.mean([r["adapt_ms"] for r in rows.values()])), 1)
    return summary


def stream(features: Path, window: int = 128, segments: tuple[str, ...] = ("clean_0", "fog_3", "clean_0", "blur_3",
           "noise_3", "clean_0", "contrast_3", "jpeg_3", "clean_0")) -> dict:
    """``serve --adapt-on-drift`` on a stream of clothing10 val copies one after another (each shuffled, seeded),
    32 inputs a request, the adapter's own drift alarm: accuracy unadapted and as served, and what it did."""
    from edgetl.runtime.bundle.folder import HeadState
    from edgetl.runtime.serving.adaptation import StreamAdapter

    head, source = source_head(load(features, "clothing10", "train"))
    adapter = StreamAdapter(lambda state: source, source.mean.shape[0], window=window, check_every=32)
    state = HeadState(head, [], None, 1)
    rng = np.random.default_rng(0)
    served, plain, log = [], [], []
    for segment in segments:
        shift, severity = segment.rsplit("_", 1)
        copy = load(features, "clothing10", "val", shift, int(severity))
        order = rng.permutation(len(copy["labels"]))
        x, y = copy["features"][order].astype(np.float32), copy["labels"][order]
        before = (adapter.stats.adapted, adapter.stats.refused, adapter.stats.resets)
        for i in range(0, len(y), 32):
            served.append(np.argmax(adapter.logits(x[i:i + 32], state), axis=1) == y[i:i + 32])
            plain.append(np.argmax(head.logits(x[i:i + 32]), axis=1) == y[i:i + 32])
        requests = len(range(0, len(y), 32))
        log.append({"segment": segment, "accuracy_plain": float(np.mean(np.concatenate(plain[-requests:]))),
                    "accuracy_served": float(np.mean(np.concatenate(served[-requests:]))),
                    "adapted": adapter.stats.adapted - before[0], "refused": adapter.stats.refused - before[1],
                    "resets": adapter.stats.resets - before[2]})
    return {"window": window, "segments": log, "accuracy_plain": float(np.mean(np.concatenate(plain))),
            "accuracy_served": float(np.mean(np.concatenate(served))),
            "adapted": adapter.stats.adapted, "refused": adapter.stats.refused, "resets": adapter.stats.resets}


def adabn_features(out: Path, batch: int = 93) -> Path:
    """clothing10 val, clean and each corruption at severity 3, through Lite0 with every batch-norm layer
    normalising by the statistics of its batch (shuffled, seeded) instead of ImageNet's running ones."""
    import torch
    from PIL import Image
    from shifts import DATA, _image_folder, corrupt_image
    from torch import nn

    from edgetl.backbones import create_backbone
    from edgetl.runtime.data.preprocess import normalize_batch, resize_and_crop

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_backbone("efficientnet_lite0").eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.train()
    config = model.pretrained.preprocess(224)
    paths, labels, _ = _image_folder(DATA / "clothing10" / "val")
    crops = [np.asarray(resize_and_crop(Image.open(p).convert("RGB"), config), dtype=np.uint8) for p in paths]
    order = np.random.default_rng(0).permutation(len(crops))       # batches mixing the classes
    for shift, severity in [("clean", 0)] + [(s, 3) for s in IMAGE_SHIFTS]:
        path = out / f"adabn_val_{shift}_{severity}.npz"
        if path.exists():
            continue
        shifted = crops if severity == 0 else [corrupt_image(c, shift, severity, seed=i) for i, c in enumerate(crops)]
        values = np.zeros((len(crops), model.feature_dim), np.float32)
        with torch.no_grad():
            for i in range(0, len(crops), batch):
                take = order[i:i + batch]
                values[take] = model(torch.from_numpy(normalize_batch(np.stack([shifted[j] for j in take]),
                                                                      config))).numpy()
        np.savez(path, features=values, labels=labels)
    return out


def print_table(title: str, result: dict) -> None:
    print(f"\n{title}")
    print(f"{'copy':<16}{'before':>8}" + "".join(f"{SHORT.get(c, c):>12}" for c in COLUMNS) + f"{'guard':>11}{'ms':>8}")
    for key, r in result["rows"].items():
        print(f"{key:<16}{r['before']:>8.3f}" + "".join(f"{r[c]:>12.3f}" for c in COLUMNS)
              + f"{r['decision']:>11}{r['adapt_ms']:>8.0f}")
    for key, s in result["summary"].items():
        if key.startswith("severity"):
            gains = "  ".join(f"{c} {g:+.2f}" for c, g in s["mean_gain_points"].items())
            print(f"{key}: mean gain (points) {gains}; guard {s['decisions']}")
    if "clean_loss_points" in result["summary"]:
        loss = result["summary"]["clean_loss_points"]["auto"]
        print(f"clean data: auto loses {loss:.2f} points ({verdict(loss, 0.5)})")
    gain = result["summary"].get("severity_3", {}).get("mean_gain_points", {}).get("auto")
    if gain is not None:
        print(f"severity 3: auto gains {gain:+.2f} points on average ({verdict(gain, 3.0, lower_is_better=False)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=Path, default=DEFAULT_OUT, help="benchmarks/shifts.py's cache.")
    parser.add_argument("--adabn", action="store_true",
                        help="Measure AdaBN too (torch on the host; seven backbone passes, cached).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON too.")
    args = parser.parse_args()
    if not (args.features / "READY").exists():
        import subprocess

        subprocess.run([sys.executable, str(Path(__file__).with_name("shifts.py")), "--out", str(args.features)],
                       check=True)
    results = {"images": run_set("clothing10", args.features, "train", "val", IMAGE_SHIFTS),
               "texts": run_set("banking77", args.features, "train", "test", TEXT_SHIFTS)}
    print_table("clothing10 (EfficientNet-Lite0 224 px, ridge head on train, val copies)", results["images"])
    print_table("banking77 (all-MiniLM-L6-v2, ridge head on train, test copies)", results["texts"])
    results["stream"] = stream(args.features)
    print("\nserve --adapt-on-drift on a stream of clothing10 val copies (32 a request, window 128)")
    for seg in results["stream"]["segments"]:
        print(f"{seg['segment']:<14} plain {seg['accuracy_plain']:.3f}  served {seg['accuracy_served']:.3f}  "
              f"adapted {seg['adapted']}  refused {seg['refused']}  resets {seg['resets']}")
    st = results["stream"]
    print(f"whole stream: plain {st['accuracy_plain']:.3f}, served {st['accuracy_served']:.3f}; adapted "
          f"{st['adapted']}, refused {st['refused']}, resets {st['resets']}")
    if args.adabn:
        folder = adabn_features(args.features / "adabn")
        results["images_adabn"] = run_set("clothing10", args.features, "train", "val", IMAGE_SHIFTS,
                                          folder=folder, prefix="adabn_val")
        print_table("clothing10 with AdaBN features (host, torch: BN statistics of the target batch)",
                    results["images_adabn"])
    path = save_result("adaptation", results)
    print(f"\nresults: {path}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
