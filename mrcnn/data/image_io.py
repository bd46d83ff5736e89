"""Reading image files the way they are meant to be seen, or refusing them with one line.

Orientation: a camera that was held upright often stores its pixels sideways with an EXIF orientation tag saying
how to turn them; viewers, browsers and annotation tools (CVAT, Label Studio, Roboflow's auto-orient) show the
turned image, and a COCO json records that image's width and height. PIL returns the stored pixels. detectron2's
`read_image` and Ultralytics apply the tag; torchvision's CocoDetection does not, and then a portrait photo's
annotations land on a landscape image. So every reader here (training, evaluation, `predict`, `bench --data`)
applies it.

Pixel formats, each to 8-bit RGB as a viewer shows it (PIL's own `convert("RGB")` clips 16-bit gray to 255, which
made a 16-bit photo a white image):
    1, L, RGB, CMYK, YCbCr          PIL's conversion
    I;16 (16-bit gray)              value / 257, rounded (65535 -> 255)
    I (32-bit gray)                 as 8-bit when every value is <= 255, as 16-bit when <= 65535, else refused
    F (float gray)                  x 255 when every value is in [0, 1], as is in [0, 255], else refused
    LA, RGBA, PA, P with transparency   composited over white (what a viewer's page shows behind it)
    P                               its palette's colors
    16-bit RGB                      PIL reads it as 8-bit RGB (the high byte)
Any other mode is one MrcnnError naming the file and the mode.

Size: an image above `max_pixels()` (default DEFAULT_MAX_PIXELS = 64 MP; MRCNN_MAX_PIXELS or set_max_pixels raise
it) is refused from its header, before its pixels are decoded; PIL's own decompression-bomb check is left to ours.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mrcnn.errors import MrcnnError, UnreadableImage, unreadable

EXIF_ORIENTATION = 0x0112  # 1: as stored; 2-8: mirrored and/or turned by multiples of 90 degrees
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: a 12-MP phone photo is far below it, a 100-MP scan above
_MAX_PIXELS: int | None = None
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
SUPPORTED_MODES = ("1", "L", "P", "RGB", "CMYK", "YCbCr", "I", "F") + _ALPHA_MODES


def check_mode(path: str | Path, mode: str) -> None:
    """One error line for an image mode the readers cannot show as a viewer does."""
    if mode not in SUPPORTED_MODES and not mode.startswith("I;16"):
        raise MrcnnError(
            f"{path}: image mode {mode} is not supported ({', '.join(SUPPORTED_MODES)} and I;16 are): convert it to RGB"
        )


def max_pixels() -> int:
    if _MAX_PIXELS is not None:
        return _MAX_PIXELS
    env = os.environ.get("MRCNN_MAX_PIXELS")
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError:
            raise MrcnnError(f"MRCNN_MAX_PIXELS={env!r}: expected a number of pixels") from None
    return DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int | None) -> int | None:
    """The largest image (width x height) readers accept; None: the default (or MRCNN_MAX_PIXELS). Returns the
    previous setting."""
    global _MAX_PIXELS
    if limit is not None and limit < 1:
        raise MrcnnError(f"--max-pixels must be >= 1, got {limit}")
    prev, _MAX_PIXELS = _MAX_PIXELS, limit
    return prev


def _pil():
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our limit (max_pixels) is checked from the header instead, as one line
    return Image


def check_size(path: str | Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width * height > limit:
        raise MrcnnError(
            f"{path}: {width}x{height} = {width * height / 1e6:.1f} MP is above the limit of "
            f"{limit / 1e6:g} MP (raise it with --max-pixels or MRCNN_MAX_PIXELS)"
        )


def open_checked(path: str | Path | io.BytesIO, name: str | Path | None = None):
    """The image opened (not decoded), its size checked against max_pixels; use as a context manager. `name`: what
    messages call it (default `path`)."""
    Image = _pil()
    im = Image.open(path)
    try:
        check_size(path if name is None else name, *im.size)
    except MrcnnError:
        im.close()
        raise
    return im


def _gray(path, a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit gray of a 16/32-bit integer or float gray image (the module docstring's rules)."""
    a = a.astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    low = float(a.min()) if a.size else 0.0
    if mode == "F":
        if not np.isfinite(a).all() or low < 0 or top > 255:
            raise MrcnnError(f"{path}: float image (mode F) with values outside [0, 255]: convert it to 8-bit RGB")
        scale = 255.0 if top <= 1.0 else 1.0
    elif mode.startswith("I;16"):
        scale = 1 / 257
    else:  # "I"
        if low < 0 or top > 65535:
            raise MrcnnError(
                f"{path}: 32-bit integer image (mode I) with values outside [0, 65535]: convert it to 8-bit RGB"
            )
        scale = 1.0 if top <= 255 else 1 / 257
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def to_rgb(im, path: str | Path = "image") -> np.ndarray:
    """H x W x 3 uint8 of a PIL image in any supported mode (module docstring)."""
    Image = _pil()
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode in ("1", "L", "CMYK", "YCbCr"):
        return np.asarray(im.convert("RGB"))
    if mode.startswith("I") or mode == "F":
        g = _gray(path, np.asarray(im), mode)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "P" and "transparency" not in im.info:
        return np.asarray(im.convert("RGB"))
    if mode in _ALPHA_MODES or mode == "P":
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    check_mode(path, mode)
    raise MrcnnError(f"{path}: image mode {mode} is not readable here")  # (check_mode lists every mode above)


def read_rgb(path: str | Path | bytes, name: str | None = None) -> tuple[np.ndarray, int]:
    """(H x W x 3 uint8 pixels with the file's EXIF orientation applied, that orientation tag: 1 when none). `path`:
    an image file, or an image file's bytes (a request's; `name` is what messages call them)."""
    from PIL import ImageOps

    data = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else None
    label = path if data is None else (name or "image data")
    try:
        with open_checked(path if data is None else io.BytesIO(data), label) as im:
            check_mode(label, im.mode)
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im, label), orientation
    except MrcnnError:
        raise
    except (OSError, SyntaxError, ValueError) as e:  # PIL's kinds for a file that is not (or no longer) an image
        if data is not None and type(e).__name__ == "UnidentifiedImageError":  # (its message names a BytesIO)
            e = ValueError("no image format PIL reads")
        raise UnreadableImage(str(unreadable(label, "image", e, "image", head=data))) from None
