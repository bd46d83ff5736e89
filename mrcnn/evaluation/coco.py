"""COCO evaluation (bbox + segm AP via pycocotools) for any predictor.

A predictor is a callable `list[uint8 Tensor [3,H,W]] -> list[dict]` returning, per image, torchvision-format
detections in original pixels: boxes [n,4] xyxy, scores [n], labels [n] (contiguous, 1..C), masks [n,1,H,W]
probabilities. The PyTorch `Predictor` and every exported artifact's predictor (mrcnn.deploy.load_artifact) fit.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mrcnn.errors import MrcnnError
from mrcnn.progress import reporter

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detections_to_coco(
    result: dict, image_id: int, cat_ids: Sequence[int], mask_threshold: float = 0.5, rles: list | None = None
) -> list[dict]:
    """One image's detections -> COCO result entries (bbox xywh, RLE segmentation: of the pasted `masks` at
    `mask_threshold`, or `rles` already encoded, one per detection)."""
    import pycocotools.mask as mask_util

    boxes = result["boxes"].detach().float().cpu()
    scores = result["scores"].detach().float().cpu().tolist()
    labels = result["labels"].detach().cpu().tolist()
    if rles is None and "masks" in result and result["masks"].numel() > 0:
        m = (result["masks"].detach().cpu()[:, 0] > mask_threshold).numpy().astype(np.uint8)
        rles = mask_util.encode(np.asfortranarray(m.transpose(1, 2, 0)))
    out = []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist() if len(boxes) else []
    for k, (b, s, lab) in enumerate(zip(xywh, scores, labels, strict=True)):
        if lab < 1 or lab > len(cat_ids):
            continue
        entry = {
            "image_id": int(image_id),
            "category_id": int(cat_ids[lab - 1]),
            "bbox": [round(float(v), 3) for v in b],
            "score": round(float(s), 5),
        }
        if rles is not None:
            rle = rles[k]
            entry["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append(entry)
    return out


def coco_eval(coco_gt, results: list[dict], image_ids: Sequence[int], iou_types=("bbox", "segm")) -> dict:
    """Run COCOeval; returns {"bbox": {"AP":..,...}, "segm": {...}} (AP = -1 where undefined)."""
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        if iou_type == "segm" and results and "segmentation" not in results[0]:
            continue
        if not results:
            metrics[iou_type] = {k: 0.0 for k in STAT_NAMES}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(results)
            ev = COCOeval(coco_gt, coco_dt, iou_type)
            ev.params.imgIds = list(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics[iou_type] = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats[:6], strict=True)}
        metrics.setdefault("per_class", {})[iou_type] = per_class_ap(ev, coco_gt)
    return metrics


def per_class_ap(ev, coco_gt) -> dict[str, float]:
    """AP (IoU 0.50:0.95, all areas, 100 detections) of each category from an accumulated COCOeval, by name, as
    COCOeval's summary computes the mean over categories (-1 where a class has no ground truth)."""
    precision = ev.eval["precision"]  # [T IoUs, R recalls, K categories, A areas, M max-dets]
    out = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[str(coco_gt.cats[cat_id]["name"])] = float(p.mean()) if p.size else -1.0
    return out


def category_ids_for(class_names: Sequence[str], dataset, what: str = "the model") -> list[int]:
    """The dataset's category id of each of the model's classes (label k -> result k - 1), matched by name: two
    exports of one dataset may number (and so order) their categories differently, and matching by position would
    then score a class's detections against another class's ground truth. Other classes: one MrcnnError."""
    names, data_names = list(class_names), list(dataset.class_names)
    if names == data_names:
        return list(dataset.cat_ids)
    where = getattr(dataset, "ann_file", "the dataset")
    missing, extra = [n for n in names if n not in data_names], [n for n in data_names if n not in names]
    if missing or extra or len(set(names)) != len(names) or len(set(data_names)) != len(data_names):

        def listed(xs: list[str]) -> str:
            return ", ".join(xs[:6]) + (", ..." if len(xs) > 6 else "")

        detail = (
            "; ".join(
                p
                for p in (
                    f"only in {what}: {listed(missing)}" if missing else "",
                    f"only in the data: {listed(extra)}" if extra else "",
                )
                if p
            )
            or "class names repeat"
        )
        raise MrcnnError(f"{where}: its classes are not {what}'s ({detail})")
    return [dataset.cat_ids[data_names.index(n)] for n in names]


def match_classes(class_names: Sequence[str], dataset, what: str, log: Callable[[str], None]) -> list[int]:
    """`category_ids_for`, saying so when the names matched in another order than the dataset's (the check made
    before a training run or an evaluation starts)."""
    cat_ids = category_ids_for(class_names, dataset, what)
    if cat_ids != list(dataset.cat_ids):
        log(
            f"classes matched by name: {getattr(dataset, 'ann_file', 'the dataset')} numbers its categories in "
            f"another order than {what}"
        )
    return cat_ids


