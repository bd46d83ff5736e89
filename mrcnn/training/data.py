"""The training data as the trainer takes it: the train split, its loader (this rank's micro-batches from the
global batch sampler), the val split it evaluates on, and batches moved to the device."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from mrcnn.config import Config
from mrcnn.errors import MrcnnError
from mrcnn.model.preprocess import min_batch_shape
from mrcnn.training.distributed import DistInfo


def loader_workers(requested: int, info: DistInfo) -> int:
    """`solver.num_workers`, where -1 (auto) is 0 on a CPU device and min(4, cores per rank - 1) on a GPU."""
    if requested < -1:
        raise MrcnnError(f"--workers must be >= 0 (or -1: auto), got {requested}")
    if requested >= 0:
        return requested
    if info.device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # set by torchrun
    return max(0, min(4, cores // ranks_here - 1))


def make_train_loader(train_ds, sampler, cfg: Config, info: DistInfo, start_iter: int, workers: int):
    """This rank's micro-batches for iterations start_iter..max_iter-1, collated (and pinned for a GPU)."""
    from mrcnn.data.transforms import collate

    s = cfg.solver
    # (epoch, index) keys: augmentation seeds need no per-worker epoch state
    return torch.utils.data.DataLoader(
        train_ds,
        batch_sampler=sampler.micro_batches(start_iter, s.max_iter, info.rank, info.world, s.accum),
        collate_fn=functools.partial(
            collate, size_divisible=cfg.input.size_divisible, pad_to=min_batch_shape(cfg.input)
        ),
        num_workers=workers,
        pin_memory=info.device.type == "cuda",  # page-locked batches: the host-to-device copies run asynchronously
        persistent_workers=False,
    )


def build_train_data(cfg: Config, data_dir: str | Path, strict: bool, log):
    from mrcnn.data.check import training_issues
    from mrcnn.data.layout import open_split
    from mrcnn.data.transforms import GlobalBatchSampler, TrainDataset, TrainTransform

    base = open_split(data_dir, "train", strict=strict, logger=log)
    errors, warnings = training_issues(base)  # the rule `mrcnn data check` applies too
    if errors:
        raise MrcnnError(errors[0])
    for w in warnings:
        log(w)
    tfm = TrainTransform(cfg.input.min_size, cfg.input.max_size, cfg.input.hflip_prob, cfg.input.train_min_sizes)
    ds = TrainDataset(base, tfm, seed=cfg.seed)
    return base, ds, GlobalBatchSampler


def open_val(data_dir, class_names: list[str], strict: bool, say):
    """(the val split that training evaluates on, the category id of each training class in it), or (None, [])
    where there is none or it has no images (said once). Its classes must be the training split's, matched by name;
    checked here, before the run starts, not at its first evaluation hours later."""
    from mrcnn.data.layout import open_split
    from mrcnn.evaluation.coco import match_classes

    val = open_split(data_dir, "val", required=False, strict=strict, logger=say)
    if val is None or len(val) == 0:
        say(
            f"{'no validation split' if val is None else 'a validation split without images'} in {data_dir}: "
            "no COCO evaluation"
        )
        return None, []
    return val, match_classes(class_names, val, "the training split", say)


def to_device(batch: dict, device: torch.device, channels_last: bool):
    images = batch["images"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = []
    for t in batch["targets"]:
        targets.append({k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()})
    return images, batch["image_sizes"].to(device, non_blocking=True), targets
