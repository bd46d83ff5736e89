"""COCO instances dataset (COCO 2017 layout: ROOT/annotations/instances_SPLIT.json, ROOT/SPLIT/*.jpg).

Shapes: N instances of one image; H, W its original size.

Bad data is found when the dataset is built, where it can be: an annotation that points to an unknown image or
category, has a zero-area / degenerate box, a broken polygon or RLE; an image entry whose file is missing. Each is
dropped with one warning line (via `logger`) and counted in `skipped`; with `strict=True` the first one raises
MrcnnError instead. A corrupt image file (present, but PIL cannot decode it) or one whose size differs from its json
entry is found in `__getitem__`: non-strict, it is warned about once, counted, remembered, and the next good sample
(index i+1, i+2, ... wrapping) is returned in its place (its own `index`); strict, MrcnnError names the file.
Counters updated inside DataLoader worker processes stay in those processes.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from mrcnn.errors import MrcnnError


def _stderr_logger(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def load_coco_json(path: str | Path) -> dict:
    """Read and shape-check a COCO instances json; any problem -> MrcnnError with one line naming the file."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise MrcnnError(f"annotation file not found: {path}")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except json.JSONDecodeError as e:
        raise MrcnnError(f"{name}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise MrcnnError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise MrcnnError(f"{name}: cannot read ({e.strerror or e})") from None
    if not isinstance(doc, dict):
        raise MrcnnError(f"{name}: not a COCO instances file (top level is {type(doc).__name__}, expected object)")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise MrcnnError(f"{name}: not a COCO instances file (missing '{key}')")
        if not isinstance(doc[key], list):
            raise MrcnnError(f"{name}: '{key}' must be a list, got {type(doc[key]).__name__}")
    return doc


def _finite_numbers(xs) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in xs)


def _segm_problem(segm, h: int, w: int) -> str | None:
    """Reason a segmentation cannot be decoded, or None."""
    if isinstance(segm, list):
        if not segm:
            return "broken polygon (empty)"
        for poly in segm:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not _finite_numbers(poly):
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                return f"broken polygon ({n} coordinates; need an even count >= 6 of finite numbers)"
        return None
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and list(size) == [h, w]):
            return f"bad RLE (size {size} differs from image {h}x{w})"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != h * w:
                return "bad RLE (counts must be non-negative integers summing to height*width)"
            return None
        if isinstance(counts, (str, bytes)):
            return None
        return "bad RLE (counts must be a list or a string)"
    return "missing segmentation" if segm is None else f"bad segmentation ({type(segm).__name__})"


