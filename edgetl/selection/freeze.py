"""Which layers to freeze: ``select --train-last 0,1,2`` compares freeze points of the recommended backbone.

One backbone pass fills the cache at the deepest freeze point asked for; every shallower boundary (down to the
pooled features) is derived from those cached activations by running only the stages between them, and stored
under the key a direct pass would have, so ``finetune --train-last N`` afterwards does no backbone pass.  Each
depth then trains the same linear head (with its unfrozen tail) in a seeded stratified k-fold of the *training*
split (``FOLDS``: one small held-out part is too noisy to rank depths): early stopping watches a part of each
fold's training rows, as finetune watches its val split, and the fold itself scores the result (scoring the
epoch picked on the fold would favour noisy depths); the validation split stays unseen.
The recommendation is the shallowest depth within ``MIN_GAIN_POINTS`` of the best mean: deeper training must
pay for its extra time with accuracy.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from edgetl.backbones import create_backbone
from edgetl.runtime.data.sources import stratified_split
from edgetl.runtime.metrics import top1_accuracy
from edgetl.runtime.progress import silent_progress

from ..cache import FeatureCache
from ..extract import ComputeDevice
from ..features import TrainingData, backbone_pass, feature_key, preprocess_for
from ..heads import HeadConfig, train_gradient_head
from .transferability import stratified_folds

#: A deeper freeze point is recommended only when it beats the shallower choice by at least this much.
MIN_GAIN_POINTS = 1.0
FOLDS = 3
#: Share of each fold's training part that early stopping watches (as finetune watches the val split).
STOP_FRACTION = 0.2


def _run_stages(stages: list[nn.Module], activations: np.ndarray, valid: np.ndarray, compute: ComputeDevice,
                batch: int = 64) -> np.ndarray:
    """The next boundary's activations from cached ones (skipped images stay zero rows)."""
    module = nn.Sequential(*stages).eval().to(compute.device)
    rows = np.flatnonzero(valid)
    with torch.inference_mode():
        probe = module(torch.from_numpy(np.ascontiguousarray(activations[rows[:1]])).to(compute.device))
        out = np.zeros((len(activations), *probe.shape[1:]), dtype=np.float32)
        for start in range(0, len(rows), batch):
            index = rows[start:start + batch]
            x = torch.from_numpy(np.ascontiguousarray(activations[index])).to(compute.device)
            with torch.autocast(compute.device.type, dtype=torch.float16, enabled=compute.amp):
                out[index] = module(x).float().cpu().numpy()
    return out


def _pooled(tail: nn.Module, activations: np.ndarray) -> np.ndarray:
    """The trained tail's pooled features, in float32 on the CPU as the exported model computes them."""
    with torch.inference_mode():
        return tail.cpu().eval()(torch.from_numpy(np.ascontiguousarray(activations))).numpy()


