"""Export torch modules to ONNX (fp32, dynamic batch) and check them against torch.

The check follows Optimum's ``validate_model_outputs``: the exported file is
run on real images through onnxruntime and compared with the torch module;
a difference above the tolerance raises :class:`ExportValidationError` with
the maximum difference per output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgetl.runtime.engines.backends import create_backend
from edgetl.runtime.errors import EdgetlError, ExportValidationError, MissingDependencyError

from .quiet import quiet

INPUT_NAME = "input"
OPSET = 18


def export_onnx(module: nn.Module, path: Path, example: np.ndarray, output_name: str) -> None:
    """Write ``module`` as a single-file ONNX model with a dynamic batch dimension (and a dynamic sequence length
    for token ids: ``example`` of rank 2).  ``example`` is the preprocessing's (``PreprocessConfig.example``)."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; fail with the install line)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("onnx/onnxscript", "host", "ONNX export") from exc
    module = module.eval()
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if example.ndim == 2:
        dims[1] = torch.export.Dim("sequence", min=2, max=8192)
    with quiet():
        try:
            torch.onnx.export(
                module,
                (torch.from_numpy(example),),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[output_name],
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                dynamic_shapes=(dims,),
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many internal types
            raise EdgetlError(f"ONNX export of {path.name} failed: {exc}") from exc


def max_abs_difference(module: nn.Module, path: Path, images: np.ndarray, backend: str = "onnxruntime",
                       precision: str = "fp32") -> float:
    """Max |torch - backend| over ``images`` (NCHW float32, or token ids), at batch 1 and the full batch."""
    with torch.inference_mode():
        expected = module.eval()(torch.from_numpy(images)).numpy()
    with create_backend(backend, path, precision=precision) as runner:
        # batch 1 and the full batch both exercise the dynamic batch dimension
        single = runner.infer(images[:1])
        full = runner.infer(images)
    return float(max(np.abs(single - expected[:1]).max(), np.abs(full - expected).max()))


def check_export(module: nn.Module, path: Path, images: np.ndarray, tolerance: float, output_name: str) -> float:
    """Raise :class:`ExportValidationError` when ``path`` strays from ``module`` beyond ``tolerance``."""
    diff = max_abs_difference(module, path, images)
    if not np.isfinite(diff) or diff > tolerance:
        raise ExportValidationError(path.name, {output_name: diff}, tolerance)
    return diff
