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
        r = runner.invoke(
            app,
            [
                "predict",
                str(artifact),
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--score",
                str(score),
                "--device",
                "cpu",
            ],
        )
        assert r.exit_code == 0, r.output[-2000:]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "predictions.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == tiny["names"]
        counts, worst = [], 0.0
        for i, (p, want) in enumerate(zip(paths, ref, strict=True)):
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
        print(
            f"{artifact.suffix}: --score {score}: detections per image {counts} of "
            f"{[len(w['scores']) for w in ref]}, max box diff {worst:.2e} px"
        )
        assert worst <= BOX_TOL


def test_overlay_blends_masks_and_leaves_other_pixels():
    import numpy as np

    from mrcnn.deploy.predict import MASK_ALPHA, draw_detections, palette

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8)
    masks = torch.zeros(1, 1, 64, 80)
    masks[..., 25:46, 15:36] = 0.9
    result = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([2]),
        "masks": masks,
    }
    pic = np.array(draw_detections(image, result, ["a", "b"], score=0.5)).astype(np.float64)
    orig = image.permute(1, 2, 0).numpy().astype(np.float64)
    want = np.rint((1 - MASK_ALPHA) * orig[30:41, 20:31] + MASK_ALPHA * np.array(palette(3)[2]))
    assert np.abs(pic[30:41, 20:31] - want).max() <= 1  # float32 blend vs float64 formula
    assert np.array_equal(pic[53:], orig[53:]) and np.array_equal(pic[:, 44:], orig[:, 44:])  # away from box, label
    assert not np.array_equal(pic[20:22, 10:41], orig[20:22, 10:41])  # the box's top edge is drawn
    below = np.array(draw_detections(image, result, ["a", "b"], score=0.95))
    assert np.array_equal(below, orig.astype(np.uint8))  # under the score threshold: nothing drawn


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "no such image file or folder"),
        ("corrupt", "not a readable image"),
        ("empty_folder", "no image files"),
        ("bad_score", "--score must be in [0, 1]"),
    ],
)
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


def _read_predictions(out: Path) -> dict:
    import json

    return json.loads((out / "predictions.json").read_text())


def test_inputs_with_one_stem_get_their_own_overlays_named_in_predictions(tiny, tmp_path):
    """a/x.png, a/x.jpg and b/x.png: three overlays (none overwritten), each of its image's size, and
    predictions.json names each image's overlay."""
    from PIL import Image

    src = _write_pngs(tmp_path / "src")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.open(src[0]).save(tmp_path / "a" / "x.png")
    Image.open(src[1]).save(tmp_path / "a" / "x.jpg")
    Image.open(src[2]).save(tmp_path / "b" / "x.png")
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        ["predict", str(tiny["ckpt"]), str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--score", "0.0"],
    )
    assert r.exit_code == 0, r.output[-2000:]
    doc = _read_predictions(out)
    mapping = {Path(i["file_name"]).relative_to(tmp_path).as_posix(): i.get("overlay") for i in doc["images"]}
    print(mapping, sorted(p.name for p in out.iterdir()))
    assert len(set(mapping.values())) == 3 and None not in mapping.values()
    assert sorted(p.name for p in out.glob("*.png")) == sorted(mapping.values())
    for i in doc["images"]:
        with Image.open(out / i["overlay"]) as im:
            assert im.size == (i["width"], i["height"])


def test_overlay_names_separate_stems_extensions_and_folders():
    from mrcnn.deploy.predict import overlay_names

    files = [Path("a/x.png"), Path("a/x.jpg"), Path("b/x.png"), Path("a/y.png"), Path("c/X.PNG")]
    names = overlay_names(files)
    print(dict(zip(map(str, files), names, strict=True)))
    assert names[3] == "y.png"  # a unique stem keeps its plain name
    assert len({n.lower() for n in names}) == len(files)  # distinct, also on a case-insensitive file system
    assert names[1] == "x_jpg.png"