def compare_freeze_depths(backbone_name: str, depths: tuple[int, ...], prepared: TrainingData, config,
                          compute: ComputeDevice, cache: FeatureCache, progress=silent_progress,
                          log=lambda message: None) -> dict:
    backbone = create_backbone(backbone_name)
    preprocess = preprocess_for(backbone, prepared.data, config.image_size)
    weights = backbone.weights_sha256()
    records = prepared.records
    stages = backbone.stages
    depths = tuple(sorted(set(depths) | {0}))
    deepest = depths[-1]
    frozen, _ = backbone.split(deepest)
    started = time.perf_counter()
    key = feature_key(backbone, weights, frozen, preprocess, compute, records, config.skip_bad)
    deep = backbone_pass(frozen, key, records, preprocess, compute, cache, weights, engine=config.engine,
                         workers=config.workers, skip_bad=config.skip_bad, max_pixels=config.max_pixels,
                         progress=progress, log=log)
    activations = {deepest: deep.cached}
    for depth in reversed(depths[:-1]):          # derive each shallower boundary from the one below it
        part, _ = backbone.split(depth)
        key = feature_key(backbone, weights, part, preprocess, compute, records, config.skip_bad)
        entry = cache.load(key)
        if entry is None:
            below = min(d for d in activations if d > depth)
            source = activations[below]
            derived = _run_stages(stages[backbone.cut(below):backbone.cut(depth)], source.features, source.valid,
                                  compute)
            entry = cache.store(key, derived, source.valid, source.skipped)
        activations[depth] = entry
    extraction_s = time.perf_counter() - started

    train_rows, _ = deep.rows(len(prepared.train))
    labels = np.array([records[i].label for i in train_rows], dtype=np.int64)
    folds = stratified_folds(labels, FOLDS, config.seed)
    head = HeadConfig(kind="linear", seed=config.seed)
    classes = len(prepared.data.class_names)
    rows = []
    for depth in depths:
        features = activations[depth].features
        accuracies, seconds = [], []
        for fold in folds:
            rest = np.setdiff1d(np.arange(len(labels)), fold)
            fit, stop = (rest[i] for i in stratified_split(labels[rest].tolist(), STOP_FRACTION, config.seed))
            _, tail = backbone.split(depth)
            tail = copy.deepcopy(tail)              # each depth and fold trains from the pretrained weights
            t0 = time.perf_counter()
            result = train_gradient_head(tail, np.asarray(features[train_rows[fit]]), labels[fit],
                                         np.asarray(features[train_rows[stop]]), labels[stop], classes,
                                         backbone.feature_dim, head, compute)
            seconds.append(time.perf_counter() - t0)
            logits = result.head.logits(_pooled(tail, np.asarray(features[train_rows[fold]])))
            accuracies.append(top1_accuracy(logits, labels[fold]))
        accuracy = float(np.mean(accuracies))
        rows.append({"train_last": depth, "inner_val_accuracy": round(accuracy, 5),
                     "inner_val_std": round(float(np.std(accuracies)), 5), "train_s": round(float(np.mean(seconds)), 3),
                     "boundary_shape": list(features.shape[1:])})
        log(f"{backbone_name} --train-last {depth}: {len(folds)}-fold accuracy {accuracy:.3f} "
            f"+/- {np.std(accuracies):.3f}, {np.mean(seconds):.1f} s per fit")
    base = rows[0]
    for row in rows:
        row["gain_points"] = round((row["inner_val_accuracy"] - base["inner_val_accuracy"]) * 100.0, 2)
        row["extra_train_s"] = round(row["train_s"] - base["train_s"], 3)
    best = max(r["inner_val_accuracy"] for r in rows)
    chosen = next(r for r in rows if (best - r["inner_val_accuracy"]) * 100.0 < MIN_GAIN_POINTS)
    deeper = max(rows, key=lambda r: (r["inner_val_accuracy"], -r["train_last"]))
    if chosen is deeper:
        reason = (f"--train-last {chosen['train_last']}: best inner accuracy {chosen['inner_val_accuracy']:.3f}"
                  + (f", {chosen['gain_points']:+.1f} points over the head alone for {chosen['extra_train_s']:+.1f} s "
                     f"of training" if chosen["train_last"] else ", deeper training gains nothing"))
    else:
        reason = (f"--train-last {chosen['train_last']}: within {MIN_GAIN_POINTS:g} point of the best "
                  f"(--train-last {deeper['train_last']}: {deeper['gain_points']:+.1f} points over the head alone "
                  f"for {deeper['extra_train_s']:+.1f} s of training)")
    return {"backbone": backbone_name, "depths": rows, "recommended": chosen["train_last"], "reason": reason,
            "evaluated_on": f"a seeded stratified {len(folds)}-fold of the training split ({len(labels)} images), "
                            f"linear head; train s is per fit",
            "extraction_s": round(extraction_s, 3), "backbone_pass_s": round(deep.backbone_s, 3)}
