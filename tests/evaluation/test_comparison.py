"""Detections of an artifact paired with its reference's (what `mrcnn validate` reports), on constructed cases."""

from __future__ import annotations

import pytest


def test_pairing_counts_and_differences_on_constructed_detections():
    """pair_detections on detections built to a known answer: shifted boxes (0.25 px), changed scores (0.01), one
    dropped, one of another class added, one moved far off (IoU < 0.5: unpaired on both sides); and empty sides."""
    import numpy as np
    import pycocotools.mask as mask_util

    from mrcnn.evaluation.comparison import pair_detections

    def det(img, cat, x, y, w, h, score):
        m = np.zeros((64, 64), dtype=np.uint8, order="F")
        m[int(y) : int(y + h), int(x) : int(x + w)] = 1
        rle = mask_util.encode(m)
        return {
            "image_id": img,
            "category_id": cat,
            "bbox": [x, y, w, h],
            "score": score,
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        }

    ref = [
        det(1, 1, 4, 4, 20, 20, 0.9),
        det(1, 1, 30, 30, 20, 20, 0.8),
        det(1, 2, 10, 40, 16, 16, 0.7),
        det(2, 1, 8, 8, 30, 30, 0.6),
        det(2, 2, 0, 0, 10, 10, 0.5),
    ]
    got = [
        det(1, 1, 4.25, 4, 20, 20, 0.91),
        det(1, 1, 30, 30.25, 20, 20, 0.8),  # both paired, 0.25 px / 0.01
        det(2, 1, 8, 8, 30, 30, 0.6),  # paired exactly
        det(2, 2, 40, 40, 10, 10, 0.5),  # far off: IoU 0
        det(1, 3, 4, 4, 20, 20, 0.4),
    ]  # a class the reference lacks
    p = pair_detections(got, ref)
    print(p)
    assert (p["paired"], p["only_here"], p["only_in_reference"]) == (3, 2, 2)
    assert p["box_abs_diff_px"]["max"] == pytest.approx(0.25) and p["score_abs_diff"]["max"] == pytest.approx(0.01)
    assert p["mask_iou"]["min"] == 1.0  # the 0.25 px shifts do not move the integer masks
    empty = pair_detections([], ref)
    assert (empty["paired"], empty["only_in_reference"], empty["box_abs_diff_px"]) == (0, 5, {})
    assert pair_detections(got, [])["only_here"] == 5
