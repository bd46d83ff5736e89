"""mrcnn.data: synthetic dataset determinism and mask fidelity, COCO loader and bad data, transforms, sampler."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import one_error_line, roboflow
from pycocotools.coco import COCO

from mrcnn.data.coco import CocoDetection
from mrcnn.data.synth import generate_synthetic, render_sample, trace_polygon
from mrcnn.data.transforms import (
    EvalTransform,
    GlobalBatchSampler,
    TrainDataset,
    TrainTransform,
    collate,
    hash_seed,
    hflip,
)
from mrcnn.errors import MrcnnError

N_TRAIN, N_VAL, SIZE, SEED = 8, 4, 128, 0
# pycocotools' Cython decode trips a numpy 2 copy-keyword deprecation on every call; not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _coco(path: Path) -> COCO:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "synth"
    generate_synthetic(out, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=SEED)
    return out


def _copy(data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(data, dst)
    return dst


def _edit_json(root: Path, fn, split: str = "val2017") -> None:
    p = root / "annotations" / f"instances_{split}.json"
    doc = json.loads(p.read_text())
    fn(doc)
    p.write_text(json.dumps(doc))


# -- synthetic dataset ------------------------------------------------------------------------------------------


def test_synth_deterministic(data, tmp_path):
    again = tmp_path / "again"
    calls = []
    generate_synthetic(
        again, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=SEED, progress=lambda d, t: calls.append((d, t))
    )
    a, b = _hashes(data), _hashes(again)
    assert len(a) == N_TRAIN + N_VAL + 3, sorted(a)
    differing = [k for k in a if a[k] != b.get(k)]
    assert a.keys() == b.keys() and not differing, f"files differ between runs: {differing}"
    assert calls[-1] == (N_TRAIN + N_VAL, N_TRAIN + N_VAL), calls[-3:]
    other = tmp_path / "other"
    generate_synthetic(other, n_train=N_TRAIN, n_val=N_VAL, size=SIZE, seed=SEED + 1)
    c = _hashes(other)
    same = [k for k in a if k != "synth.json" and a[k] == c.get(k)]
    assert not same, f"seed {SEED + 1} reproduced files of seed {SEED}: {same}"
    assert not list(tmp_path.glob("*.tmp-*")), "temporary folders left behind"


def test_synth_out_folder_rules(data, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(MrcnnError, match="not empty"):
        generate_synthetic(foreign, n_train=1, n_val=1, size=64)
    assert (foreign / "keep.txt").read_text() == "x"
    # a previous synth output is replaced
    prev = _copy(data, tmp_path)
    s = generate_synthetic(prev, n_train=2, n_val=1, size=64, seed=5)
    assert s["train"]["images"] == 2 and s["val"]["images"] == 1, s
    assert len(list((prev / "train2017").iterdir())) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "foreign"], list(tmp_path.iterdir())


@pytest.mark.parametrize("split,n", [("train2017", N_TRAIN), ("val2017", N_VAL)])
def test_synth_masks_match_pycocotools(data, split, n):
    coco = _coco(data / "annotations" / f"instances_{split}.json")
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle", "star", "ellipse"]
    ious, kinds = [], {"polygon": 0, "rle": 0, "crowd": 0}
    for i in range(n):
        image, insts = render_sample(SEED, split, i, SIZE)
        info = coco.imgs[i + 1]
        assert (info["height"], info["width"]) == image.shape[:2]
        anns = coco.loadAnns(sorted(coco.getAnnIds(imgIds=[i + 1])))
        assert len(anns) == len(insts), (i, len(anns), len(insts))
        for ann, inst in zip(anns, insts, strict=True):
            m = coco.annToMask(ann).astype(bool)
            d = inst["mask"]
            ious.append(float((m & d).sum() / max((m | d).sum(), 1)))
            kinds["crowd" if ann["iscrowd"] else "polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
            # area / bbox consistent with the decoded mask
            ys, xs = np.nonzero(m)
            assert ann["area"] == m.sum(), (ann["id"], ann["area"], int(m.sum()))
            assert ann["area"] >= 30, ann["area"]
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1], ann["bbox"]
    assert min(ious) >= 0.98, f"min IoU annToMask vs drawn mask = {min(ious):.4f}"
    assert kinds["polygon"] > 0 and kinds["rle"] > 0 and kinds["crowd"] > 0, kinds


def test_synth_occlusion_uses_visible_part():
    # somewhere in the first images an instance is partly hidden: its visible mask is smaller than its polygon hull
    overlapped = 0
    for i in range(6):
        _, insts = render_sample(SEED, "train2017", i, SIZE)
        union = np.zeros_like(insts[0]["mask"])
        for inst in insts:
            assert not (union & inst["mask"]).any(), "visible masks of one image overlap"
            union |= inst["mask"]
        overlapped += len(insts) > 1
    assert overlapped > 0, overlapped


def test_trace_polygon_cases():
    import pycocotools.mask as mu

    m = np.zeros((9, 10), bool)
    m[2:5, 1:6] = True
    m[4:8, 3] = True
    poly = trace_polygon(m)
    dec = mu.decode(mu.merge(mu.frPyObjects([poly], 9, 10))).astype(bool)
    assert (dec == m).all(), (poly, dec.astype(int))
    holed = m.copy()
    holed[3, 3] = False
    assert trace_polygon(holed) is None
    two = m.copy()
    two[0, 8] = True
    assert trace_polygon(two) is None
    assert trace_polygon(np.zeros((4, 4), bool)) is None


# -- loader ---------------------------------------------------------------------------------------------------


def test_loader_matches_annotations(data):
    ds = CocoDetection(data, "val2017", logger=lambda m: pytest.fail(m))
    coco = _coco(data / "annotations" / "instances_val2017.json")
    assert ds.class_names == ["circle", "square", "triangle", "star", "ellipse"] and ds.cat_ids == [1, 2, 3, 4, 5]
    assert len(ds) == N_VAL and ds.report() == ""
    crowd_seen = 0
    for i in range(len(ds)):
        image, t = ds[i]
        iid = ds.ids[i]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[iid])) if not a["iscrowd"]]
        crowd_seen += len(coco.getAnnIds(imgIds=[iid], iscrowd=True))
        h, w = coco.imgs[iid]["height"], coco.imgs[iid]["width"]
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, h, w)
        assert t["image_id"] == iid and t["orig_size"] == (h, w) and t["index"] == i
        assert t["masks"].dtype == torch.uint8 and tuple(t["masks"].shape) == (len(anns), h, w)
        for k, a in enumerate(anns):
            diff = int((t["masks"][k].numpy() != coco.annToMask(a)).sum())
            assert diff == 0, f"ann {a['id']}: {diff} pixels differ from annToMask"
            x, y, bw, bh = a["bbox"]
            assert t["boxes"][k].tolist() == [x, y, x + bw, y + bh]
            assert int(t["labels"][k]) == ds.cat_ids.index(a["category_id"]) + 1
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    assert crowd_seen > 0, "no crowd annotation in the val split"
    # the crowd annotation stays in the evaluation COCO object
    assert any(a["iscrowd"] for a in ds.coco.dataset["annotations"])


def test_loader_image_without_annotations(data, tmp_path):
    root = _copy(data, tmp_path)
    _edit_json(root, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 2]))
    ds = CocoDetection(root, "val2017", logger=lambda m: pytest.fail(m))
    image, t = ds[ds.ids.index(2)]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,), t["boxes"].shape
    assert tuple(t["masks"].shape) == (0, *image.shape[-2:]), t["masks"].shape
    # grayscale / RGBA files are converted to RGB
    from PIL import Image

    p = root / "val2017" / ds.coco.imgs[2]["file_name"]
    Image.open(p).convert("LA").save(p)
    assert ds[ds.ids.index(2)][0].shape[0] == 3


def test_coco_ground_truth_equals_pycocotools(data):
    """`ds.coco` is built from the packed arrays; it must be the json's annotations, and COCOeval must score a result
    set against it exactly as against pycocotools' own COCO of the file."""
    from mrcnn.evaluation.coco import coco_eval

    ds = CocoDetection(data, "val2017", logger=lambda m: pytest.fail(m))
    ref = _coco(data / "annotations" / "instances_val2017.json")
    assert sorted(ds.coco.imgs) == sorted(ref.imgs) and sorted(ds.coco.cats) == sorted(ref.cats)
    for iid, im in ref.imgs.items():
        assert {k: ds.coco.imgs[iid][k] for k in ("file_name", "height", "width")} == {
            k: im[k] for k in ("file_name", "height", "width")
        }
    assert sorted(ds.coco.anns) == sorted(ref.anns)
    for aid, a in ref.anns.items():
        ours = ds.coco.anns[aid]
        for key in ("image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"):
            assert ours[key] == a[key], (aid, key, ours[key], a[key])
        assert ds.coco.imgToAnns[a["image_id"]].index(ours) == ref.imgToAnns[a["image_id"]].index(a)  # order
    # a result set: every non-crowd box, shifted, with falling scores, and a random false positive per image
    rng = np.random.default_rng(0)
    results = []
    for k, a in enumerate(a for a in ref.anns.values() if not a["iscrowd"]):
        x, y, w, h = a["bbox"]
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": 1.0 - k * 1e-3,
                "bbox": [x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), w, h],
            }
        )
    for iid in ref.imgs:
        results.append({"image_id": iid, "category_id": 1, "score": 0.5, "bbox": [5.0, 5.0, 30.0, 20.0]})
    ids = sorted(ref.imgs)
    ours, theirs = coco_eval(ds.coco, results, ids, ("bbox",)), coco_eval(ref, results, ids, ("bbox",))
    assert ours == theirs, (ours, theirs)
    assert 0.1 < ours["bbox"]["AP"] < 1.0, ours


