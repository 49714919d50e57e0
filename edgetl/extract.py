"""One pass of the frozen backbone part over a list of images.

Decoding and preprocessing use the runtime's code (prefetched in threads);
the network runs on CUDA with mixed precision when available, else on the
CPU in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgetl.runtime.backends import Backend
from edgetl.runtime.data import ImageRecord
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig
from edgetl.runtime.progress import ProgressFactory, silent_progress
from edgetl.runtime.reader import ReadReport, read_batches

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ComputeDevice:
    """Where torch work runs and with which precision."""

    device: torch.device
    amp: bool

    @property
    def precision(self) -> str:
        return "amp-fp16" if self.amp else "fp32"

    @property
    def batch_size(self) -> int:
        """Default extraction batch: small on CPUs (cache-bound past ~8 at 224 px), large on GPUs."""
        return 64 if self.device.type == "cuda" else 8


def resolve_device(name: str = "auto") -> ComputeDevice:
    if name not in DEVICES:
        raise ConfigError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("cuda was asked for but torch sees no CUDA device", option="device")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return ComputeDevice(torch.device("cuda" if use_cuda else "cpu"), amp=use_cuda)


def output_shape(module: nn.Module, input_size: int, device: torch.device) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(module(torch.zeros(1, 3, input_size, input_size, device=device)).shape[1:])


def run_frozen(
    module: nn.Module,
    records: Sequence[ImageRecord],
    preprocess: PreprocessConfig,
    compute: ComputeDevice,
    *,
    batch_size: int | None = None,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: ProgressFactory = silent_progress,
    runner: Backend | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (outputs for every record, valid mask, skipped sources).

    ``runner`` (an open runtime backend on the exported frozen part, see
    :mod:`edgetl.engines`) replaces eager torch for the pass.
    """
    # channels-last is 1.5x faster for this family on CPU (oneDNN) and on tensor cores
    module = module.eval().to(compute.device, memory_format=torch.channels_last)
    shape = output_shape(module, preprocess.input_size, compute.device)
    batch_size = batch_size or compute.batch_size
    outputs = np.zeros((len(records), *shape), dtype=np.float32)
    valid = np.zeros(len(records), dtype=bool)
    report = ReadReport()
    bar = progress("backbone pass", len(records))
    try:
        with torch.inference_mode():
            for batch in read_batches(records, preprocess, batch_size, max_pixels=max_pixels,
                                      skip_bad=skip_bad, report=report):
                if batch.indices and runner is not None:
                    outputs[batch.indices] = runner.infer(batch.images)
                    valid[batch.indices] = True
                elif batch.indices:
                    x = torch.from_numpy(batch.images).to(compute.device, non_blocking=True)
                    x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(compute.device.type, dtype=torch.float16, enabled=compute.amp):
                        y = module(x)
                    outputs[batch.indices] = y.float().cpu().numpy()
                    valid[batch.indices] = True
                bar.update(batch.consumed)
    finally:
        bar.close()
    return outputs, valid, [f"{e.source}: {e.reason}" for e in report.skipped]
