"""The backbone contract: ordered stages, pretrained preprocessing, a freeze point.

Modelled on timm's head contract.  A backbone is a sequence of stages whose
last stage pools to a ``(N, feature_dim)`` vector.  Choosing ``train_last=N``
splits the sequence so that the first part is frozen (and its output cached)
and the last N parameterised stages plus the pooling are trained.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn

from edgetl.runtime.data.preprocess import PreprocessConfig
from edgetl.runtime.errors import ConfigError


@dataclass(frozen=True)
class PretrainedConfig:
    """What the pretrained weights expect (timm's ``pretrained_cfg`` in small)."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    weights_source: str

    def preprocess(self, image_size: int | None = None, crop_pct: float | None = None) -> PreprocessConfig:
        return PreprocessConfig.for_size(
            image_size or self.input_size,
            self.crop_pct if crop_pct is None else crop_pct,
            self.mean,
            self.std,
            self.interpolation,
        )


class GlobalAveragePool(nn.Module):
    """Mean over the spatial dimensions: (N, C, H, W) -> (N, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class Backbone(nn.Module):
    """A frozen-able feature extractor made of ordered stages.

    Subclasses register their modules under the names of the pretrained state
    dict (so weights load without renaming), then list them in ``self.stages``:
    a plain list of views over those modules, whose last entry is
    parameter-free pooling.  Subclasses also set ``name``, ``pretrained`` and
    ``feature_dim``.
    """

    name: str
    pretrained: PretrainedConfig
    feature_dim: int
    stages: list[nn.Module]
    modality = "image"      # what it reads: "image" or "text" (:mod:`.sentence_bert`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    @property
    def trainable_stage_count(self) -> int:
        """How many stages ``--train-last`` can unfreeze (those with parameters)."""
        return sum(1 for s in self.stages if any(True for _ in s.parameters()))

    def split(self, train_last: int) -> tuple[nn.Sequential, nn.Sequential]:
        """(frozen part, trainable tail) for a freeze point ``train_last`` stages from the end.

        With ``train_last=0`` the frozen part ends with the pooling (so the
        cache holds compact pooled features) and the tail is empty; otherwise
        the tail holds the last ``train_last`` stages and the pooling.
        """
        cut = self.cut(train_last)
        return nn.Sequential(*self.stages[:cut]), nn.Sequential(*self.stages[cut:])

    def cut(self, train_last: int) -> int:
        """Index of the first stage after the frozen part; refuses a freeze point the backbone does not have."""
        limit = self.trainable_stage_count
        if not 0 <= train_last <= limit:
            raise ConfigError(
                f"--train-last {train_last} is out of range for {self.name}: it has {limit} "
                f"trainable stages (0 trains the head only)"
            )
        return len(self.stages) - 1 - train_last if train_last else len(self.stages)

    def weights_sha256(self) -> str:
        """A digest of every parameter and buffer: identifies the weights for caching."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Load a local state dict safely (``weights_only=True``), unwrapping common wrappers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"weights file not found: {path}") from exc
    except Exception as exc:  # torch raises several types for unsafe or corrupt files
        raise ConfigError(f"cannot load weights from {path} safely: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    return state