def test_evaluation_leaves_out_unreadable_images(data, tmp_path):
    """A corrupt image is not evaluated: an oracle predictor scores AP 1.0 on the rest, each image predicted once
    (not the next image in its place, predicted twice, its detections counted twice)."""
    from mrcnn.evaluation.coco import evaluate

    root = _copy(data, tmp_path)
    clean = CocoDetection(root, "val2017")
    truth, instances = {}, 0
    for i in range(len(clean)):
        image, t = clean[i]
        truth[image.numpy().tobytes()] = t
        instances += len(t["labels"]) if t["image_id"] != 2 else 0
    (root / "val2017" / "000000000002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    lines = []
    ds = CocoDetection(root, "val2017", logger=lines.append)

    def oracle(images):
        out = []
        for im in images:
            t = truth[im.numpy().tobytes()]
            n = len(t["labels"])
            out.append(
                {
                    "boxes": t["boxes"],
                    "scores": torch.ones(n),
                    "labels": t["labels"],
                    "masks": t["masks"][:, None].float(),
                }
            )
        return out

    metrics, results = evaluate(oracle, ds, batch_size=2, log=lambda m: None, progress=False)
    assert len(lines) == 1 and "000000000002.png" in lines[0], lines
    assert {r["image_id"] for r in results} == set(ds.ids) - {2}, {r["image_id"] for r in results}
    assert len(results) == instances, (len(results), instances)
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0), metrics


