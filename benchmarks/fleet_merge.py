"""A fleet that learns as one (issue 29), measured in one run: exactness, accuracy, size, time, refusals.

Real EfficientNet-Lite0 features (d = 1280, 224 px, ONNX-free torch pass on the CPU) of ``data/clothing10``'s
photos, computed once and kept in ``--features``.  The bundle is a d = 1280 bundle built here around them (the
tiny bundle's backbone files, never run: every step below takes features), its ridge head fit like the host's.

1. Exactness: 5 simulated devices learn their share of the train split (classes new to the bundle, classes
   overlapping between devices) in 3 updates each through ``learn_features``, contribute, and the host merges:
   the merged ridge head against the host's fit on every training sample at the same regularisation (max
   relative difference, target 1e-6), and the regularisation each chooses; then each device learns 10 more
   val photos and pulls: its head against the centralized fit over everything it holds (same target).  The
   same for NCM (class means).
2. Accuracy: 5 devices each seeing 2 of the 10 classes on a shared base head (5 photos per class): each device
   alone, the merge, and the host trained on everything, on the val split.
3. Size and time: contribution bytes at d = 1280 against the raw features they summarise; merge time and peak
   memory (a fresh process each, VmHWM) for 10, 100 and 1,000 synthetic contributions of 20 samples each.
4. Refusals (``edgetl fleet merge`` as a command: exit code, its one line, nothing written), SIGKILL during a
   merge and during a pull, and the S3 path through moto's S3 server.

Run: python benchmarks/fleet_merge.py [--features PATH] [--json]   (seeded: --seed)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict

from edgetl.fleet import merge_bundles
from edgetl.runtime.bundle.contribution import CONTRIBUTION_SCHEMA, Contribution, payload_digest
from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.heads import NCMHead, RidgeHead, RidgeStatistics, load_head, normalise_rows
from edgetl.runtime.bundle.manifest import FileEntry
from edgetl.runtime.bundle.store import FeatureStore, LearnerState, Samples
from edgetl.runtime.learning import UpdateSettings, learn_features
from edgetl.runtime.learning.fleet import contribute_bundle, contribution_arrays, pull_bundle
from edgetl.runtime.learning.ridge_system import RidgeSystem
from edgetl.runtime.learning.versions import bundle_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny-bundle"
CLOTHING = ROOT / "data" / "clothing10"
SETTINGS = UpdateSettings(max_accuracy_drop=100.0)
TARGET = 1e-6


# --- features and bundles -------------------------------------------------------------------------------------------

def clothing_features(path: Path) -> dict[str, np.ndarray]:
    """Lite0 features of clothing10's train and val photos, computed once (torch on the CPU) and kept."""
    if not path.is_file():
        from edgetl.backbones import create_backbone
        from edgetl.extract import extract_features, resolve_device
        from edgetl.runtime.data.sources import open_data

        backbone = create_backbone("efficientnet_lite0")
        frozen, _ = backbone.split(0)
        config = backbone.pretrained.preprocess(224, None)
        out = {}
        for split in ("train", "val"):
            records, names = open_data(str(CLOTHING / split)).records_and_names()
            features, valid, _ = extract_features(frozen, records, config, resolve_device("cpu"))
            out[f"{split}_features"] = features[valid].astype(np.float32)
            out[f"{split}_labels"] = np.array(names, dtype="<U32")[valid]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def make_bundle(folder: Path, x: np.ndarray, names: list[str], classes: list[str], holdout_every: int = 5) -> Path:
    """A bundle at x's dimension: the tiny bundle's backbone files, a ridge head fit on (x, names) with alpha
    chosen on every ``holdout_every``-th row (held out, as the exporter does), and those rows as learning data."""
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("store", "check.npz"))
    labels = np.array([classes.index(n) for n in names])
    holdout = np.arange(len(labels)) % holdout_every == holdout_every - 1
    head = RidgeHead.fit(x[~holdout], labels[~holdout], len(classes), x[holdout], labels[holdout])
    head.save(folder / "head.npz")
    keys = np.array([f"base-{i:05d}" for i in range(len(labels))], dtype="<U64")
    np.savez(folder / "learning" / "features.npz", features=x.astype(np.float32), labels=labels, holdout=holdout,
             keys=keys)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(labels=list(classes), feature_dim=x.shape[1], check={})
    manifest["backbone"]["feature_dim"] = x.shape[1]
    manifest["head"].update(FileEntry.of(folder, "head.npz").__dict__)
    manifest["learning"].update(FileEntry.of(folder, "learning/features.npz").__dict__,
                                n_train=int((~holdout).sum()), n_holdout=int(holdout.sum()))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def learn(bundle: Path, x: np.ndarray, names: list[str], tag: str, parts: int = 3) -> None:
    keys = [f"{tag}-{i:05d}" for i in range(len(names))]
    for chunk in np.array_split(np.arange(len(names)), parts):
        if len(chunk):
            learn_features(bundle, x[chunk], [names[i] for i in chunk], [keys[i] for i in chunk], SETTINGS)


