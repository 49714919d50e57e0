"""One pass of the frozen backbone part over a list of images, into a feature cache entry.

Decoding and resizing use the runtime's code in the pipeline's workers (:mod:`edgetl.pipeline`); the network
runs on CUDA with mixed precision when available (normalized on the GPU), else on the CPU in float32, or through
a runtime engine (:mod:`edgetl.engines`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgetl.runtime.data.preprocess import DEFAULT_MAX_PIXELS, PreprocessConfig, normalize_batch
from edgetl.runtime.data.reader import ReadReport
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.engines.backends import Backend
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.progress import ProgressFactory, silent_progress

from .cache import CacheWriter
from .pipeline import decoded_batches, engine_lanes, lane_count

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ComputeDevice:
    """Where torch work runs and with which precision."""

    device: torch.device
    amp: bool
    compile: bool = False     # torch.compile the frozen part for the pass (eager torch only; engines ignore it)

    @property
    def precision(self) -> str:
        return "amp-fp16" if self.amp else "fp32"

    @property
    def batch_size(self) -> int:
        """Default extraction batch before measuring: small on CPUs (cache-bound past ~8 at 224 px), large on
        GPUs (:func:`pass_batch_size` measures the GPU's)."""
        return 64 if self.device.type == "cuda" else 8


def resolve_device(name: str = "auto", compile: bool = False) -> ComputeDevice:
    if name not in DEVICES:
        raise ConfigError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("cuda was asked for but torch sees no CUDA device", option="device")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return ComputeDevice(torch.device("cuda" if use_cuda else "cpu"), amp=use_cuda, compile=compile)


#: GPU batches: a power of two in this range, using at most this share of the free memory.
GPU_BATCH_RANGE = (32, 512)
GPU_MEMORY_SHARE = 0.25


def gpu_batch_for(free_bytes: int, bytes_per_image: float) -> int:
    """The largest power of two in :data:`GPU_BATCH_RANGE` whose images fit in :data:`GPU_MEMORY_SHARE` of
    ``free_bytes`` (the rest is the caching allocator's, the next batch's copy and other processes')."""
    low, high = GPU_BATCH_RANGE
    fits = int(free_bytes * GPU_MEMORY_SHARE / max(bytes_per_image, 1.0))
    batch = low
    while batch * 2 <= min(fits, high):
        batch *= 2
    return batch


def pass_batch_size(module: nn.Module, input_size: int, compute: ComputeDevice) -> int:
    """The batch of a pass: the CPU default, or on a GPU one chosen from the memory a probe batch of 8 takes
    (fp16 autocast, as the pass runs) against the free memory."""
    if compute.device.type != "cuda":
        return compute.batch_size
    probe = torch.zeros((8, 3, input_size, input_size), device=compute.device).contiguous(
        memory_format=torch.channels_last)
    torch.cuda.synchronize(compute.device)
    base = torch.cuda.memory_allocated(compute.device)
    torch.cuda.reset_peak_memory_stats(compute.device)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=compute.amp):
        module(probe)
    torch.cuda.synchronize(compute.device)
    # the probe's activations per image, plus the image itself as uint8 and as the normalized float32 copy
    per_image = (torch.cuda.max_memory_allocated(compute.device) - base) / 8 + 3 * input_size * input_size * 5
    free, _ = torch.cuda.mem_get_info(compute.device)
    return gpu_batch_for(free, per_image)


def output_shape(module: nn.Module, input_size: int, device: torch.device) -> tuple[int, ...]:
    with torch.inference_mode():
        return tuple(module(torch.zeros(1, 3, input_size, input_size, device=device)).shape[1:])


def prepare(module: nn.Module, compute: ComputeDevice) -> nn.Module:
    """The frozen part in eval mode on its device; channels-last is 1.5x faster for this family on CPU (oneDNN)
    and on tensor cores."""
    return module.eval().to(compute.device, memory_format=torch.channels_last)


def compiled(module: nn.Module, compute: ComputeDevice) -> nn.Module:
    """``module`` through ``torch.compile`` when asked (``--compile``): it pays on a GPU for a long pass (about 2x
    Lite0's eager rate there), costs a compilation (about 20 s for a small network on a CPU) and a recompilation
    for the last, shorter batch."""
    return torch.compile(module) if compute.compile else module


