"""`mrcnn bench`: artifacts timed side by side on the same images; bad options are one line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import one_error_line

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.deploy import load_artifact  # noqa: E402

runner = CliRunner()
SPLIT = "train2017"


def test_bench_times_each_artifact_on_the_same_images(trained, synth_data, tmp_path):
    """`mrcnn bench CKPT ONNX CKPT --data`: the images are the val split's first ones; each row's detections per call
    are what its predictor gives on them; its statistics are those of its own timed calls; the checkpoint against
    itself runs at about the same speed (taking turns, the machine's noise falls on both)."""
    from mrcnn.data.layout import open_split
    from mrcnn.deploy.bench import bench_images

    out = tmp_path / "bench.json"
    r = runner.invoke(
        app,
        [
            "bench",
            str(trained["ckpt"]),
            str(trained["onnx"]),
            str(trained["ckpt"]),
            "--data",
            str(synth_data),
            "--batch",
            "2",
            "--iters",
            "8",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
    )
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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--size", "480"], "--size must be HxW"),
        (["--iters", "1"], "--iters must be >= 2"),
        (["--batch", "0"], "--batch must be >= 1"),
        (["--size", "0x10"], "positive sides"),
        (["--threads", "100000"], "--threads must be in 0..1024"),  # exhausted the address space
        (["--threads", "-1"], "--threads must be in 0..1024"),
    ],
)
def test_bad_bench_options_are_one_line(trained, args, needle):
    err = one_error_line(runner.invoke(app, ["bench", str(trained["ckpt"]), *args]))
    assert needle in err, err


def test_bench_of_a_missing_artifact_is_one_line(tmp_path):
    err = one_error_line(runner.invoke(app, ["bench", str(tmp_path / "nope.onnx")]))
    assert "nope.onnx" in err, err