def statistics(x: np.ndarray, names: list[str], classes: list[str]) -> RidgeStatistics:
    s = RidgeStatistics.empty(x.shape[1], len(classes))
    s.add(x, np.array([classes.index(n) for n in names]))
    return s


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def ridge_difference(head, classes: list[str], reference: RidgeHead, reference_classes: list[str]) -> float:
    order = [classes.index(c) for c in reference_classes]
    return max(relative(head.weight[order], reference.weight), relative(head.bias[order], reference.bias))


def float64_difference(state_ridge: RidgeStatistics, classes: list[str], alpha: float,
                       reference: RidgeStatistics, reference_classes: list[str]) -> float:
    """Max relative difference of the float64 ridge solutions (weights and bias) of two sets of statistics at
    ``alpha`` (a head file holds float32: its rounding, ~1e-7, would hide the merge's own)."""
    order = [classes.index(c) for c in reference_classes]
    w, b = RidgeSystem.from_statistics(state_ridge).weights(alpha)
    w_ref, b_ref = RidgeSystem.from_statistics(reference).weights(alpha)
    return max(relative(w[:, order], w_ref), relative(b[order], b_ref))


def ncm_means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return normalise_rows(sums / np.maximum(counts, 1)[:, None])


def ncm_reference(x: np.ndarray, names: list[str], classes: list[str]) -> NCMHead:
    sums = np.zeros((len(classes), x.shape[1]))
    labels = np.array([classes.index(n) for n in names])
    np.add.at(sums, labels, normalise_rows(x.astype(np.float64)))
    return NCMHead(sums, np.bincount(labels, minlength=len(classes)).astype(np.float64))


def ncm_difference(head: NCMHead, classes: list[str], reference: NCMHead, reference_classes: list[str]) -> float:
    order = [classes.index(c) for c in reference_classes]
    return relative(ncm_means(head.sums[order], head.counts[order]), ncm_means(reference.sums, reference.counts))


def accuracy(head, classes: list[str], x: np.ndarray, names: np.ndarray) -> float:
    predicted = np.array(classes)[np.argmax(head.logits(x), axis=1)]
    return float(np.mean(predicted == names))


# --- 1. exactness ---------------------------------------------------------------------------------------------------