class _CudaRunner:
    """The GPU side of the pipeline: the pinned uint8 batch copied without blocking, then normalization, layout
    (channels_last) and fp16 autocast on the GPU; outputs copied back into pinned memory asynchronously and
    collected one batch later, so the copy-back overlaps the next batch's decode and compute.  A batch's input
    stays referenced until its work is done (its pinned memory must outlive the copy)."""

    def __init__(self, module: nn.Module, preprocess: PreprocessConfig, compute: ComputeDevice):
        device = compute.device
        self.module, self.compute = module, compute
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self.inv_std = 1.0 / torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        self.pending: tuple[list[int], torch.Tensor, torch.Tensor, torch.cuda.Event] | None = None

    def run(self, indices: list[int], pixels: torch.Tensor) -> tuple[list[int], np.ndarray] | None:
        x = pixels.to(self.compute.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = ((x * (1.0 / 255.0) - self.mean) * self.inv_std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.compute.amp):
            y = self.module(x)
        out = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
        out.copy_(y.float(), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        finished, self.pending = self.flush(), (indices, pixels, out, done)
        return finished

    def flush(self) -> tuple[list[int], np.ndarray] | None:
        """The pending batch's (positions, rows), once its copy back is done; None when nothing is pending."""
        if self.pending is None:
            return None
        indices, _, out, done = self.pending
        self.pending = None
        done.synchronize()
        return indices, out.numpy()


def run_frozen(
    module: nn.Module,
    records: Sequence[ImageRecord],
    preprocess: PreprocessConfig,
    compute: ComputeDevice,
    writer: CacheWriter,
    *,
    batch_size: int | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: ProgressFactory = silent_progress,
    runner: Backend | None = None,
    first: int = 0,
) -> None:
    """One pass of ``module`` (prepared: :func:`prepare`) over ``records`` into ``writer``, images decoded by
    :func:`~edgetl.pipeline.decoded_batches` (``workers`` processes; None: one per core for a large job).

    ``runner`` (an open runtime backend on the exported frozen part, see :mod:`edgetl.engines`) replaces eager
    torch for the pass; where decoding would run in threads (:func:`~edgetl.pipeline.lane_count`), an engine that
    allows it (ONNX Runtime) runs in lanes of single-threaded copies instead (:func:`~edgetl.pipeline.engine_lanes`).
    Skipped images are listed in ``writer.skipped``.
    ``records`` are the entry's rows from ``first`` on (a rank's block of a sharded pass).
    """
    batch_size = batch_size or compute.batch_size
    report = ReadReport()
    lanes = lane_count(len(records), workers, batch_size) if runner is not None and runner.runs_in_lanes else 0
    if lanes:
        steps = engine_lanes(records, preprocess, batch_size, runner, lanes, max_pixels=max_pixels, skip_bad=skip_bad,
                             report=report)
    else:
        steps = _decoded_steps(module, records, preprocess, compute, batch_size, workers, skip_bad, max_pixels, report,
                               runner)
    bar = progress("backbone pass", len(records))
    try:
        with torch.inference_mode(), contextlib.closing(steps):     # on an error the decoders stop at once
            for indices, rows, consumed in steps:
                if indices:
                    writer.write([first + i for i in indices], rows)
                bar.update(consumed)
    finally:
        bar.close()
    writer.skipped = [f"{e.source}: {e.reason}" for e in report.skipped]


def _decoded_steps(module, records, preprocess, compute, batch_size, workers, skip_bad, max_pixels, report, runner
                   ) -> Iterator[tuple[list[int], np.ndarray | None, int]]:
    """The pass over :func:`~edgetl.pipeline.decoded_batches`, as (positions, rows, records covered): on CUDA
    through :class:`_CudaRunner` (whose rows come one batch late), else eager torch or ``runner`` here."""
    cuda = _CudaRunner(module, preprocess, compute) if runner is None and compute.device.type == "cuda" else None
    batches = decoded_batches(records, preprocess, batch_size, workers=workers, max_pixels=max_pixels,
                              skip_bad=skip_bad, report=report, pin_memory=cuda is not None)
    with contextlib.closing(batches):
        for batch in batches:
            if batch.indices and cuda is not None:
                finished = cuda.run(batch.indices, batch.pixels)      # the batch before this one, if any
                yield (*finished, batch.consumed) if finished else ([], None, batch.consumed)
            elif batch.indices:
                images = normalize_batch(batch.pixels.numpy(), preprocess)
                if runner is not None:
                    rows = runner.infer(images)
                else:
                    rows = module(torch.from_numpy(images).contiguous(memory_format=torch.channels_last)).numpy()
                yield batch.indices, rows, batch.consumed
            else:
                yield [], None, batch.consumed
        last = cuda.flush() if cuda is not None else None
        if last is not None:
            yield (*last, 0)


def extract_features(module: nn.Module, records: Sequence[ImageRecord], preprocess: PreprocessConfig,
                     compute: ComputeDevice, *, runner: Backend | None = None, batch_size: int | None = None,
                     workers: int | None = None, skip_bad: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``module``'s outputs over ``records`` in memory: (outputs, valid mask, skipped).  For a few thousand images
    (comparisons, probes); a training pass goes through the feature cache instead, which streams."""
    import tempfile

    from .cache import FeatureCache

    module = prepare(module, compute)
    with tempfile.TemporaryDirectory(prefix="edgetl-pass-") as folder:
        cache = FeatureCache(folder)
        with cache.writer("pass", len(records), output_shape(module, preprocess.input_size, compute.device)) as w:
            run_frozen(compiled(module, compute) if runner is None else module, records, preprocess, compute, w,
                       batch_size=batch_size, workers=workers, skip_bad=skip_bad, runner=runner)
        entry = cache.loaded("pass")
        return np.array(entry.features), entry.valid.copy(), list(entry.skipped)