def test_score_below_the_checkpoints_threshold_lowers_it(tiny, tmp_path):
    """A checkpoint whose box_score_thresh is 0.6: predict --score 0.1 reports the detections scoring 0.1..0.6 (as
    the same checkpoint with its threshold set to 0.1 returns them), not only those above 0.6."""
    from mrcnn.config import Config
    from mrcnn.deploy.predict import read_image
    from mrcnn.model.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny["ckpt"])
    ckpt["config"] = Config.from_dict(ckpt["config"]).override(["model.box_score_thresh=0.6"]).to_dict()
    strict = tmp_path / "strict.pt"
    save_checkpoint(strict, ckpt)
    image = _write_pngs(tmp_path / "in")[0]
    want = load_artifact(strict, "cpu", overrides=["model.box_score_thresh=0.1"])([read_image(image)])[0]
    n_want = int((want["scores"] >= 0.1).sum())
    n_above = int((want["scores"] > 0.6).sum())
    r = runner.invoke(app, ["predict", str(strict), str(image), "--out", str(tmp_path / "out"), "--score", "0.1"])
    assert r.exit_code == 0, r.output[-2000:]
    scores = [a["score"] for a in _read_predictions(tmp_path / "out")["annotations"]]
    print(f"--score 0.1 on a 0.6-threshold checkpoint: {len(scores)} detections (want {n_want}; above 0.6: {n_above})")
    assert len(scores) == n_want > n_above and min(scores) < 0.6


@pytest.mark.slow
def test_score_below_an_exported_models_threshold_is_said(tiny, tmp_path):
    from mrcnn.export import export_checkpoint

    onnx_path = tmp_path / "m.onnx"
    export_checkpoint(
        tiny["ckpt"], onnx_path, flavour="portable", overrides=["model.box_score_thresh=0.3"], log=lambda m: None
    )
    image = _write_pngs(tmp_path / "in")[0]
    r = runner.invoke(app, ["predict", str(onnx_path), str(image), "--out", str(tmp_path / "out"), "--score", "0.1"])
    print(r.output)
    assert r.exit_code == 0, r.output[-2000:]
    assert "below the score threshold built into m.onnx (0.3)" in r.output
    scores = [a["score"] for a in _read_predictions(tmp_path / "out")["annotations"]]
    from mrcnn.deploy.predict import read_image

    want = load_artifact(tiny["ckpt"], "cpu", overrides=["model.box_score_thresh=0.3"])([read_image(image)])[0]
    print(f"ONNX at 0.3, --score 0.1: {len(scores)} detections; the checkpoint at 0.3: {len(want['scores'])}")
    assert all(s > 0.3 for s in scores) and len(scores) == len(want["scores"])


def test_labels_of_overlapping_boxes_do_not_overprint():
    """Three detections on one box and one beside it: each label tag gets a place that no other tag covers."""
    from mrcnn.deploy.predict import label_positions

    boxes = [(40.0, 40.0, 120.0, 120.0)] * 3 + [(45.0, 42.0, 125.0, 118.0)]
    sizes = [(60.0, 12.0)] * 4
    tags = [
        (x, y, x + w, y + h) for (x, y), (w, h) in zip(label_positions(boxes, sizes, (200, 200)), sizes, strict=True)
    ]
    print(tags)
    for i in range(len(tags)):
        for j in range(i):
            a, b = tags[i], tags[j]
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (i, j, a, b)
    assert all(t[0] >= 0 and t[2] <= 200 and t[1] >= 0 and t[3] <= 200 for t in tags)


def test_skip_bad_skips_and_lists_unreadable_images(tiny, tmp_path):
    paths = _write_pngs(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(paths[0].read_bytes()[:100])  # header fine, pixels cut short
    (tmp_path / "in" / "text.jpg").write_text("not an image")
    out = tmp_path / "out"
    stopped = runner.invoke(app, ["predict", str(tiny["ckpt"]), str(tmp_path / "in"), "--out", str(out)])
    assert "not a readable image" in one_error_line(stopped) and not out.exists()
    r = runner.invoke(app, ["predict", str(tiny["ckpt"]), str(tmp_path / "in"), "--out", str(out), "--skip-bad"])
    print(r.output)
    assert r.exit_code == 0, r.output[-2000:]
    for bad in ("broken.png", "text.jpg"):
        assert f"skipped {tmp_path / 'in' / bad}" in r.output
    assert "(2 skipped)" in r.output
    assert sorted(Path(i["file_name"]).name for i in _read_predictions(out)["images"]) == sorted(p.name for p in paths)