BAD_CASES = {
    # name: (edit of the val json, expected reason in report, text the strict error names)
    "unknown image": (lambda d: d["annotations"][0].update(image_id=999), "unknown image", "annotation id 1"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=77), "unknown category", "annotation id 1"),
    "zero area": (lambda d: d["annotations"][0].update(bbox=[3, 4, 0, 0], area=0), "zero area", "annotation id 1"),
    "degenerate box": (lambda d: d["annotations"][0].update(bbox=[3, 4, 0.5, 9]), "degenerate box", "annotation id 1"),
    "broken polygon": (
        lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]),
        "broken polygon",
        "annotation id 1",
    ),
    "missing image": (None, "missing image", "000000000001.png"),
    # pycocotools' index needs annotation ids (a missing one was a KeyError traceback before)
    "annotation without id": (lambda d: d["annotations"][0].pop("id"), "bad annotation", "annotation #0"),
    "duplicate annotation id": (
        lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
        "duplicate annotation",
        "annotation id 1",
    ),
    "polygon of strings": (
        lambda d: d["annotations"][0].update(segmentation=[["1", 2, 3, 4, 5, 6]]),
        "broken polygon",
        "annotation id 1",
    ),
    "infinite coordinate": (
        lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 1e999]]),
        "broken polygon",
        "annotation id 1",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_data(data, tmp_path, case):
    edit, reason, named = BAD_CASES[case]
    root = _copy(data, tmp_path)
    if edit is None:
        (root / "val2017" / "000000000001.png").unlink()
    else:
        _edit_json(root, edit)
    lines = []
    ds = CocoDetection(root, "val2017", logger=lines.append)
    assert len(lines) == 1 and named in lines[0], lines
    assert all("\n" not in ln for ln in lines)
    assert ds.skipped == {reason: 1}, ds.skipped
    assert ds.report() == f"skipped: 1 {reason}", ds.report()
    n_img = N_VAL - (case == "missing image")
    assert len(ds) == n_img, len(ds)
    for i in range(len(ds)):  # everything left loads
        ds[i]
    with pytest.raises(MrcnnError) as e:
        CocoDetection(root, "val2017", strict=True, logger=lines.append)
    assert named in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_corrupt_image(data, tmp_path):
    root = _copy(data, tmp_path)
    (root / "val2017" / "000000000002.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    lines = []
    ds = CocoDetection(root, "val2017", logger=lines.append)
    assert len(ds) == N_VAL and not lines  # found only when read
    _, t = ds[1]
    assert t["image_id"] == 3 and t["index"] == 2, (t["image_id"], t["index"])
    _, t = ds[1]  # second time: no second warning
    assert len(lines) == 1 and "000000000002.png" in lines[0], lines
    assert ds.skipped == {"corrupt image": 1} and ds.report() == "skipped: 1 corrupt image", ds.skipped
    strict = CocoDetection(root, "val2017", strict=True)
    strict[0]
    with pytest.raises(MrcnnError, match="000000000002.png") as e:
        strict[1]
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text,where",
    [
        ('{"images": [], "annotations": [\n  {"id": 1,,}]}', "line 2 column"),
        ('{"images": [], "annotations": []}', "missing 'categories'"),
        ("[1, 2]", "top level is list"),
    ],
)
def test_malformed_json(data, tmp_path, text, where):
    root = _copy(data, tmp_path)
    (root / "annotations" / "instances_val2017.json").write_text(text)
    with pytest.raises(MrcnnError) as e:
        CocoDetection(root, "val2017")
    msg = str(e.value)
    assert "instances_val2017.json" in msg and where in msg and "\n" not in msg, msg


