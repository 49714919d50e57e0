"""Fine-tuning on cached features: data -> frozen backbone -> cache -> head -> run dir.

The frozen part of the backbone runs once over the data and its outputs are
cached; head training (and the optional unfrozen tail) then runs on the
cache.  The run directory is written atomically: a failure at any step
leaves no partial run behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgetl import __version__
from edgetl.backbones import DEFAULT_BACKBONE, create_backbone
from edgetl.runtime.data.preprocess import DEFAULT_MAX_PIXELS
from edgetl.runtime.documents import utc_now
from edgetl.runtime.errors import ConfigError, DataError
from edgetl.runtime.fsutil import atomic_directory
from edgetl.runtime.metrics import classification_report
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .cache import FeatureCache
from .distributed import current_ranks
from .extract import resolve_device
from .features import backbone_pass, feature_key, open_training_data, preprocess_for
from .heads import HEAD_TRAINERS, HeadConfig
from .run import RunManifest
from .selection.auto import AUTO, AutoBackbone, resolve_auto_backbone

DEFAULT_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``edgetl finetune`` (the head's own settings live in :class:`HeadConfig`; by default a linear
    head trained on the features divided by their root mean square, which the run's metrics record as
    ``input_scale``).

    ``backbone="auto"`` fine-tunes what ``edgetl select`` recommends (:mod:`edgetl.selection.auto`), chosen
    among ``auto``'s candidates; ``train_last`` None is 0, or with ``"auto"`` the freeze point the selection
    recommended when it compared some.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    head: HeadConfig = field(default_factory=HeadConfig)
    image_size: int | None = None
    train_last: int | None = None
    cache_dir: str | None = None
    device: str = "auto"
    engine: str = "auto"
    workers: int | None = None          # decoding processes of the backbone pass (None: by job size)
    compile: bool = False               # torch.compile the frozen part for the pass
    seed: int = 0
    val_fraction: float = DEFAULT_VAL_FRACTION
    skip_bad: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    batch_size: int | None = None
    overwrite: bool = False
    selection: dict | None = None    # what 'edgetl select' measured when the backbone was chosen by it
    auto: AutoBackbone | None = None  # with backbone "auto": the candidates, target and budget

    def __post_init__(self) -> None:
        if self.backbone == AUTO:
            if self.weights:
                raise ConfigError("names one backbone's weights; --backbone auto chooses among several",
                                  option="weights")
            return
        unused = self.auto.given() if self.auto else []
        if unused:
            raise ConfigError("applies to --backbone auto only", option=unused[0])
        if self.train_last is None:
            object.__setattr__(self, "train_last", 0)


@dataclass
class FinetuneResult:
    run_dir: Path
    manifest: RunManifest
    metrics: dict
    cache_hit: bool
    skipped: list[str]
    config: FinetuneConfig | None = None    # what the run was made with (backbone "auto" resolved)


def finetune(
    data_address: str,
    out: str | Path,
    config: FinetuneConfig = FinetuneConfig(),
    progress: ProgressFactory = silent_progress,
    log=lambda message: None,
) -> FinetuneResult | None:
    """Fine-tune a head on ``data_address`` and write the run directory ``out``.

    Under ``torchrun`` the backbone pass is sharded over the ranks (:mod:`edgetl.distributed`); rank 0 trains and
    writes the run and returns its result, the other ranks return None.  ``config.backbone`` "auto" first
    resolves to the backbone ``edgetl select`` recommends (:func:`~edgetl.selection.auto.resolve_auto_backbone`),
    which the result's ``config`` names."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not config.overwrite:      # before minutes of measuring or a backbone pass, not after
        raise ConfigError(f"{out} already exists; choose another path, or overwrite it", remedy="overwrite")
    if config.backbone == AUTO:
        config = resolve_auto_backbone(data_address, config, progress=progress, log=log)
    ranks = current_ranks()
    if ranks is not None and not ranks.main:       # one voice: rank 0 reports for the group
        progress, log = silent_progress, (lambda message: None)
    compute = resolve_device(config.device, config.compile)
    prepared = open_training_data(data_address, config.val_fraction, config.seed, config.skip_bad)
    data, train, split = prepared.data, prepared.train, prepared.split
    data_address = data.address

    backbone = create_backbone(config.backbone, config.weights)
    preprocess = preprocess_for(backbone, data, config.image_size)
    frozen, tail = backbone.split(config.train_last)
    records = prepared.records
    weights_sha256 = backbone.weights_sha256()
    cache = FeatureCache(config.cache_dir)
    key = feature_key(backbone, weights_sha256, frozen, preprocess, compute, records, config.skip_bad)
    feature_pass = backbone_pass(frozen, key, records, preprocess, compute, cache, weights_sha256,
                                 engine=config.engine, batch_size=config.batch_size, workers=config.workers,
                                 skip_bad=config.skip_bad, max_pixels=config.max_pixels, progress=progress, log=log,
                                 ranks=ranks)
    if ranks is not None:
        ranks.leave()
        if not ranks.main:         # the pass is shared; rank 0 alone trains the head and writes the run
            return None
    cached, backbone_s, engine_name = feature_pass.cached, feature_pass.backbone_s, feature_pass.engine
    skipped = list(data.skipped) + cached.skipped
    if skipped:
        log(f"warning: skipped {len(skipped)} bad file(s) (--skip-bad), e.g. {skipped[0]}")

    train_rows, val_rows = feature_pass.rows(len(train))
    train_y = np.array([records[i].label for i in train_rows], dtype=np.int64)
    val_y = np.array([records[i].label for i in val_rows], dtype=np.int64)
    if len(set(train_y.tolist())) < 2 or len(val_y) == 0:
        noun = "texts" if data.modality == "text" else "images"
        raise DataError(f"after skipping bad {noun} there are too few {noun} left to train")
    features = cached.features
    trainer = HEAD_TRAINERS[config.head.kind]
    t1 = time.perf_counter()
    feature_dim = backbone.feature_dim
    result = trainer(
        tail, np.asarray(features[train_rows]), train_y, np.asarray(features[val_rows]), val_y,
        len(data.class_names), feature_dim, config.head, compute, progress,
    )
    train_s = time.perf_counter() - t1

    logits = _val_logits(tail, result, np.asarray(features[val_rows]))
    metrics = classification_report(val_y, np.argmax(logits, axis=1), data.class_names)
    metrics.update(best_epoch=result.best_epoch, epochs_run=result.epochs_run, history=result.history,
                   input_scale=result.input_scale, n_train=int(len(train_y)), skipped=skipped)

    manifest = RunManifest(
        edgetl_version=__version__,
        created=utc_now(),
        data_address=str(data_address),
        class_names=list(data.class_names),
        split=split,
        train_sources=[records[i].source for i in train_rows],
        val_sources=[records[i].source for i in val_rows],
        backbone={
            "name": backbone.name,
            "weights": config.weights,
            "weights_sha256": weights_sha256,
            "weights_source": backbone.pretrained.weights_source,
            "feature_dim": feature_dim,
            "train_last": config.train_last,
            "freeze_stage": len(frozen),
        },
        preprocess=preprocess.to_dict(),
        head=config.head.to_dict(),
        compute={"device": str(compute.device), "precision": compute.precision, "engine": engine_name},
        cache={"key": key, "dir": str(cache.root), "hit": cached.hit},
        timings={"backbone_pass_s": backbone_s, "train_s": train_s,
                 "total_s": time.perf_counter() - started},
        val_accuracy=metrics["accuracy"],
        selection=config.selection,
    )
    with atomic_directory(out, overwrite=config.overwrite) as staging:
        result.head.save(staging / "head.npz")
        if result.tail_state is not None:
            torch.save(result.tail_state, staging / "tail.pt")
            manifest.files["tail"] = "tail.pt"
        manifest.timings["total_s"] = time.perf_counter() - started
        manifest.write(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return FinetuneResult(out, manifest, metrics, cached.hit, skipped, config)


def _val_logits(tail: torch.nn.Module, result, val_x: np.ndarray) -> np.ndarray:
    """Validation logits in float32 on the CPU, the way the exported model computes them."""
    if result.tail_state is None:
        return result.head.logits(val_x)
    tail = tail.cpu().eval()
    with torch.inference_mode():
        pooled = torch.cat([tail(torch.from_numpy(np.ascontiguousarray(val_x[i:i + 256])))
                            for i in range(0, len(val_x), 256)])
    return result.head.logits(pooled.numpy())
