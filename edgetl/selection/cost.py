"""What a backbone costs before it is measured: parameters, FLOPs at the input size it would run at, size.

FLOPs come from torch's own counter (``torch.utils.flop_counter.FlopCounterMode``, two per multiply-add),
counted on one image at the candidate's input size, so they follow the resolution the data asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


def _used_tensors(backbone: nn.Module) -> set[str]:
    """State-dict names of the modules the forward pass reaches (its ``stages``), not a classifier beside them."""
    stages = getattr(backbone, "stages", None)
    if not stages:
        return set(backbone.state_dict())
    owned = {id(t) for stage in stages for t in [*stage.parameters(), *stage.buffers()]}
    return {name for name, t in backbone.state_dict(keep_vars=True).items() if id(t) in owned}
