"""The device runtime on emulated aarch64 against this machine: one table per bundle (``make check-arm64``).

Inside the arm64 userland that ``emulation/arm64_env.sh`` built (each command one ``chroot ROOT
qemu-aarch64-static`` process), and here, the same runtime runs:

* the torch-free tests (``tests/runtime``), on arm64 only (this machine runs them in ``make test``);
* ``edgetl-rt predict`` and ``evaluate`` of the data's val split with each artifact: accuracy on each
  architecture, top-1 agreement, max and median difference of the class scores;
* ``edgetl-rt update`` with shifted copies of val images (new bytes, so new samples), then ``history`` and
  ``rollback``: the learned head's difference between the architectures, and the same history on both.

The aarch64 accuracies are recorded in the bundle's manifest (``accuracy_by_arch``), where the runtime's choice
on an aarch64 device gates on them.

Emulation is about 130x slower than native, so ``--limit`` takes the first N val images per class
(default: all).  Results go to ``benchmarks/results/check_arm64.json``.
Run: python emulation/compare_arm64.py --root ROOT --bundle BUNDLE --data DATA [--limit N] [--skip-tests]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = ("onnx", "onnx-int8")
WORK = "/work"          # inside the userland
#: The emulated core.  Jetson Orin's Cortex-A78AE is an Armv8.2 core with dot products, like the A76; qemu's
#: ``-cpu max`` adds SVE and SME, which ONNX Runtime then uses and qemu emulates about 4x slower (and the
#: slowdown grows with the run: 96 images took 90 s against 24 s).
CPU = "cortex-a76"


def _host(args: list[str]) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "edgetl-rt"), *args, "--json"], capture_output=True,
                         text=True)
    if out.returncode:
        sys.exit(f"x86: edgetl-rt {' '.join(args)} failed: {out.stderr.strip()[-400:]}")
    return json.loads(out.stdout)


def _arm(root: Path, args: list[str], module: str = "from edgetl.runtime.cli import main; main()",
         check: bool = True) -> subprocess.CompletedProcess:
    """One emulated process: chroot ROOT qemu-aarch64-static -cpu CPU /opt/venv/bin/python -c MODULE ARGS."""
    env = {"PATH": "/opt/venv/bin:/usr/bin:/bin", "HOME": "/root", "EDGETL_STATE_DIR": f"{WORK}/state",
           "EDGETL_CACHE_DIR": f"{WORK}/cache", "LANG": "C.UTF-8"}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"     # found on this machine's PATH, not the userland's
    out = subprocess.run([chroot, str(root), "/usr/bin/qemu-aarch64-static", "-cpu", CPU,
                          "/opt/venv/bin/python", "-c", module, *args], capture_output=True, text=True, env=env,
                         cwd="/")
    if check and out.returncode:
        sys.exit(f"arm64: {' '.join(args)} failed: {out.stderr.strip()[-400:]}")
    return out


def _arm_json(root: Path, args: list[str]) -> dict:
    return json.loads(_arm(root, [*args, "--json"]).stdout)


def _val_images(data: Path, limit: int | None) -> list[Path]:
    images = []
    for folder in sorted(p for p in (data / "val").iterdir() if p.is_dir()):
        images += sorted(folder.glob("*.png"))[:limit]
    return images


def _scores(report: dict, labels: list[str]) -> np.ndarray:
    """Class scores per image, columns in ``labels`` order (predict's top_k lists every class)."""
    rows = []
    for prediction in report["predictions"]:
        by_label = {entry["label"]: entry["score"] for entry in prediction["top_k"]}
        rows.append([by_label[label] for label in labels])
    return np.array(rows)


def _shifted(images: list[Path], out: Path) -> Path:
    """Each image moved by one pixel (wrapping): the same digit, new bytes, so a new sample for ``update``."""
    for path in images:
        target = out / path.parent.name / f"shifted-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            ImageChops.offset(image, 1, 1).save(target)
    return out


def _head(bundle: Path, version: int) -> np.ndarray:
    with np.load(bundle / "store" / "versions" / f"{version:06d}" / "head.npz", allow_pickle=False) as head:
        return head["weight"]


def _history(report: dict) -> list[tuple]:
    return [(v["version"], v["action"], v["n_new"], v["classes"]) for v in report["versions"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Image folder with a val split (make demo's).")
    parser.add_argument("--limit", type=int, default=None, help="Val images per class (default: all).")
    parser.add_argument("--update-images", type=int, default=3, help="Shifted val images per class to learn.")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.root / WORK.lstrip("/")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(args.bundle, work / "bundle", ignore=shutil.ignore_patterns("timings", "store", "cache"))
    images = _val_images(args.data, args.limit)
    for path in images:
        target = work / "data" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    update_source = [p for folder in sorted((args.data / "val").iterdir()) if folder.is_dir()
                     for p in sorted(folder.glob("*.png"))[-args.update_images:]]
    _shifted(update_source, work / "update")
    local = Path(str(work) + "-x86")
    shutil.rmtree(local, ignore_errors=True)
    shutil.copytree(work, local)
    labels = json.loads((args.bundle / "manifest.json").read_text())["labels"]
    result: dict = {"bundle": str(args.bundle), "images": len(images), "host": platform.machine(), "artifacts": {}}

    if not args.skip_tests:
        for name in ("tests/runtime", "tests/data", "tests/conftest.py", "pyproject.toml"):
            source, target = REPO / name, work / "repo" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        t0 = time.perf_counter()
        out = _arm(args.root, ["-q", "-p", "no:cacheprovider", "-rs", "--rootdir", f"{WORK}/repo",
                               f"{WORK}/repo/tests/runtime"],
                   module="import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))", check=False)
        summary = (out.stdout.strip().splitlines() or ["no output"])[-1]
        result["tests"] = {"summary": summary, "returncode": out.returncode, "seconds": time.perf_counter() - t0}
        print(f"arm64 tests/runtime: {summary} ({result['tests']['seconds']:.0f} s)", flush=True)

    image_args = [str(p.relative_to(args.data / "val")) for p in images]
    for artifact in ARTIFACTS:
        row, t0 = {}, time.perf_counter()
        for side, run, root in (("x86", _host, local), ("arm64", lambda a: _arm_json(args.root, a), Path(WORK))):
            predicted = run(["predict", str(root / "bundle"), *[str(root / "data" / p) for p in image_args],
                             "--artifact", artifact, "--top-k", str(len(labels))])
            evaluated = run(["evaluate", str(root / "bundle"), str(root / "data"), "--artifact", artifact])
            row[side] = {"scores": _scores(predicted, labels), "accuracy": evaluated["accuracy"]}
        truth = np.array([labels.index(Path(p).parent.name) for p in image_args])
        x86, arm = row["x86"]["scores"], row["arm64"]["scores"]
        difference = np.abs(x86 - arm)
        result["artifacts"][artifact] = {
            "accuracy_x86": row["x86"]["accuracy"], "accuracy_arm64": row["arm64"]["accuracy"],
            "top1_accuracy_from_predict": [float(np.mean(x86.argmax(1) == truth)),
                                           float(np.mean(arm.argmax(1) == truth))],
            "top1_agreement": int(np.sum(x86.argmax(1) == arm.argmax(1))), "n": len(truth),
            "max_score_difference": float(difference.max()), "median_score_difference": float(np.median(difference)),
            "images_over_0.01": int(np.sum(difference.max(1) > 0.01)), "seconds": time.perf_counter() - t0,
        }
        # learning: the same new images on both, then history and a rollback
        for side, run, root in (("x86", _host, local), ("arm64", lambda a: _arm_json(args.root, a), Path(WORK))):
            copy = f"bundle-{artifact}"
            shutil.copytree((local if side == "x86" else work) / "bundle", (local if side == "x86" else work) / copy)
            run(["update", str(root / copy), str(root / "update"), "--artifact", artifact, "--holdout", "0"])
            run(["rollback", str(root / copy)])
            row[side]["history"] = _history(run(["history", str(root / copy)]))
        heads = [_head(local / f"bundle-{artifact}", 1), _head(work / f"bundle-{artifact}", 1)]   # the update's
        result["artifacts"][artifact].update(
            head_difference=float(np.max(np.abs(heads[0] - heads[1])) / np.max(np.abs(heads[0]))),
            same_history=row["x86"]["history"] == row["arm64"]["history"])
        print(f"{artifact}: done in {time.perf_counter() - t0:.0f} s", flush=True)

    result["seconds"] = time.perf_counter() - started
    print(f"\n{'artifact':<11}{'acc x86':>9}{'acc arm64':>11}{'top-1 agree':>13}{'max diff':>10}{'median diff':>13}"
          f"{'> 0.01':>8}{'head diff':>11}{'history':>9}")
    for artifact, r in result["artifacts"].items():
        print(f"{artifact:<11}{r['accuracy_x86']:>9.4f}{r['accuracy_arm64']:>11.4f}"
              f"{r['top1_agreement']:>8d}/{r['n']:<4d}{r['max_score_difference']:>10.2e}"
              f"{r['median_score_difference']:>13.2e}{r['images_over_0.01']:>8d}{r['head_difference']:>11.2e}"
              f"{'same' if r['same_history'] else 'DIFFERS':>9}")
    print(f"({len(images)} val images; head diff: the weights the update learned, max |x86 - arm64| / max |x86|; "
          f"history: update then rollback, the same versions on both; whole check {result['seconds']:.0f} s)")
    from edgetl.runtime.bundle.manifest import record_accuracy

    record_accuracy(args.bundle, "aarch64", {a: r["accuracy_arm64"] for a, r in result["artifacts"].items()})
    print(f"recorded the aarch64 accuracies in {args.bundle / 'manifest.json'} (accuracy_by_arch)")
    out = REPO / "benchmarks" / "results" / "check_arm64.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
