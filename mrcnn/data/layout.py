"""Where a dataset's splits live: `--data` is a folder in one of the common COCO-format layouts, or a dataset file.

Layouts of a folder DATA (the first that has the split wins):
  COCO 2017         DATA/annotations/instances_SPLIT.json, images in DATA/SPLIT/ (`train2017`, `val2017`, ...)
  Roboflow COCO     DATA/SPLIT/_annotations.coco.json next to its images (`train`, `valid`, `test`)
A dataset file (`--data data.json`) names the files of each split, paths relative to the file's folder, e.g. for a
CVAT or Label Studio export:
  {"train": {"annotations": "annotations/instances_default.json", "images": "images"},
   "val":   {"annotations": "val.json", "images": "images"}}

Split names: "train" and "val" are the roles the trainer asks for; in a COCO 2017 folder they mean train2017 /
val2017, in a Roboflow folder "val" means "valid"; "train2017" / "val2017" are accepted for them everywhere (the
default of `mrcnn eval --split`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mrcnn.errors import MrcnnError, unreadable

ROLE_OF = {"train2017": "train", "val2017": "val", "valid": "val"}  # aliases -> role
COCO_NAMES = {"train": "train2017", "val": "val2017"}
ROBOFLOW_NAMES = {"val": "valid"}
ROBOFLOW_ANN = "_annotations.coco.json"


@dataclass(frozen=True)
class Split:
    annotations: Path
    images: Path

    def __str__(self) -> str:
        return f"{self.annotations} (images in {self.images})"


def role_of(split: str) -> str:
    """ "train" / "val" for any of their names (train2017, valid, ...); other splits as they are."""
    return ROLE_OF.get(split, split)


def _from_file(path: Path, split: str) -> Split | None:
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise unreadable(path, "dataset file", e, "JSON") from None
    if not isinstance(spec, dict) or not spec or not all(isinstance(v, dict) for v in spec.values()):
        raise MrcnnError(f'{path}: a dataset file maps split names to {{"annotations": ..., "images": ...}}')
    key = split if split in spec else next((k for k in spec if role_of(k) == role_of(split)), None)
    if key is None:
        return None
    entry = spec[key]
    if set(entry) != {"annotations", "images"} or not all(isinstance(v, str) for v in entry.values()):
        raise MrcnnError(f'{path}: split {key!r} needs exactly "annotations" and "images" paths')
    return Split(path.parent / entry["annotations"], path.parent / entry["images"])


def find_split(data: str | Path, split: str) -> Split | None:
    """The split's annotation file and image folder, or None where `data` has no such split."""
    data = Path(data)
    if data.is_file():
        return _from_file(data, split)
    role = role_of(split)
    for name in dict.fromkeys([split, COCO_NAMES.get(role, split)]):  # COCO 2017
        ann = data / "annotations" / f"instances_{name}.json"
        if ann.is_file():
            return Split(ann, data / name)
    for name in dict.fromkeys([split, ROBOFLOW_NAMES.get(role, role)]):  # Roboflow
        ann = data / name / ROBOFLOW_ANN
        if ann.is_file():
            return Split(ann, data / name)
    return None


def require_split(data: str | Path, split: str) -> Split:
    found = find_split(data, split)
    if found is not None:
        return found
    data = Path(data)
    if not data.exists():
        raise MrcnnError(f"{data}: no such dataset folder or file")
    if data.is_file():
        raise MrcnnError(f"{data}: the dataset file has no {split!r} split")
    role = role_of(split)
    raise MrcnnError(
        f"{data}: no {split!r} split (looked for annotations/instances_{COCO_NAMES.get(role, split)}.json, "
        f"{ROBOFLOW_NAMES.get(role, role)}/{ROBOFLOW_ANN}; or pass a dataset .json naming the files)"
    )


def open_split(data: str | Path, split: str, *, required: bool = True, strict: bool = False, logger=None):
    """`CocoDetection` of a split of `data` (any layout above); None where it is absent and not `required`."""
    from mrcnn.data.coco import CocoDetection

    found = require_split(data, split) if required else find_split(data, split)
    if found is None:
        return None
    return CocoDetection(data, split, ann_file=found.annotations, img_dir=found.images, strict=strict, logger=logger)


def draw_images(data: str | Path, split: str, count: int, seed: int = 0, logger=None) -> list[torch.Tensor]:
    """Up to `count` images ([3,H,W] uint8) drawn at random (`seed`) from a split of `data`, unreadable ones
    skipped (calibration images, bundle inputs)."""
    ds = open_split(data, split, logger=logger)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    images = []
    for i in order:
        im = ds.load_image(i)
        if im is not None:
            images.append(im)
        if len(images) == count:
            break
    return images
