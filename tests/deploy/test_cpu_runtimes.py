"""The CPU compile targets: OpenVINO IRs (`mrcnn build --runtime openvino`) and INT8 Q/DQ exports (`mrcnn export
--int8`, NVIDIA ModelOpt), against the checkpoint they came from (`mrcnn validate`), against ONNX Runtime on the same
export, and a Q/DQ export built into a TensorRT-RTX engine here. Every new error is one line with nothing written.

Model: the shapes-tiny model trained 150 iterations here (conftest `trained`, AP ~0.3 on its 12 training images).
A converted R-50 on real photographs (IR and INT8 against the checkpoint): tests/deploy/test_photographs.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SCORE_TOL, compare_detections, needs_rtx, one_error_line, sample_images

ov = pytest.importorskip("openvino", reason="OpenVINO not installed (pip install 'mrcnn[openvino]')")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.api.validate import validate_artifact  # noqa: E402
from mrcnn.cli.main import app  # noqa: E402
from mrcnn.deploy import load_artifact  # noqa: E402
from mrcnn.deploy.openvino_runtime import build_ir  # noqa: E402
from mrcnn.deploy.serving import Request, ServedModel  # noqa: E402
from mrcnn.export import export_checkpoint  # noqa: E402

runner = CliRunner()
SPLIT = "train2017"  # the images the model trained on (validate's tests use them too)
# INT8 against the float32 checkpoint on these 12 images, as measured (ModelOpt entropy calibration on 8 of them):
# the AP drop and the share of the reference's detections that pair up (box IoU >= 0.5, same class)
INT8_MAX_AP_DROP, INT8_MIN_PAIRED = 0.03, 0.80


def _has_modelopt() -> bool:
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cpu_artifacts(shared, trained, synth_data):
    """The trained model's portable export, its INT8 version, and both as OpenVINO IRs (f32 hint)."""

    def build(d: Path) -> None:
        export_checkpoint(trained["ckpt"], d / "m.onnx", flavour="portable", log=print)
        if _has_modelopt():  # `export --int8`'s second step on this export (the first is the export above)
            from mrcnn.export.quantize import Int8Options, quantize_export

            quantize_export(d / "m.onnx", d / "m-int8.onnx", Int8Options(synth_data, images=8), log=print)
            build_ir(d / "m-int8.onnx", d / "m-int8.xml", log=print)
        build_ir(d / "m.onnx", d / "m.xml", log=print)

    d = shared("cpu-artifacts", build)
    return {
        k: d / f for k, f in (("onnx", "m.onnx"), ("int8", "m-int8.onnx"), ("xml", "m.xml"), ("xml8", "m-int8.xml"))
    }


def _validate(path: Path, data: Path) -> dict:
    return validate_artifact(path, data, split=SPLIT, device="cpu", log=lambda m: None, progress=False)


def _paired_share(rep: dict) -> float:
    d = rep["detections"]
    return d["paired"] / max(1, d["reference_detections"])


def test_openvino_ir_equals_the_checkpoint_and_onnx_runtime(cpu_artifacts, synth_data):
    """The f32 IR: `validate` against the checkpoint finds the same AP (drop <= 0.0005) with every detection paired,
    and on other images it gives ONNX Runtime's detections on the same export within the export tolerances."""
    rep = _validate(cpu_artifacts["xml"], synth_data)
    print(rep["artifact"]["runtime"], rep["ap_drop"], rep["detections"])
    assert rep["artifact"]["runtime"].startswith("OpenVINO ") and "f32" in rep["artifact"]["runtime"]
    assert Path(rep["reference"]["path"]).name == "model_final.pt"  # the export's source, found through the IR
    d = rep["detections"]
    assert d["paired"] == d["reference_detections"] == d["detections"] and d["reference_detections"] >= 60, d
    for t in ("bbox", "segm"):
        assert abs(rep["ap_drop"][t]["AP"]) <= 5e-4, rep["ap_drop"]
    images = sample_images()
    ours = load_artifact(cpu_artifacts["xml"], "cpu", log=print)(images)
    ref = load_artifact(cpu_artifacts["onnx"], "cpu", log=print)(images)
    compare_detections(ref, ours, "OpenVINO vs ONNX Runtime", min_det=1)  # (BOX_TOL, SCORE_TOL, MASK_TOL)


def test_ir_carries_the_metadata(cpu_artifacts):
    src = load_artifact(cpu_artifacts["onnx"], "cpu", log=print)
    ir = load_artifact(cpu_artifacts["xml"], "cpu", log=print, threads=1)
    assert ir.metadata == src.metadata and ir.class_names == src.class_names and ir.cfg == src.cfg
    assert ir.precision == "f32"


