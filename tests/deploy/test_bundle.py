"""Polygraphy bundles (`mrcnn validate … --bundle DIR`, mrcnn/deploy/bundle.py): made here from an export and the
dataset's images, checked here by `polygraphy run --onnxrt` (it passes; outputs moved past a tolerance fail it, moved
within it pass), and on a machine with TensorRT and a GPU by the bundle's own check.sh (`polygraphy run --trt`, our
plugin library for the trt flavour): a `tensorrt` test that skips here with its reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_tensorrt, one_error_line, trt_plugin_library

pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install 'mrcnn[int8]')")
pytest.importorskip("onnxscript")

from polygraphy.comparator import RunResults
from typer.testing import CliRunner

from mrcnn.cli.main import app
from mrcnn.deploy.bundle import FILES, RUNNER, TOLERANCES, check_command

runner = CliRunner()
POLYGRAPHY = str(Path(sys.executable).with_name("polygraphy"))


def _bundle(onnx: Path, data: Path, folder: Path, images: int = 2) -> Path:
    r = runner.invoke(
        app,
        [
            "validate",
            str(onnx),
            "--data",
            str(data),
            "--max-images",
            "2",
            "--bundle",
            str(folder),
            "--bundle-images",
            str(images),
            "--json",
            str(folder.parent / f"{folder.name}.json"),
        ],
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    return folder


@pytest.fixture(scope="module")
def bundles(tiny_onnx, synth_data, tmp_path_factory):
    """The tiny model's portable and trt exports, each bundled on 2 images of the synthetic val split."""
    d = tmp_path_factory.mktemp("bundles")
    return {f: _bundle(tiny_onnx[f], synth_data, d / f) for f in ("portable", "trt")}


def _polygraphy_onnxrt(folder: Path, flavour: str = "portable") -> subprocess.CompletedProcess:
    cmd = check_command(flavour, "fp32", TOLERANCES["fp32"], None, "onnxrt").split()
    assert cmd[0] == "polygraphy"
    return subprocess.run(
        [POLYGRAPHY, *cmd[1:]], cwd=folder, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )


def test_a_bundle_passes_polygraphy_on_onnx_runtime(bundles):
    folder = bundles["portable"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert os.access(folder / "check.sh", os.X_OK)
    report = json.loads((folder.parent / "portable.json").read_text())
    assert report["bundle"] == str(folder) and report["detections"]["paired"] > 0  # validate ran as well
    results = RunResults.load(str(folder / "outputs.json"))
    ((name, iterations),) = results.items()
    assert name == RUNNER and len(iterations) == 2
    assert set(iterations[0].keys()) == set(TOLERANCES["fp32"]) and int(iterations[0]["num_detections"][0]) > 0
    r = _polygraphy_onnxrt(folder)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PASSED" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "output, shift, passes",
    [("boxes", 0.05, False), ("boxes", 0.005, True), ("scores", 1e-3, False), ("labels", 1, False)],
)
def test_outputs_moved_past_a_tolerance_fail_the_check(bundles, tmp_path, output, shift, passes):
    """One element of ONNX Runtime's saved outputs moved: past its output's tolerance the check fails naming that
    output; within it (boxes 0.005 px < 1e-2) it still passes."""
    folder = tmp_path / "b"
    shutil.copytree(bundles["portable"], folder)
    results = RunResults.load(str(folder / "outputs.json"))
    ((_, iterations),) = results.items()
    arr = np.array(iterations[0][output])
    arr.flat[0] += shift
    iterations[0][output] = arr
    results.save(str(folder / "outputs.json"))
    r = _polygraphy_onnxrt(folder)
    log = r.stdout + r.stderr
    print(f"{output} + {shift}: exit {r.returncode}")
    if passes:
        assert r.returncode == 0, log[-2000:]
    else:
        assert r.returncode != 0 and f"FAILED | Output: '{output}'" in log, log[-2000:]


def test_the_gpu_command_builds_the_engine_with_our_plugins(bundles):
    """check.sh of the trt flavour: `polygraphy run --trt` with our plugin library, the profile over the bundle's
    shapes, the design tolerances per output; README.md holds the same command."""
    script = (bundles["trt"] / "check.sh").read_text()
    print(script)
    trt = [ln for ln in script.splitlines() if ln.startswith("polygraphy run")]
    assert len(trt) == 1 and "--trt " in trt[0] and '--plugins "$PLUGINS"' in trt[0]
    for flag in ("--trt-min-shapes", "--trt-opt-shapes", "--trt-max-shapes", "--rtol 0"):
        assert flag in trt[0], flag
    assert "--atol boxes:0.01 scores:0.0001 masks:0.001 labels:0 num_detections:0" in trt[0]
    assert trt[0] in (bundles["trt"] / "README.md").read_text()
    portable = (bundles["portable"] / "check.sh").read_text()
    assert "--plugins" not in portable and "--trt " in portable


def test_bad_bundle_requests_are_one_line_and_write_nothing(tiny, tiny_onnx, synth_data, tmp_path):
    import onnx

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    int8 = onnx.load(str(tiny_onnx["portable"]))
    for p in int8.metadata_props:
        if p.key == "mrcnn.precision":
            p.value = "int8"
    onnx.save(int8, str(tmp_path / "int8.onnx"))
    cases = [
        ([str(tiny["ckpt"]), "--bundle", str(tmp_path / "b1")], "is not an exported model (.onnx)"),
        ([str(tiny_onnx["portable"]), "--bundle", str(tmp_path / "full")], "exists and is not an empty folder"),
        ([str(tiny_onnx["portable"]), "--bundle", str(tmp_path / "b2"), "--bundle-images", "0"], "must be >= 1"),
        ([str(tmp_path / "int8.onnx"), "--bundle", str(tmp_path / "b3")], "compared by AP"),
    ]
    for args, needle in cases:
        err = one_error_line(runner.invoke(app, ["validate", *args, "--data", str(synth_data), "--max-images", "1"]))
        assert needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "int8.onnx"]
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]


@pytest.mark.tensorrt
def test_check_sh_passes_on_a_gpu_with_tensorrt(bundles):
    """Where TensorRT and a GPU are: the trt flavour's bundle checked by its own script (engine with our plugins)."""
    needs_tensorrt()
    lib = trt_plugin_library()
    r = subprocess.run(["bash", "check.sh", str(lib)], cwd=bundles["trt"], capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0
