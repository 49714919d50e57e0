"""``edgetl select``: rank pretrained backbones by transferability to the user's data and by latency on the target.

For each candidate: one backbone pass into the feature cache ``finetune`` uses (so fine-tuning the chosen one
does no pass), LogME and a k-fold ridge probe on the *training* split's cached features, batch-1 p50 of the
artifact the target would run (:mod:`.latency`), parameters / FLOPs / size (:mod:`.cost`).  The
recommendation is the best probe accuracy within the latency budget (LogME breaks exact ties).  The whole
record is kept in the cache folder under a key of everything it depends on, so ``finetune --backbone auto``
right after ``select`` reuses it instead of measuring again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl import __version__
from edgetl.backbones import OFFLINE_BACKBONES, create_backbone
from edgetl.plot import pareto_front
from edgetl.runtime.data.preprocess import DEFAULT_MAX_PIXELS
from edgetl.runtime.documents import utc_now
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.fsutil import atomic_write_text
from edgetl.runtime.machine import cpu_facts, default_threads
from edgetl.runtime.progress import ProgressFactory, silent_progress

from ..cache import FeatureCache
from ..extract import resolve_device
from ..features import backbone_pass, feature_key, open_training_data, preprocess_for
from .cost import recorded_cost
from .latency import latency_plan, latency_record, measure_candidate
from .transferability import Spectrum, logme, ridge_probe

SELECTION_SCHEMA = "edgetl.selection/1"
DEFAULT_FOLDS = 5


@dataclass(frozen=True)
class SelectConfig:
    """Options of ``edgetl select`` (and of ``finetune --backbone auto``, which runs it)."""

    backbones: tuple[str, ...] = OFFLINE_BACKBONES
    target: str | None = None
    budget_ms: float | None = None
    cache_dir: str | None = None
    image_size: int | None = None
    folds: int = DEFAULT_FOLDS
    train_last: tuple[int, ...] = ()        # freeze depths to compare for the recommended backbone
    device: str = "auto"
    engine: str = "auto"
    workers: int | None = None          # decoding processes of the backbone pass (None: by job size)
    compile: bool = False               # torch.compile the frozen part for the pass
    seed: int = 0
    val_fraction: float = 0.2
    skip_bad: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    threads: int | None = None

    def __post_init__(self) -> None:
        if not self.backbones:
            raise ConfigError("needs at least one backbone", option="backbones")
        if len(set(self.backbones)) != len(self.backbones):
            raise ConfigError(f"lists a backbone twice: {', '.join(self.backbones)}", option="backbones")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise ConfigError(f"must be a positive number of milliseconds, got {self.budget_ms}", option="budget-ms")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"must be at least 1, got {self.threads}", option="threads")
        if self.folds < 2:
            raise ConfigError(f"must be at least 2, got {self.folds}", option="folds")
        if any(depth < 0 for depth in self.train_last):
            raise ConfigError(f"freeze depths are 0 or more, got {list(self.train_last)}", option="train-last")


def parse_backbones(text: str | None) -> tuple[str, ...]:
    """``a,b,...``.  Registered names listed are the candidates as given; ``timm:``/``torchvision:`` names join
    the offline backbones (the default set, also written ``offline``) unless registered ones are listed too."""
    if not text:
        return OFFLINE_BACKBONES
    listed = [n.strip() for n in text.split(",") if n.strip()]
    if not listed:
        raise ConfigError("lists no backbone", option="backbones")
    external = all(":" in name for name in listed)
    names: list[str] = list(OFFLINE_BACKBONES) if external else []
    for name in listed:
        for expanded in (OFFLINE_BACKBONES if name == "offline" else (name,)):
            if expanded not in names:
                names.append(expanded)
    return tuple(names)


def parse_depths(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        depths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"expects comma-separated integers such as 0,1,2, got '{text}'",
                          option="train-last") from None
    return tuple(depths)


def select_backbones(
    data_address: str,
    config: SelectConfig = SelectConfig(),
    progress: ProgressFactory = silent_progress,
    log=lambda message: None,
    reuse: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Measure every candidate and recommend one; returns the selection record (schema ``edgetl.selection/1``).

    A fresh record of the same measurement is reused unless ``reuse`` is False.  With ``out``, selection.json,
    selection.md and selection.png are written there too and listed under ``files`` (an existing ``out`` is
    refused before any measuring, unless ``overwrite``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("select does not run under torchrun: run it as one process")
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another path, or overwrite it", option="out",
                          remedy="overwrite")
    result = _select(data_address, config, progress, log, reuse)
    if out is not None:
        from .report import write_reports

        result["files"] = {name: str(path) for name, path in write_reports(result, out, overwrite).items()}
    return result


def _select(data_address: str, config: SelectConfig, progress: ProgressFactory, log, reuse: bool) -> dict:
    started = time.perf_counter()
    prepared = open_training_data(data_address, config.val_fraction, config.seed, config.skip_bad)
    if prepared.data.modality == "text":
        raise ConfigError(f"{prepared.data.address} holds texts, and select ranks image backbones: the one offline "
                          "text backbone is minilm-l6 (edgetl finetune DATA --backbone minilm-l6)", option="backbones")
    compute = resolve_device(config.device, config.compile)
    cache = FeatureCache(config.cache_dir)
    profile = None
    if config.target:
        from edgetl.devices import get_profile

        profile = get_profile(config.target)
    plan = latency_plan(profile)
    threads = config.threads or default_threads()
    records = prepared.records
    n_train = len(prepared.train)

    candidates = []
    for name in config.backbones:
        backbone = create_backbone(name)
        preprocess = preprocess_for(backbone, prepared.data, config.image_size)
        for depth in config.train_last:     # a freeze point any candidate lacks is refused before any work
            backbone.cut(depth)
        frozen, _ = backbone.split(0)
        weights = backbone.weights_sha256()
        key = feature_key(backbone, weights, frozen, preprocess, compute, records, config.skip_bad)
        candidates.append((name, backbone, preprocess, frozen, weights, key))
    record_key = _selection_key(config, plan, threads, [c[5] for c in candidates])
    record_path = cache.root / "selections" / f"{record_key}.json"
    if reuse:
        reused = _load_fresh(record_path, cache, [c[5] for c in candidates])
        if reused is not None:
            log(f"reusing the selection measured {reused['created']} ({record_path})")
            reused["reused"] = True
            if config.train_last and not _covers(reused.get("freeze"), reused, config.train_last):
                reused["freeze"] = _freeze(reused, config, prepared, compute, cache, progress, log)
                atomic_write_text(record_path, selection_json({**reused, "reused": False}))
            return reused

    rows = []
    passes_s = 0.0
    for name, backbone, preprocess, frozen, weights, key in candidates:
        latency_cached = latency_record(cache.root, weights, preprocess.input_size, plan, threads).is_file()
        log(f"{name}: features at {preprocess.input_size} px")
        feature_pass = backbone_pass(frozen, key, records, preprocess, compute, cache, weights, engine=config.engine,
                                     workers=config.workers, skip_bad=config.skip_bad, max_pixels=config.max_pixels,
                                     progress=progress, log=log, export_paid=not latency_cached)
        passes_s += feature_pass.backbone_s
        train_rows, _ = feature_pass.rows(n_train)
        x = np.asarray(feature_pass.cached.features[train_rows], dtype=np.float64)
        y = np.array([records[i].label for i in train_rows], dtype=np.int64)
        t0 = time.perf_counter()
        spectrum = Spectrum(x)
        evidence = logme(spectrum, y)
        probe = ridge_probe(spectrum, y, config.folds, config.seed)
        score_s = time.perf_counter() - t0
        backbone.cpu()       # the pass may have run it on CUDA; counting and exporting run on the CPU
        cost = recorded_cost(backbone, weights, preprocess.input_size, cache.root)
        calibration = [records[i] for i in train_rows[:64]]
        latency = measure_candidate(backbone, weights, preprocess, plan, calibration,
                                    lambda x=x, y=y: _probe_head(x, y, len(prepared.data.class_names)),
                                    cache.root, threads, log)
        rows.append({
            "backbone": name, "input_size": preprocess.input_size, "weights_sha256": weights, "feature_key": key,
            "cache_hit": feature_pass.cached.hit, "backbone_pass_s": round(feature_pass.backbone_s, 3),
            "export_s": round(feature_pass.export_s + latency.export_s, 3),
            "engine": feature_pass.engine, "n_train": int(len(y)),
            "logme": round(evidence, 5), "probe_accuracy": round(probe.accuracy, 5), "probe_std": round(probe.std, 5),
            "probe_folds": probe.folds, "probe_alpha": probe.alpha, "score_s": round(score_s, 3),
            "p50_ms": round(latency.p50_ms, 4), "p90_ms": round(latency.p90_ms, 4), "latency_runs": latency.runs,
            "latency_measured": plan.where, "latency_cached": latency.cached, "latency_s": round(latency.seconds, 3),
            "artifact_mb": latency.artifact_mb, "params_m": cost.params_m, "gflops": cost.gflops,
            "fp32_mb": cost.fp32_mb,
        })
        log(f"{name}: LogME {evidence:.3f}, probe {probe.accuracy:.3f} +/- {probe.std:.3f}, p50 "
            f"{latency.p50_ms:.2f} ms ({plan.format} on {plan.backend}"
            + (", measured before" if latency.cached else "") + ")")
    recommendation = recommend(rows, config.budget_ms)
    result = {
        "schema": SELECTION_SCHEMA, "edgetl_version": __version__, "created": utc_now(),
        "data": prepared.data.address, "split": prepared.split, "classes": len(prepared.data.class_names),
        "scored_on": f"training split only ({n_train} images; {min(r['probe_folds'] for r in rows)}-fold probe, "
                     f"seed {config.seed})",
        "target": profile.name if profile else None, "budget_ms": config.budget_ms,
        "latency": {**plan.to_dict(), "threads": threads, "machine": cpu_facts()["model"], "batch": 1},
        "candidates": rows, "recommendation": recommendation, "freeze": None, "reused": False,
    }
    if config.train_last:
        result["freeze"] = _freeze(result, config, prepared, compute, cache, progress, log)
    result["timings"] = {"total_s": round(time.perf_counter() - started, 3), "backbone_passes_s": round(passes_s, 3),
                         "exports_s": round(sum(r["export_s"] for r in rows), 3),
                         "scoring_s": round(sum(r["score_s"] for r in rows), 3),
                         "latency_s": round(sum(r["latency_s"] for r in rows), 3)}
    record_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record_path, selection_json(result))
    return result


def selection_json(result: dict) -> str:
    return json.dumps(result, indent=2)


def _freeze(result: dict, config: SelectConfig, prepared, compute, cache, progress, log) -> dict:
    from .freeze import compare_freeze_depths

    return compare_freeze_depths(result["recommendation"]["backbone"], config.train_last, prepared, config, compute,
                                 cache, progress, log)


def _covers(freeze: dict | None, result: dict, depths: tuple[int, ...]) -> bool:
    """Whether a recorded freeze comparison is the one asked for (same backbone, same depths)."""
    return bool(freeze) and freeze["backbone"] == result["recommendation"]["backbone"] and \
        {d["train_last"] for d in freeze["depths"]} == set(depths) | {0}


def pareto_flags(rows: list[dict]) -> list[bool]:
    """On the front of (probe accuracy up, p50 down): no other candidate is at least as good on both."""
    front = set(pareto_front([(r["p50_ms"], r["probe_accuracy"]) for r in rows]))
    return [i in front for i in range(len(rows))]


def recommend(rows: list[dict], budget_ms: float | None) -> dict:
    """The best probe accuracy within the budget (LogME breaks ties), with the reason; marks rows in place."""
    for row, front in zip(rows, pareto_flags(rows)):
        row["pareto"] = front
        row["within_budget"] = None if budget_ms is None else bool(row["p50_ms"] <= budget_ms)
    eligible = [r for r in rows if budget_ms is None or r["p50_ms"] <= budget_ms]
    if not eligible:
        fastest = min(rows, key=lambda r: r["p50_ms"])
        return {"backbone": fastest["backbone"], "within_budget": False,
                "reason": f"no candidate runs within {budget_ms:g} ms; {fastest['backbone']} is the fastest "
                          f"(p50 {fastest['p50_ms']:.2f} ms): raise the budget or list smaller backbones"}
    ranked = sorted(eligible, key=lambda r: (r["probe_accuracy"], r["logme"]), reverse=True)
    best = ranked[0]
    where = f"within the {budget_ms:g} ms budget" if budget_ms is not None else "(no latency budget)"
    reason = (f"best k-fold probe accuracy {best['probe_accuracy']:.3f} +/- {best['probe_std']:.3f} {where}, "
              f"p50 {best['p50_ms']:.2f} ms, LogME {best['logme']:.3f}")
    if len(ranked) > 1:
        runner_up = ranked[1]
        gap = best["probe_accuracy"] - runner_up["probe_accuracy"]
        close = " (within the spread)" if gap <= max(best["probe_std"], runner_up["probe_std"]) else ""
        reason += (f"; next {runner_up['backbone']} at {runner_up['probe_accuracy']:.3f}{close}, "
                   f"p50 {runner_up['p50_ms']:.2f} ms")
    excluded = [r["backbone"] for r in rows if r not in eligible]
    if excluded:
        reason += f"; over budget: {', '.join(excluded)}"
    return {"backbone": best["backbone"], "within_budget": True, "reason": reason}


def _probe_head(x: np.ndarray, y: np.ndarray, classes: int):
    """A ridge head on the candidate's training features, for quantizers that check accuracy while they work."""
    from edgetl.runtime.bundle.heads import RidgeHead

    return RidgeHead.fit(x, y, classes)


def _selection_key(config: SelectConfig, plan, threads: int, feature_keys: list[str]) -> str:
    text = json.dumps([SELECTION_SCHEMA, __version__, feature_keys, plan.to_dict(), config.budget_ms, config.folds,
                       config.seed, threads, cpu_facts()["model"]], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load_fresh(path: Path, cache: FeatureCache, feature_keys: list[str]) -> dict | None:
    """A selection recorded for the same data, candidates, settings and machine, while its features are cached."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("schema") != SELECTION_SCHEMA or any(cache.load(k) is None for k in feature_keys):
        return None
    return record


def selection_summary(result: dict) -> dict:
    """What a run records about the selection that chose its backbone (the table, the reason, the settings)."""
    keep = ("backbone", "input_size", "logme", "probe_accuracy", "probe_std", "p50_ms", "params_m", "gflops",
            "artifact_mb", "pareto", "within_budget")
    return {"recommendation": result["recommendation"], "target": result["target"], "budget_ms": result["budget_ms"],
            "latency": result["latency"], "scored_on": result["scored_on"], "created": result["created"],
            "candidates": [{k: row.get(k) for k in keep} for row in result["candidates"]],
            "freeze": result.get("freeze")}
