"""Engines (`.plan`) as artifacts of eval / validate / bench / predict, and `mrcnn build --runtime tensorrt`.

Here (no GPU, no full TensorRT) every error a user can reach is one line, exit 1, nothing written: a trt-flavour
graph given to TensorRT-RTX, a plugin library that is not there, TensorRT not installed, an engine without its
description, from another runtime version, or with no GPU to run it; the profile check of an engine's input.
The tests marked `tensorrt` need TensorRT and a GPU (they skip here with their reason): an engine of the trt flavour
(our plugins) and of the portable flavour deserialize, run and equal ONNX Runtime within the whole-pipeline
tolerances; `mrcnn bench` times a plan; the C++ example runs one image.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import pytest
import torch
from helpers import compare_detections, needs_rtx, needs_tensorrt, one_error_line, sample_images, trt_plugin_library

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.deploy import load_artifact  # noqa: E402
from mrcnn.errors import MrcnnError  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def rtx_plan(tiny_onnx, tmp_path_factory):
    """The tiny rtx export built into a TensorRT-RTX engine (what `mrcnn demo` makes), with its description."""
    needs_rtx()
    out = tmp_path_factory.mktemp("plan") / "tiny-rtx.plan"
    r = runner.invoke(app, ["build", str(tiny_onnx["rtx"]), "-o", str(out)])
    assert r.exit_code == 0, r.stdout + r.stderr
    return out


def _no_files(folder, pattern="out*") -> bool:
    return not list(folder.glob(pattern))


def test_a_trt_flavour_graph_given_to_tensorrt_rtx_is_one_line(tiny_onnx, tmp_path):
    """TensorRT-RTX's parser would create our plugins and then abort the process (no plugin layers): the flavour is
    checked first, and the line says which flavour to export."""
    needs_rtx()
    err = one_error_line(runner.invoke(app, ["build", str(tiny_onnx["trt"]), "-o", str(tmp_path / "out.plan")]))
    print(err)
    assert "TensorRT-RTX has no plugin layers" in err and "--flavour rtx" in err and _no_files(tmp_path), err


def test_build_with_full_tensorrt_errors_before_anything_is_written(tiny_onnx, tmp_path):
    """A plugin library that is not there is named before the runtime is imported; where TensorRT is not
    installed, the line names the package; without a GPU, a full-TensorRT build says so."""
    out = str(tmp_path / "out.plan")
    err = one_error_line(
        runner.invoke(
            app,
            [
                "build",
                str(tiny_onnx["trt"]),
                "-o",
                out,
                "--runtime",
                "tensorrt",
                "--plugins",
                str(tmp_path / "libmissing.so"),
            ],
        )
    )
    assert "libmissing.so: no such TensorRT plugin library" in err, err
    err = one_error_line(
        runner.invoke(
            app, ["build", str(tiny_onnx["portable"]), "-o", out, "--runtime", "tensorrt", "--workspace", "0"]
        )
    )
    assert "--workspace must be >= 1" in err, err
    err = one_error_line(runner.invoke(app, ["build", str(tiny_onnx["portable"]), "-o", out, "--runtime", "tensorrt"]))
    print(err)
    if importlib.util.find_spec("tensorrt") is None:
        assert "cannot import tensorrt" in err and "pip install tensorrt" in err, err
    elif not torch.cuda.is_available():
        assert "torch sees no CUDA GPU" in err, err
    assert _no_files(tmp_path)


def _copy_plan(plan, folder, **change):
    """The engine and its description copied into `folder`, the description's fields changed."""
    dst = folder / plan.name
    shutil.copy(plan, dst)
    info = json.loads(plan.with_name(plan.name + ".json").read_text())
    info.update(change)
    dst.with_name(dst.name + ".json").write_text(json.dumps(info))
    return dst


@pytest.mark.parametrize("command", ["eval", "validate", "bench", "predict"])
def test_an_engine_is_checked_before_it_is_loaded(rtx_plan, synth_data, tmp_path, command):
    """An engine without its .plan.json, from another runtime version, or on a machine without a GPU: one line from
    every command that takes artifacts, nothing written."""

    def run(plan):
        out = tmp_path / "out"
        args = {
            "eval": ["eval", str(plan), "--data", str(synth_data), "--json", str(out) + ".json"],
            "validate": ["validate", str(plan), "--data", str(synth_data), "--json", str(out) + ".json"],
            "bench": ["bench", str(plan), "--json", str(out) + ".json"],
            "predict": ["predict", str(plan), str(synth_data / "val2017"), "--out", str(out)],
        }[command]
        err = one_error_line(runner.invoke(app, args))
        assert _no_files(tmp_path, "out*"), list(tmp_path.iterdir())
        return err

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(rtx_plan, bare / rtx_plan.name)
    assert "no tiny-rtx.plan.json beside it" in run(bare / rtx_plan.name)
    old = tmp_path / "old"
    old.mkdir()
    err = run(_copy_plan(rtx_plan, old, runtime_version="1.6.0.1"))
    assert "was built with tensorrt-rtx 1.6.0.1 and this is" in err, err
    if not torch.cuda.is_available():
        err = run(rtx_plan)
        print(err)
        assert "needs an RTX-class GPU, and torch sees none here" in err, err


