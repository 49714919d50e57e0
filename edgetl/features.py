"""The data a run trains on and one backbone pass into the feature cache: shared by ``finetune`` and ``select``.

Both open the data and split it the same way and key the cache the same way, so a backbone that
``edgetl select`` ranked is fine-tuned afterwards without a second backbone pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgetl.runtime.data.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig
from edgetl.runtime.data.sources import ImageRecord, LabeledData, check_trainable, open_data, stratified_split
from edgetl.runtime.data.text import TextPreprocess
from edgetl.runtime.engines.backends import create_backend
from edgetl.runtime.errors import ConfigError, DataError, EdgetlError
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .backbones import Backbone
from .cache import CachedFeatures, FeatureCache, cache_key
from .distributed import Ranks
from .engines import EngineChoice, choose_engine, engine_file
from .extract import ComputeDevice, compiled, output_shape, pass_batch_size, prepare, run_frozen
from .text_pass import TEXT_BATCH, run_text, text_output_shape


@dataclass(frozen=True)
class TrainingData:
    """The opened data and its train/val split, in the order the cache keys them (train then val)."""

    data: LabeledData
    train: list[ImageRecord]
    val: list[ImageRecord]
    split: dict

    @property
    def records(self) -> list[ImageRecord]:
        return self.train + self.val


def resolve_splits(data: LabeledData, val_fraction: float, seed: int) -> tuple[list, list, dict]:
    """The data's own train/val split when it has one, else a seeded stratified split."""
    if "train" in data.splits and "val" in data.splits:
        return data.splits["train"], data.splits["val"], {"source": "data"}
    pool = data.splits.get("train") or data.splits.get("all")
    noun = "texts" if data.modality == "text" else "images"
    if not pool:
        raise DataError(f"{data.address} has no training {noun} (only a val split)")
    train_idx, val_idx = stratified_split([r.label for r in pool], val_fraction, seed)
    if not val_idx:
        raise DataError(f"{data.address} is too small to hold out a validation split; add {noun} or a val split")
    split = {"source": "seeded", "val_fraction": val_fraction, "seed": seed}
    return [pool[i] for i in train_idx], [pool[i] for i in val_idx], split


def open_training_data(address: str, val_fraction: float, seed: int, skip_bad: bool = False) -> TrainingData:
    """Open DATA (absolute path, so a run finds it from any directory) and split it."""
    if not str(address).startswith("builtin:"):
        address = str(Path(address).resolve())
    data = open_data(address, skip_bad=skip_bad)
    check_trainable(data)
    train, val, split = resolve_splits(data, val_fraction, seed)
    return TrainingData(data, train, val, split)


def preprocess_for(backbone: Backbone, data: LabeledData, image_size: int | None) -> PreprocessConfig | TextPreprocess:
    """The backbone's pretrained preprocessing at the size asked for, else the data's, else its native size (a
    text encoder's: its tokenizer); refuses a backbone that reads another modality than the data holds."""
    if backbone.modality != data.modality:
        raise ConfigError(f"backbone {backbone.name} reads {backbone.modality}s but {data.address} holds "
                          f"{data.modality}s", option="backbone")
    return backbone.pretrained.preprocess(image_size or data.recommended_image_size, data.recommended_crop_pct)


@dataclass
class FeaturePass:
    """The cache entry of one backbone (up to its freeze point) over the data, and what it cost."""

    cached: CachedFeatures
    backbone_s: float         # 0 on a cache hit
    engine: str               # what ran the pass, or "none (cache hit)"
    export_s: float = 0.0     # of backbone_s: exporting the frozen part for the engine (once per machine)

    def rows(self, n_train: int) -> tuple[np.ndarray, np.ndarray]:
        """Valid train rows and valid val rows (images skipped as bad are left out)."""
        valid = self.cached.valid
        return np.flatnonzero(valid[:n_train]), n_train + np.flatnonzero(valid[n_train:])


def feature_key(backbone: Backbone, weights_sha256: str, frozen: nn.Module, preprocess: PreprocessConfig,
                compute: ComputeDevice, records: list[ImageRecord], skip_bad: bool) -> str:
    """The cache key of ``frozen``'s outputs over ``records``: finetune and select compute it alike, so each
    finds what the other stored."""
    return cache_key(backbone.name, weights_sha256, len(frozen), preprocess.to_dict(), compute.precision, records,
                     skip_bad)


