"""`mrcnn validate`: an artifact's COCO accuracy against a reference model (by default the checkpoint an ONNX file
was exported from) on the same images, detection by detection, with a gate on the AP drop (a release or CI check:
mmdeploy's test after conversion, polygraphy's output comparison, for a detector).

Detections are paired per image and class: each reference detection, highest score first, takes the unpaired
artifact detection of the same class with the highest box IoU, if that IoU is >= 0.5 (COCOeval's greedy matching,
with the reference as ground truth). Over the pairs: box coordinate and score differences and mask IoU; the
detections left unpaired on either side are what a conversion lost or gained (users' "few detections after
conversion"). The numbers are those of the COCO results (boxes rounded to 1e-3 px, scores to 1e-5).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from mrcnn.evaluation.coco import STAT_NAMES


def pair_detections(results: list[dict], reference: list[dict], iou: float = 0.5) -> dict:
    """Detection-level agreement of two COCO result lists (see the module docstring)."""
    import pycocotools.mask as mask_util

    groups: dict[tuple[int, int], tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, dets in ((0, results), (1, reference)):
        for d in dets:
            groups[(int(d["image_id"]), int(d["category_id"]))][side].append(d)
    box_diff, score_diff, mask_iou = [], [], []
    paired = 0
    for art, ref in groups.values():
        if not art or not ref:
            continue
        ref = sorted(ref, key=lambda d: -d["score"])
        ious = mask_util.iou([d["bbox"] for d in art], [d["bbox"] for d in ref], [0] * len(ref))  # [A, R]
        ious = np.asarray(ious, dtype=np.float64).reshape(len(art), len(ref))
        free = np.ones(len(art), dtype=bool)
        for r, d in enumerate(ref):
            col = np.where(free, ious[:, r], -1.0)
            a = int(col.argmax())
            if col[a] < iou:
                continue
            free[a] = False
            paired += 1
            x = np.asarray(art[a]["bbox"], dtype=np.float64)
            y = np.asarray(d["bbox"], dtype=np.float64)
            box_diff.append(float(np.abs(np.r_[x[:2], x[:2] + x[2:]] - np.r_[y[:2], y[:2] + y[2:]]).max()))
            score_diff.append(abs(float(art[a]["score"]) - float(d["score"])))
            if "segmentation" in art[a] and "segmentation" in d:
                ma, mr = art[a]["segmentation"], d["segmentation"]
                empty = mask_util.area([ma, mr])
                # two empty masks (a box below a pixel's width binarises to nothing) agree: IoU 1, not pycocotools' 0
                mask_iou.append(
                    1.0 if not empty.any() else float(np.asarray(mask_util.iou([ma], [mr], [0])).reshape(-1)[0])
                )

    def stats(v: list[float]) -> dict:
        if not v:
            return {}
        a = np.asarray(v)
        return {
            "max": float(a.max()),
            "p99": float(np.percentile(a, 99)),
            "median": float(np.median(a)),
            "min": float(a.min()),
            "mean": float(a.mean()),
        }

    return {
        "detections": len(results),
        "reference_detections": len(reference),
        "paired": paired,
        "only_here": len(results) - paired,
        "only_in_reference": len(reference) - paired,
        "box_abs_diff_px": stats(box_diff),
        "score_abs_diff": stats(score_diff),
        "mask_iou": stats(mask_iou),
    }


def ap_drops(metrics: dict, reference: dict) -> dict:
    """reference - artifact, for every COCO statistic of bbox and segm (positive: the artifact is worse)."""
    return {
        t: {k: float(reference[t][k]) - float(metrics[t][k]) for k in STAT_NAMES}
        for t in ("bbox", "segm")
        if t in metrics and t in reference
    }


def gate(drops: dict, max_ap_drop: float) -> list[str]:
    """The AP (bbox, segm) drops above `max_ap_drop`, as phrases; empty: passed."""
    return [f"{t} AP dropped by {d['AP']:.4f}" for t, d in drops.items() if d["AP"] > max_ap_drop + 1e-12]


def format_pairs(p: dict) -> str:
    """Two lines: how many detections pair up, and how close the pairs are."""
    n = max(p["reference_detections"], 1)
    lines = [
        f"detections: {p['detections']} here, {p['reference_detections']} in the reference; paired "
        f"{p['paired']} ({100.0 * p['paired'] / n:.1f}% of the reference's) at box IoU >= 0.5 and the same "
        f"class; {p['only_here']} only here, {p['only_in_reference']} only in the reference"
    ]
    if p["paired"]:
        b, s = p["box_abs_diff_px"], p["score_abs_diff"]
        line = (
            f"paired: box |diff| max {b['max']:.3g} px (p99 {b['p99']:.3g}), score |diff| max {s['max']:.3g} "
            f"(p99 {s['p99']:.3g})"
        )
        if p["mask_iou"]:
            m = p["mask_iou"]
            line += f", mask IoU min {m['min']:.4f} (mean {m['mean']:.4f})"
        lines.append(line)
    return "\n".join(lines)
