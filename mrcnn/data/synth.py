"""Deterministic synthetic "shapes" dataset in COCO 2017 layout (`mrcnn data synth OUT`).

    OUT/train2017/000000000001.png ...       RGB PNG images (no timestamps: byte-identical for a seed)
    OUT/val2017/...
    OUT/annotations/instances_train2017.json COCO instances json (sort_keys, fixed separators)
    OUT/annotations/instances_val2017.json
    OUT/synth.json                           marker: generator, parameters, summary (lets a rerun replace OUT)

Five classes (ids 1..5: circle, square, triangle, star, ellipse), 1-6 instances per image on textured backgrounds,
later shapes occlude earlier ones and every mask is the VISIBLE part. Most instances are polygons traced from the
visible mask at pixel-corner coordinates (pycocotools rasterises them back to the same pixels); instances whose
visible part has several components or holes, ~20% chosen at random, and any polygon that would not reproduce the
mask are uncompressed RLE. Every 15th image (index % 15 == 3) has an iscrowd=1 region (a cluster of small shapes).

Each image is rendered from its own generator seeded by (seed, split, index) (`render_sample`), so an image does not
depend on how many images precede it and the test can re-render the drawn masks.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mrcnn.data.segmentation import segmentation_mask
from mrcnn.errors import MrcnnError

CLASS_NAMES = ["circle", "square", "triangle", "star", "ellipse"]
CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)]
MARKER = "synth.json"
MIN_VISIBLE_AREA = 30
RLE_FRACTION = 0.2
CROWD_EVERY, CROWD_PHASE = 15, 3
_SPLIT_CODE = {"train2017": 1, "val2017": 2}
_JSON_KW = dict(sort_keys=True, separators=(",", ":"))
_FIXED_DATE = "2024-01-01 00:00:00"


# -- geometry ---------------------------------------------------------------------------------------------------


def _shape_polygon(kind: int, cx: float, cy: float, s: float, rot: float, rng: np.random.Generator) -> list | None:
    """Vertices (x, y) of shape `kind` (1..5) with extent ~s; None for the circle (drawn as an ellipse)."""
    r = s / 2.0
    if kind == 1:
        return None
    if kind == 2:  # square, side 0.75 s
        radii, angles = np.full(4, 0.75 * s / math.sqrt(2)), np.arange(4) * (math.pi / 2) + math.pi / 4
    elif kind == 3:  # equilateral triangle, circumradius r
        radii, angles = np.full(3, r), np.arange(3) * (2 * math.pi / 3) - math.pi / 2
    elif kind == 4:  # five-pointed star
        inner = r * rng.uniform(0.42, 0.55)
        radii = np.where(np.arange(10) % 2 == 0, r, inner)
        angles = np.arange(10) * (math.pi / 5) - math.pi / 2
    else:  # ellipse, semi-axes r and 0.35..0.7 r
        b = r * rng.uniform(0.35, 0.7)
        t = np.arange(72) * (2 * math.pi / 72)
        radii = r * b / np.sqrt((b * np.cos(t)) ** 2 + (r * np.sin(t)) ** 2)
        angles = t
    a = angles + rot
    return [(float(cx + q * math.cos(p)), float(cy + q * math.sin(p))) for q, p in zip(radii, a, strict=True)]


def _draw_mask(kind: int, cx: float, cy: float, s: float, rot: float, h: int, w: int, rng) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    poly = _shape_polygon(kind, cx, cy, s, rot, rng)
    if poly is None:
        r = s / 2.0
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        d.polygon(poly, fill=1)
    m = np.asarray(im, dtype=bool)
    # drop pixels without a 4-neighbour (PIL leaves diagonal-only specks at sharp tips)
    p = np.pad(m, 1)
    return m & (p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:])


# -- background -------------------------------------------------------------------------------------------------


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    th = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(th) + yy * math.sin(th)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    kind = int(rng.integers(0, 4))
    if kind == 0:  # stripes
        period, phi, amp = rng.uniform(6, 40), rng.uniform(0, 2 * math.pi), rng.uniform(10, 40)
        u = xx * math.cos(phi) + yy * math.sin(phi)
        bg += (amp * np.sin(2 * math.pi * u / period))[..., None] * rng.uniform(0.3, 1.0, 3)[None, None, :]
    elif kind == 1:  # checkerboard
        cell, amp = int(rng.integers(6, 33)), rng.uniform(8, 30)
        bg += (amp * (((xx // cell + yy // cell) % 2) * 2 - 1))[..., None]
    elif kind == 2:  # smooth blobs: low-resolution noise upsampled
        gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        low = rng.uniform(-35, 35, (gh, gw, 3)).astype(np.float32)
        up = Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        bg += np.asarray(up, np.float32) - 128
    return bg


# -- mask encoding ----------------------------------------------------------------------------------------------


def trace_polygon(mask: np.ndarray) -> list[float] | None:
    """Boundary of a binary mask as one polygon [x0, y0, x1, y1, ...] at pixel-corner coordinates.

    Follows the pixel edges between foreground and background (foreground on the right, i.e. clockwise on screen),
    turning right at diagonal "saddle" corners (4-connected foreground). Returns None when the boundary is not a
    single loop (several components or holes) or the mask is empty: such masks need RLE.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    y0, x0 = int(ys.min()), int(xs.min())
    crop = mask[y0 : ys.max() + 1, x0 : xs.max() + 1].astype(bool)
    p = np.pad(crop, 1)
    fg = p[1:-1, 1:-1]
    W1 = crop.shape[1] + 1
    starts, ends, dirs = [], [], []
    # dir 0: top edge, +x; 1: right edge, +y; 2: bottom edge, -x; 3: left edge, -y
    for d, (nb, sx, sy, ex, ey) in enumerate(
        (
            (p[:-2, 1:-1], 0, 0, 1, 0),
            (p[1:-1, 2:], 1, 0, 1, 1),
            (p[2:, 1:-1], 1, 1, 0, 1),
            (p[1:-1, :-2], 0, 1, 0, 0),
        )
    ):
        r, c = np.nonzero(fg & ~nb)
        starts.append((r + sy) * W1 + (c + sx))
        ends.append((r + ey) * W1 + (c + ex))
        dirs.append(np.full(r.size, d))
    start, end, dr = np.concatenate(starts), np.concatenate(ends), np.concatenate(dirs)
    keys = start * 4 + dr
    order = np.argsort(keys)
    skeys = keys[order]
    nxt = np.full(keys.size, -1)
    # direction offsets 3 (left turn), 0 (straight), 1 (right turn): later ones win, so right turn is preferred
    for off in (3, 0, 1):
        want = end * 4 + (dr + off) % 4
        pos = np.clip(np.searchsorted(skeys, want), 0, skeys.size - 1)
        found = skeys[pos] == want
        nxt[found] = order[pos[found]]
    # walk the loop from edge 0; a single loop visits every edge
    loop = [0]
    e = int(nxt[0])
    nxt_l = nxt.tolist()
    while e != 0 and e >= 0 and len(loop) <= keys.size:
        loop.append(e)
        e = nxt_l[e]
    if e != 0 or len(loop) != keys.size:
        return None
    loop_a = np.asarray(loop)
    d_loop = dr[loop_a]
    corner = d_loop != np.roll(d_loop, 1)
    v = start[loop_a[corner]]
    px, py = v % W1 + x0, v // W1 + y0
    return np.stack([px, py], 1).reshape(-1).astype(float).tolist()


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE {"counts": [...], "size": [h, w]} (column-major runs, starting with zeros)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": [int(c) for c in counts], "size": [int(h), int(w)]}


