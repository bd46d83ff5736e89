"""COCO segmentations: checking and parsing them (polygons, uncompressed and compressed RLE), and their masks."""

from __future__ import annotations

import math

import numpy as np
import pycocotools.mask as mask_util

_NUMBER_TYPES = {int, float}


def finite_numbers(xs: list) -> bool:
    """Every element an int or float (not bool) and finite (a sum of finite numbers is finite; with any inf or NaN
    it is not). One pass in C over a json list, not a Python loop."""
    if not set(map(type, xs)) <= _NUMBER_TYPES:
        return False
    try:
        return math.isfinite(sum(xs))
    except OverflowError:  # ints beyond float range
        return False


def _polygon_ok(poly) -> bool:
    return isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and finite_numbers(poly)


def parse_segmentation(segm, h: int, w: int) -> tuple[str | None, list | dict | None]:
    """(reason it cannot be decoded, None), or (None, segm): a list of polygons, each an even count >= 6 of finite
    numbers, or an RLE dict (uncompressed counts summing to h * w, or a compressed string) of size [h, w]."""
    if isinstance(segm, list):
        if not segm:
            return "broken polygon (empty)", None
        for poly in segm:
            if not _polygon_ok(poly):
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                return f"broken polygon ({n} coordinates; need an even count >= 6 of finite numbers)", None
        return None, segm
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
            return f"bad RLE (size {size} differs from image {h}x{w})", None
        if isinstance(counts, list):
            if not (set(map(type, counts)) <= {int} and (not counts or min(counts) >= 0) and sum(counts) == h * w):
                return "bad RLE (counts must be non-negative integers summing to height*width)", None
            return None, segm
        if isinstance(counts, (str, bytes)):
            return None, segm
        return "bad RLE (counts must be a list or a string)", None
    return ("missing segmentation" if segm is None else f"bad segmentation ({type(segm).__name__})"), None


def segmentation_mask(segm, h: int, w: int) -> np.ndarray:
    """uint8 [h, w] mask of a COCO segmentation (polygons, as lists or float64 arrays; uncompressed or compressed
    RLE): pycocotools' `annToMask`, call for call."""
    if isinstance(segm, list):  # polygons: one object may have several parts, merged into one mask
        rle = mask_util.merge(mask_util.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):  # uncompressed RLE
        rle = mask_util.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_util.decode(rle)
