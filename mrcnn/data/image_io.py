"""Reading image files the way they are meant to be seen.

A camera that was held upright often stores its pixels sideways with an EXIF orientation tag saying how to turn
them; viewers, browsers and annotation tools (CVAT, Label Studio, Roboflow's auto-orient) show the turned image, and
a COCO json records that image's width and height. PIL returns the stored pixels. detectron2's `read_image` and
Ultralytics apply the tag; torchvision's CocoDetection does not, and then a portrait photo's annotations land on a
landscape image. So every reader here (training, evaluation, `predict`) applies it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: mirrored and/or turned by multiples of 90 degrees


def read_rgb(path: str | Path) -> tuple[np.ndarray, int]:
    """(H x W x 3 uint8 pixels with the file's EXIF orientation applied, that orientation tag: 1 when none)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB")), orientation