def _decode(segm, h: int, w: int) -> np.ndarray:
    return segmentation_mask(segm, h, w).astype(bool)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / u if u else 1.0


# -- one image --------------------------------------------------------------------------------------------------


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), _SPLIT_CODE[split], int(index)])))


def render_sample(seed: int, split: str, index: int, size: int = 256) -> tuple[np.ndarray, list[dict]]:
    """Render image `index` of `split`: (uint8 [H,W,3] image, instances).

    Each instance: {"category_id", "mask" (bool [H,W], the visible, drawn mask), "iscrowd", "segmentation",
    "area", "bbox"}, in annotation order (generate_synthetic gives them consecutive ids in this order).
    """
    rng = _image_rng(seed, split, index)
    w = int(size)
    h = int(size) if rng.random() < 0.5 else int(round(size * 0.75))
    img = _background(h, w, rng)
    side = min(h, w)
    objs: list[tuple[int, np.ndarray, int]] = []  # (category, full mask, iscrowd)

    def pick_colour(cx: float, cy: float) -> np.ndarray:
        local = img[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))]
        col = rng.uniform(0, 255, 3)
        for _ in range(10):
            if np.linalg.norm(col - local) > 80:
                break
            col = rng.uniform(0, 255, 3)
        return col

    def paint(m: np.ndarray, col: np.ndarray) -> None:
        ys, xs = np.nonzero(m)
        if ys.size == 0:
            return
        shade = rng.uniform(-20, 20) * (xs - xs.mean()) / max(float(np.ptp(xs)), 1.0)
        img[ys, xs] = col[None, :] + shade[:, None]

    # 1. optional crowd: a cluster of small shapes of one class, drawn first (instances may occlude it)
    if index % CROWD_EVERY == CROWD_PHASE:
        kind = int(rng.integers(1, 6))
        rw, rh = rng.uniform(0.3, 0.5) * w, rng.uniform(0.3, 0.5) * h
        ox, oy = rng.uniform(0, w - rw), rng.uniform(0, h - rh)
        col = pick_colour(ox + rw / 2, oy + rh / 2)
        crowd = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(8, 21))):
            s = rng.uniform(0.04, 0.07) * side
            crowd |= _draw_mask(
                kind, ox + rng.uniform(0, rw), oy + rng.uniform(0, rh), s, rng.uniform(0, 2 * math.pi), h, w, rng
            )
        paint(crowd, col)
        objs.append((kind, crowd, 1))
    # 2. 1-6 instances, later ones on top
    for _ in range(int(rng.integers(1, 7))):
        kind = int(rng.integers(1, 6))
        s = rng.uniform(0.12, 0.45) * side
        m = 0.3 * s
        cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
        rot = rng.uniform(0, 2 * math.pi)
        full = _draw_mask(kind, cx, cy, s, rot, h, w, rng)
        paint(full, pick_colour(cx, cy))
        objs.append((kind, full, 0))
    # 3. sensor noise over everything
    img += rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # 4. visible masks (back to front) and their encodings
    cover = np.zeros((h, w), bool)
    visible = [None] * len(objs)
    for k in range(len(objs) - 1, -1, -1):
        visible[k] = objs[k][1] & ~cover
        cover |= objs[k][1]
    instances = []
    for (cat, _, crowd), vis in zip(objs, visible, strict=True):
        want_rle = rng.random() < RLE_FRACTION  # drawn for every object: keeps the stream independent of masks
        if np.count_nonzero(vis) < MIN_VISIBLE_AREA:
            continue
        segm = None
        if not crowd and not want_rle:
            poly = trace_polygon(vis)
            if poly is not None and len(poly) >= 6 and _iou(_decode([poly], h, w), vis) >= 0.99:
                segm = [poly]
        if segm is None:
            segm = rle_uncompressed(vis)
        dec = _decode(segm, h, w)
        ys, xs = np.nonzero(dec)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        instances.append(
            {
                "category_id": cat,
                "mask": vis,
                "iscrowd": crowd,
                "segmentation": segm,
                "area": int(dec.sum()),
                "bbox": bbox,
            }
        )
    return image, instances


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


