"""ResNet body from torchvision's BasicBlock / Bottleneck, with configurable depth, width and normalisation.

Shapes:
    B   images;  Hp, Wp   padded image size (multiple of 32)
    body(x [B,3,Hp,Wp]) -> [C2 [B,c2,Hp/4,Wp/4], C3 [../8], C4 [../16], C5 [../32]]
    stage i (0..3) has `width * 2**i` base planes; its output has `width * 2**i * expansion` channels
    (expansion 1 for BasicBlock, 4 for Bottleneck).

Parameter names equal torchvision's ResNet (`conv1`, `bn1`, `layer1..4`), so torchvision weights load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN

from mrcnn.errors import MrcnnError

_DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class FrozenBatchNorm2d(TorchvisionFrozenBN):
    """torchvision's FrozenBatchNorm2d (same buffers, same state-dict keys, same math) computed as one inference-mode
    batch_norm: a single pass over the activation in its own dtype, where torchvision's version launches seven small
    ops per call and, under autocast, returns float32 (its float32 scale promotes the float16 input), which the next
    convolution casts back. Exported to ONNX it is one BatchNormalization node, which runtimes fold into the conv."""

    def forward(self, x: Tensor) -> Tensor:
        # the aten op, not F.batch_norm: some torch versions' F.batch_norm rejects eps == 0, which torchvision's COCO
        # weights use (aten then takes its native kernel instead of cuDNN's, which needs eps >= 1e-5)
        return torch.batch_norm(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            False,
            0.0,
            self.eps,
            torch.backends.cudnn.enabled,
        )


def norm_factory(kind: str, eps: float = 1e-5) -> Callable[[int], nn.Module]:
    """`frozen_bn` (torchvision FrozenBatchNorm2d) | `bn` (BatchNorm2d) | `gn` (GroupNorm, gcd(32, C) groups)."""
    if kind == "frozen_bn":
        return lambda c: FrozenBatchNorm2d(c, eps=eps)
    if kind == "bn":
        return lambda c: nn.BatchNorm2d(c, eps=eps)
    if kind == "gn":
        return lambda c: nn.GroupNorm(math.gcd(32, c), c)
    raise MrcnnError(f"unknown norm {kind!r}; choose frozen_bn, bn or gn")


class ResNetBody(nn.Module):
    def __init__(
        self,
        depth: str = "resnet50",
        blocks: tuple[int, ...] = (),
        width: int = 64,
        norm: str = "frozen_bn",
        bn_eps: float = 1e-5,
        trainable_layers: int = 3,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise MrcnnError(f"unknown backbone {depth!r}; choose one of: {', '.join(_DEPTHS)}")
        block, default_blocks = _DEPTHS[depth]
        blocks = tuple(blocks) or default_blocks
        if len(blocks) != 4 or min(blocks) < 1:
            raise MrcnnError(f"backbone_blocks must be 4 positive counts, got {blocks}")
        if not 0 <= trainable_layers <= 5:
            raise MrcnnError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
        norm_layer = norm_factory(norm, bn_eps)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.out_channels: list[int] = []
        for i, n in enumerate(blocks):
            layer = self._make_layer(block, width * 2**i, n, 1 if i == 0 else 2, norm_layer)
            self.add_module(f"layer{i + 1}", layer)
            self.out_channels.append(self.inplanes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # freeze the lower stages exactly like torchvision's _resnet_fpn_extractor
        train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
        if trainable_layers == 5:
            train.append("bn1")
        for name, p in self.named_parameters():
            if not any(name.startswith(t) for t in train):
                p.requires_grad_(False)

    def _make_layer(self, block, planes: int, n: int, stride: int, norm_layer) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                norm_layer(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=norm_layer)]
        self.inplanes = planes * block.expansion
        for _ in range(1, n):
            layers.append(block(self.inplanes, planes, norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
