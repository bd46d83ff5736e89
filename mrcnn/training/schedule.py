"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from mrcnn.config import Config
from mrcnn.errors import MrcnnError


def lr_factor(it: int, cfg: Config) -> float:
    """Linear warmup, then multistep decay (maskrcnn-benchmark's WarmupMultiStepLR, the default) or a half cosine
    from 1 to 0 over the run (detectron2's WarmupCosineLR: `solver.lr_schedule=cosine`)."""
    s = cfg.solver
    f = 1.0
    if it < s.warmup_iters:
        alpha = it / max(s.warmup_iters, 1)
        f = s.warmup_factor * (1 - alpha) + alpha
    if s.lr_schedule == "cosine":
        return f * 0.5 * (1.0 + math.cos(math.pi * min(it, s.max_iter) / max(s.max_iter, 1)))
    milestones = [int(round(frac * s.max_iter)) for frac in s.steps]
    return f * (s.gamma ** sum(1 for m in milestones if it >= m))


def scaled_lr(cfg: Config, world: int) -> float:
    s = cfg.solver
    return s.base_lr * (s.batch * s.accum * world) / s.lr_reference_batch


def make_optimizer(model: torch.nn.Module, cfg: Config, world: int) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr = scaled_lr(cfg, world)
    if not abs(lr) <= 3.4028234663852886e38:  # (SGD would stop with a RuntimeError at its first step)
        raise MrcnnError(
            f"the learning rate scaled to the global batch, {lr:g} (solver.base_lr x global batch / "
            "solver.lr_reference_batch), is beyond float32's range"
        )
    return torch.optim.SGD(params, lr=lr, momentum=cfg.solver.momentum, weight_decay=cfg.solver.weight_decay)