def test_int8_export_records_its_calibration_and_holds_qdq(cpu_artifacts, synth_data):
    if not _has_modelopt():
        pytest.skip("NVIDIA ModelOpt not installed (pip install 'mrcnn[int8]')")
    import onnx

    m = onnx.load(str(cpu_artifacts["int8"]))
    meta = {p.key: p.value for p in m.metadata_props}
    calib = json.loads(meta["mrcnn.calibration"])
    n_q = sum(n.op_type == "QuantizeLinear" for n in m.graph.node)
    print(calib, n_q)
    assert meta["mrcnn.precision"] == "int8" and meta["mrcnn.flavour"] == "portable"
    assert calib["images"] == 8 and calib["seed"] == 0 and calib["method"] == "entropy"
    assert calib["split"] == "train2017" and Path(calib["data"]) == synth_data.resolve()
    assert calib["quantizer"].startswith("nvidia-modelopt ")
    assert n_q >= 40, n_q  # the networks' convolutions and feature-map adds
    quantized = {
        c.op_type
        for n in m.graph.node
        if n.op_type == "DequantizeLinear"
        for c in m.graph.node
        if n.output[0] in c.input
    }
    # the networks' inputs: no box arithmetic, score ranking or NMS reads a quantized tensor (RoIAlign and Shape may
    # read a feature map whose Q/DQ a convolution shares)
    assert {"Conv", "Gemm", "Add"} <= quantized and not quantized & {"Sub", "Mul", "Div", "TopK", "Gather"}, quantized


@pytest.mark.parametrize("key", ["int8", "xml8"])
def test_int8_stays_within_its_tolerance_of_the_checkpoint(cpu_artifacts, synth_data, key):
    """The INT8 export on ONNX Runtime and its OpenVINO IR (INT8 kernels): AP drop <= INT8_MAX_AP_DROP and at least
    INT8_MIN_PAIRED of the checkpoint's detections paired."""
    if not cpu_artifacts[key].exists():
        pytest.skip("NVIDIA ModelOpt not installed (pip install 'mrcnn[int8]')")
    rep = _validate(cpu_artifacts[key], synth_data)
    share = _paired_share(rep)
    print(rep["artifact"]["runtime"], rep["ap_drop"], f"paired {share:.3f}", rep["detections"])
    assert rep["artifact"]["runtime"].endswith(", int8")
    assert share >= INT8_MIN_PAIRED, share
    for t in ("bbox", "segm"):
        assert rep["ap_drop"][t]["AP"] <= INT8_MAX_AP_DROP, rep["ap_drop"]


def test_xml_goes_where_an_artifact_goes(cpu_artifacts, synth_data, tmp_path):
    """`predict`, `eval` and `bench` take the .xml (the CLI, in-process), and what `mrcnn serve` runs per request
    (ServedModel) answers with predict's detections of the same file."""
    img = sorted((synth_data / SPLIT).iterdir())[0]  # (an image the model finds shapes on)
    r = runner.invoke(
        app, ["predict", str(cpu_artifacts["xml"]), str(img), "--out", str(tmp_path / "p"), "--score", "0.3"]
    )
    assert r.exit_code == 0, r.output[-1500:]
    predicted = sorted(a["score"] for a in json.loads((tmp_path / "p" / "predictions.json").read_text())["annotations"])
    served = ServedModel(cpu_artifacts["xml"], device="cpu", score=0.3, threads=1, log=print)
    response = served.infer([Request(img.read_bytes())])[0]
    assert not isinstance(response, Exception), response
    got = sorted(float(x) for x in response["scores"][0])
    print(served.runtime, len(got), "detections served,", len(predicted), "predicted")
    assert len(got) == len(predicted) >= 1 and max(abs(a - b) for a, b in zip(got, predicted, strict=True)) <= SCORE_TOL
    r = runner.invoke(app, ["eval", str(cpu_artifacts["xml"]), "--data", str(synth_data), "--max-images", "2"])
    assert r.exit_code == 0 and "bbox" in r.output, r.output[-1500:]
    r = runner.invoke(
        app, ["bench", str(cpu_artifacts["onnx"]), str(cpu_artifacts["xml"]), "--iters", "2", "--warmup", "0"]
    )
    assert r.exit_code == 0 and "OpenVINO" in r.output, r.output[-1500:]