def evaluate(
    predictor: Callable[[list[torch.Tensor]], list[dict]],
    dataset,
    batch_size: int = 2,
    log: Callable[[str], None] = print,
    progress: bool = True,
    max_images: int = 0,
    distributed: bool = False,
    cat_ids: Sequence[int] | None = None,
) -> tuple[dict, list[dict]]:
    """Predict every image of a `CocoDetection` dataset and evaluate. Returns (metrics, coco results).

    The images (the first `max_images`) are batched landscape first, then portrait (`aspect_groups`), so a batch
    seldom pads a landscape and a portrait image to a square. Only images are loaded (no target masks); an image that
    cannot be read is warned about by the dataset and left out of the evaluation. `cat_ids`: the dataset's category
    id of each of the predictor's labels (label k -> cat_ids[k - 1]; from `match_classes`, by name); None: label k
    is the dataset's k-th category.

    `distributed` (in a joined torch.distributed group of W > 1 ranks): rank r predicts batches r, r + W, ... of the
    same batching, the results are gathered on rank 0, which runs COCOeval, and every rank returns its metrics (the
    results: all of them on rank 0, none elsewhere). Each image is predicted in the batch it has in one process, so
    the metrics equal a single process's."""
    import torch.distributed as dist

    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed and dist.is_initialized() else (0, 1)
    cat_ids = list(dataset.cat_ids) if cat_ids is None else list(cat_ids)
    n = len(dataset) if not max_images else min(max_images, len(dataset))
    if n == 0:
        raise MrcnnError(f"{getattr(dataset, 'ann_file', 'the dataset')}: no images to evaluate")
    order = list(range(n))
    if batch_size > 1 and hasattr(dataset, "aspect_groups"):
        groups = dataset.aspect_groups()
        order.sort(key=lambda i: groups[i])
    batches = [order[start : start + batch_size] for start in range(0, n, batch_size)][rank::world]
    results: list[dict] = []
    image_ids: list[int] = []
    total = sum(len(b) for b in batches)
    # plain lines (off a terminal) at quarters: an evaluation inside a training log is a few lines, not twenty
    with reporter(total, "eval", log=log, enabled=progress, every=max(1, total // 4)) as rep, torch.inference_mode():
        done = 0
        for indices in batches:
            batch = [(dataset.ids[i], dataset.load_image(i)) for i in indices]
            batch = [(iid, img) for iid, img in batch if img is not None]  # unreadable: warned about, not evaluated
            preds = predictor([img for _, img in batch]) if batch else []
            for (iid, _), pred in zip(batch, preds, strict=True):
                image_ids.append(int(iid))
                results.extend(detections_to_coco(pred, iid, cat_ids))
            done += len(indices)
            rep.update(done)
    if world > 1:
        parts = [None] * world if rank == 0 else None
        dist.gather_object((results, image_ids), parts, dst=0)
        results, image_ids = (
            ([r for p in parts for r in p[0]], [i for p in parts for i in p[1]]) if rank == 0 else ([], [])
        )
    if rank == 0 and len(set(image_ids)) < n:  # every rank's unreadable images, warned about where they were read
        log(f"evaluation left out {n - len(set(image_ids))} of {n} images (unreadable files)")
    metrics = coco_eval(dataset.coco, results, sorted(set(image_ids))) if rank == 0 else None
    if metrics is not None:
        metrics["images"] = len(set(image_ids))  # evaluated (readable) images
    if world > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics, results


def format_table(metrics: dict) -> str:
    """The COCO table: rows bbox / segm, columns AP AP50 AP75 APs APm APl."""
    lines = [f"{'':6}" + "".join(f"{k:>8}" for k in STAT_NAMES)]
    for iou_type in ("bbox", "segm"):
        if iou_type in metrics:
            lines.append(f"{iou_type:6}" + "".join(f"{metrics[iou_type][k]:8.4f}" for k in STAT_NAMES))
    return "\n".join(lines)


def format_per_class(metrics: dict) -> str:
    """Per-class AP: a row per class, columns bbox / segm (`-` where a class has no ground truth)."""
    per = metrics.get("per_class") or {}
    types = [t for t in ("bbox", "segm") if t in per]
    if not types:
        return ""
    names = list(per[types[0]])
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':<{width}}" + "".join(f"{t + ' AP':>10}" for t in types)]
    for n in names:
        lines.append(f"{n:<{width}}" + "".join(f"{per[t][n]:10.4f}" if per[t][n] >= 0 else f"{'-':>10}" for t in types))
    return "\n".join(lines)
