"""Data: synthetic COCO-format dataset, COCO loader with bad-data handling, transforms, deterministic sampler."""

from mrcnn.data.coco import CocoDetection, load_coco_json
from mrcnn.data.synth import CLASS_NAMES as SYNTH_CLASS_NAMES
from mrcnn.data.synth import generate_synthetic, render_sample
from mrcnn.data.transforms import (
    EvalTransform,
    GlobalBatchSampler,
    TrainDataset,
    TrainTransform,
    collate,
    hash_seed,
    hflip,
)

__all__ = [
    "CocoDetection",
    "EvalTransform",
    "GlobalBatchSampler",
    "SYNTH_CLASS_NAMES",
    "TrainDataset",
    "TrainTransform",
    "collate",
    "generate_synthetic",
    "hash_seed",
    "hflip",
    "load_coco_json",
    "render_sample",
]
