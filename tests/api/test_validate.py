"""`mrcnn eval` of an artifact, and `mrcnn validate`: an exported model against the checkpoint it came from (named in
its metadata), detection by detection, and the AP-drop gate, on a model trained here for 150 iterations (AP ~0.3 on
its training images, so the AP numbers are not zeros that agree trivially)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import one_error_line

from mrcnn.api.validate import evaluate_artifact
from mrcnn.io import file_sha256
from mrcnn.model.checkpoint import load_checkpoint, save_checkpoint

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.export import export_checkpoint  # noqa: E402

runner = CliRunner()
SPLIT = "train2017"  # the images it trained on: 12 images, AP ~0.3


def test_exported_model_validates_against_its_own_checkpoint(trained, synth_data, tmp_path):
    """No --reference: the checkpoint named in the ONNX metadata. Its AP equals `mrcnn eval` of the checkpoint (an
    independent COCOeval run), the drop is 0, and every detection pairs with its twin within the export tolerances."""
    report_path = tmp_path / "report.json"
    r = runner.invoke(
        app,
        [
            "validate",
            str(trained["onnx"]),
            "--data",
            str(synth_data),
            "--split",
            SPLIT,
            "--max-ap-drop",
            "0",
            "--json",
            str(report_path),
        ],
    )
    assert r.exit_code == 0, r.output[-2000:]
    print(r.stdout[-1200:])
    rep = json.loads(report_path.read_text())
    assert Path(rep["reference"]["path"]) == trained["ckpt"].resolve()
    direct = evaluate_artifact(
        trained["ckpt"], synth_data, split=SPLIT, device="cpu", log=lambda m: None, progress=False
    )
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
    r = runner.invoke(
        app,
        [
            "validate",
            str(worse),
            "--data",
            str(synth_data),
            "--split",
            SPLIT,
            "--reference",
            str(trained["ckpt"]),
            "--max-ap-drop",
            "0.01",
            "--json",
            str(report_path),
        ],
    )
    err = one_error_line(r)
    rep = json.loads(report_path.read_text())
    print(err, rep["ap_drop"]["bbox"]["AP"], rep["ap_drop"]["segm"]["AP"], rep["detections"]["only_in_reference"])
    assert "AP dropped by" in err and "more than --max-ap-drop 0.01" in err, err
    a = evaluate_artifact(worse, synth_data, split=SPLIT, device="cpu", log=lambda m: None, progress=False)
    b = evaluate_artifact(trained["ckpt"], synth_data, split=SPLIT, device="cpu", log=lambda m: None, progress=False)
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


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"sha256": "0" * 64}, "has changed since"),
        ({"checkpoint": "/nonexistent/model_final.pt"}, "which is not there"),
    ],
)
def test_a_gone_or_changed_source_is_one_line(trained, synth_data, tmp_path, change, needle):
    """Comparing with another model than the one exported would prove nothing: --reference is asked for."""
    path = _with_source(trained["onnx"], tmp_path / "m.onnx", **change)
    err = one_error_line(runner.invoke(app, ["validate", str(path), "--data", str(synth_data)]))
    assert needle in err and "--reference" in err, err


def _with_source_text(src: Path, dst: Path, text: str) -> Path:
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "mrcnn.source":
            p.value = text
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize(
    "case, needle",
    [
        ("itself, no sha256", "not a checkpoint file"),  # passed --max-ap-drop 0 against itself
        ("itself, a sha256", "not a checkpoint file"),
        ("/dev/zero", "not a checkpoint file"),  # hung hashing it
        ("a FIFO", "not a checkpoint file"),
        ("a directory", "not a checkpoint file"),
        ("no sha256", "records no SHA-256"),
        ("a malformed sha256", "records no SHA-256"),
        ("5 GiB (sparse)", "larger than a checkpoint"),
        ("not JSON", "names no checkpoint file"),
        ("a JSON list", "names no checkpoint file"),
        ("overrides not a list", "overrides are not a list"),
    ],
)
def test_an_artifact_does_not_vouch_for_itself(trained, synth_data, tmp_path, case, needle):
    """validate's default reference is a regular checkpoint file of bounded size whose SHA-256 the export's metadata
    records and that matches; anything else is one line asking for --reference, before anything is read from it."""
    ckpt, out = str(trained["ckpt"]), tmp_path / "m.onnx"
    good = json.dumps({"checkpoint": ckpt, "sha256": file_sha256(ckpt)})
    big = tmp_path / "big.pt"
    if case == "5 GiB (sparse)":
        with open(big, "wb") as f:
            f.truncate(5 << 30)
    if case == "a FIFO":
        os.mkfifo(tmp_path / "fifo.pt")
    text = {
        "itself, no sha256": json.dumps({"checkpoint": str(out)}),
        "itself, a sha256": json.dumps({"checkpoint": str(out), "sha256": "0" * 64}),
        "/dev/zero": json.dumps({"checkpoint": "/dev/zero", "sha256": "0" * 64}),
        "a FIFO": json.dumps({"checkpoint": str(tmp_path / "fifo.pt"), "sha256": "0" * 64}),
        "a directory": json.dumps({"checkpoint": str(tmp_path), "sha256": "0" * 64}),
        "no sha256": json.dumps({"checkpoint": ckpt}),
        "a malformed sha256": json.dumps({"checkpoint": ckpt, "sha256": ["x"]}),
        "5 GiB (sparse)": json.dumps({"checkpoint": str(big), "sha256": "0" * 64}),
        "not JSON": "{checkpoint: model.pt",
        "a JSON list": json.dumps([ckpt]),
        "overrides not a list": json.dumps({**json.loads(good), "overrides": {"a": 1}}),
    }[case]
    path = _with_source_text(trained["onnx"], out, text)
    err = one_error_line(runner.invoke(app, ["validate", str(path), "--data", str(synth_data), "--max-ap-drop", "0"]))
    assert needle in err and "--reference" in err, err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--max-ap-drop", "0.01"], "names none; give --reference"),
        (["--max-ap-drop", "-1"], "--max-ap-drop must be >= 0"),
        (["--max-images", "-1"], "--max-images must be >= 0"),
        (["--reference", "x.txt"], "unsupported artifact type"),
    ],
)
def test_bad_validate_options_are_one_line(trained, synth_data, tmp_path, args, needle):
    err = one_error_line(runner.invoke(app, ["validate", str(trained["ckpt"]), "--data", str(synth_data), *args]))
    assert needle in err, err


def test_reference_with_other_classes_is_one_line(trained, synth_data, tmp_path):
    ck = load_checkpoint(trained["ckpt"])
    ck["class_names"] = list(reversed(ck["class_names"]))
    other = tmp_path / "other.pt"
    save_checkpoint(other, {k: v for k, v in ck.items() if k not in ("format", "version")})
    err = one_error_line(
        runner.invoke(app, ["validate", str(trained["ckpt"]), "--data", str(synth_data), "--reference", str(other)])
    )
    assert "different classes" in err, err


def test_eval_accepts_onnx(tiny_onnx, synth_data):
    r = runner.invoke(app, ["eval", str(tiny_onnx["portable"]), "--data", str(synth_data), "--batch", "2"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "bbox" in r.stdout and "segm" in r.stdout
    assert "classes matched by name" in r.stdout  # the ONNX model's classes come in another order than the data's


def test_eval_max_images(tiny, synth_data, tmp_path):
    """--max-images N evaluates the first N images: the json's metrics and results cover those only."""
    out = tmp_path / "m.json"
    r = runner.invoke(
        app,
        [
            "eval",
            str(tiny["ckpt"]),
            "--data",
            str(synth_data),
            "--max-images",
            "2",
            "--json",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["metrics"]["images"] == 2 and len({d["image_id"] for d in doc["results"]}) <= 2, doc["metrics"]
    err = one_error_line(
        runner.invoke(app, ["eval", str(tiny["ckpt"]), "--data", str(synth_data), "--max-images", "-1"])
    )
    assert "--max-images must be >= 0" in err


@pytest.mark.slow
def test_validate_applies_the_export_overrides_to_the_reference(tiny, synth_data, tmp_path):
    """An ONNX exported with `--set model.detections_per_img=10`: validate's default reference, the checkpoint named
    in the metadata, runs with the same setting (every detection pairs), whereas the checkpoint as saved keeps 50
    per image; the metadata records the override."""
    from mrcnn.api.validate import validate_artifact

    path = export_checkpoint(
        tiny["ckpt"],
        tmp_path / "ten.onnx",
        flavour="portable",
        overrides=["model.detections_per_img=10"],
        log=lambda m: None,
    )
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["mrcnn.source"])["overrides"] == ["model.detections_per_img=10"]
    same = validate_artifact(path, synth_data, device="cpu", max_images=2, log=lambda m: None, progress=False)[
        "detections"
    ]
    saved = validate_artifact(
        path, synth_data, reference=tiny["ckpt"], device="cpu", max_images=2, log=lambda m: None, progress=False
    )["detections"]
    print(
        f"default reference: {same['paired']} of {same['detections']} paired; the saved checkpoint keeps "
        f"{saved['reference_detections']}"
    )
    assert same["detections"] == 20 and same["paired"] == same["reference_detections"] == 20
    assert saved["reference_detections"] > 20 and saved["paired"] == 20
