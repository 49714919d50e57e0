"""Unknown inputs on frozen features: each scorer of :mod:`edgetl.runtime.bundle.unknown` measured (issue 28).

Cases (features extracted once with the host's backbone pass, the code ``edgetl finetune`` runs, and kept in
``--work``):

* ``clothing10-heldout``: EfficientNet-Lite0 at 224 px on ``data/clothing10``, three classes held out as unknown (a
  seeded choice, ``--seed``); the seven others are learned from ``train/``, half of their ``val/`` photos set the
  threshold (and any tuning), the other half are the known test inputs; the unknowns are every photo of the three.
* ``banking77-heldout``: all-MiniLM-L6-v2 on ``data/banking77``, 17 intents held out (seeded); the 60 others are
  learned from ``train.csv`` (a seeded tenth held out as val), the known test inputs are their ``test.csv`` queries,
  the unknowns the 17 intents' ``test.csv`` queries.
* ``clothing10-far``: all ten classes known; unknowns are the photos of ``data/flowers3`` and 300 images of
  ``builtin:digits`` (seeded), through the same Lite0 preprocessing.
* ``banking77-far``: all 77 intents known; unknowns are 400 sentences of this repository's documentation
  (``docs/*.md``, prose lines of 6 to 40 words, seeded): English text of another domain.

The projection ``projected-knn`` and ``combined`` use is trained per case on the known classes, as ``edgetl
export`` trains it (:mod:`edgetl.unknown_projection`).  For the held-out cases the script also reports the method a
*leave-classes-out* choice ranks first: known classes set aside as stand-in unknowns, no real unknown seen (the
honest way to choose a method; the headline figures of every method are shown too).  ``--seeds 1,2,...`` repeats the
held-out cases with other classes held out and averages the linear head's AUROC.

Per head (``--heads``: ``linear`` and ``mlp`` trained as ``edgetl finetune`` trains them, ``linear`` its default;
``ridge`` as the device's updates solve it) and method: AUROC (unknown = positive), the share of unknowns accepted at
the threshold that keeps 95 % of the known val inputs, the share of known test inputs kept, top-1 accuracy of the
known test inputs with ``--reject`` off (the head's own: the scorer never changes a label) and on (a rejected known
input counts as wrong), and the cost per prediction against the backbone's (batch 1, the fastest of many runs).

Run: python benchmarks/unknown_inputs.py [--work DIR] [--seeds 1,2] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import save_result, verdict

from edgetl.runtime.bundle.heads import RidgeHead
from edgetl.runtime.bundle.unknown import DEFAULT_METHOD, METHODS, PROJECTION_USERS, UnknownSettings, auroc, fit_unknown
from edgetl.unknown_choice import leave_classes_out
from edgetl.unknown_projection import train_projection

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"clothing10-heldout": 0.90, "banking77-heldout": 0.93, "clothing10-far": 0.98, "banking77-far": 0.98}


# --- features (the host's pass, cached) ----------------------------------------------------------------------------

def _pass(backbone, preprocess, records, cache_dir: Path) -> np.ndarray:
    from edgetl.cache import FeatureCache
    from edgetl.extract import resolve_device
    from edgetl.features import backbone_pass, feature_key

    frozen, _ = backbone.split(0)
    compute = resolve_device("cpu")
    weights = backbone.weights_sha256()
    key = feature_key(backbone, weights, frozen, preprocess, compute, records, False)
    found = backbone_pass(frozen, key, records, preprocess, compute, FeatureCache(cache_dir), weights,
                          log=lambda m: print(f"  {m}", flush=True))
    return np.asarray(found.cached.features, np.float32).reshape(len(records), -1)


def _doc_sentences(limit: int, seed: int) -> list[str]:
    lines = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line[0] in "#|`-*>[<!" or "```" in line:
                continue
            words = re.sub(r"[`*_\[\]()]", "", line).split()
            if 6 <= len(words) <= 40:
                lines.append(" ".join(words))
    lines = sorted(set(lines))
    rng = np.random.default_rng(seed)
    return [lines[i] for i in np.sort(rng.choice(len(lines), min(limit, len(lines)), replace=False))]


def extract_all(work: Path, data: Path, seed: int = 0) -> None:
    """Every feature file the cases read, written once to ``work`` (a file already there is kept)."""
    from edgetl.backbones import create_backbone
    from edgetl.features import preprocess_for
    from edgetl.runtime.data.sources import open_data
    from edgetl.runtime.data.text import TextRecord

    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if not (work / "clothing10.npz").is_file() or not (work / "image_far.npz").is_file():
        backbone = create_backbone("efficientnet_lite0")
        clothing = open_data(str(data / "clothing10"))
        preprocess = preprocess_for(backbone, clothing, 224)
        parts = {}
        for split in ("train", "val"):
            records = clothing.split(split)
            parts[split] = (_pass(backbone, preprocess, records, cache), np.array([r.label for r in records]))
        np.savez(work / "clothing10.npz", train_x=parts["train"][0], train_y=parts["train"][1],
                 val_x=parts["val"][0], val_y=parts["val"][1], classes=np.array(clothing.class_names))
        flowers = open_data(str(data / "flowers3")).split("all")
        digits = open_data("builtin:digits").split("all")
        pick = np.sort(np.random.default_rng(seed).choice(len(digits), 300, replace=False))
        np.savez(work / "image_far.npz", flowers3=_pass(backbone, preprocess, flowers, cache),
                 digits=_pass(backbone, preprocess, [digits[i] for i in pick], cache))
    if not (work / "banking77.npz").is_file():
        backbone = create_backbone("minilm-l6")
        train = open_data(str(data / "banking77" / "train.csv"))
        test = open_data(str(data / "banking77" / "test.csv")).remap_to(train.class_names)
        preprocess = preprocess_for(backbone, train, None)
        train_records, test_records = train.split("all"), test.split("all")
        docs = [TextRecord(f"docs:{i}", 0, text) for i, text in enumerate(_doc_sentences(400, seed))]
        np.savez(work / "banking77.npz", train_x=_pass(backbone, preprocess, train_records, cache),
                 train_y=np.array([r.label for r in train_records]),
                 test_x=_pass(backbone, preprocess, test_records, cache),
                 test_y=np.array([r.label for r in test_records]),
                 docs=_pass(backbone, preprocess, docs, cache), classes=np.array(train.class_names))


# --- cases -----------------------------------------------------------------------------------------------------------

def _held_out(n_classes: int, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    held = np.sort(np.random.default_rng(seed).choice(n_classes, n_out, replace=False))
    remap = -np.ones(n_classes, np.int64)
    known = np.setdiff1d(np.arange(n_classes), held)
    remap[known] = np.arange(len(known))
    return held, remap


def cases(work: Path, seed: int) -> dict:
    """name -> (train x, y, val x, y, test x, y, unknown x, description)."""
    out = {}
    c = np.load(work / "clothing10.npz")
    names = [str(n) for n in c["classes"]]
    held, remap = _held_out(len(names), 3, seed)
    tr, va = remap[c["train_y"]] >= 0, remap[c["val_y"]] >= 0
    vx, vy = c["val_x"][va], remap[c["val_y"][va]]
    order = np.random.default_rng(seed + 1).permutation(len(vy))
    sel, te = order[:len(vy) // 2], order[len(vy) // 2:]
    out["clothing10-heldout"] = (c["train_x"][tr], remap[c["train_y"][tr]], vx[sel], vy[sel], vx[te], vy[te],
                                 np.concatenate([c["train_x"][~tr], c["val_x"][~va]]),
                                 f"held out: {', '.join(names[i] for i in held)}")
    far = np.load(work / "image_far.npz")
    order = np.random.default_rng(seed + 1).permutation(len(c["val_y"]))
    sel, te = order[:len(order) // 2], order[len(order) // 2:]
    out["clothing10-far"] = (c["train_x"], c["train_y"], c["val_x"][sel], c["val_y"][sel], c["val_x"][te],
                             c["val_y"][te], np.concatenate([far["flowers3"], far["digits"]]),
                             f"unknowns: flowers3 ({len(far['flowers3'])}) + builtin:digits ({len(far['digits'])})")
    b = np.load(work / "banking77.npz")
    names = [str(n) for n in b["classes"]]
    held, remap = _held_out(len(names), 17, seed)
    tr, te = remap[b["train_y"]] >= 0, remap[b["test_y"]] >= 0
    x, y = b["train_x"][tr], remap[b["train_y"][tr]]
    order = np.random.default_rng(seed + 1).permutation(len(y))
    n_val = len(y) // 10
    out["banking77-heldout"] = (x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]],
                                b["test_x"][te], remap[b["test_y"][te]], b["test_x"][~te],
                                f"held out: {', '.join(names[i] for i in held)}")
    order = np.random.default_rng(seed + 1).permutation(len(b["train_y"]))
    n_val = len(order) // 10
    out["banking77-far"] = (b["train_x"][order[n_val:]], b["train_y"][order[n_val:]], b["train_x"][order[:n_val]],
                            b["train_y"][order[:n_val]], b["test_x"], b["test_y"], b["docs"],
                            f"unknowns: {len(b['docs'])} prose sentences of docs/*.md")
    return out


def _per_input_ms(scorer, head, x: np.ndarray, repeats: int = 200) -> float:
    """Scorer plus the head's logits it needs, batch 1: the fastest of ``repeats`` in ms (the VM is shared: the
    minimum is the uncontended cost; numpy's own threads, as the device runs it)."""
    times = []
    for i in range(repeats):
        row = x[i % len(x)][None]
        t0 = time.perf_counter()
        scorer.scores(row, head.logits(row))
        times.append(time.perf_counter() - t0)
    return float(np.min(times) * 1000)