def exactness(data: dict, work: Path, rng: np.random.Generator) -> dict:
    x, names = data["train_features"], data["train_labels"]
    classes = sorted(set(names.tolist()))
    base_classes, new_classes = classes[:6], classes[6:]
    order = rng.permutation(len(names))
    base_rows = [i for i in order if names[i] in base_classes][:60]
    rest = [i for i in order if i not in set(base_rows)]
    base = make_bundle(work / "base", x[base_rows], names[base_rows].tolist(), base_classes)
    # shares: device k sees two base classes and one or two new ones; new classes overlap between devices
    shares = [base_classes[0:2] + new_classes[0:1], base_classes[1:3] + new_classes[0:2], base_classes[3:5],
              base_classes[4:6] + new_classes[2:3], base_classes[5:6] + new_classes[2:4]]
    owners: dict[str, list[int]] = {c: [k for k, share in enumerate(shares) if c in share] for c in classes}
    assignment: dict[int, list[int]] = {k: [] for k in range(5)}
    for i in rest:
        holders = owners[names[i]]
        assignment[holders[int(rng.integers(len(holders)))]].append(i)
    devices, files = [], []
    (work / "contributions").mkdir()
    (work / "contributions-rows").mkdir()
    for k in range(5):
        device = work / f"device{k}"
        shutil.copytree(base, device)
        rows = assignment[k]
        learn(device, x[rows], names[rows].tolist(), f"d{k}")
        devices.append(device)
        twin = work / f"device{k}-rows"                 # the same device contributing --with-rows
        shutil.copytree(device, twin)
        contribute_bundle(twin, work / "contributions-rows" / f"device{k}.npz", device=f"device{k}", with_rows=True)
        shutil.rmtree(twin)
        files.append(work / "contributions" / f"device{k}.npz")
        contribute_bundle(device, files[-1], device=f"device{k}")
    t = time.perf_counter()
    report = merge_bundles(base, [str(work / "contributions")], work / "merged")
    merge_s = time.perf_counter() - t
    with_rows = merge_bundles(base, [str(work / "contributions-rows")], work / "merged-rows")
    # the host: every training row (the bundle's own and each device's), and every held-out row
    base_keys = set(f"base-{i:05d}" for i in range(len(base_rows)))
    all_x, all_names = [x[base_rows][np.arange(len(base_rows)) % 5 != 4]], \
        names[base_rows][np.arange(len(base_rows)) % 5 != 4].tolist()
    holdouts_x, holdouts_names = [x[base_rows][np.arange(len(base_rows)) % 5 == 4]], \
        names[base_rows][np.arange(len(base_rows)) % 5 == 4].tolist()
    device_alphas = []
    for device in devices:
        store = FeatureStore(device)
        version = store.version()
        rows = store.samples(version, 1280)
        mine = np.array([k not in base_keys for k in rows.keys.tolist()], dtype=bool)
        for flag, xs, ns in ((False, all_x, all_names), (True, holdouts_x, holdouts_names)):
            pick = mine & (rows.holdout == flag)
            xs.append(rows.features[pick])
            ns.extend(version.classes[i] for i in rows.labels[pick])
        device_alphas.append(version.alpha)
    all_x, holdouts_x = np.concatenate(all_x), np.concatenate(holdouts_x)
    merged_classes = report.classes
    central = statistics(all_x, all_names, merged_classes)
    host_alpha = RidgeHead.select_alpha(central, holdouts_x, np.array([merged_classes.index(n)
                                                                        for n in holdouts_names]))
    merged_head = load_head(work / "merged" / "head.npz")
    ridge_merge = ridge_difference(merged_head, merged_classes, RidgeHead.solve(central, report.alpha),
                                   merged_classes)
    ridge_merge64 = float64_difference(_merged_statistics(work / "merged"), merged_classes, report.alpha, central,
                                       merged_classes)
    ncm_report = merge_bundles(base, [str(work / "contributions")], work / "merged-ncm", head="ncm")
    ncm_merge = ncm_difference(load_head(work / "merged-ncm" / "head.npz"), ncm_report.classes,
                               ncm_reference(all_x, all_names, merged_classes), merged_classes)
    # each device learns 10 more val photos of its classes, then pulls (ridge; a copy pulls the NCM merge)
    vx, vnames = data["val_features"], data["val_labels"]
    pulls_ridge, pulls_ridge64, pulls_ncm = [], [], []
    shutil.copytree(devices[2], work / "device2-prepull")         # for the SIGKILL runs
    for k, device in enumerate(devices):
        local = [i for i in rng.permutation(len(vnames)) if vnames[i] in shares[k]][:10]
        learn(device, vx[local], vnames[local].tolist(), f"more{k}", parts=1)
        twin = work / f"device{k}-ncm"
        shutil.copytree(device, twin)
        store = FeatureStore(device)
        version = store.version()
        rows = store.samples(version, 1280)
        extra = np.array([k_.startswith(f"more{k}") for k_ in rows.keys.tolist()]) & ~rows.holdout
        every_x = np.concatenate([all_x, rows.features[extra]])
        every_names = all_names + [version.classes[i] for i in rows.labels[extra]]
        pulled = pull_bundle(device, work / "merged")
        head = store.head(store.version())
        everything = statistics(every_x, every_names, merged_classes)
        pulls_ridge.append(ridge_difference(head, pulled.classes, RidgeHead.solve(everything, report.alpha),
                                            merged_classes))
        pulls_ridge64.append(float64_difference(store.state(store.version(), 1280).ridge, pulled.classes,
                                                report.alpha, everything, merged_classes))
        pulled_ncm = pull_bundle(twin, work / "merged-ncm")
        twin_store = FeatureStore(twin)
        pulls_ncm.append(ncm_difference(twin_store.head(twin_store.version()), pulled_ncm.classes,
                                        ncm_reference(every_x, every_names, merged_classes), merged_classes))
    file_bytes = [f.stat().st_size for f in files]
    samples = [json.loads(str(np.load(f)["header"]))["n_samples"] for f in files]
    return {"devices": 5, "base_samples": len(base_rows), "train_samples_total": int(central.count),
            "classes": merged_classes, "new_classes": report.new_classes,
            "ridge_merge_vs_host_max_rel": ridge_merge64, "ncm_merge_vs_host_max_rel": ncm_merge,
            "ridge_after_pull_max_rel": max(pulls_ridge64), "ncm_after_pull_max_rel": max(pulls_ncm),
            "ridge_head_file_float32_merge_max_rel": ridge_merge,
            "ridge_head_file_float32_after_pull_max_rel": max(pulls_ridge),
            "alpha_merge": report.alpha, "alpha_merge_holdout_rows": report.alpha_holdout_n,
            "alpha_host_all_holdout": host_alpha, "alpha_merge_with_rows": with_rows.alpha,
            "alpha_merge_with_rows_holdout_rows": with_rows.alpha_holdout_n,
            "ridge_merge_with_rows_vs_host_max_rel": float64_difference(
                _merged_statistics(work / "merged-rows"), with_rows.classes, with_rows.alpha, central, merged_classes),
            "alpha_devices": device_alphas, "merge_s_5": merge_s,
            "contribution_bytes": file_bytes, "contribution_samples": samples,
            "raw_feature_bytes": [n * 1280 * 4 for n in samples]}


