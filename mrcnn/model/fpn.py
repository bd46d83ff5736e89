"""Feature pyramid (torchvision FeaturePyramidNetwork + LastLevelMaxPool), no normalisation.

Shapes:
    fpn([C2, C3, C4, C5]) -> [P2, P3, P4, P5, P6], each [B, fpn_channels, H_l, W_l];
    P6 = max_pool2d(P5, kernel 1, stride 2).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self.out_channels = out_channels

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        n = len(xs)
        last_inner = self.inner_blocks[n - 1](xs[n - 1])
        results = [self.layer_blocks[n - 1](last_inner)]
        for idx in range(n - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](xs[idx])
            top_down = F.interpolate(last_inner, size=inner_lateral.shape[-2:], mode="nearest")
            last_inner = inner_lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return results