def _backbone_ms(name: str, repeats: int = 30) -> float:
    """Eager torch batch 1 of the frozen backbone at its default threads (as numpy's for the scorer), the fastest of
    ``repeats`` in ms (the runtime's engines are faster: the cost ratio then underestimates the scorer's share)."""
    import torch

    from edgetl.backbones import create_backbone

    backbone = create_backbone(name)
    frozen, _ = backbone.split(0)
    frozen.eval()
    if backbone.modality == "text":
        preprocess = backbone.pretrained.preprocess()
        sample = torch.from_numpy(preprocess.encode(["how do I top up my card with a transfer from abroad"]))
    else:
        sample = torch.zeros(1, 3, 224, 224)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            frozen(sample)
            times.append(time.perf_counter() - t0)
    return float(np.min(times[3:]) * 1000)


def _head(kind: str, tx, ty, vx, vy, seed: int):
    """The head ``edgetl finetune --head KIND`` trains on these features (the same code), or the ridge head the
    device's updates solve (``ridge``)."""
    classes = int(ty.max()) + 1
    if kind == "ridge":
        return RidgeHead.fit(tx, ty, classes, vx, vy)
    import torch

    from edgetl.extract import resolve_device
    from edgetl.heads import HeadConfig, train_gradient_head

    torch.manual_seed(seed)
    return train_gradient_head(torch.nn.Sequential(), tx, ty, vx, vy, classes, tx.shape[1], HeadConfig(kind=kind),
                               resolve_device("cpu")).head


