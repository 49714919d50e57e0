"""What every format builder gets: the fp32 source model, data, options, a log."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.runtime.bundle.heads import Head

from .calibration import ExportData


@dataclass
class BuildContext:
    staging: Path
    fp32_onnx: Path
    data: ExportData
    head: Head
    options: dict
    max_accuracy_drop: float
    log: Callable[[str], None] = lambda message: None
    _prepared: Path | None = field(default=None, repr=False)

    def prepared_onnx(self) -> Path:
        """The fp32 model after ORT's quantization pre-processing (shape inference, folding), made once.  Its
        symbolic shape inference fails on the dynamic-length graph of a text encoder (an Expand over the sequence
        length); ONNX's own shape inference and the folding still run then."""
        if self._prepared is None:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            self._prepared = self.data.scratch / "prepared.onnx"
            try:
                quant_pre_process(str(self.fp32_onnx), str(self._prepared))
            except TypeError:      # symbolic inference fails so on shapes it cannot follow
                quant_pre_process(str(self.fp32_onnx), str(self._prepared), skip_symbolic_shape=True)
        return self._prepared


@dataclass(frozen=True)
class BuildResult:
    """Files written (the main one first) and what settings produced them."""

    files: list[str]
    notes: list[str]