def test_missing_annotation_file(tmp_path):
    with pytest.raises(MrcnnError, match="annotation file not found"):
        CocoDetection(tmp_path, "val2017")


# -- dataset layouts: COCO 2017, Roboflow, a dataset file --------------------------------------------------------


def _dataset_file(data: Path, where: Path) -> Path:
    """A dataset .json elsewhere naming the synthetic set's files by paths relative to itself."""
    import os

    where.mkdir(parents=True)
    rel = lambda p: os.path.relpath(p, where)  # noqa: E731
    spec = {
        s: {"annotations": rel(data / "annotations" / f"instances_{s}2017.json"), "images": rel(data / f"{s}2017")}
        for s in ("train", "val")
    }
    (where / "data.json").write_text(json.dumps(spec))
    return where / "data.json"


def _same_samples(a: CocoDetection, b: CocoDetection) -> None:
    assert a.class_names == b.class_names and len(a) == len(b) > 0
    for i in range(len(a)):
        ta, tb = a._target(i), b._target(i)
        assert a.image_path(i).read_bytes() == b.image_path(i).read_bytes()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]) if torch.is_tensor(ta[k]) else ta[k] == tb[k], (i, k)


@pytest.mark.parametrize("layout", ["roboflow", "dataset_file"])
def test_other_layouts_read_the_same_samples(data, tmp_path, layout):
    from mrcnn.data.layout import open_split

    root = roboflow(data, tmp_path / "rf") if layout == "roboflow" else _dataset_file(data, tmp_path / "spec")
    for split, coco_split in (("train", "train2017"), ("val", "val2017"), ("val2017", "val2017")):
        a, b = open_split(root, split, logger=pytest.fail), CocoDetection(data, coco_split)
        _same_samples(a, b)
        assert a.coco.dataset == b.coco.dataset  # the ground truth evaluation scores against
    assert open_split(root, "test", required=False) is None


@pytest.mark.parametrize(
    "case,needle",
    [
        (
            "empty_folder",
            "no 'train' split (looked for annotations/instances_train2017.json, train/_annotations.coco.json",
        ),
        ("no_such_path", "no such dataset folder or file"),
        ("spec_without_split", "the dataset file has no 'train' split"),
        ("spec_bad_entry", 'needs exactly "annotations" and "images" paths'),
        ("spec_not_json", "not a readable dataset file (JSONDecodeError"),
        ("spec_missing_file", "annotation file not found"),
    ],
)
def test_dataset_layout_errors_are_one_line(tmp_path, case, needle):
    from mrcnn.data.layout import open_split

    target = tmp_path / "d"
    if case == "empty_folder":
        target.mkdir()
    elif case != "no_such_path":
        target = tmp_path / "data.json"
        target.write_text(
            {
                "spec_without_split": '{"val": {"annotations": "a.json", "images": "im"}}',
                "spec_bad_entry": '{"train": {"annotations": "a.json"}}',
                "spec_not_json": "{train: a.json",
                "spec_missing_file": '{"train": {"annotations": "a.json", "images": "im"}}',
            }[case]
        )
    with pytest.raises(MrcnnError) as e:
        open_split(target, "train")
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_data_check_counts_equal_pycocotools(data):
    from mrcnn.data.check import check_dataset

    lines: list[str] = []
    report = check_dataset(data, decode=True, log=lines.append, progress=False)
    for split in ("train", "val"):
        coco = _coco(data / "annotations" / f"instances_{split}2017.json")
        anns = coco.dataset["annotations"]
        r = report[split]
        inst = [a for a in anns if not a["iscrowd"]]
        assert (r["images"], r["instances"], r["crowd"]) == (len(coco.imgs), len(inst), len(anns) - len(inst))
        assert r["images_without_instances"] == sum(1 for i in coco.imgs if not any(a["image_id"] == i for a in inst))
        assert r["per_class"] == {
            c["name"]: sum(1 for a in inst if a["category_id"] == c["id"]) for c in coco.dataset["categories"]
        }
        assert r["skipped"] == {}
    assert sum("nothing skipped" in line for line in lines) == 2