# --- 2. accuracy ----------------------------------------------------------------------------------------------------

def accuracy_study(data: dict, work: Path, rng: np.random.Generator) -> dict:
    x, names = data["train_features"], data["train_labels"]
    vx, vnames = data["val_features"], data["val_labels"]
    classes = sorted(set(names.tolist()))
    order = rng.permutation(len(names))
    base_rows = [i for c in classes for i in [j for j in order if names[j] == c][:5]]
    rest = [i for i in order if i not in set(base_rows)]
    base = make_bundle(work / "base", x[base_rows], names[base_rows].tolist(), classes)
    base_head = load_head(base / "head.npz")
    (work / "contributions").mkdir()
    alone = []
    for k in range(5):
        device = work / f"device{k}"
        shutil.copytree(base, device)
        rows = [i for i in rest if names[i] in classes[2 * k:2 * k + 2]]
        learn(device, x[rows], names[rows].tolist(), f"d{k}")
        store = FeatureStore(device)
        alone.append(accuracy(store.head(store.version()), store.version().classes, vx, vnames))
        contribute_bundle(device, work / "contributions" / f"device{k}.npz", device=f"device{k}")
    report = merge_bundles(base, [str(work / "contributions")], work / "merged")
    merged = accuracy(load_head(work / "merged" / "head.npz"), report.classes, vx, vnames)
    # the host on everything: every train photo, the merge's alpha, and the host's own choice on the devices'
    # held-out rows plus the base's
    host_same_alpha = RidgeHead.fit(x, np.array([classes.index(n) for n in names]), len(classes),
                                    alpha=report.alpha)
    return {"base_head": accuracy(base_head, classes, vx, vnames), "device_alone": alone,
            "device_alone_mean": float(np.mean(alone)), "merge": merged,
            "host_everything_same_alpha": accuracy(host_same_alpha, classes, vx, vnames),
            "note": "the devices learned their train photos minus the 20% they hold out; the host fit above takes "
                    "every train photo, so it sees ~20% more samples",
            "host_same_samples": accuracy(RidgeHead.solve(_merged_statistics(work / "merged"), report.alpha),
                                          classes, vx, vnames), "alpha": report.alpha, "val_photos": len(vnames)}