def test_bf16_where_the_cpu_has_it_else_one_line(cpu_artifacts, tmp_path):
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    out = tmp_path / "m-bf16.xml"
    r = runner.invoke(
        app, ["build", str(cpu_artifacts["onnx"]), "--runtime", "openvino", "--precision", "bf16", "-o", str(out)]
    )
    if "BF16" not in caps:
        assert "needs a CPU with bfloat16 support" in one_error_line(r)
        assert list(tmp_path.iterdir()) == []
        return
    assert r.exit_code == 0, r.output
    assert load_artifact(out, "cpu", log=print).precision == "bf16"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--runtime", "openvino", "--precision", "f16"], "--precision must be one of f32, bf16"),
        (["--runtime", "openvino", "--max-shape", "1x64x64"], "TensorRT build options"),
        (["--runtime", "openvino", "-o", "{tmp}/m.plan"], "an OpenVINO IR is an .xml file"),
        (["--runtime", "tensorrt-rtx", "--precision", "bf16"], "--precision applies to --runtime openvino"),
        (["--runtime", "openvinox"], "unknown runtime"),
    ],
)
def test_openvino_build_errors_are_one_line(cpu_artifacts, tmp_path, args, needle):
    work = tmp_path / "w"
    work.mkdir()
    args = [a.replace("{tmp}", str(work)) for a in args]
    r = runner.invoke(app, ["build", str(cpu_artifacts["onnx"]), *args])
    assert needle in one_error_line(r)
    assert list(work.iterdir()) == []


def test_openvino_refuses_the_trt_flavour_and_broken_irs(trained, cpu_artifacts, synth_data, tmp_path):
    err = one_error_line(
        runner.invoke(app, ["build", str(trained["onnx"]), "--runtime", "openvino", "-o", str(tmp_path / "t.xml")])
    )
    assert "TensorRT plugins, which OpenVINO does not have" in err
    assert not (tmp_path / "t.xml").exists()
    lonely = tmp_path / "lonely.xml"
    lonely.write_bytes(cpu_artifacts["xml"].read_bytes())  # without its .bin
    img = next((synth_data / "val2017").iterdir())
    err = one_error_line(runner.invoke(app, ["predict", str(lonely), str(img), "--out", str(tmp_path / "p")]))
    assert "lonely.bin are not beside it" in err
    foreign = tmp_path / "foreign.xml"
    foreign.write_text("<net name='x'></net>")
    foreign.with_suffix(".bin").write_bytes(b"")
    err = one_error_line(runner.invoke(app, ["eval", str(foreign), "--data", str(tmp_path)]))
    assert "foreign.xml" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--int8"], "--int8 needs --calib DATA"),
        (["--calib", "{data}"], "--calib goes with --int8"),
        (["--int8", "--calib", "{data}", "--fp16", "--flavour", "rtx"], "--int8 and --fp16 exclude each other"),
        (["--int8", "--calib", "{data}", "--flavour", "trt"], "--int8 takes --flavour portable or rtx"),
        (["--int8", "--calib", "{data}", "--flavour", "rtx", "--calib-method", "mse"], "--calib-method must be"),
        (["--int8", "--calib", "{data}", "--flavour", "rtx", "--calib-images", "0"], "--calib-images must be >= 1"),
        (["--int8", "--calib", "{tmp}/none", "--flavour", "rtx"], "no such dataset"),
    ],
)
def test_int8_export_errors_are_one_line(tiny, synth_data, tmp_path, args, needle):
    work = tmp_path / "w"
    work.mkdir()
    args = [a.replace("{data}", str(synth_data)).replace("{tmp}", str(tmp_path)) for a in args]
    err = one_error_line(runner.invoke(app, ["export", str(tiny["ckpt"]), "-o", str(work / "m.onnx"), *args]))
    assert needle in err
    assert list(work.iterdir()) == [], "a failed export left files behind"


def test_int8_rtx_export_builds_a_tensorrt_rtx_engine(tiny_onnx, synth_data, tmp_path):
    """A Q/DQ rtx export (the random-weight tiny model, calibrated on 4 synthetic images) parses and builds into an
    INT8 TensorRT-RTX engine on this CPU-only machine; the engine is smaller than the float32 one's weights."""
    needs_rtx()
    if not _has_modelopt():
        pytest.skip("NVIDIA ModelOpt not installed (pip install 'mrcnn[int8]')")
    from mrcnn.deploy.build import build_artifact
    from mrcnn.export.quantize import calibration_images, quantize_onnx

    images = calibration_images(synth_data, 4, log=print)
    quantize_onnx(tiny_onnx["rtx"], tmp_path / "rtx-int8.onnx", images, log=print)
    plan = build_artifact(tmp_path / "rtx-int8.onnx", runtime="tensorrt-rtx", log=print)
    info = json.loads(plan.with_name(plan.name + ".json").read_text())
    print(plan.stat().st_size, info["precision"])
    assert info["precision"] == "int8" and info["metadata"]["mrcnn.precision"] == "int8"
    assert plan.stat().st_size > 1e6