def test_data_check_lists_every_problem_and_fails(data, tmp_path):
    """A missing image, a degenerate box and (found only by --decode) a corrupt image file: each one warning line,
    then exit 1 with one error line counting them."""
    from typer.testing import CliRunner

    from mrcnn.cli.main import app

    root = _copy(data, tmp_path)
    (root / "val2017" / "000000000001.png").unlink()
    _edit_json(root, lambda d: d["annotations"][-1].update(bbox=[3, 4, 0.5, 9]))
    victim = sorted((root / "train2017").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:200])
    runner = CliRunner()
    fast = runner.invoke(app, ["data", "check", str(root)])
    assert "2 problem(s)" in one_error_line(fast)
    r = runner.invoke(app, ["data", "check", str(root), "--decode"])
    assert "3 problem(s)" in one_error_line(r)
    warnings = [line for line in r.stdout.splitlines() if "warning:" in line and line.endswith(": skipped")]
    assert len(warnings) == 3 and any("missing image" in w for w in warnings), r.stdout
    assert any("degenerate box" in w for w in warnings) and any(victim.name in w for w in warnings), warnings


# -- transforms, dataset, sampler -------------------------------------------------------------------------------


def test_transforms(data):
    ds = CocoDetection(data, "train2017")
    image, target = ds[3]
    g = torch.Generator().manual_seed(0)
    img, t = EvalTransform(100, 150)(image, target, g)
    H, W = image.shape[-2:]
    assert img.dtype == torch.float32 and float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert min(img.shape[-2:]) == 100 or max(img.shape[-2:]) == 150, img.shape
    assert t["masks"].shape[-2:] == img.shape[-2:], (t["masks"].shape, img.shape)
    assert t["orig_size"] == (H, W) and t["image_id"] == target["image_id"] and t["index"] == 3
    sx = img.shape[-1] / W
    assert torch.allclose(t["boxes"][:, 0], target["boxes"][:, 0] * sx, atol=1e-4)
    # flip twice = identity; flip moves boxes with the mask
    fi, ft = hflip(img, t)
    ffi, fft = hflip(fi, ft)
    assert torch.equal(fft["boxes"], t["boxes"]) and torch.equal(ffi, img) and torch.equal(fft["masks"], t["masks"])
    m = ft["masks"][0]
    xs = torch.nonzero(m.any(0)).flatten()
    assert abs(float(xs.min()) - float(ft["boxes"][0, 0])) <= 2.0, (xs.min(), ft["boxes"][0])
    # TrainTransform flips according to the generator; always with p=1, never with p=0
    always = TrainTransform(100, 150, 1.0)(image, target, torch.Generator().manual_seed(1))
    never = TrainTransform(100, 150, 0.0)(image, target, torch.Generator().manual_seed(1))
    assert torch.equal(always[0], fi) and torch.equal(never[0], img)
    assert torch.equal(always[1]["boxes"], ft["boxes"])


def test_multi_scale_training_draws_each_size_per_sample(data):
    """input.train_min_sizes: each sample's shorter side is one of the sizes (longer side capped), drawn from the
    sample's seed: the same key gives the same size, and over 24 draws every size occurs."""
    from mrcnn.config import get_config

    cfg = get_config("shapes-tiny", ["input.train_min_sizes=64,96,128", "input.max_size=1000"])
    assert cfg.input.train_min_sizes == (64, 96, 128)
    base = CocoDetection(data, "train2017")
    ds = TrainDataset(base, TrainTransform(cfg.input.min_size, 1000, 0.5, cfg.input.train_min_sizes), seed=3)
    sides = [min(ds[(e, i)][0].shape[-2:]) for e in range(3) for i in range(len(base))]
    again = [min(ds[(e, i)][0].shape[-2:]) for e in range(3) for i in range(len(base))]
    assert sides == again and set(sides) == {64, 96, 128}, sorted(set(sides))
    capped = TrainTransform(128, 150, 0.5, (128, 256))
    for k in range(8):
        image, _ = capped(base[0][0], base[0][1], torch.Generator().manual_seed(k))
        assert max(image.shape[-2:]) <= 150


def test_train_dataset_seeded(data):
    ds = TrainDataset(CocoDetection(data, "train2017"), TrainTransform(96, 128, 0.5), seed=7)
    flips = []
    for e in range(4):
        ds.set_epoch(e)
        a, ta = ds[2]
        b, tb = ds[(e, 2)]
        assert torch.equal(a, b) and ta["seed"] == tb["seed"] == hash_seed(7, e, 2, 1)
        flips.append(ta["boxes"][:, 0].tolist())
    assert len({tuple(f) for f in flips}) == 2, flips  # both flipped and unflipped across 4 epochs
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["images"].shape[0] == 3 and batch["images"].shape[-1] % 32 == 0 and batch["images"].shape[-2] % 32 == 0
    assert batch["image_sizes"].dtype == torch.int64 and batch["indices"] == [0, 1, 2]
    assert batch["image_ids"] == [ds.dataset.ids[i] for i in range(3)]
    assert all(len(s) == 2 for s in batch["orig_sizes"])


