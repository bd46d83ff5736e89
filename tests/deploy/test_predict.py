"""`mrcnn predict`: overlays and predictions.json, from a checkpoint or an ONNX file; bad input is one line and
writes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import BOX_TOL, one_error_line, sample_images

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.deploy import load_artifact  # noqa: E402

runner = CliRunner()


def _write_pngs(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for k, img in enumerate(sample_images()):
        p = folder / f"img{k}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    return paths


def test_predict_writes_what_the_predictor_returns(tiny, tiny_onnx, tmp_path):
    """`mrcnn predict` on a folder: predictions.json (read by pycocotools) holds exactly the detections with score >=
    --score that the PyTorch predictor returns for each file; the portable ONNX model gives the same ones; one
    overlay per image, of the image's size."""
    import contextlib
    import io

    from PIL import Image
    from pycocotools.coco import COCO

    from mrcnn.deploy.predict import read_image

    paths = _write_pngs(tmp_path / "in")
    ref = load_artifact(tiny["ckpt"], "cpu")([read_image(p) for p in paths])
    score = round(float(torch.cat([r["scores"] for r in ref]).median()), 3)  # drops about half of them
    for artifact, out in ((tiny["ckpt"], tmp_path / "pt"), (tiny_onnx["portable"], tmp_path / "onnx")):
        r = runner.invoke(app, ["predict", str(artifact), str(tmp_path / "in"), "--out", str(out), "--score",
                                str(score), "--device", "cpu"])
        assert r.exit_code == 0, r.output[-2000:]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "predictions.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == tiny["names"]
        counts, worst = [], 0.0
        for i, (p, want) in enumerate(zip(paths, ref)):
            img = coco.imgs[i + 1]
            assert img["file_name"] == str(p) and (img["height"], img["width"]) == tuple(read_image(p).shape[1:])
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[i + 1])), key=lambda a: -a["score"])
            keep = want["scores"] >= score
            boxes = want["boxes"][keep]
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
            counts.append(len(anns))
            assert len(anns) == int(keep.sum()) > 0, (artifact.suffix, i, len(anns), int(keep.sum()))
            got = torch.tensor([a["bbox"] for a in anns])
            worst = max(worst, float((got - xywh).abs().max()))
            assert [a["category_id"] for a in anns] == want["labels"][keep].tolist()
            assert all(a["score"] >= score and "counts" in a["segmentation"] for a in anns)
            with Image.open(out / f"img{i}.png") as im:
                assert im.size == (img["width"], img["height"])
        print(f"{artifact.suffix}: --score {score}: detections per image {counts} of "
              f"{[len(w['scores']) for w in ref]}, max box diff {worst:.2e} px")
        assert worst <= BOX_TOL


def test_overlay_blends_masks_and_leaves_other_pixels():
    import numpy as np

    from mrcnn.deploy.predict import MASK_ALPHA, draw_detections, palette

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8)
    masks = torch.zeros(1, 1, 64, 80)
    masks[..., 25:46, 15:36] = 0.9
    result = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([2]), "masks": masks}
    pic = np.array(draw_detections(image, result, ["a", "b"], score=0.5)).astype(np.float64)
    orig = image.permute(1, 2, 0).numpy().astype(np.float64)
    want = np.rint((1 - MASK_ALPHA) * orig[30:41, 20:31] + MASK_ALPHA * np.array(palette(3)[2]))
    assert np.abs(pic[30:41, 20:31] - want).max() <= 1  # float32 blend vs float64 formula
    assert np.array_equal(pic[53:], orig[53:]) and np.array_equal(pic[:, 44:], orig[:, 44:])  # away from box, label
    assert not np.array_equal(pic[20:22, 10:41], orig[20:22, 10:41])  # the box's top edge is drawn
    below = np.array(draw_detections(image, result, ["a", "b"], score=0.95))
    assert np.array_equal(below, orig.astype(np.uint8))  # under the score threshold: nothing drawn


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such image file or folder"),
    ("corrupt", "not a readable image"),
    ("empty_folder", "no image files"),
    ("bad_score", "--score must be in [0, 1]"),
])
def test_predict_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, case, needle):
    target = tmp_path / "x.png"
    extra = []
    if case == "corrupt":
        target.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif case == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad_score":
        target = _write_pngs(tmp_path / "in")[0]
        extra = ["--score", "2"]
    out = tmp_path / "out"
    err = one_error_line(runner.invoke(app, ["predict", str(tiny["ckpt"]), str(target), "--out", str(out), *extra]))
    assert needle in err and not out.exists()