class CocoDetection(torch.utils.data.Dataset):
    """COCO instances for training and evaluation (see module doc for the bad-data rules).

    Item i -> (image uint8 [3,H,W] RGB, target) with target: boxes float32 [N,4] xyxy pixels, labels int64 [N]
    (contiguous, 1..C; 0 is background), masks uint8 [N,H,W] (== pycocotools annToMask), image_id int,
    orig_size (H, W), index i. iscrowd=1 annotations are not targets (they stay in `coco` for evaluation).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train2017",
        *,
        ann_file: str | Path | None = None,
        img_dir: str | Path | None = None,
        strict: bool = False,
        logger: Callable[[str], None] | None = None,
    ) -> None:
        root = Path(root)
        self.ann_file = Path(ann_file) if ann_file is not None else root / "annotations" / f"instances_{split}.json"
        self.img_dir = Path(img_dir) if img_dir is not None else root / split
        self.strict = strict
        self.logger = logger or _stderr_logger
        self.skipped: collections.Counter = collections.Counter()
        self._bad_files: set[int] = set()
        name = self.ann_file.name

        doc = load_coco_json(self.ann_file)
        if not self.img_dir.is_dir():
            raise MrcnnError(f"image folder not found: {self.img_dir}")

        # 1. categories -> contiguous labels
        cats = {}
        for c in doc["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise MrcnnError(f"{name}: bad category entry {str(c)[:60]}")
            if c["id"] in cats:
                raise MrcnnError(f"{name}: duplicate category id {c['id']}")
            cats[c["id"]] = c
        if not cats:
            raise MrcnnError(f"{name}: no categories")
        self.cat_ids: list[int] = sorted(cats)
        self.class_names: list[str] = [str(cats[i]["name"]) for i in self.cat_ids]
        self.cat_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}

        # 2. images: entry sanity and file presence
        images: dict[int, dict] = {}
        for k, im in enumerate(doc["images"]):
            iid = im.get("id") if isinstance(im, dict) else None
            if not isinstance(iid, int):
                self._bad(f"{name}: image entry #{k}: no integer id", "bad image entry")
                continue
            if iid in images:
                self._bad(f"{name}: image id {iid}: duplicate image id", "duplicate image")
                continue
            h, w, fn = im.get("height"), im.get("width"), im.get("file_name")
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and isinstance(fn, str)):
                self._bad(f"{name}: image id {iid}: needs file_name, height and width", "bad image entry")
                continue
            path = self.img_dir / fn
            if not os.path.exists(path):
                self._bad(f"{path}: missing image file (image id {iid})", "missing image")
                continue
            images[iid] = im

        # 3. annotations
        dropped_ids = {im.get("id") for im in doc["images"] if isinstance(im, dict)} - set(images)
        anns = []
        for k, a in enumerate(doc["annotations"]):
            aid = a.get("id", f"#{k}") if isinstance(a, dict) else f"#{k}"
            where = f"{name}: annotation id {aid}"
            if not isinstance(a, dict):
                self._bad(f"{where}: not an object", "bad annotation")
                continue
            iid = a.get("image_id")
            if not isinstance(iid, int) or iid not in images:
                if isinstance(iid, int) and iid in dropped_ids:
                    continue  # its image was dropped (and reported) above
                self._bad(f"{where}: unknown image id {iid}", "unknown image")
                continue
            where = f"{where} (image {iid})"
            cid = a.get("category_id")
            if not isinstance(cid, int) or cid not in cats:
                self._bad(f"{where}: unknown category id {a.get('category_id')}", "unknown category")
                continue
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and _finite_numbers(bbox)):
                self._bad(f"{where}: bad box {bbox}", "bad box")
                continue
            bw, bh = bbox[2], bbox[3]
            area = a.get("area", bw * bh)
            if not _finite_numbers([area]) or area <= 0 or bw == 0 or bh == 0:
                self._bad(f"{where}: zero-area box (w={bw} h={bh} area={area})", "zero area")
                continue
            if bw <= 1 or bh <= 1:
                self._bad(f"{where}: degenerate box (w={bw} h={bh})", "degenerate box")
                continue
            img = images[iid]
            problem = _segm_problem(a.get("segmentation"), img["height"], img["width"])
            if problem is not None:
                reason = problem.split(" (")[0]
                self._bad(f"{where}: {problem}", reason)
                continue
            anns.append(a)

        # 4. the clean COCO object (for evaluation) and the kept image ids
        clean = dict(doc)
        clean["images"] = [images[i] for i in images]
        clean["annotations"] = anns
        self.coco = COCO()
        self.coco.dataset = clean
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.ids: list[int] = sorted(images)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn or forkserver (Python 3.14's default on Linux) get a pickled copy; the
        # logger may be a closure, which does not pickle: there they warn on stderr
        state = dict(self.__dict__)
        state["logger"] = _stderr_logger
        return state

    # -- bad data ---------------------------------------------------------------------------------------------
    def _bad(self, msg: str, reason: str) -> None:
        if self.strict:
            raise MrcnnError(f"{msg} (strict mode)")
        self.skipped[reason] += 1
        self.logger(f"{msg}: skipped")

    def report(self) -> str:
        """One line, e.g. 'skipped: 2 missing image, 1 degenerate box'; '' when nothing was skipped."""
        if not self.skipped:
            return ""
        return "skipped: " + ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items()))

    # -- items ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def aspect_groups(self) -> list[int]:
        """Per item: 0 when its image is wider than high, else 1 (the seed's aspect-ratio grouping: bins [1] of h/w),
        from the json sizes, without decoding. Batches drawn within one group need less padding."""
        return [int(self.coco.imgs[i]["height"] >= self.coco.imgs[i]["width"]) for i in self.ids]

    def image_path(self, i: int) -> Path:
        return self.img_dir / self.coco.imgs[self.ids[i]]["file_name"]

    def _load_image(self, i: int) -> torch.Tensor | None:
        info = self.coco.imgs[self.ids[i]]
        path = self.img_dir / info["file_name"]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                arr = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            problem, reason = f"corrupt image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})", "corrupt image"
        else:
            if arr.shape[:2] == (info["height"], info["width"]):
                return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
            problem = f"image size {arr.shape[1]}x{arr.shape[0]} differs from annotation {info['width']}x{info['height']}"
            reason = "image size mismatch"
        if self.strict:
            raise MrcnnError(f"{path}: {problem}")
        if i not in self._bad_files:
            self._bad_files.add(i)
            self.skipped[reason] += 1
            self.logger(f"{path}: {problem}: skipped, using the next image")
        return None

    def __getitem__(self, i: int):
        n = len(self.ids)
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        for k in range(n):
            j = (i + k) % n
            if j in self._bad_files:
                continue
            image = self._load_image(j)
            if image is not None:
                return image, self._target(j)
        raise MrcnnError(f"{self.img_dir}: no readable image in the dataset")

    def _target(self, i: int) -> dict:
        iid = self.ids[i]
        info = self.coco.imgs[iid]
        h, w = int(info["height"]), int(info["width"])
        anns = [a for a in self.coco.imgToAnns.get(iid, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        if anns:
            masks = torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns])).to(torch.uint8)
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        return {"boxes": boxes, "labels": labels, "masks": masks, "image_id": int(iid), "orig_size": (h, w),
                "index": int(i)}
