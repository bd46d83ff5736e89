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
from collections.abc import Callable, Sequence
from pathlib import Path

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


def _check_readable(files: list[Path], skip_bad: bool = False) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every file opens as an image of a mode the readers take and a size within the pixel limit (from its header,
    without decoding the pixels): else one error line, before anything is written. Returns (the readable files,
    [(file, why)] of those skipped: with `skip_bad` an unreadable file is skipped instead of refused)."""
    from mrcnn.data.image_io import check_mode, open_checked
    from mrcnn.errors import unreadable

    readable, skipped = [], []
    for f in files:
        try:
            try:
                with open_checked(f) as im:
                    check_mode(f, im.mode)
                    im.verify()  # header and structure, without decoding the pixels
            except MrcnnError:
                raise
            except Exception as e:
                raise unreadable(f, "image", e, "image") from None
        except MrcnnError as e:
            if not skip_bad:
                raise
            skipped.append((f, str(e).removeprefix(f"{f}: ")))
            continue
        readable.append(f)
    return readable, skipped


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
    `name 0.93` tag where it covers no better detection's tag (label_positions). Masks come as `mask_crops`
    (paste_mask_crops: only their boxes are touched) or as full-size pasted `masks`."""
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
    texts = {}
    for k in keep:
        label = int(result["labels"][k])
        name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
        texts[k] = f"{name} {float(result['scores'][k]):.2f}"
    sizes = {}
    for k, text in texts.items():
        tx0, ty0, tx1, ty1 = draw.textbbox((0, 0), text)
        sizes[k] = (tx1 - tx0 + 4, ty1 + 2)  # tag width and height: 2 px of margin, the glyphs' own top offset
    boxes = {k: tuple(float(v) for v in result["boxes"][k]) for k in keep}
    tags = label_positions([boxes[k] for k in reversed(keep)], [sizes[k] for k in reversed(keep)], out.size)
    tags = dict(zip(reversed(keep), tags, strict=True))
    for k in keep:  # boxes first, then the tags, lowest score first: the best tag is drawn last
        draw.rectangle(boxes[k], outline=colours[int(result["labels"][k])], width=2)
    for k in keep:
        x, y = tags[k]
        draw.rectangle([x, y, x + sizes[k][0], y + sizes[k][1]], fill=colours[int(result["labels"][k])])
        draw.text((x + 2, y + 1), texts[k], fill=(0, 0, 0))
    return out


def label_positions(
    boxes: Sequence[tuple[float, float, float, float]],
    sizes: Sequence[tuple[float, float]],
    image_size: tuple[int, int],
) -> list[tuple[float, float]]:
    """Top-left corners of the label tags of boxes given best first (x0, y0, x1, y1) and tags (w, h): each tag sits
    above its box, else inside its top, else below it, else stacked further down or up, at the first place that
    overlaps no tag placed before and stays in the image; where none is free, above the box (the overlap is
    allowed then)."""
    W, H = image_size
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for (x0, y0, _, y1), (w, h) in zip(boxes, sizes, strict=True):
        x = min(max(0.0, x0), max(0.0, W - w))
        tries = [y0 - h, y0, y1] + [y0 + j * h for j in range(1, 16)] + [y0 - j * h for j in range(2, 16)]
        fits = [y for y in tries if 0 <= y <= H - h]
        free = [
            y for y in fits if all(x + w <= a or a + aw <= x or y + h <= b or b + bh <= y for a, b, aw, bh in placed)
        ]
        y = free[0] if free else (fits[0] if fits else max(0.0, min(y0 - h, H - h)))
        placed.append((x, y, w, h))
        out.append((x, y))
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


def coco_annotations(
    kept: dict, image_size: tuple[int, int], image_id: int, first_id: int, n_classes: int
) -> list[dict]:
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


def overlay_names(files: list[Path]) -> list[str]:
    """One distinct overlay name per input: `stem.png`; where stems collide (`a.jpg`, `a.png`) `stem_ext.png`; where
    whole names collide (`x/a.jpg`, `y/a.jpg`) `folder_stem_ext.png`; a clash left after that is numbered `_1`, `_2`.
    predictions.json maps each image to its overlay."""

    def stem(f):
        return f.stem

    def with_ext(f):
        return f"{f.stem}_{f.suffix.lstrip('.').lower()}" if f.suffix else f.stem

    def with_folder(f):
        return f"{f.resolve().parent.name}_{with_ext(f)}"

    from collections import Counter

    counts = {rule: Counter(rule(f).lower() for f in files) for rule in (stem, with_ext, with_folder)}
    names = []
    for f in files:
        rule = next((r for r, c in counts.items() if c[r(f).lower()] == 1), with_folder)
        names.append(rule(f))
    taken: set[str] = set()
    out = []
    for n in names:
        unique, k = n, 0
        while unique.lower() in taken:  # case-insensitive file systems
            k += 1
            unique = f"{n}_{k}"
        taken.add(unique.lower())
        out.append(f"{unique}.png")
    return out