def test_hash_seed():
    assert hash_seed(1, 2, 3) == hash_seed(1, 2, 3) and hash_seed(1, 2, 3) != hash_seed(1, 2, 4)
    assert 0 <= hash_seed(0) < 2**63 and hash_seed(12, 3) != hash_seed(1, 23)
    # stable across processes (not Python's salted hash): pinned value
    import hashlib as h

    assert hash_seed(5, 6) == int.from_bytes(h.blake2b(b"5,6", digest_size=8).digest(), "little") & (2**63 - 1)


def test_sampler_global_batches():
    s = GlobalBatchSampler(10, 4, seed=3)
    seen = []
    for it in range(5):  # 20 positions = 2 epochs
        b = s.batch_indices(it)
        assert len(b) == 4
        seen += b
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10)), seen
    assert seen[:10] != seen[10:], "same permutation in two epochs"
    for it in range(5):
        g = s.batch_indices(it)
        one = s.local(it, 0, 1, 0, 2) + s.local(it, 0, 1, 1, 2)
        ddp = s.local(it, 0, 2, 0, 1) + s.local(it, 1, 2, 0, 1)
        mixed = [i for m in range(2) for r in range(2) for i in s.local(it, r, 2, m, 2)]
        assert one == ddp == g == mixed, (it, g, one, ddp, mixed)
    assert GlobalBatchSampler(10, 4, seed=3).batch_indices(3) == s.batch_indices(3)
    assert GlobalBatchSampler(10, 4, seed=4).batch_indices(0) != s.batch_indices(0)
    assert list(s.micro_batches(0, 1, rank=1, world=2, accum=2, pairs=False)) == [
        [s.batch_indices(0)[1]],
        [s.batch_indices(0)[3]],
    ]
    with pytest.raises(MrcnnError, match="divisible"):
        s.local(0, 0, 3, 0, 1)


def _mixed_batches(s: GlobalBatchSampler, groups: list[int], iters: int) -> int:
    return sum(len({groups[i] for i in s.batch_indices(t)}) > 1 for t in range(iters))


@pytest.mark.parametrize("n,batch", [(10, 4), (37, 4), (101, 8), (333, 16), (50, 16)])
def test_sampler_aspect_ratio_grouping(n, batch):
    rnd = np.random.default_rng(n)
    groups = (rnd.random(n) < 0.4).astype(int).tolist()  # 40% portrait
    s = GlobalBatchSampler(n, batch, seed=5, groups=groups)
    plain = GlobalBatchSampler(n, batch, seed=5)
    epochs = 4
    for e in range(epochs):  # every epoch still visits each sample exactly once, nothing dropped
        assert sorted(s.permutation(e)) == list(range(n)), e
    iters = epochs * n // batch
    mixed, mixed_plain = _mixed_batches(s, groups, iters), _mixed_batches(plain, groups, iters)
    # per epoch at most: one batch of leftovers per group, and the batch straddling into the next epoch
    assert mixed <= 3 * epochs, (mixed, iters, mixed_plain)
    if n >= 4 * batch:
        assert mixed < mixed_plain / 2, (mixed, mixed_plain, iters)
    for it in range(iters):  # the global batch is a function of (seed, iteration): splits cut the same batch
        g = s.batch_indices(it)
        ddp_accum = [i for m in range(2) for r in range(2) for i in s.local(it, r, 2, m, 2)]
        assert ddp_accum == g == GlobalBatchSampler(n, batch, seed=5, groups=groups).batch_indices(it), it
    # a single group (e.g. square synthetic images) changes nothing
    assert [GlobalBatchSampler(n, batch, seed=5, groups=[1] * n).batch_indices(t) for t in range(iters)] == [
        plain.batch_indices(t) for t in range(iters)
    ]
    with pytest.raises(MrcnnError, match="group ids"):
        GlobalBatchSampler(n, batch, groups=groups[:-1])