def test_the_profile_check_names_the_profile(rtx_plan):
    """An input outside the engine's profile is one line naming it (checked before each run)."""
    from mrcnn.deploy.trt_predictor import check_profile

    profile = ((1, 256, 256), (2, 256, 256))
    check_profile(rtx_plan, profile, 2, 256, 256)
    with pytest.raises(
        MrcnnError,
        match=r"input 1x320x256 \(BxHxW\) is outside the engine's profile, min 1x256x256, "
        r"max 2x256x256",
    ):
        check_profile(rtx_plan, profile, 1, 320, 256)


# ---- where TensorRT and a GPU are ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trt_engines(tiny_onnx, tmp_path_factory):
    """The tiny model's trt flavour (our plugins, serialized into the engine) and portable flavour as TensorRT
    engines, batch 1..2."""
    needs_tensorrt()
    trt_plugin_library()
    out = tmp_path_factory.mktemp("trt")
    plans = {}
    for flavour, extra in (("trt", ["--serialize-plugins"]), ("portable", [])):
        plans[flavour] = out / f"tiny-{flavour}.plan"
        r = runner.invoke(
            app,
            [
                "build",
                str(tiny_onnx[flavour]),
                "-o",
                str(plans[flavour]),
                "--runtime",
                "tensorrt",
                "--batch",
                "2",
                "--timing-cache",
                str(out / "timing.cache"),
                *extra,
            ],
        )
        assert r.exit_code == 0, r.stdout + r.stderr
    return plans


@pytest.mark.tensorrt
@pytest.mark.parametrize("flavour", ["trt", "portable"])
def test_engine_equals_onnx_runtime(trt_engines, tiny_onnx, flavour):
    engine = load_artifact(trt_engines[flavour], "cuda")
    ort = load_artifact(tiny_onnx[flavour], "cpu")
    images = sample_images()
    got = [{k: v.cpu() for k, v in r.items()} for r in engine(images)]
    compare_detections(ort(images), got, f"TensorRT {flavour} vs ONNX Runtime")
    info = json.loads(trt_engines[flavour].with_name(trt_engines[flavour].name + ".json").read_text())
    assert info["runtime"] == "tensorrt" and info["gpu"]["compute_capability"]
    if flavour == "trt":
        assert info["plugins"]["serialized"] and set(info["plugins"]["ops"]) == {"AnchorGrid", "PreNmsSelect", "BoxNms"}


@pytest.mark.tensorrt
def test_bench_times_a_plan(trt_engines, tiny_onnx, tmp_path):
    out = tmp_path / "bench.json"
    r = runner.invoke(
        app, ["bench", str(tiny_onnx["portable"]), str(trt_engines["trt"]), "--iters", "10", "--json", str(out)]
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    rows = json.loads(out.read_text())["rows"]
    print(r.stdout)
    assert rows[1]["runtime"].startswith("tensorrt") and rows[1]["p50_ms"] > 0


@pytest.mark.tensorrt
def test_the_cpp_example_runs_one_image(trt_engines, tmp_path):
    """examples/cpp built with CMake against the installed TensorRT: it loads the plugin library and the plan, runs
    one preprocessed image and prints as many detections as the Python predictor keeps above its threshold."""
    from pathlib import Path

    import numpy as np

    needs_tensorrt()
    src = Path(__file__).resolve().parents[2] / "examples" / "cpp"
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(src), "-B", str(build)], check=True, capture_output=True, text=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, text=True)
    engine = load_artifact(trt_engines["trt"], "cuda")
    image = sample_images()[0]
    from mrcnn.model.preprocess import batch_images, resize_image, to_float_image

    p = engine.preprocess
    resized = resize_image(to_float_image(image), int(p["min_size"]), int(p["max_size"]))
    batch, sizes = batch_images([resized], engine.size_divisible, engine.static_size)
    raw = tmp_path / "image.f32"
    batch[0].numpy().astype(np.float32).tofile(raw)
    r = subprocess.run(
        [
            str(build / "mrcnn_infer"),
            str(trt_plugin_library()),
            str(trt_engines["trt"]),
            str(raw),
            str(batch.shape[2]),
            str(batch.shape[3]),
            str(int(sizes[0, 0])),
            str(int(sizes[0, 1])),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(r.stdout[-2000:], r.stderr[-2000:])
    assert r.returncode == 0
    want = int(engine.run(batch, sizes)["num_detections"][0])
    assert f"{want} detections" in r.stdout