def score_floor_note(predictor, score: float, artifact: Path) -> str | None:
    """A line when `score` is below the threshold an exported model or engine applies itself (its detections under
    that threshold do not exist); None where nothing is lost."""
    floor = float(predictor.cfg.model.box_score_thresh)
    if score >= floor:
        return None
    return (
        f"note: --score {score:g} is below the score threshold built into {artifact.name} ({floor:g}): "
        f"detections scoring under {floor:g} are not reported (export with --set model.box_score_thresh="
        f"{score:g} to lower it)"
    )


def predict(
    artifact: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    score: float = 0.5,
    batch_size: int = 1,
    device: str | None = None,
    overlays: bool = True,
    skip_bad: bool = False,
    precision: str = "fp32",
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict:
    """Predict every image; write OUT/predictions.json and (with `overlays`) one PNG per image (overlay_names).
    `skip_bad`: images that cannot be read are skipped and listed (summary `skipped`: [(file, why)]) instead of
    stopping the run. A checkpoint's box score threshold is lowered to `score` where it is higher; an exported model's
    is fixed, and a note says what `score` cannot show. Returns a summary."""
    from mrcnn.deploy import load_artifact
    from mrcnn.io import atomic_write, check_writable_dir
    from mrcnn.progress import reporter

    if not 0.0 <= score <= 1.0:
        raise MrcnnError(f"--score must be in [0, 1], got {score}")
    if batch_size < 1:
        raise MrcnnError(f"--batch must be >= 1, got {batch_size}")
    artifact = Path(artifact)
    files = image_files(inputs)
    files, skipped = _check_readable(files, skip_bad)
    for f, why in skipped:
        log(f"skipped {f}: {why}")
    if not files:
        raise MrcnnError(f"none of the {len(skipped)} images is readable")
    out_dir = Path(out_dir)
    check_writable_dir(out_dir, "--out")
    predictor = load_artifact(
        artifact,
        device,
        log=log,
        paste=False,  # masks pasted per kept detection below
        max_score_thresh=min(score, 0.999),
        precision=precision,
    )
    note = score_floor_note(predictor, score, artifact)
    if note:
        log(note)
    names = list(predictor.class_names)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    png_names = overlay_names(files)
    doc = {"images": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)], "annotations": []}
    written: list[Path] = []
    try:
        with reporter(len(files), "predict", log=log, enabled=progress) as rep, torch.inference_mode():
            for start in range(0, len(files), batch_size):
                chunk, images = _read_chunk(
                    files, range(start, min(start + batch_size, len(files))), skip_bad, skipped, log
                )
                for i, image, result in zip(chunk, images, predictor(images) if images else [], strict=True):
                    h, w = image.shape[1:]
                    kept = kept_with_crops({k: v.cpu() for k, v in result.items()}, score, (h, w))
                    entry = {"id": i + 1, "file_name": str(files[i]), "width": w, "height": h}
                    doc["annotations"] += coco_annotations(kept, (h, w), i + 1, len(doc["annotations"]) + 1, len(names))
                    if overlays:
                        picture = draw_detections(image, kept, names, score)
                        written.append(
                            atomic_write(out_dir / png_names[i], lambda tmp, p=picture: p.save(tmp, format="PNG"))
                        )
                        entry["overlay"] = png_names[i]
                    doc["images"].append(entry)
                rep.update(min(start + batch_size, len(files)))
        if not doc["images"]:
            raise MrcnnError(f"none of the {len(skipped)} images is readable")
        text = json.dumps(doc)
        written.append(atomic_write(out_dir / "predictions.json", lambda tmp: Path(tmp).write_text(text)))
    except BaseException:  # no overlays without their predictions.json: what this call wrote goes
        for f in written:
            f.unlink(missing_ok=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    return {
        "images": len(doc["images"]),
        "detections": len(doc["annotations"]),
        "out": out_dir,
        "overlays": overlays,
        "skipped": skipped,
    }


def _read_chunk(files: list[Path], indices, skip_bad: bool, skipped: list, log) -> tuple[list[int], list]:
    """The images of `indices` read; with `skip_bad` one that fails to decode (its header passed) is skipped."""
    from mrcnn.errors import UnreadableImage

    chunk, images = [], []
    for i in indices:
        try:
            images.append(read_image(files[i]))
        except UnreadableImage as e:
            if not skip_bad:
                raise
            why = str(e).removeprefix(f"{files[i]}: ")
            skipped.append((files[i], why))
            log(f"skipped {files[i]}: {why}")
            continue
        chunk.append(i)
    return chunk, images