def _merged_statistics(bundle: Path) -> RidgeStatistics:
    return bundle_state(Bundle(bundle))[0].ridge


# --- 3. size and time -----------------------------------------------------------------------------------------------

def sizes(rng: np.random.Generator, counts=(20, 100, 639, 640, 1000, 5000)) -> list[dict]:
    """Bytes of a contribution of n samples at d = 1280 (10 classes) against its raw float32 features."""
    rows = []
    for n in counts:
        x = np.abs(rng.normal(0, 1, (n, 1280))).astype(np.float32)
        labels = rng.integers(0, 10, n)
        state = LearnerState.empty(1280, 10).with_rows(Samples(x, labels, np.zeros(n, bool), np.zeros(n, "<U64")))
        arrays = contribution_arrays(state)
        header = {"schema": CONTRIBUTION_SCHEMA, "id": "size", "device": "d", "base": "b",
                  "classes": list("abcdefghij"), "feature_dim": 1280, "created": "",
                  "payload_sha256": payload_digest(arrays), "versions": {}}
        rows.append({"samples": n, "gram_form": "factor" if "gram_factor" in arrays else "upper",
                     "bytes": len(Contribution(header, arrays).to_bytes()), "raw_float32_bytes": n * 1280 * 4})
    return rows


# --- 3b. merge time -------------------------------------------------------------------------------------------------

MERGE_CHILD = textwrap.dedent("""
    import json, sys, time
    from edgetl.fleet import merge_bundles
    t = time.perf_counter()
    report = merge_bundles(sys.argv[1], [sys.argv[2]], sys.argv[3])
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mb": report.peak_rss_mb,
                      "contributions": len(report.contributions), "samples": report.samples}))
""")


def synthetic(base: Path, folder: Path, count: int, per: int, rng: np.random.Generator) -> None:
    """``count`` contributions of ``per`` random samples each on ``base`` (its identity, its classes); their Gram
    matrices in the factored form (``per`` < d/2), whose factor is the rows' transpose."""
    from edgetl.runtime.bundle.contribution import bundle_identity
    bundle = Bundle(base)
    classes, dim = list(bundle.manifest.labels), bundle.feature_dim
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        x = rng.normal(0, 1, (per, dim))
        labels = rng.integers(0, len(classes), per)
        sums = np.zeros((len(classes), dim))
        np.add.at(sums, labels, x)
        ncm = np.zeros((len(classes), dim))
        np.add.at(ncm, labels, normalise_rows(x))
        counts = np.bincount(labels, minlength=len(classes)).astype(np.float64)
        arrays = {"gram_factor": x.T.copy(), "class_sums": sums, "feature_sum": x.sum(0), "counts": counts,
                  "ncm_sums": ncm, "ncm_counts": counts.copy()}
        header = {"schema": CONTRIBUTION_SCHEMA, "id": f"synthetic-{n:05d}", "device": f"device-{n:05d}",
                  "base": bundle_identity(bundle.manifest), "classes": classes, "feature_dim": dim,
                  "created": "2026-01-01T00:00:00+00:00", "payload_sha256": payload_digest(arrays),
                  "versions": {"after": None, "to": 1}, "samples": {}, "n_samples": per}
        (folder / f"c{n:05d}.npz").write_bytes(Contribution(header, arrays).to_bytes())


def scale(work: Path, base: Path, rng: np.random.Generator, counts: tuple[int, ...]) -> list[dict]:
    rows = []
    for count in counts:
        folder = work / f"synthetic-{count}"
        synthetic(base, folder, count, 20, rng)
        size = sum(p.stat().st_size for p in folder.iterdir())
        child = subprocess.run([sys.executable, "-c", MERGE_CHILD, str(base), str(folder),
                                str(work / f"merged-{count}")], capture_output=True, text=True, check=True)
        rows.append({"contributions": count, "bytes_read": size, **json.loads(child.stdout)})
        shutil.rmtree(folder)
        shutil.rmtree(work / f"merged-{count}")
    return rows


# --- 4. refusals, kills, S3 -----------------------------------------------------------------------------------------

