"""`mrcnn predict ARTIFACT IMAGE|FOLDER...`: detections of a checkpoint (.pt) or exported model (.onnx) on image files,
as PNG overlays (masks, boxes, labels) and one COCO-format json.

`predictions.json` is a COCO instances document whose annotations carry a `score`: `images` (id, file_name, width,
height), `categories` (id 1..C = the model's classes), `annotations` (bbox xywh, RLE segmentation of the pasted mask
at 0.5, area, score). pycocotools' `COCO` reads it as it is, and labelling tools import it as pre-annotations.
Every image is opened before any prediction runs, so an unreadable one is one error line and nothing is written;
each output file is written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mrcnn.errors import MrcnnError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MASK_ALPHA = 0.45


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted, not recursive)."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MrcnnError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise MrcnnError(f"{p}: no such image file or folder")
    if not files:
        raise MrcnnError("no images given")
    return files


def _check_readable(files: list[Path]) -> None:
    """Every file opens as an image of a mode the readers take and a size within the pixel limit (from its header,
    without decoding the pixels): else one error line, before anything is written."""
    from mrcnn.data.image_io import check_mode, open_checked

    for f in files:
        try:
            with open_checked(f) as im:
                check_mode(f, im.mode)
                im.verify()  # header and structure, without decoding the pixels
        except MrcnnError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad files
            first = str(e).splitlines()[0] if str(e) else ""
            raise MrcnnError(f"{f}: not a readable image ({type(e).__name__}: {first})")\
                from None


def read_image(path: Path) -> torch.Tensor:
    """[3, H, W] uint8, the file's EXIF orientation applied (as the training data is read)."""
    from mrcnn.data.image_io import read_rgb

    return torch.from_numpy(read_rgb(path)[0].copy()).permute(2, 0, 1).contiguous()


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct, saturated colours (golden-ratio hues), one per class."""
    import colorsys

    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((0.61803 * i) % 1.0, 0.85, 0.95)) for i in range(n)]


def _regions(result: dict, keep: list[int]) -> dict[int, tuple[int, int, int, int, np.ndarray]]:
    """Detection k -> (y0, y1, x0, x1, mask > 0.5 there): from `mask_crops` (what predict pastes, box-sized) or from
    full-size pasted `masks` [n,1,H,W]."""
    out = {}
    for k in keep:
        if "mask_crops" in result:
            y0, y1, x0, x1, values = result["mask_crops"][k]
            out[k] = (y0, y1, x0, x1, (values > 0.5).numpy())
        elif "masks" in result and result["masks"].numel():
            m = result["masks"][k, 0]
            out[k] = (0, m.shape[0], 0, m.shape[1], (m > 0.5).numpy())
    return out


def draw_detections(image: torch.Tensor, result: dict, class_names: Sequence[str], score: float = 0.5):
    """uint8 [3,H,W] + one predictor result -> PIL image: each detection with score >= `score`, lowest score first,
    as its mask blended at MASK_ALPHA in its class colour (pixels of probability > 0.5), its box and a
    `name 0.93` label. Masks come as `mask_crops` (paste_mask_crops: only their boxes are touched) or as full-size
    pasted `masks`."""
    from PIL import Image, ImageDraw

    colours = palette(len(class_names) + 1)
    canvas = image.permute(1, 2, 0).numpy().copy()  # uint8; each blend works on its box only
    keep = [k for k in torch.argsort(result["scores"]).tolist() if float(result["scores"][k]) >= score]
    for k, (y0, y1, x0, x1, m) in _regions(result, keep).items():
        colour = np.array(colours[int(result["labels"][k])], dtype=np.float32)
        part = canvas[y0:y1, x0:x1]
        part[m] = np.clip(np.rint((1 - MASK_ALPHA) * part[m].astype(np.float32) + MASK_ALPHA * colour), 0, 255)
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    for k in keep:
        label = int(result["labels"][k])
        colour = colours[label]
        x0, y0, x1, y1 = (float(v) for v in result["boxes"][k])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        text = f"{name} {float(result['scores'][k]):.2f}"
        tx0, ty0, tx1, ty1 = draw.textbbox((x0, y0), text)
        ty = max(0.0, y0 - (ty1 - ty0) - 2)
        draw.rectangle([x0, ty, x0 + (tx1 - tx0) + 4, ty + (ty1 - ty0) + 2], fill=colour)
        draw.text((x0 + 2, ty - (ty0 - y0)), text, fill=(0, 0, 0))
    return out


def kept_with_crops(result: dict, score: float, image_size: tuple[int, int]) -> dict:
    """The detections with score >= `score` of an unpasted result (masks [n,M,M]), their masks pasted as box-sized
    crops (`mask_crops`) instead of [n,1,H,W]: what predict draws and encodes, at any image size."""
    from mrcnn.model.preprocess import paste_mask_crops

    keep = result["scores"] >= score
    kept = {k: v[keep] for k, v in result.items() if torch.is_tensor(v) and v.shape[:1] == keep.shape}
    kept.pop("masks", None)
    if "masks28" in kept:
        kept["mask_crops"] = paste_mask_crops(kept["masks28"], kept["boxes"], image_size)
    return kept


def coco_annotations(kept: dict, image_size: tuple[int, int], image_id: int, first_id: int,
                 n_classes: int) -> list[dict]:
    """COCO annotations of kept detections (kept_with_crops): each mask encoded as RLE from a one-image buffer."""
    import pycocotools.mask as mask_util

    from mrcnn.evaluation.coco import detections_to_coco

    rles = None
    if "mask_crops" in kept:
        full = np.zeros(image_size, dtype=np.uint8, order="F")  # one mask at a time, then cleared
        rles = []
        for y0, y1, x0, x1, values in kept["mask_crops"]:
            full[y0:y1, x0:x1] = (values > 0.5).numpy()
            rles.append(mask_util.encode(full[:, :, None])[0])
            full[y0:y1, x0:x1] = 0
    entries = detections_to_coco(kept, image_id, list(range(1, n_classes + 1)), rles=rles)
    for j, e in enumerate(entries):
        e["id"] = first_id + j
        e["iscrowd"] = 0
        e["area"] = float(mask_util.area(e["segmentation"])) if "segmentation" in e else e["bbox"][2] * e["bbox"][3]
    return entries


def _output_names(files: list[Path]) -> list[str]:
    """`stem.png` per image; a stem seen before gets `_1`, `_2`, ..."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        n = seen.get(f.stem, 0)
        seen[f.stem] = n + 1
        names.append(f"{f.stem}.png" if n == 0 else f"{f.stem}_{n}.png")
    return names


