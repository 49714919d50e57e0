"""``edgetl-rt cluster``: group unlabelled images (or texts) by their backbone features, for a person to label.

k-means (k-means++ seeding, seeded, a few restarts) on L2-normalised
features, i.e. by cosine similarity, as NCM classifies.  The groups are
written as folders of image copies plus ``groups.csv`` and ``summary.json``;
a person renames each folder to a class name (or merges and deletes), and
the folder can then be given to ``edgetl-rt update`` as labelled data.  Texts are
not copied: ``texts.csv`` lists them with their group as the label, to be
renamed and given to ``edgetl-rt update`` the same way.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..bundle.heads import normalise_rows
from ..compat import renamed_keyword
from ..data.sources import open_data
from ..errors import ConfigError
from ..fsutil import atomic_directory
from ..inference.features import backbone_features
from ..inference.model import EdgeModel
from ..progress import ProgressFactory, silent_progress


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(1)[None], 0.0)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iterations: int = 100,
           restarts: int = 4) -> tuple[np.ndarray, np.ndarray, float]:
    """(assignments, centres, inertia) of the best of ``restarts`` seeded k-means++ runs."""
    if not 1 <= k <= len(x):
        raise ConfigError(f"must lie in 1..{len(x)} (the number of inputs), got {k}", option="k")
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d2 = _squared_distances(x, np.array(centres)).min(axis=1)
            total = d2.sum()
            centres.append(x[rng.choice(len(x), p=d2 / total)] if total > 0 else x[rng.integers(len(x))])
        centres = np.array(centres)
        for _ in range(iterations):
            distances = _squared_distances(x, centres)
            assign = distances.argmin(axis=1)
            moved = np.array([x[assign == j].mean(axis=0) if np.any(assign == j) else centres[j] for j in range(k)])
            if np.allclose(moved, centres):
                break
            centres = moved
        inertia = float(distances[np.arange(len(x)), assign].sum())
        if best is None or inertia < best[2]:
            best = (assign, centres, inertia)
    return best


@renamed_keyword("tune", "measure")
def cluster_images(bundle: str | Path, data: str, k: int, out: str | Path, overwrite: bool = False, seed: int = 0,
                   artifact: str | None = None, backend: str | None = None, threads: int | None = None,
                   progress: ProgressFactory = silent_progress, measure: bool = True,
                   rejected_only: bool = False) -> dict:
    """Group the inputs of ``data``; ``rejected_only``: only those the bundle's unknown threshold rejects (the
    inputs of classes it does not know yet, to be labelled and learned)."""
    source = open_data(data, labelled=False)
    records = source.split("all")
    text = source.modality == "text"
    with EdgeModel(bundle, artifact=artifact, backend=backend, threads=threads, measure=measure) as model:
        if rejected_only and model.unknown is None:
            raise ConfigError(f"{bundle} has no unknown-input threshold to select the rejected inputs by",
                              option="rejected_only")
        found = backbone_features(model, records, model.adapter, skip_bad=True, progress=progress)
        features, kept = found.values, found.kept
        logits = model.head.logits(features) if len(kept) else np.zeros((0, len(model.labels)), np.float32)
        predicted = np.argmax(logits, axis=1) if len(kept) else np.zeros(0, int)
        labels = model.labels
        read = len(kept)
        if rejected_only and len(kept):
            rejected = model.unknown_scores(features, logits) > model.unknown.threshold
            features, predicted = features[rejected], predicted[rejected]
            kept = [i for i, r in zip(kept, rejected) if r]
    if len(kept) < k:
        what = " rejected as unknown" if rejected_only else ""
        raise ConfigError(f"only {len(kept)} readable {'texts' if text else 'images'}{what} for {k} groups",
                          option="k")
    assign, centres, inertia = kmeans(normalise_rows(features.astype(np.float64)), k, seed)
    groups = []
    with atomic_directory(out, overwrite=overwrite) as staging:
        rows = []
        for j in range(k):
            members = [i for i, a in zip(kept, assign) if a == j]
            folder = staging / f"group-{j:02d}"
            if not text:
                folder.mkdir()
            for n, i in enumerate(members):
                record = records[i]
                if text:       # texts go to the group's texts.csv (below), not to copies
                    rows.append((record.source, f"group-{j:02d}", record.text))
                    continue
                if record.pixels is not None:
                    target = folder / f"{n:05d}.png"
                    Image.fromarray(record.pixels).save(target)
                else:
                    target = folder / f"{n:05d}-{Path(record.source).name}"
                    shutil.copyfile(record.source, target)
                rows.append((record.source, f"group-{j:02d}", target.relative_to(staging).as_posix()))
            votes = np.bincount(predicted[assign == j], minlength=len(labels))
            groups.append({"group": f"group-{j:02d}", "size": len(members),
                           "head_suggests": labels[int(votes.argmax())] if len(members) else None,
                           "agreement": float(votes.max() / max(len(members), 1))})
        with open(staging / "groups.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["source", "group", "text" if text else "copy"])
            writer.writerows(rows)
        if text:     # rename the groups in its label column, then: edgetl-rt update BUNDLE OUT/texts.csv
            with open(staging / "texts.csv", "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["text", "label"])
                writer.writerows((row[2], row[1]) for row in rows)
        summary = {"bundle": str(bundle), "data": data, "k": k, "n": len(kept), "skipped": len(records) - read,
                   "inertia": inertia, "groups": groups}
        if rejected_only:
            summary.update(rejected_only=True, accepted_left_out=read - len(kept))
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["out"] = str(out)
    return summary