def _leave_classes_out(tx, ty, vx, vy, seed: int, keep: float) -> dict[str, float]:
    """What ``edgetl export --unknown-method auto`` measures (:func:`edgetl.unknown_choice.leave_classes_out`): the
    mean AUROC of each method with known classes set aside as the unknowns, linear heads.  It sees no unknown input,
    so the method it ranks first is an honest choice."""
    return leave_classes_out(tx, ty, vx, vy, lambda x, y, a, b: _head("linear", x, y, a, b, seed), keep, seed)


def _score_grid(tx, ty, vx, vy, ex, ux, kind: str, seed: int, grid, keep: float, head=None, projection=None):
    """AUROC and the share of unknowns accepted per method of ``grid``, the threshold keeping ``keep`` of val."""
    head = head or _head(kind, tx, ty, vx, vy, seed)
    projection = projection or train_projection(tx, ty, vx, vy, seed)
    known_logits, unknown_logits = head.logits(ex), head.logits(ux)
    rows = {}
    for method, shrinkage in grid:
        settings = UnknownSettings(method, keep=keep, **({"shrinkage": shrinkage} if shrinkage else {}))
        fitted, scorer = fit_unknown(settings, tx, ty, vx, head, projection if method in PROJECTION_USERS else None)
        known, unknown = scorer.scores(ex, known_logits), scorer.scores(ux, unknown_logits)
        rows[method if shrinkage is None else f"{method}@{shrinkage}"] = {
            "auroc": auroc(known, unknown), "accepted": float(np.mean(unknown <= fitted.threshold)),
            "known_kept": float(np.mean(known <= fitted.threshold)), "threshold": fitted.threshold,
            "_scorer": scorer, "_known": known}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="feature files (kept; default: temporary)")
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--seed", type=int, default=0, help="the seed whose figures are the headline")
    parser.add_argument("--seeds", default=None,
                        help="more seeds (comma-separated) for the held-out cases: other classes held out; the "
                             "linear head's AUROC is averaged over them and the headline seed")
    parser.add_argument("--keep", type=float, default=0.95)
    parser.add_argument("--heads", default="linear,ridge,mlp",
                        help="heads to score with: linear and mlp as edgetl finetune trains them (linear: its "
                             "default), ridge as the device's updates solve it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgetl-unknown-"))
    extract_all(work, args.data, args.seed)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    result: dict = {"seed": args.seed, "keep": args.keep, "heads": heads, "cases": {}}
    backbone_ms = {"clothing10": _backbone_ms("efficientnet_lite0"), "banking77": _backbone_ms("minilm-l6")}
    result["backbone_ms"] = backbone_ms
    grid = [(m, s) for m in METHODS for s in ((0.1, 0.5, 0.9) if "mahalanobis" in m else (None,))]
    for name, (tx, ty, vx, vy, ex, ey, ux, about) in cases(work, args.seed).items():
        case = {"about": about, "n_train": len(ty), "n_val": len(vy), "n_known_test": len(ey), "n_unknown": len(ux),
                "target_auroc": TARGETS[name], "heads": {}}
        print(f"\n{name}: {about}; train {len(ty)}, val {len(vy)}, known test {len(ey)}, unknown {len(ux)}")
        projection = train_projection(tx, ty, vx, vy, args.seed)
        for kind in heads:
            head = _head(kind, tx, ty, vx, vy, args.seed)
            known_logits = head.logits(ex)
            right = known_logits.argmax(axis=1) == ey
            rows = _score_grid(tx, ty, vx, vy, ex, ux, kind, args.seed, grid, args.keep, head, projection)
            print(f"  head {kind}: top-1 {np.mean(right):.4f}")
            print(f"    {'method':22s} {'shrink':>6s} {'AUROC':>7s} {'accepted':>9s} {'kept':>6s} {'acc reject':>10s} "
                  f"{'ms/input':>9s} {'cost':>7s}")
            for label, r in rows.items():
                scorer, accepted = r.pop("_scorer"), r.pop("_known") <= r["threshold"]
                ms = _per_input_ms(scorer, head, ex)
                cost = ms / backbone_ms[name.split("-")[0]]
                r.update({"accuracy_reject_off": float(np.mean(right)),
                          "accuracy_reject_on": float(np.mean(right & accepted)), "ms_per_input": ms,
                          "cost_vs_backbone": cost})
                method, _, shrinkage = label.partition("@")
                print(f"    {method:22s} {shrinkage:>6} {r['auroc']:7.4f} {r['accepted']:9.3f} "
                      f"{r['known_kept']:6.3f} {r['accuracy_reject_on']:10.4f} {ms:9.3f} {cost:7.2%}")
            best = max(rows, key=lambda k: rows[k]["auroc"])
            default = rows[DEFAULT_METHOD]
            print(f"    best: {best} {rows[best]['auroc']:.4f}; default ({DEFAULT_METHOD}) {default['auroc']:.4f}: "
                  f"{verdict(default['auroc'], TARGETS[name], lower_is_better=False)}")
            case["heads"][kind] = {"head_accuracy": float(np.mean(right)), "methods": rows, "best": best}
        if name.endswith("heldout"):
            chosen = _leave_classes_out(tx, ty, vx, vy, args.seed, args.keep)
            pick = max(chosen, key=chosen.get)
            case["leave_classes_out"] = {"inner_auroc": chosen, "choice": pick}
            if "linear" in heads:
                real = case["heads"]["linear"]["methods"][pick]["auroc"]
                case["leave_classes_out"]["auroc"] = real
                print(f"  leave-classes-out choice (known classes only, linear head): {pick} "
                      f"(inner AUROC {chosen[pick]:.4f}) -> held-out AUROC {real:.4f}")
        result["cases"][name] = case
    for kind in heads:
        heldout = [c["heads"][kind]["methods"] for n, c in result["cases"].items() if n.endswith("heldout")]
        mean = {label: float(np.mean([m[label]["auroc"] for m in heldout])) for label in heldout[0]}
        result.setdefault("mean_heldout_auroc", {})[kind] = mean
        print(f"\nhead {kind}: mean AUROC over the held-out-class cases: " +
              ", ".join(f"{k} {v:.4f}" for k, v in sorted(mean.items(), key=lambda kv: -kv[1])))
    if args.seeds:
        result["seeds"] = _other_seeds(work, args, grid)
    path = save_result("unknown_inputs", result)
    print(f"wrote {path}")
    if args.json:
        print(json.dumps(result, indent=2))