def test_aspect_ratio_grouping_cuts_padding():
    """COCO's two common shapes, 640x480 and 480x640 (2:1), resized to 800 / 1333: padded pixels per image of batches
    of 4 with and without grouping, against each image padded alone (the least any batching can do)."""
    from mrcnn.model.preprocess import padded_size, resize_scale

    rnd = np.random.default_rng(0)
    n, batch = 240, 4
    groups = (rnd.random(n) < 1 / 3).astype(int).tolist()
    sizes = [(800, 1066) if g == 0 else (1066, 800) for g in groups]  # floor(480 * 800/480 ...), as resize gives
    assert all(abs(resize_scale(480, 640, 800, 1333) * 640 - max(hw)) < 1 for hw in sizes)

    def padded(idx: list[int]) -> int:
        h, w = padded_size([sizes[i] for i in idx], 32)
        return len(idx) * h * w

    alone = sum(padded([i]) for i in range(n))
    per_image = {}
    for name, g in (("grouped", groups), ("plain", None)):
        s = GlobalBatchSampler(n, batch, seed=0, groups=g)
        per_image[name] = sum(padded(s.batch_indices(t)) for t in range(n // batch)) / alone
    print(
        f"padded pixels / each image padded alone: grouped {per_image['grouped']:.3f}, "
        f"ungrouped {per_image['plain']:.3f}"
    )
    assert per_image["grouped"] <= 1.03, per_image
    # what grouping saves here (expected ~1.28: 79% of random batches of 4 are mixed and pad to 1088 x 1088)
    assert per_image["plain"] >= 1.2, per_image


def test_coco_aspect_groups(data, tmp_path):
    """aspect_groups() reads the json sizes (synthetic images are square or 4:3 landscape); square images padded on
    disk to landscape (json updated) move to group 0."""
    from PIL import Image

    root = _copy(data, tmp_path)
    before = CocoDetection(root, "val2017")
    shapes = [tuple(before[k][0].shape[1:]) for k in range(N_VAL)]
    assert before.aspect_groups() == [int(h >= w) for h, w in shapes], shapes
    square = [k for k, (h, w) in enumerate(shapes) if h == w]
    assert square and len(square) < N_VAL, shapes  # both groups present in the fixture
    widened = set(square[:1])

    def widen(doc):
        for k, im in enumerate(sorted(doc["images"], key=lambda im: im["id"])):
            if k in widened:
                p = root / "val2017" / im["file_name"]
                with Image.open(p) as src:
                    canvas = Image.new("RGB", (src.width + 40, src.height))
                    canvas.paste(src.convert("RGB"), (0, 0))
                canvas.save(p)
                im["width"] += 40

    _edit_json(root, widen)
    ds = CocoDetection(root, "val2017")
    shapes = [tuple(ds[k][0].shape[1:]) for k in range(N_VAL)]
    assert ds.aspect_groups() == [0 if k in widened else int(h >= w) for k, (h, w) in enumerate(shapes)], shapes
    assert all(w > h for k, (h, w) in enumerate(shapes) if k in widened), shapes


def test_evaluation_batches_one_aspect_group_at_a_time(data):
    from mrcnn.evaluation.coco import evaluate

    ds = CocoDetection(data, "val2017")
    groups = ds.aspect_groups()
    assert 0 < sum(groups) < len(groups), groups
    seen: list[list[int]] = []

    def predictor(images):  # records each batch's orientations; predicts nothing
        seen.append([int(im.shape[-2] >= im.shape[-1]) for im in images])
        return [
            {
                "boxes": torch.zeros(0, 4),
                "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 1, *im.shape[-2:]),
            }
            for im in images
        ]

    evaluate(predictor, ds, batch_size=2, log=lambda m: None, progress=False)
    flat = [g for b in seen for g in b]
    assert sorted(flat) == sorted(groups) and flat == sorted(flat), seen  # every image once, landscape first
    assert sum(len(set(b)) > 1 for b in seen) <= 1, seen


def test_datasets_pickle_for_spawned_workers(data):
    """DataLoader workers under spawn / forkserver (Python 3.14's default on Linux) receive pickled datasets; the
    trainer's logger is a closure, which does not pickle: the copy logs to stderr."""
    import pickle

    base = CocoDetection(data, "train2017", logger=lambda m: None)
    ds = TrainDataset(base, TrainTransform(128, 128), seed=1)
    copy = pickle.loads(pickle.dumps(ds))
    a, b = ds[(2, 3)], copy[(2, 3)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"]) and a[1]["seed"] == b[1]["seed"]
    assert copy.dataset.logger is not base.logger and base.logger("x") is None


# -- memory of forked DataLoader workers ------------------------------------------------------------------------


def _private_mib() -> float:
    kb = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                kb += int(line.split()[1])
    return kb / 1024


def _forked_growth(work) -> float:
    """Private memory (MiB) a forked child gains while it runs `work()`: the pages it copies from its parent."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()

    def child():
        before = _private_mib()
        work()
        q.put(_private_mib() - before)

    p = ctx.Process(target=child)
    p.start()
    growth = q.get()
    p.join()
    assert p.exitcode == 0
    return growth


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc/<pid>/smaps_rollup")
def test_forked_workers_share_annotations(tmp_path):
    """A DataLoader worker forked from the trainer reads every target of the dataset; it must not copy the dataset's
    annotations into its own memory. Peer: the same reads through pycocotools' COCO index (json objects, as in
    torchvision's CocoDetection), whose reference counts change on every read, so the worker copies their pages."""
    rng = np.random.default_rng(0)
    n_img, per_img, coords, hw = 3000, 8, 40, 64
    (tmp_path / "train2017").mkdir()
    (tmp_path / "annotations").mkdir()
    images, anns = [], []
    for i in range(1, n_img + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "height": hw, "width": hw})
        (tmp_path / "train2017" / f"{i}.jpg").touch()  # never decoded here: only targets are read
        for _ in range(per_img):
            poly = (rng.uniform(4, hw - 4, coords)).round(2).tolist()
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 100.0,
                    "bbox": [4.0, 4.0, 50.0, 50.0],
                    "segmentation": [poly],
                }
            )
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    ds = CocoDetection(tmp_path, "train2017", logger=lambda m: pytest.fail(m))
    peer = _coco(path)

    def ours():
        for i in range(len(ds)):
            ds._target(i)

    def theirs():
        for iid in peer.getImgIds():
            for a in peer.imgToAnns[iid]:
                peer.annToMask(a)

    g_ours, g_peer = _forked_growth(ours), _forked_growth(theirs)
    print(
        f"private memory a forked worker gains reading all {len(anns)} annotations: ours {g_ours:.1f} MiB, "
        f"pycocotools COCO {g_peer:.1f} MiB"
    )
    assert g_peer >= 10, f"the peer copied only {g_peer:.1f} MiB: the measurement does not see copy-on-write"
    assert g_ours <= 0.25 * g_peer, (g_ours, g_peer)


