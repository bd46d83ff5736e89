"""`mrcnn validate`: an exported model against the checkpoint it came from (named in its metadata), detection by
detection, and the AP-drop gate, on a model trained here for 150 iterations (AP ~0.3 on its training images, so the
AP numbers are not zeros that agree trivially). `mrcnn bench`: the same artifacts side by side."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import one_error_line
from mrcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from mrcnn.pipeline import evaluate_artifact

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402

runner = CliRunner()
SPLIT = "train2017"  # the images it trained on: 12 images, AP ~0.3


@pytest.fixture(scope="module")
def trained(synth_data, tmp_path_factory):
    """A shapes-tiny model trained 150 iterations on the 12 synthetic images (128 px), and its trt-flavour ONNX."""
    from conftest import tiny_config
    from mrcnn.engine.trainer import train
    from mrcnn.export import export_checkpoint

    out = tmp_path_factory.mktemp("validate")
    res = train(tiny_config(max_iter=150, warmup_iters=10), synth_data, out / "run", log=lambda m: None,
                progress=False, evaluate_at_end=False, device="cpu")
    onnx_path = export_checkpoint(res.checkpoint, out / "model-trt.onnx", target="trt", log=lambda m: None)
    return {"ckpt": res.checkpoint, "onnx": onnx_path, "dir": out}


def test_exported_model_validates_against_its_own_checkpoint(trained, synth_data, tmp_path):
    """No --reference: the checkpoint named in the ONNX metadata. Its AP equals `mrcnn eval` of the checkpoint (an
    independent COCOeval run), the drop is 0, and every detection pairs with its twin within the export tolerances."""
    report_path = tmp_path / "report.json"
    r = runner.invoke(app, ["validate", str(trained["onnx"]), "--data", str(synth_data), "--split", SPLIT,
                            "--max-ap-drop", "0", "--json", str(report_path)])
    assert r.exit_code == 0, r.output[-2000:]
    print(r.stdout[-1200:])
    rep = json.loads(report_path.read_text())
    assert Path(rep["reference"]["path"]) == trained["ckpt"].resolve()
    direct = evaluate_artifact(trained["ckpt"], synth_data, split=SPLIT, device="cpu", log=lambda m: None,
                               progress=False)
    for t in ("bbox", "segm"):
        assert rep["reference"]["metrics"][t]["AP"] == direct[t]["AP"]
        assert direct[t]["AP"] > 0.1, direct[t]  # a model that finds the shapes, not one that finds nothing
        assert abs(rep["ap_drop"][t]["AP"]) <= 1e-4, rep["ap_drop"]
    d = rep["detections"]
    assert d["reference_detections"] >= 20 * 12 // 2 and d["paired"] == d["reference_detections"] == d["detections"]
    assert d["box_abs_diff_px"]["max"] <= 1e-2 and d["score_abs_diff"]["max"] <= 1e-4, d
    assert d["mask_iou"]["min"] >= 0.99, d
    assert "gate --max-ap-drop 0: passed" in r.stdout


def test_gate_fails_on_a_worse_model_with_one_line(trained, synth_data, tmp_path):
    """The same weights keeping 1 detection per image (of ~3 instances): AP drops; --max-ap-drop 0.01 exits 1 with
    the drop in one line, and the drop equals the difference of two independent `evaluate_artifact` runs."""
    ck = load_checkpoint(trained["ckpt"])
    ck["config"]["model"]["detections_per_img"] = 1
    worse = tmp_path / "worse.pt"
    save_checkpoint(worse, {k: v for k, v in ck.items() if k not in ("format", "version")})
    report_path = tmp_path / "report.json"
    r = runner.invoke(app, ["validate", str(worse), "--data", str(synth_data), "--split", SPLIT,
                            "--reference", str(trained["ckpt"]), "--max-ap-drop", "0.01", "--json", str(report_path)])
    err = one_error_line(r)
    rep = json.loads(report_path.read_text())
    print(err, rep["ap_drop"]["bbox"]["AP"], rep["ap_drop"]["segm"]["AP"], rep["detections"]["only_in_reference"])
    assert "AP dropped by" in err and "more than --max-ap-drop 0.01" in err, err
    a = evaluate_artifact(worse, synth_data, split=SPLIT, device="cpu", log=lambda m: None, progress=False)
    b = evaluate_artifact(trained["ckpt"], synth_data, split=SPLIT, device="cpu", log=lambda m: None,
                          progress=False)
    for t in ("bbox", "segm"):
        assert rep["ap_drop"][t]["AP"] == pytest.approx(b[t]["AP"] - a[t]["AP"], abs=1e-12)
    assert max(rep["ap_drop"][t]["AP"] for t in ("bbox", "segm")) > 0.01
    d = rep["detections"]
    assert d["detections"] <= 12 and d["paired"] == d["detections"] and d["only_in_reference"] > 0, d


def _with_source(src: Path, dst: Path, **change) -> Path:
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "mrcnn.source":
            p.value = json.dumps({**json.loads(p.value), **change})
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("change, needle", [({"sha256": "0" * 64}, "has changed since"),
                                            ({"checkpoint": "/nonexistent/model_final.pt"}, "which is not there")])
def test_a_gone_or_changed_source_is_one_line(trained, synth_data, tmp_path, change, needle):
    """Comparing with another model than the one exported would prove nothing: --reference is asked for."""
    path = _with_source(trained["onnx"], tmp_path / "m.onnx", **change)
    err = one_error_line(runner.invoke(app, ["validate", str(path), "--data", str(synth_data)]))
    assert needle in err and "--reference" in err, err


@pytest.mark.parametrize("args, needle", [
    (["--max-ap-drop", "0.01"], "names none; give --reference"),
    (["--max-ap-drop", "-1"], "--max-ap-drop must be >= 0"),
    (["--max-images", "-1"], "--max-images must be >= 0"),
    (["--reference", "x.txt"], "unsupported artifact type"),
])
def test_bad_validate_options_are_one_line(trained, synth_data, tmp_path, args, needle):
    err = one_error_line(runner.invoke(app, ["validate", str(trained["ckpt"]), "--data", str(synth_data), *args]))
    assert needle in err, err


def test_reference_with_other_classes_is_one_line(trained, synth_data, tmp_path):
    ck = load_checkpoint(trained["ckpt"])
    ck["class_names"] = list(reversed(ck["class_names"]))
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in ck.items() if k not in ("format", "version")})
    err = one_error_line(runner.invoke(app, ["validate", str(trained["ckpt"]), "--data", str(synth_data),
                                             "--reference", str(other)]))
    assert "different classes" in err, err


def test_bench_times_each_artifact_on_the_same_images(trained, synth_data, tmp_path):
    """`mrcnn bench CKPT ONNX CKPT --data`: the images are the val split's first ones; each row's detections per call
    are what its predictor gives on them; its statistics are those of its own timed calls; the checkpoint against
    itself runs at about the same speed (taking turns, the machine's noise falls on both)."""
    from mrcnn.engine.bench import bench_images
    from mrcnn.data.layout import open_split
    from mrcnn.runtime import load_artifact

    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", str(trained["ckpt"]), str(trained["onnx"]), str(trained["ckpt"]), "--data",
                            str(synth_data), "--batch", "2", "--iters", "8", "--warmup", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output[-2000:]
    print(r.stdout[-800:])
    rep = json.loads(out.read_text())
    ds = open_split(synth_data, "val2017")
    images = bench_images(synth_data, 2, (1, 1))
    assert [list(im.shape[-2:]) for im in images] == rep["images"]
    assert all(torch.equal(images[i], ds.load_image(i)) for i in range(2))
    rows = rep["rows"]
    assert [row["artifact"] for row in rows] == [str(trained["ckpt"]), str(trained["onnx"]), str(trained["ckpt"])]
    for row in rows:
        pred = load_artifact(row["artifact"], "cpu", log=lambda m: None)
        with torch.inference_mode():
            assert row["detections_per_call"] == sum(len(d["scores"]) for d in pred(images)) > 0
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["iters"] == 8
        assert row["min_ms"] <= row["mean_ms"] and row["img_s"] == pytest.approx(2e3 / row["mean_ms"])
    same = rows[2]["speedup_vs_first"]
    lo, hi = rows[2]["speedup_interval"]
    assert 0.5 < same < 2.0 and lo <= same <= hi, (same, lo, hi)


@pytest.mark.parametrize("args, needle", [(["--size", "480"], "--size must be HxW"),
                                          (["--iters", "1"], "--iters must be >= 2"),
                                          (["--batch", "0"], "--batch must be >= 1"),
                                          (["--size", "0x10"], "positive sides")])
def test_bad_bench_options_are_one_line(trained, args, needle):
    err = one_error_line(runner.invoke(app, ["bench", str(trained["ckpt"]), *args]))
    assert needle in err, err


def test_bench_of_a_missing_artifact_is_one_line(tmp_path):
    err = one_error_line(runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")]))
    assert "nope.onnx" in err, err


def test_pairing_counts_and_differences_on_constructed_detections():
    """pair_detections on detections built to a known answer: shifted boxes (0.25 px), changed scores (0.01), one
    dropped, one of another class added, one moved far off (IoU < 0.5: unpaired on both sides); and empty sides."""
    import pycocotools.mask as mask_util
    import numpy as np

    from mrcnn.engine.validation import pair_detections

    def det(img, cat, x, y, w, h, score):
        m = np.zeros((64, 64), dtype=np.uint8, order="F")
        m[int(y):int(y + h), int(x):int(x + w)] = 1
        rle = mask_util.encode(m)
        return {"image_id": img, "category_id": cat, "bbox": [x, y, w, h], "score": score,
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}

    ref = [det(1, 1, 4, 4, 20, 20, 0.9), det(1, 1, 30, 30, 20, 20, 0.8), det(1, 2, 10, 40, 16, 16, 0.7),
           det(2, 1, 8, 8, 30, 30, 0.6), det(2, 2, 0, 0, 10, 10, 0.5)]
    got = [det(1, 1, 4.25, 4, 20, 20, 0.91), det(1, 1, 30, 30.25, 20, 20, 0.8),  # both paired, 0.25 px / 0.01
           det(2, 1, 8, 8, 30, 30, 0.6),                                          # paired exactly
           det(2, 2, 40, 40, 10, 10, 0.5),                                        # far off: IoU 0
           det(1, 3, 4, 4, 20, 20, 0.4)]                                          # a class the reference lacks
    p = pair_detections(got, ref)
    print(p)
    assert (p["paired"], p["only_here"], p["only_in_reference"]) == (3, 2, 2)
    assert p["box_abs_diff_px"]["max"] == pytest.approx(0.25) and p["score_abs_diff"]["max"] == pytest.approx(0.01)
    assert p["mask_iou"]["min"] == 1.0  # the 0.25 px shifts do not move the integer masks
    empty = pair_detections([], ref)
    assert (empty["paired"], empty["only_in_reference"], empty["box_abs_diff_px"]) == (0, 5, {})
    assert pair_detections(got, [])["only_here"] == 5
