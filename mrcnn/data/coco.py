"""COCO instances dataset (COCO 2017 layout: ROOT/annotations/instances_SPLIT.json, ROOT/SPLIT/*.jpg).

Shapes: N instances of one image; H, W its original size.

Bad data is found when the dataset is built, where it can be: an annotation that points to an unknown image or
category, has no integer id or a duplicate one, a zero-area / degenerate box, a broken polygon or RLE; an image entry
whose file is missing. Each is dropped with one warning line (via `logger`) and counted in `skipped`; with
`strict=True` the first one raises MrcnnError instead. A corrupt image file (present, but PIL cannot decode it) or one
whose size differs from its json entry is found when read: non-strict, it is warned about once, counted, remembered;
`__getitem__` (training) returns the next good sample (index i+1, i+2, ... wrapping) in its place (its own
`index`), `load_image` (evaluation) returns None; strict, MrcnnError names the file.
Counters updated inside DataLoader worker processes stay in those processes.

Memory: the json is parsed once, checked, and packed into flat numpy arrays (`_Annotations`); the parsed json is
then dropped. DataLoader workers forked from the main process read those arrays without touching shared Python
objects, so their pages stay shared. (Held as Python lists and dicts, the annotations' pages are copied into each
worker as it changes their reference counts: on a COCO-train-sized file, 2 GB per worker and epoch;
`benchmarks/coco_scale.py`.)
The pycocotools `COCO` object that evaluation needs is built from the arrays on first use of `coco`.
"""

from __future__ import annotations

import collections
import contextlib
import io
import itertools
import json
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from mrcnn.data.image_io import read_rgb
from mrcnn.data.segmentation import finite_numbers, parse_segmentation, segmentation_mask
from mrcnn.errors import MrcnnError, UnreadableImage


def _stderr_logger(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def load_coco_json(path: str | Path) -> dict:
    """Read and shape-check a COCO instances json; any problem -> MrcnnError with one line naming the file."""
    path = Path(path)
    name = str(path)  # the path, not only the name: splits of different folders share file names
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


class _Blobs:
    """Python objects pickled one by one into a single numpy byte buffer: reading item i unpickles a fresh copy and
    touches no shared Python object (detectron2 serializes its dataset dicts for the same reason)."""

    def __init__(self, items: list) -> None:
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
        self.offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in blobs], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __getitem__(self, i: int):
        return pickle.loads(self.buffer[self.offsets[i] : self.offsets[i + 1]])