def predict(artifact: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *, score: float = 0.5,
            batch_size: int = 1, device: str | None = None, overlays: bool = True,
            log: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Predict every image; write OUT/predictions.json and (with `overlays`) OUT/<stem>.png. Returns a summary."""
    from mrcnn.deploy import load_artifact
    from mrcnn.io import atomic_write, check_writable_dir
    from mrcnn.progress import reporter

    if not 0.0 <= score <= 1.0:
        raise MrcnnError(f"--score must be in [0, 1], got {score}")
    if batch_size < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch_size}")
    files = image_files(inputs)
    _check_readable(files)
    out_dir = Path(out_dir)
    check_writable_dir(out_dir, "--out")
    predictor = load_artifact(artifact, device, log=log, paste=False)  # masks pasted per kept detection below
    names = list(predictor.class_names)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    png_names = _output_names(files)
    doc = {"images": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)], "annotations": []}
    written: list[Path] = []
    try:
        with reporter(len(files), "predict", log=log, enabled=progress) as rep, torch.inference_mode():
            for start in range(0, len(files), batch_size):
                chunk = list(range(start, min(start + batch_size, len(files))))
                images = [read_image(files[i]) for i in chunk]
                for i, image, result in zip(chunk, images, predictor(images)):
                    h, w = image.shape[1:]
                    kept = kept_with_crops({k: v.cpu() for k, v in result.items()}, score, (h, w))
                    doc["images"].append({"id": i + 1, "file_name": str(files[i]), "width": w, "height": h})
                    doc["annotations"] += coco_annotations(kept, (h, w), i + 1, len(doc["annotations"]) + 1, len(names))
                    if overlays:
                        picture = draw_detections(image, kept, names, score)
                        written.append(atomic_write(out_dir / png_names[i],
                                                    lambda tmp, p=picture: p.save(tmp, format="PNG")))
                rep.update(chunk[-1] + 1)
        text = json.dumps(doc)
        written.append(atomic_write(out_dir / "predictions.json", lambda tmp: Path(tmp).write_text(text)))
    except BaseException:  # no overlays without their predictions.json: what this call wrote goes
        for f in written:
            f.unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {"images": len(files), "detections": len(doc["annotations"]), "out": out_dir,
            "overlays": overlays}