def _exif_dataset(root: Path, json_size: tuple[int, int]) -> np.ndarray:
    """One image meant to be seen as 80 wide x 48 high (a red box on grey), stored turned on its side with EXIF
    orientation 6 ("turn 90 degrees clockwise to view"), as a phone held upright stores it. The json records
    `json_size` (w, h) and one box annotation. Returns the image as meant to be seen."""
    from PIL import Image

    seen = np.full((48, 80, 3), 90, np.uint8)
    seen[10:30, 20:60] = (220, 30, 30)
    seen[40:44, 70:76] = (10, 200, 10)  # asymmetric: any wrong turn or mirror changes the pixels
    stored = Image.fromarray(seen).transpose(Image.Transpose.ROTATE_90)  # 48 wide x 80 high on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "val2017").mkdir(parents=True)
    stored.save(root / "val2017" / "phone.png", exif=exif)
    (root / "annotations").mkdir()
    w, h = json_size
    doc = {
        "images": [{"id": 1, "file_name": "phone.png", "width": w, "height": h}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [20, 10, 40, 20],
                "area": 800,
                "iscrowd": 0,
                "segmentation": [[20, 10, 60, 10, 60, 30, 20, 30]],
            }
        ],
        "categories": [{"id": 1, "name": "box"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return seen


def test_exif_orientation_is_applied_as_annotation_tools_show_the_image(tmp_path):
    """The loader and `predict` read the image as meant to be seen (PIL alone gives the stored, sideways pixels:
    48x80 against the json's 80x48, which skipped the sample as a size mismatch), so the box's mask covers the red
    pixels; a json whose size fits neither is a mismatch that names the orientation."""
    from PIL import Image

    from mrcnn.deploy.predict import read_image

    seen = _exif_dataset(tmp_path / "d", (80, 48))
    with Image.open(tmp_path / "d" / "val2017" / "phone.png") as im:
        assert im.size == (48, 80)  # stored sideways
    ds = CocoDetection(tmp_path / "d", "val2017", logger=lambda m: pytest.fail(m))
    image, target = ds[0]
    assert torch.equal(image, torch.from_numpy(seen).permute(2, 0, 1)), "not the image as meant to be seen"
    assert torch.equal(read_image(tmp_path / "d" / "val2017" / "phone.png"), image)
    red = (image[0] == 220) & (image[1] == 30)
    mask = target["masks"][0].bool()
    print(f"red pixels {int(red.sum())}, mask pixels {int(mask.sum())}, overlap {int((red & mask).sum())}")
    assert int((red & mask).sum()) == int(red.sum()) == 800

    _exif_dataset(tmp_path / "e", (60, 60))
    warnings: list[str] = []
    ds = CocoDetection(tmp_path / "e", "val2017", logger=warnings.append)
    assert ds.load_image(0) is None
    assert (
        len(warnings) == 1
        and "image size 80x48 (after its EXIF orientation 6) differs from annotation 60x60" in warnings[0]
    ), warnings