def backbone_pass(
    frozen: nn.Module,
    key: str,
    records: list[ImageRecord],
    preprocess: PreprocessConfig,
    compute: ComputeDevice,
    cache: FeatureCache,
    weights_sha256: str,
    *,
    engine: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: ProgressFactory = silent_progress,
    log: Callable[[str], None] = lambda message: None,
    export_paid: bool = False,
    ranks: Ranks | None = None,
) -> FeaturePass:
    """The cached outputs of ``frozen`` over ``records``; one pass (then stored) when the cache has none.

    ``ranks`` (under torchrun, :func:`edgetl.distributed.current_ranks`): each rank runs its block of the records
    into the one entry; every rank returns the whole entry."""
    cached = cache.load(key)
    if ranks is not None:          # one answer for the group: rank 0's view of the shared cache
        hit = ranks.broadcast(cached is not None)
        if not hit:
            cached = None
        elif cached is None:
            raise EdgetlError(f"rank {ranks.rank} cannot read the feature cache entry {cache.path(key)} that rank 0 "
                              "found: the cache folder must be shared by every node")
    if cached is not None:
        log(f"feature cache hit ({cache.path(key)}): no backbone pass needed")
        return FeaturePass(cached, 0.0, "none (cache hit)")
    t0 = time.perf_counter()
    if isinstance(preprocess, TextPreprocess):
        if engine not in ("auto", "torch"):
            raise ConfigError(f"--engine {engine} runs image backbones; a text encoder's pass runs on torch",
                              option="engine")
        return _text_pass(frozen, key, records, preprocess, compute, cache, batch_size, progress, log, ranks, t0)
    choice = _engine_for_group(engine, frozen, records, preprocess, compute, cache, weights_sha256, log, export_paid,
                               ranks)
    log(f"feature cache miss: running the frozen backbone over {len(records)} images on {choice.name}: "
        f"{choice.reason}" + (f" ({ranks.world} ranks)" if ranks else ""))
    module = prepare(frozen, compute)
    batch_size = batch_size or pass_batch_size(module, preprocess.input_size, compute)
    if ranks is not None:          # blocks are cut on batch boundaries: every rank must cut with rank 0's batch
        batch_size = ranks.broadcast(batch_size)
    block = ranks.block(len(records), batch_size) if ranks else range(len(records))
    try:
        shape = output_shape(module, preprocess.input_size, compute.device)
        with cache.shared_writer(key, len(records), shape, ranks) as writer:
            run_frozen(compiled(module, compute) if choice.runner is None else module, records[block.start:block.stop],
                       preprocess, compute, writer, batch_size=batch_size,
                       workers=workers, skip_bad=skip_bad, max_pixels=max_pixels, progress=progress,
                       runner=choice.runner, first=block.start)
    finally:
        if choice.runner is not None:
            choice.runner.close()
    backbone_s = time.perf_counter() - t0
    return FeaturePass(cache.loaded(key), backbone_s, choice.name, choice.export_s)


def _text_pass(frozen, key, records, preprocess, compute, cache, batch_size, progress, log, ranks, t0) -> FeaturePass:
    """A text encoder's pass (:mod:`edgetl.text_pass`): eager torch, on CUDA where there is one."""
    log(f"feature cache miss: running the frozen encoder over {len(records)} texts on torch ({compute.device})"
        + (f" ({ranks.world} ranks)" if ranks else ""))
    block = ranks.block(len(records), batch_size or TEXT_BATCH) if ranks else range(len(records))
    tokens = preprocess.tokens([r.text for r in records])      # all of them: every rank pads to one length
    shape = text_output_shape(frozen, preprocess, compute.device, max(len(t) for t in tokens))
    with cache.shared_writer(key, len(records), shape, ranks) as w:
        run_text(frozen, tokens[block.start:block.stop], preprocess, w, device=compute.device, amp=compute.amp,
                 batch_size=batch_size, progress=progress, first=block.start)
    return FeaturePass(cache.loaded(key), time.perf_counter() - t0, "torch")


def _engine_for_group(engine, frozen, records, preprocess, compute, cache, weights_sha256, log, export_paid,
                      ranks: Ranks | None):
    """:func:`~edgetl.engines.choose_engine`; in a group, rank 0 decides (and exports) first and the others
    take its decision, so every rank computes its rows with the same engine."""
    if ranks is None:
        return choose_engine(engine, frozen, records, preprocess, compute, cache.root, weights_sha256, len(frozen),
                             log, export_paid)
    if ranks.main:
        try:
            choice = choose_engine(engine, frozen, records, preprocess, compute, cache.root, weights_sha256,
                                   len(frozen), log, export_paid)
        except BaseException as exc:
            ranks.broadcast(("failed", f"{type(exc).__name__}: {exc}"))     # the others stop too
            raise
        ranks.broadcast(("ok", choice.name))
        return choice
    status, decided = ranks.broadcast(None)
    if status == "failed":
        raise EdgetlError(f"rank 0 could not prepare the backbone pass: {decided}")
    if decided == "torch":
        return EngineChoice("torch", None, "rank 0's choice")
    path = engine_file(cache.root, weights_sha256, len(frozen), preprocess.input_size)   # rank 0 exported it
    return EngineChoice(decided, create_backend(decided, path, shared_cores=True).open(), "rank 0's choice")
