"""`mrcnn build` and `mrcnn export --engine`: the rtx graph builds into a TensorRT-RTX engine on this CPU machine;
bad input is one line and writes nothing."""

from __future__ import annotations

import json
import time

import pytest
from helpers import float_elements, needs_rtx, one_error_line

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402

runner = CliRunner()


def test_rtx_graph_builds_into_a_tensorrt_rtx_engine_on_cpu(tiny_onnx, synth_data, tmp_path):
    """docs/design.md §6 claim 5: `mrcnn build` makes the whole `rtx` graph (backbone to masks) a TensorRT-RTX engine on
    this CPU machine (CPU-only AOT), dynamic batch 1..2 and size 64..512, with a description beside it. The
    portable graph does not build: TensorRT-RTX 1.7 has no RoiAlign or NonZero importer and no NonMaxSuppression
    kernel; that is one error line naming the parser's reason, and no file."""
    trt = needs_rtx()
    plan = tmp_path / "tiny.plan"
    t0 = time.perf_counter()
    r = runner.invoke(
        app,
        [
            "build",
            str(tiny_onnx["rtx"]),
            "-o",
            str(plan),
            "--min-shape",
            "1x64x64",
            "--opt-shape",
            "1x256x256",
            "--max-shape",
            "2x512x512",
        ],
    )
    dt = time.perf_counter() - t0
    assert r.exit_code == 0, r.stdout + r.stderr
    info = json.loads((tmp_path / "tiny.plan.json").read_text())
    print(
        f"TensorRT-RTX {trt.__version__}: the rtx graph -> engine of {plan.stat().st_size / 1e6:.1f} MB in "
        f"{dt:.1f} s; profile {info['profile']}"
    )
    assert plan.stat().st_size > 5e6  # the weights (9.6 MB in float32) are in the engine
    assert info["profile"]["images"] == {"min": [1, 64, 64], "opt": [1, 256, 256], "max": [2, 512, 512]}
    assert info["runtime"] == "tensorrt-rtx" and info["metadata"]["mrcnn.flavour"] == "rtx"
    bad = tmp_path / "portable.plan"
    err = one_error_line(runner.invoke(app, ["build", str(tiny_onnx["portable"]), "-o", str(bad)]))
    print(f"portable: {err}")
    assert ("RoiAlign" in err or "NonZero" in err) and "--flavour rtx" in err
    assert not bad.exists() and not list(tmp_path.glob("portable.plan*"))


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "no such ONNX file"),
        ("not onnx", "not a readable ONNX model"),
        ("bad shape", "expected BxHxW"),
        ("min > max", "min <= opt <= max"),
        ("not a multiple", "multiples of size_divisible=32"),
        ("unknown runtime", "unknown runtime"),
        ("fp16 of a float32 graph", "export it with `mrcnn export CKPT --flavour rtx --fp16`"),
    ],
)
def test_build_bad_input_is_one_line_and_writes_nothing(tiny_onnx, tmp_path, case, needle):
    needs_rtx()
    src = str(tiny_onnx["rtx"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    args = {
        "missing": [str(tmp_path / "none.onnx")],
        "not onnx": [str(junk)],
        "bad shape": [src, "--max-shape", "2x512"],
        "min > max": [src, "--min-shape", "2x64x64", "--max-shape", "1x512x512"],
        "not a multiple": [src, "--min-shape", "1x64x64", "--opt-shape", "1x100x100", "--max-shape", "1x512x512"],
        "unknown runtime": [src, "--runtime", "onnxruntime"],
        "fp16 of a float32 graph": [src, "--fp16"],
    }[case]
    out = tmp_path / "out.plan"
    err = one_error_line(runner.invoke(app, ["build", *args, "-o", str(out)]))
    assert needle in err, err
    assert not list(tmp_path.glob("out.plan*"))


def test_export_engine_builds_the_plan_too(tiny, tiny_fp16, tmp_path):
    """`mrcnn export --flavour rtx --engine`: the ONNX and its TensorRT-RTX engine in one command (the default
    profile: shapes-tiny pads every batch to 256x256); the --fp16 export's engine (`mrcnn build`, the same default
    profile) holds its weights in float16; with a runtime that does not import, one error line before anything is
    exported."""
    needs_rtx()
    out = tmp_path / "m.onnx"
    r = runner.invoke(app, ["export", str(tiny["ckpt"]), "-o", str(out), "--flavour", "rtx", "--engine"])
    assert r.exit_code == 0, r.stdout + r.stderr
    info = json.loads((tmp_path / "m.plan.json").read_text())
    print(f"engine {(tmp_path / 'm.plan').stat().st_size / 1e6:.1f} MB, profile {info['profile']['images']}")
    assert out.exists() and info["profile"]["images"]["max"] == [1, 256, 256]
    assert info["precision"] == "fp32"
    r = runner.invoke(app, ["build", str(tiny_fp16["rtx"]), "-o", str(tmp_path / "h.plan")])
    assert r.exit_code == 0, r.stdout + r.stderr
    info16 = json.loads((tmp_path / "h.plan.json").read_text())
    saved = (tmp_path / "m.plan").stat().st_size - (tmp_path / "h.plan").stat().st_size
    halves = 2 * float_elements(onnx.load(tiny_fp16["rtx"]))["FLOAT16"]  # bytes float16 weights save vs float32
    print(
        f"--fp16 engine {(tmp_path / 'h.plan').stat().st_size / 1e6:.1f} MB: {saved / 1e6:.2f} MB smaller, "
        f"its float16 weights save {halves / 1e6:.2f} MB"
    )
    assert info16["profile"] == info["profile"]
    assert info16["precision"] == "fp16" and info16["metadata"]["mrcnn.precision"] == "fp16"
    assert 0.7 * halves < saved < 1.5 * halves  # the engine holds the weights in float16
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        err = one_error_line(
            runner.invoke(
                app, ["export", str(tiny["ckpt"]), "-o", str(tmp_path / "p.onnx"), "--flavour", "portable", "--engine"]
            )
        )
        assert "cannot import tensorrt" in err and not list(tmp_path.glob("p.*")), err
