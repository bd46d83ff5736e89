"""Every image mode a user can hand us is read as a viewer shows it (against a reference conversion written here with
numpy), or refused with one line naming the file and the mode; images above the pixel limit are refused from their
header (mrcnn/data/image_io.py)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mrcnn.data.image_io import read_rgb, set_max_pixels
from mrcnn.errors import MrcnnError

RNG = np.random.default_rng(0)
H, W = 24, 40


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return rgb.astype(np.float64) * a + 255 * (1 - a)


def _png16_rgb(path, rgb16: np.ndarray) -> None:
    """A 48-bit RGB PNG written byte by byte (PIL cannot write one): signature, IHDR, one IDAT, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def _case(name: str, folder):
    """(file, the 8-bit RGB a viewer shows, the tolerance in levels) of one mode."""
    gray8 = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    rgb8 = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    path = folder / f"{name}.png"
    if name == "1":
        bits = gray8 > 127
        Image.fromarray(bits).save(path)
        return path, np.repeat(np.where(bits, 255, 0).astype(np.uint8)[..., None], 3, 2), 0
    if name == "L":
        Image.fromarray(gray8).save(path)
        return path, np.repeat(gray8[..., None], 3, 2), 0
    if name == "I;16":  # a 16-bit grayscale photo (the bug: read as a white image)
        g16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
        Image.fromarray(g16).save(path)
        return path, np.repeat(np.rint(g16 / 257)[..., None], 3, 2), 0
    if name == "I":  # 32-bit integer gray (TIFF) within 16 bits
        g32 = RNG.integers(256, 65536, (H, W)).astype(np.int32)
        path = folder / "i32.tif"
        Image.fromarray(g32, "I").save(path)
        return path, np.repeat(np.rint(g32 / 257)[..., None], 3, 2), 0
    if name == "F":  # float gray in [0, 1] (TIFF)
        f = RNG.random((H, W)).astype(np.float32)
        path = folder / "f.tif"
        Image.fromarray(f, "F").save(path)
        return path, np.repeat(np.rint(f * 255)[..., None], 3, 2), 0
    if name == "LA":
        Image.fromarray(np.stack([gray8, alpha], -1), "LA").save(path)
        return path, _over_white(np.repeat(gray8[..., None], 3, 2), alpha), 1
    if name == "RGB":
        Image.fromarray(rgb8).save(path)
        return path, rgb8, 0
    if name == "RGBA":
        Image.fromarray(np.concatenate([rgb8, alpha[..., None]], -1), "RGBA").save(path)
        return path, _over_white(rgb8, alpha), 1
    if name == "P":
        pal = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        idx = RNG.integers(0, 256, (H, W), dtype=np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette(pal.tobytes())
        im.save(path)
        return path, pal[idx], 0
    if name == "P+transparency":  # a palette PNG whose index 0 is transparent (tRNS)
        pal = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        idx = RNG.integers(0, 4, (H, W), dtype=np.uint8)
        im = Image.fromarray(idx, "P")
        im.putpalette(pal.tobytes())
        im.save(path, transparency=0)
        want = pal[idx].astype(np.float64)
        want[idx == 0] = 255
        return path, want, 0
    if name == "CMYK":  # (a JPEG from print workflows; TIFF here, lossless)
        cmyk = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)
        path = folder / "cmyk.tif"
        Image.fromarray(cmyk, "CMYK").save(path)
        c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
        return path, (255 - c) * (255 - k) / 255, 1
    if name == "RGB 16-bit":
        rgb16 = RNG.integers(0, 65536, (H, W, 3), dtype=np.uint16)
        _png16_rgb(path, rgb16)
        return path, rgb16 / 257, 1
    raise AssertionError(name)


MODES = ["1", "L", "I;16", "I", "F", "LA", "RGB", "RGBA", "P", "P+transparency", "CMYK", "RGB 16-bit"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_as_a_viewer_shows_it(mode, tmp_path):
    path, want, tol = _case(mode, tmp_path)
    got, orientation = read_rgb(path)
    with Image.open(path) as im:
        stored = im.mode
    diff = float(np.abs(got.astype(np.float64) - np.asarray(want, dtype=np.float64)).max())
    print(f"{mode}: stored as {stored}, {got.shape} {got.dtype}, max |read - reference| {diff:.2f} levels")
    assert got.shape == (H, W, 3) and got.dtype == np.uint8 and orientation == 1
    assert diff <= tol + 0.5, (mode, diff)


def test_a_mode_it_cannot_show_is_one_line_naming_file_and_mode(tmp_path):
    path = tmp_path / "lab.tif"
    Image.new("LAB", (8, 8)).save(path)
    with pytest.raises(MrcnnError, match=r"lab\.tif: image mode LAB is not supported"):
        read_rgb(path)
    f = tmp_path / "hdr.tif"
    Image.fromarray(np.full((4, 4), 1000.0, np.float32), "F").save(f)
    with pytest.raises(MrcnnError, match=r"hdr\.tif: float image \(mode F\) with values outside \[0, 255\]"):
        read_rgb(f)


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (200, 100)).save(path)
    prev = set_max_pixels(19_999)
    try:
        with pytest.raises(MrcnnError, match=r"big\.png: 200x100 = 0\.0 MP is above the limit of 0\.019999 MP"):
            read_rgb(path)
        set_max_pixels(20_000)
        assert read_rgb(path)[0].shape == (100, 200, 3)
    finally:
        set_max_pixels(prev)