class _Annotations:
    """The kept annotations of the kept images, image by image, in flat numpy arrays: numbers per annotation,
    polygon coordinates (float64, what pycocotools rasterizes) concatenated, RLE dicts pickled (`_Blobs`).
    Annotations of image i: rows image_start[i]:image_start[i+1]."""

    def __init__(self, per_image: list[list[tuple[dict, list | dict]]]) -> None:
        flat = [x for anns in per_image for x in anns]
        n = len(flat)
        self.image_start = np.zeros(len(per_image) + 1, dtype=np.int64)
        np.cumsum([len(anns) for anns in per_image], out=self.image_start[1:])
        self.ann_id = np.fromiter((a["id"] for a, _ in flat), np.int64, n)
        self.category_id = np.fromiter((a["category_id"] for a, _ in flat), np.int64, n)
        self.iscrowd = np.fromiter((bool(a.get("iscrowd", 0)) for a, _ in flat), bool, n)
        self.bbox = np.array([a["bbox"] for a, _ in flat], dtype=np.float64).reshape(n, 4)
        self.area = np.fromiter((a.get("area", a["bbox"][2] * a["bbox"][3]) for a, _ in flat), np.float64, n)
        segs = [seg for _, seg in flat]
        is_rle = np.fromiter((isinstance(seg, dict) for seg in segs), bool, n)
        self.rle_slot = np.full(n, -1, dtype=np.int64)
        self.rle_slot[is_rle] = np.arange(int(is_rle.sum()))
        self.rles = _Blobs([seg for seg, r in zip(segs, is_rle.tolist(), strict=True) if r])
        polys = [p for seg, r in zip(segs, is_rle.tolist(), strict=True) if not r for p in seg]
        self.poly_start = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([0 if r else len(seg) for seg, r in zip(segs, is_rle.tolist(), strict=True)], out=self.poly_start[1:])
        self.coord_start = np.zeros(len(polys) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in polys], out=self.coord_start[1:])
        self.coords = np.fromiter(itertools.chain.from_iterable(polys), np.float64, int(self.coord_start[-1]))

    def rows(self, i: int) -> range:
        return range(int(self.image_start[i]), int(self.image_start[i + 1]))

    def segmentation(self, k: int) -> list[np.ndarray] | dict:
        """Annotation k's polygons (float64 arrays) or RLE dict."""
        slot = int(self.rle_slot[k])
        if slot >= 0:
            return self.rles[slot]
        cs = self.coord_start
        return [self.coords[cs[j] : cs[j + 1]] for j in range(int(self.poly_start[k]), int(self.poly_start[k + 1]))]

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray)) + self.rles.buffer.nbytes


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
        self._bad_files: dict[int, str] = {}  # item -> reason, for files found unreadable when read
        name = self.ann_file.name

        doc = load_coco_json(self.ann_file)
        if not self.img_dir.is_dir():
            raise MrcnnError(f"image folder not found: {self.img_dir}")

        cats = self._read_categories(doc, name)
        self.cat_ids: list[int] = sorted(cats)
        self.class_names: list[str] = [str(cats[i]["name"]) for i in self.cat_ids]
        images = self._read_images(doc, name)
        by_image = self._read_annotations(doc, name, images, cats)

        # 4. the kept images and annotations, packed into numpy arrays; the parsed json is dropped on return
        self.ids: list[int] = sorted(images)
        self._categories = [cats[c] for c in self.cat_ids]
        self._cat_ids = np.array(self.cat_ids, dtype=np.int64)
        self._sizes = np.array([(images[i]["height"], images[i]["width"]) for i in self.ids], dtype=np.int64).reshape(
            -1, 2
        )  # (a split without images: shape (0, 2))
        self._image_ids = np.array(self.ids, dtype=np.int64)
        self._file_names = np.array([images[i]["file_name"] for i in self.ids], dtype=np.str_)
        self._anns = _Annotations([by_image[i] for i in self.ids])
        self._coco: COCO | None = None

    def _read_categories(self, doc: dict, name: str) -> dict[int, dict]:
        """1. categories (id -> entry); their sorted ids become the contiguous labels 1..C."""
        cats = {}
        for c in doc["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise MrcnnError(f"{name}: bad category entry {str(c)[:60]}")
            if c["id"] in cats:
                raise MrcnnError(f"{name}: duplicate category id {c['id']}")
            cats[c["id"]] = c
        if not cats:
            raise MrcnnError(f"{name}: no categories")
        return cats

    def _read_images(self, doc: dict, name: str) -> dict[int, dict]:
        """2. images: entry sanity and file presence (id -> entry of each usable image)."""
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
        return images

    def _read_annotations(self, doc: dict, name: str, images: dict, cats: dict) -> dict[int, list]:
        """3. annotations: (annotation, parsed segmentation) of each usable one, per usable image."""
        dropped_ids = {im.get("id") for im in doc["images"] if isinstance(im, dict)} - set(images)
        by_image: dict[int, list] = {i: [] for i in images}
        ann_ids: set[int] = set()
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
            if not isinstance(aid, int) or isinstance(aid, bool):
                self._bad(f"{name}: annotation #{k} (image {iid}): no integer id", "bad annotation")
                continue
            if aid in ann_ids:
                self._bad(f"{where}: duplicate annotation id", "duplicate annotation")
                continue
            where = f"{where} (image {iid})"
            cid = a.get("category_id")
            if not isinstance(cid, int) or cid not in cats:
                self._bad(f"{where}: unknown category id {a.get('category_id')}", "unknown category")
                continue
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and finite_numbers(bbox)):
                self._bad(f"{where}: bad box {bbox}", "bad box")
                continue
            bw, bh = bbox[2], bbox[3]
            area = a.get("area", bw * bh)
            if not finite_numbers([area]) or area <= 0 or bw == 0 or bh == 0:
                self._bad(f"{where}: zero-area box (w={bw} h={bh} area={area})", "zero area")
                continue
            if bw <= 1 or bh <= 1:
                self._bad(f"{where}: degenerate box (w={bw} h={bh})", "degenerate box")
                continue
            img = images[iid]
            problem, seg = parse_segmentation(a.get("segmentation"), img["height"], img["width"])
            if problem is not None:
                reason = problem.split(" (")[0]
                self._bad(f"{where}: {problem}", reason)
                continue
            ann_ids.add(aid)
            by_image[iid].append((a, seg))
        return by_image

    @property
    def coco(self) -> COCO:
        """pycocotools COCO of the kept images and annotations (crowd regions included): evaluation's ground truth.
        Built from the packed arrays on first use (a training set never builds it)."""
        if self._coco is None:
            A = self._anns
            images = [
                {"id": iid, "file_name": str(fn), "height": h, "width": w}
                for iid, fn, (h, w) in zip(self.ids, self._file_names, self._sizes.tolist(), strict=True)
            ]
            anns = []
            for i, iid in enumerate(self.ids):
                for k in A.rows(i):
                    seg = A.segmentation(k)
                    anns.append(
                        {
                            "id": int(A.ann_id[k]),
                            "image_id": iid,
                            "category_id": int(A.category_id[k]),
                            "bbox": A.bbox[k].tolist(),
                            "area": float(A.area[k]),
                            "iscrowd": int(A.iscrowd[k]),
                            "segmentation": seg if isinstance(seg, dict) else [p.tolist() for p in seg],
                        }
                    )
            coco = COCO()
            coco.dataset = {"images": images, "annotations": anns, "categories": self._categories}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn or forkserver (Python 3.14's default on Linux) get a pickled copy; the
        # logger may be a closure, which does not pickle: there they warn on stderr. The COCO object stays behind.
        state = dict(self.__dict__)
        state["logger"] = _stderr_logger
        state["_coco"] = None
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
        return (self._sizes[:, 0] >= self._sizes[:, 1]).astype(int).tolist()

    def image_size(self, i: int) -> tuple[int, int]:
        """(H, W) of item i from the json."""
        h, w = self._sizes[i].tolist()
        return h, w

    def image_path(self, i: int) -> Path:
        return self.img_dir / str(self._file_names[i])

    def _load_image(self, i: int) -> torch.Tensor | None:
        path = self.image_path(i)
        h, w = self.image_size(i)
        try:
            arr, orientation = read_rgb(path)
        except UnreadableImage as e:  # truncated, corrupt, not an image
            problem, reason = f"corrupt image ({str(e).removeprefix(f'{path}: ')})", "corrupt image"
        except MrcnnError as e:  # a mode it cannot read, or above the pixel limit: said by read_rgb
            problem, reason = str(e).removeprefix(f"{path}: "), "unsupported image"
        else:
            if arr.shape[:2] == (h, w):
                return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
            turned = f" (after its EXIF orientation {orientation})" if orientation != 1 else ""
            problem = f"image size {arr.shape[1]}x{arr.shape[0]}{turned} differs from annotation {w}x{h}"
            reason = "image size mismatch"
        if self.strict:
            raise MrcnnError(f"{path}: {problem}")
        if i not in self._bad_files:
            self._bad_files[i] = reason
            self.skipped[reason] += 1
            self.logger(f"{path}: {problem}: skipped")
        return None

    def bad_files(self) -> dict[int, str]:
        """Items whose files were found unreadable so far, in this process: {item: reason}."""
        return dict(self._bad_files)

    def note_bad_files(self, found: dict[int, str]) -> None:
        """Count files that another process (a DataLoader worker, another rank) found unreadable; each item once."""
        for i, reason in found.items():
            if int(i) not in self._bad_files:
                self._bad_files[int(i)] = reason
                self.skipped[reason] += 1

    def load_image(self, i: int) -> torch.Tensor | None:
        """Item i's image alone (evaluation needs no targets), or None when it cannot be read (warned about once
        and counted, as in `__getitem__`; strict: MrcnnError)."""
        return None if i in self._bad_files else self._load_image(i)

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
                target = self._target(j)
                if k:  # items passed over for this one: the main process counts them (workers' counts stay there)
                    target["bad_files"] = {m: self._bad_files[m] for m in ((i + q) % n for q in range(k))}
                return image, target
        raise MrcnnError(f"{self.img_dir}: no readable image in the dataset")

    def _target(self, i: int) -> dict:
        h, w = self.image_size(i)
        A = self._anns
        a0, a1 = int(A.image_start[i]), int(A.image_start[i + 1])
        rows = np.flatnonzero(~A.iscrowd[a0:a1]) + a0  # crowd regions are not training targets
        boxes = torch.from_numpy(A.bbox[rows]).to(torch.float32)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        labels = torch.from_numpy(np.searchsorted(self._cat_ids, A.category_id[rows]) + 1).to(torch.int64)
        if len(rows):
            masks = torch.from_numpy(np.stack([segmentation_mask(A.segmentation(k), h, w) for k in rows.tolist()]))
        else:
            masks = torch.zeros((0, h, w), dtype=torch.uint8)
        return {
            "boxes": boxes,
            "labels": labels,
            "masks": masks,
            "image_id": int(self._image_ids[i]),
            "orig_size": (h, w),
            "index": int(i),
        }
