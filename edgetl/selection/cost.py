"""What a backbone costs before it is measured: parameters, FLOPs at the input size it would run at, size.

FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``, two per multiply-add),
counted on one image at the candidate's input size, so they follow the resolution the data asks for.  The
counter's first use in a process costs about a second, so :func:`recorded_cost` keeps the figures in the cache
folder beside the latency figures: like them they depend on the backbone and input size, not on the data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgetl import __version__
from edgetl.runtime.fsutil import atomic_write_text


@dataclass(frozen=True)
class ModelCost:
    params_m: float           # millions of parameters of the feature extractor (the ImageNet classifier left out)
    gflops: float             # per image at ``input_size``
    fp32_mb: float            # parameters and buffers in float32, the size of the fp32 artifact within a few %
    input_size: int


def model_cost(backbone: nn.Module, input_size: int) -> ModelCost:
    used = _used_tensors(backbone)
    params = sum(t.numel() for name, t in backbone.named_parameters() if name in used)
    size = sum(t.numel() * 4 for name, t in backbone.state_dict().items() if name in used and t.is_floating_point())
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        backbone(torch.zeros(1, 3, input_size, input_size))
    return ModelCost(round(params / 1e6, 3), round(counter.get_total_flops() / 1e9, 3), round(size / 1e6, 2),
                     input_size)


def recorded_cost(backbone: nn.Module, weights_sha256: str, input_size: int, cache_root: Path) -> ModelCost:
    """:func:`model_cost`, counted once per backbone, input size and torch release, then read back."""
    text = json.dumps([__version__, torch.__version__, weights_sha256, input_size])
    record = cache_root / "cost" / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"
    try:
        return ModelCost(**json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        pass            # not counted yet (or a damaged record): count it
    cost = model_cost(backbone, input_size)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(asdict(cost)))
    return cost


def _used_tensors(backbone: nn.Module) -> set[str]:
    """State-dict names of the modules the forward pass reaches (its ``stages``), not a classifier beside them."""
    stages = getattr(backbone, "stages", None)
    if not stages:
        return set(backbone.state_dict())
    owned = {id(t) for stage in stages for t in [*stage.parameters(), *stage.buffers()]}
    return {name for name, t in backbone.state_dict(keep_vars=True).items() if id(t) in owned}
