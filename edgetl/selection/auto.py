"""``backbone="auto"``: fine-tune the backbone (and freeze point) that ``edgetl select`` recommends for the data.

:func:`~edgetl.finetune.finetune` calls :func:`resolve_auto_backbone` before anything else, so the Python API
and ``edgetl finetune --backbone auto`` do the same: the selection is measured now, or reused from the cache
when a fresh one is there (``edgetl select`` just before costs nothing twice), and its table goes into the run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from edgetl.runtime.errors import ConfigError
from edgetl.runtime.progress import ProgressFactory, silent_progress

AUTO = "auto"


@dataclass(frozen=True)
class AutoBackbone:
    """What ``backbone="auto"`` chooses among and whose latency counts, as for ``edgetl select`` (None: its
    default: every offline backbone, the host's latency, no budget)."""

    backbones: tuple[str, ...] | None = None
    target: str | None = None
    budget_ms: float | None = None

    def given(self) -> list[str]:
        """The settings given, by name: they apply to ``backbone="auto"`` only."""
        return [name for name in ("budget_ms", "target", "backbones") if getattr(self, name) is not None]


def resolve_auto_backbone(data_address: str, config, progress: ProgressFactory = silent_progress,
                          log=lambda message: None):
    """``config`` (a :class:`~edgetl.finetune.FinetuneConfig` whose backbone is ``"auto"``) with the recommended
    backbone, the freeze point the selection recommended for it (unless ``config.train_last`` names one; 0
    when none was compared) and the selection table to record in the run."""
    from .select import SelectConfig, select_backbones, selection_summary

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--backbone auto does not run under torchrun; run edgetl select first (one process), "
                          "then finetune --backbone NAME under torchrun", option="backbone")
    auto = config.auto or AutoBackbone()
    select_config = SelectConfig(target=auto.target, budget_ms=auto.budget_ms, cache_dir=config.cache_dir,
                                 image_size=config.image_size, device=config.device, engine=config.engine,
                                 workers=config.workers, compile=config.compile, seed=config.seed,
                                 val_fraction=config.val_fraction, skip_bad=config.skip_bad,
                                 max_pixels=config.max_pixels,
                                 **({"backbones": auto.backbones} if auto.backbones is not None else {}))
    chosen = select_backbones(data_address, select_config, progress=progress, log=log)
    backbone, train_last = chosen["recommendation"]["backbone"], config.train_last
    log(f"--backbone auto: {backbone} ({chosen['recommendation']['reason']})")
    freeze = chosen.get("freeze")
    if train_last is None and freeze and freeze["backbone"] == backbone:
        train_last = freeze["recommended"]
        log(f"--backbone auto: --train-last {train_last} ({freeze['reason']})")
    return dataclasses.replace(config, backbone=backbone, train_last=train_last or 0, auto=None,
                               selection=selection_summary(chosen))