def refusals(work: Path, base: Path, files: list[Path]) -> list[dict]:
    """Each bad contribution given to ``edgetl fleet merge`` beside two good ones: exit code, line, written."""
    bad = work / "bad"
    bad.mkdir()
    data = np.load(files[0])
    arrays = {k: data[k] for k in data.files if k != "header"}
    header = json.loads(str(data["header"]))
    broken = dict(arrays, class_sums=arrays["class_sums"] + 1.0)
    (bad / "broken.npz").write_bytes(Contribution(header, broken).to_bytes())
    other = dict(header, base="0" * 64, id="x" * 32)
    (bad / "other-base.npz").write_bytes(Contribution(other, arrays).to_bytes())
    small = {k: v for k, v in arrays.items() if not k.startswith("gram")}
    small.update(class_sums=arrays["class_sums"][:, :640].copy(), ncm_sums=arrays["ncm_sums"][:, :640].copy(),
                 feature_sum=arrays["feature_sum"][:640].copy(), gram_upper=np.zeros(640 * 641 // 2))
    narrow = dict(header, feature_dim=640, id="y" * 32, payload_sha256=payload_digest(small))
    (bad / "dim-640.npz").write_bytes(Contribution(narrow, small).to_bytes())
    (bad / "truncated.npz").write_bytes(files[1].read_bytes()[:4096])
    cases = [("broken checksum", bad / "broken.npz"), ("another base bundle", bad / "other-base.npz"),
             ("another feature dimension", bad / "dim-640.npz"), ("duplicate", files[0]),
             ("truncated file", bad / "truncated.npz")]
    rows = []
    for name, path in cases:
        out = work / "refused"
        child = subprocess.run([sys.executable, "-m", "edgetl", "fleet", "merge", str(base), str(files[0]),
                                str(files[1]), str(path), "--out", str(out)], capture_output=True, text=True)
        rows.append({"case": name, "exit_code": child.returncode, "line": child.stderr.strip(),
                     "lines": len(child.stderr.strip().splitlines()), "written": out.exists()})
    return rows


KILL_CHILD = textwrap.dedent("""
    import os, signal, sys
    job, point, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    original = os.replace
    def replace(src, dst, *a, **k):
        if point in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(src, dst, *a, **k)
    os.replace = replace
    if job == "pull":
        from edgetl.runtime.learning.fleet import pull_bundle
        pull_bundle(args[0], args[1])
    else:
        from edgetl.fleet import merge_bundles
        merge_bundles(args[0], args[1:-1], args[-1])
""")


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "lock"}


def kills(work: Path, base: Path, files: list[Path], device: Path) -> list[dict]:
    rows = []
    before = _tree(base)
    out = work / "killed-merge"
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, "merge", "killed-merge", str(base),
                            *map(str, files), str(out)], capture_output=True, text=True)
    rows.append({"case": "SIGKILL at the merge's final rename", "killed": child.returncode == -signal.SIGKILL,
                 "bundle_unchanged": _tree(base) == before, "output_written": out.exists()})
    store = FeatureStore(device)
    version, count = store.version().version, store.state(store.version(), 1280).ridge.count
    for point in ("residuals", "CURRENT"):
        child = subprocess.run([sys.executable, "-c", KILL_CHILD, "pull", point, str(device), str(work / "merged")],
                               capture_output=True, text=True)
        store = FeatureStore(device)
        rows.append({"case": f"SIGKILL during pull (writing {point})", "killed": child.returncode == -signal.SIGKILL,
                     "store_unchanged": store.version().version == version and
                     store.state(store.version(), 1280).ridge.count == count})
    return rows