# -- the dataset ------------------------------------------------------------------------------------------------


def _is_synth_output(path: Path) -> bool:
    try:
        return json.loads((path / MARKER).read_text()).get("generator") == "mrcnn.data.synth"
    except (OSError, ValueError, AttributeError):
        return False


def generate_synthetic(
    out: str | Path,
    n_train: int = 200,
    n_val: int = 50,
    size: int = 256,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write the dataset to `out` (atomically: built in a sibling temp folder, then renamed).

    `out` must not exist, be empty, or be a previous synth output (which is replaced). `progress(done, total)` is
    called after each image. Returns {"path", "seed", "size", "train": {...}, "val": {...}} with per-split counts of
    images, instances, polygons, rle and crowd annotations.
    """
    out = Path(out)
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise MrcnnError(f"need at least one image (train={n_train}, val={n_val})")
    if size < 32:
        raise MrcnnError(f"image size {size} too small (minimum 32)")
    if out.exists():
        if not out.is_dir():
            raise MrcnnError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not _is_synth_output(out):
            raise MrcnnError(f"{out} is not empty and not a previous synthetic dataset; choose another folder")
    from mrcnn.io import check_writable_dir

    check_writable_dir(out.resolve().parent, f"{out}: its folder")
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=parent))
    total, done = n_train + n_val, 0
    summary: dict = {"path": str(out), "seed": int(seed), "size": int(size)}
    try:
        (tmp / "annotations").mkdir()
        for split, n in (("train2017", n_train), ("val2017", n_val)):
            (tmp / split).mkdir()
            images, anns = [], []
            counts = {"images": 0, "instances": 0, "polygons": 0, "rle": 0, "crowd": 0}
            for i in range(n):
                image, insts = render_sample(seed, split, i, size)
                img_id = i + 1
                fname = f"{img_id:012d}.png"
                (tmp / split / fname).write_bytes(_png_bytes(image))
                h, w = image.shape[:2]
                images.append(
                    {
                        "id": img_id,
                        "file_name": fname,
                        "height": h,
                        "width": w,
                        "license": 1,
                        "date_captured": _FIXED_DATE,
                    }
                )
                for inst in insts:
                    anns.append(
                        {
                            "id": len(anns) + 1,
                            "image_id": img_id,
                            "category_id": inst["category_id"],
                            "iscrowd": inst["iscrowd"],
                            "segmentation": inst["segmentation"],
                            "area": inst["area"],
                            "bbox": inst["bbox"],
                        }
                    )
                    if inst["iscrowd"]:
                        counts["crowd"] += 1
                    else:
                        counts["instances"] += 1
                        counts["polygons" if isinstance(inst["segmentation"], list) else "rle"] += 1
                counts["images"] += 1
                done += 1
                if progress is not None:
                    progress(done, total)
            doc = {
                "info": {
                    "description": "mrcnn synthetic shapes",
                    "version": "1.0",
                    "year": 2024,
                    "contributor": "mrcnn.data.synth",
                    "date_created": _FIXED_DATE,
                    "seed": int(seed),
                },
                "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
                "images": images,
                "annotations": anns,
                "categories": CATEGORIES,
            }
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc, **_JSON_KW))
            summary[split.replace("2017", "")] = counts
        marker = {
            "generator": "mrcnn.data.synth",
            "version": 1,
            "seed": int(seed),
            "size": int(size),
            "n_train": int(n_train),
            "n_val": int(n_val),
            "classes": CLASS_NAMES,
            "train": summary["train"],
            "val": summary["val"],
        }
        (tmp / MARKER).write_text(json.dumps(marker, **_JSON_KW) + "\n")
        # swap in: an existing previous output is moved aside first, then removed
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=out.name + ".old-", dir=parent))
            os.rmdir(old)
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