def _other_seeds(work: Path, args, grid) -> dict:
    """The held-out cases again with other classes held out (linear head): AUROC per seed and method, the mean
    over these seeds and the headline one, and each seed's leave-classes-out choice."""
    seeds = sorted({args.seed, *(int(s) for s in args.seeds.split(",") if s.strip())})
    out: dict = {}
    for seed in seeds:
        for name, (tx, ty, vx, vy, ex, _, ux, about) in cases(work, seed).items():
            if not name.endswith("heldout"):
                continue
            rows = _score_grid(tx, ty, vx, vy, ex, ux, "linear", seed, grid, args.keep)
            chosen = _leave_classes_out(tx, ty, vx, vy, seed, args.keep)
            pick = max(chosen, key=chosen.get)
            out.setdefault(name, {})[str(seed)] = {"about": about, "choice": pick, "choice_auroc": rows[pick]["auroc"],
                                                   "auroc": {k: r["auroc"] for k, r in rows.items()}}
            print(f"  seed {seed} {name} ({about}): {DEFAULT_METHOD} {rows[DEFAULT_METHOD]['auroc']:.4f}; "
                  f"leave-classes-out choice {pick} {rows[pick]['auroc']:.4f}", flush=True)
    for name, per_seed in out.items():
        labels = next(iter(per_seed.values()))["auroc"]
        mean = {label: float(np.mean([s["auroc"][label] for s in per_seed.values()])) for label in labels}
        choice = float(np.mean([s["choice_auroc"] for s in per_seed.values()]))
        per_seed["mean"] = {"auroc": mean, "choice_auroc": choice}
        print(f"\n{name}, mean over seeds {', '.join(map(str, seeds))} (linear head): " +
              ", ".join(f"{k} {v:.4f}" for k, v in sorted(mean.items(), key=lambda kv: -kv[1])[:6]) +
              f"; leave-classes-out choice {choice:.4f}; target {TARGETS[name]}")
    return out


if __name__ == "__main__":
    sys.exit(main())