def s3_path(work: Path, base: Path, files: list[Path]) -> dict:
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        return {"skipped": f"moto[server] or boto3 missing: {exc}"}
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        os.environ.update(AWS_ACCESS_KEY_ID="fleet", AWS_SECRET_ACCESS_KEY="fleet", AWS_DEFAULT_REGION="us-east-1",
                          AWS_ENDPOINT_URL=endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="fleet")
        for file in files:
            s3.upload_file(str(file), "fleet", f"round-1/{file.name}")
        t = time.perf_counter()
        report = merge_bundles(base, ["s3://fleet/round-1/"], work / "merged-s3")
        seconds = time.perf_counter() - t
        local = load_head(work / "merged" / "head.npz")
        return {"server": "moto ThreadedMotoServer (S3 over HTTP)", "contributions": len(report.contributions),
                "seconds": seconds, "same_head_as_local": bool(np.array_equal(
                    load_head(work / "merged-s3" / "head.npz").weight, local.weight))}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=Path,
                        default=Path(os.environ.get("EDGETL_CACHE_DIR", Path.home() / ".cache" / "edgetl"))
                        / "fleet_merge_clothing10_lite0.npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", default="10,100,1000", help="Contribution counts of the time and memory runs.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    data = clothing_features(args.features)
    with tempfile.TemporaryDirectory(prefix="fleet-merge-") as tmp:
        work = Path(tmp)
        (work / "exact").mkdir()
        exact = exactness(data, work / "exact", rng)
        (work / "accuracy").mkdir()
        acc = accuracy_study(data, work / "accuracy", rng)
        files = sorted((work / "exact" / "contributions").glob("*.npz"))
        base = work / "exact" / "base"
        refused = refusals(work / "exact", base, files)
        killed = kills(work / "exact", base, files, work / "exact" / "device2-prepull")
        s3 = s3_path(work / "exact", base, files)
        timing = scale(work, base, rng, tuple(int(n) for n in args.scale.split(",")))
    size_rows = sizes(rng)
    result = {"features": "EfficientNet-Lite0 224 px, clothing10 (train / val)", "exactness": exact,
              "accuracy": acc, "sizes": size_rows, "scale": timing, "refusals": refused, "kills": killed, "s3": s3,
              "machine_note": "a shared 2-core VM (other jobs running); times are indicative"}
    path = save_result("fleet_merge", result)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"exactness (target {TARGET:g} relative):")
    for key in ("ridge_merge_vs_host_max_rel", "ncm_merge_vs_host_max_rel", "ridge_after_pull_max_rel",
                "ncm_after_pull_max_rel", "ridge_head_file_float32_merge_max_rel",
                "ridge_head_file_float32_after_pull_max_rel"):
        print(f"  {key:42s} {exact[key]:.2e}  {verdict(exact[key], TARGET)}")
    print(f"  merge of --with-rows contributions at its own alpha ({exact['alpha_merge_with_rows']:.4g}, "
          f"{exact['alpha_merge_with_rows_holdout_rows']} held-out rows) vs host: "
          f"{exact['ridge_merge_with_rows_vs_host_max_rel']:.2e}")
    print(f"  alpha: merge {exact['alpha_merge']:.4g} ({exact['alpha_merge_holdout_rows']} held-out rows), host on "
          f"every held-out row {exact['alpha_host_all_holdout']:.4g}, devices "
          + ", ".join(f"{a:.4g}" if a else "-" for a in exact["alpha_devices"]))
    print(f"accuracy on {acc['val_photos']} val photos: base {acc['base_head']:.4f}, each device alone "
          + ", ".join(f"{a:.4f}" for a in acc["device_alone"]) + f", merge {acc['merge']:.4f}, host on the same "
          f"samples {acc['host_same_samples']:.4f}, host on every train photo {acc['host_everything_same_alpha']:.4f}")
    for n, b, raw in zip(exact["contribution_samples"], exact["contribution_bytes"], exact["raw_feature_bytes"]):
        print(f"  contribution of {n} samples: {b / 1e6:.2f} MB (raw float32 features {raw / 1e6:.2f} MB)")
    for row in size_rows:
        print(f"  contribution of {row['samples']:5d} samples ({row['gram_form']:6s}): {row['bytes'] / 1e6:6.2f} MB "
              f"(raw float32 features {row['raw_float32_bytes'] / 1e6:6.2f} MB)")
    for row in timing:
        print(f"  merge of {row['contributions']:5d} contributions ({row['bytes_read'] / 1e6:.0f} MB): "
              f"{row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']:.0f} MB")
    for row in refused:
        print(f"  refused ({row['case']}): exit {row['exit_code']}, written {row['written']}: {row['line']}")
    for row in killed:
        print(f"  {row}")
    print(f"  S3: {s3}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
