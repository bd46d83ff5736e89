"""DDP under torchrun: joining the process group, choosing this rank's device, and the few collectives the trainer
makes (one all-reduce per iteration to agree on a step's finiteness and on a stop request)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from mrcnn.device import parse_device


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process group was joined here: left (destroyed) at the end of training

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda":
        if dev.index is None:  # "cuda": this process's GPU (torchrun's LOCAL_RANK), an explicit index for set_device
            dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)


def agree(finite: bool, stop: bool, info: DistInfo) -> tuple[bool, bool]:
    """(every rank's step is finite, some rank was asked to stop): one all-reduce per iteration under DDP."""
    if info.world == 1:
        return finite, stop
    t = torch.tensor(
        [1.0 if finite else 0.0, 0.0 if stop else 1.0], device=info.device if info.device.type == "cuda" else "cpu"
    )
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    ok, go_on = t.tolist()
    return ok > 0.5, go_on < 0.5


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def leave(info: DistInfo) -> None:
    """Leave a process group joined by init_distributed (an undestroyed gloo group can abort the interpreter's exit:
    "terminate called ...")."""
    if info.owns_group:
        barrier(info)
        dist.destroy_process_group()


def ddp_param_max_diff(model: torch.nn.Module, info: DistInfo) -> float | None:
    """Max |param_rank - param_rank0| over all ranks (None when not distributed)."""
    if info.world == 1:
        return None
    flat = torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    d = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(d, op=dist.ReduceOp.MAX)
    return float(d.item())
