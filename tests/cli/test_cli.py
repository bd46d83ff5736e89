"""CLI: exit codes and one-line errors (CliRunner, fastapi-cli style), plus `info`, `data synth`, `eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import one_error_line
from typer.testing import CliRunner

from mrcnn.cli.main import app

runner = CliRunner()


def test_info_lists_backends():
    r = runner.invoke(app, ["info"])
    assert r.exit_code == 0, r.stdout
    for key in ("torch", "torchvision", "GPU", "onnxruntime", "TensorRT", "mrcnn native kernels"):
        assert key in r.stdout


def test_synth_and_malformed_json(tmp_path):
    out = tmp_path / "d"
    r = runner.invoke(app, ["data", "synth", str(out), "--train", "2", "--val", "1", "--size", "64"])
    assert r.exit_code == 0, r.stdout + r.stderr
    ann = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert len(ann["images"]) == 2
    (out / "annotations" / "instances_val2017.json").write_text('{"images": [1, 2')
    r = runner.invoke(
        app,
        [
            "train",
            "--config",
            "shapes-tiny",
            "--data",
            str(out),
            "--out",
            str(tmp_path / "r"),
            "--max-iter",
            "1",
            "--strict",
        ],
    )
    # train2017 is fine; the final evaluation reads the malformed val json -> one clear line
    err = one_error_line(r)
    assert "instances_val2017.json" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["eval", "missing.pt", "--data", "."], "missing.pt"),
        (["train", "--config", "nope", "--data", ".", "--out", "r"], "unknown config"),
        (["train", "--config", "shapes-tiny", "--data", ".", "--out", "r", "--set", "model.bogus=1"], "bogus"),
        (["convert", "torchvision", "missing.pth", "out.pt"], "missing.pth"),
        (["train", "--config", "shapes-tiny", "--data", ".", "--out", "r", "--workers", "-2"], "--workers must be"),
        (
            ["train", "--config", "shapes-tiny", "--data", ".", "--out", "r", "--set", "solver.best_metric=segm.mAP"],
            "solver.best_metric must be",
        ),
        (["train", "--config", "shapes-tiny", "--data", "nowhere", "--out", "r"], "nowhere: no such dataset"),
        (
            ["train", "--config", "shapes-tiny", "--data", ".", "--out", "r", "--epochs", "2", "--max-iter", "5"],
            "--epochs and --max-iter",
        ),
        (["eval", "x.pt", "--data", ".", "--batch", "0"], "--batch must be >= 1"),  # was a traceback
        (["demo", "--max-iter", "0"], "--max-iter must be >= 1"),  # 0 ran the whole demo
        (["train", "--config", "shapes-tiny", "--out", "r"], "--data is required"),
        (["train", "--resume", "--out", "r"], "--resume: no checkpoint at r/last.pt"),
    ],
)
def test_bad_input_one_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(runner.invoke(app, args))
    assert needle in err


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", b"\x80\x02.", b"PK\x03\x04truncated zip"],
    ids=["text", "empty-stack-pickle", "truncated-zip"],
)
def test_eval_rejects_non_checkpoint(tmp_path, monkeypatch, content):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.pt").write_bytes(content)  # the pickle raised IndexError in torch.load: once a traceback
    err = one_error_line(runner.invoke(app, ["eval", "x.pt", "--data", "."]))
    assert "not a readable checkpoint" in err


class _RunsCodeOnLoad:
    """A pickle that, loaded without weights_only, would create a file: the untrusted-checkpoint case."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("cmd", [["eval", "evil.pt", "--data", "."], ["convert", "torchvision", "evil.pt", "o.pt"]])
def test_code_carrying_checkpoint_is_refused_in_one_line(tmp_path, monkeypatch, cmd):
    import torch

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "code-ran"
    torch.save({"model": _RunsCodeOnLoad(marker)}, tmp_path / "evil.pt")
    err = one_error_line(runner.invoke(app, cmd))
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert not (tmp_path / "o.pt").exists()
    # the reason, not torch's paragraph that ends by advising weights_only=False
    assert "refused by the weights-only loader: Unsupported global" in err, err
    assert "weights_only` set to `False" not in err and len(err) < 300, err


def test_plain_progress_lines_give_an_eta_from_the_rate_since_start(monkeypatch):
    """Off a terminal, progress is plain lines; the ETA counts from the first update (a resumed run's start), not
    from iteration 0: 10 iterations in 10 s leave 80 iterations = 1m20s."""
    import mrcnn.progress as progress

    clock = iter([0.0, 100.0, 110.0, 200.0])
    monkeypatch.setattr(progress.time, "time", lambda: next(clock))
    monkeypatch.setattr(progress, "is_terminal", lambda: False)
    lines: list[str] = []
    with progress.reporter(100, "train", log=lines.append, every=10) as rep:
        rep.update(10, "loss 1.0")
        rep.update(20, "loss 0.9")
        rep.update(100)
    assert lines == [
        "train: 10/100 loss 1.0 (100s)",
        "train: 20/100 loss 0.9 (110s, eta 1m20s)",
        "train: 100/100 (200s)",
    ], lines
    assert [progress.format_duration(s) for s in (42, 425, 11520)] == ["42s", "7m05s", "3h12m"]


def test_train_without_out_takes_the_next_run_folder_and_resumes_the_latest(tmp_path, monkeypatch):
    """As Ultralytics: runs/train/exp, exp2, ...; --resume without --out continues the newest run."""
    import os

    from mrcnn.data.synth import generate_synthetic
    from mrcnn.training.runs import default_run_dir

    monkeypatch.chdir(tmp_path)
    generate_synthetic(tmp_path / "d", n_train=4, n_val=2, size=96, seed=0)
    args = [
        "train",
        "--config",
        "shapes-tiny",
        "--data",
        "d",
        "--batch",
        "2",
        "--set",
        "input.min_size=96",
        "--set",
        "input.max_size=96",
        "--set",
        "solver.eval_max_images=1",
    ]
    for expect in ("exp", "exp2"):
        r = runner.invoke(app, [*args, "--max-iter", "1"])
        assert r.exit_code == 0, r.output[-1500:]
        assert f"run folder: {Path('runs', 'train', expect)}" in r.stdout
        assert (tmp_path / "runs" / "train" / expect / "model_final.pt").exists()
    os.utime(tmp_path / "runs" / "train" / "exp" / "last.pt")  # the older run, touched last
    assert default_run_dir(resume=True) == Path("runs", "train", "exp")
    r = runner.invoke(app, [*args, "--max-iter", "2", "--resume"])
    assert r.exit_code == 0 and "resumed from runs/train/exp/last.pt at iteration 1" in r.stdout, r.output[-1500:]
    for expect in ("exp", "exp2"):  # predict: runs/predict/exp{N} likewise
        r = runner.invoke(app, ["predict", "runs/train/exp/model_final.pt", "d/val2017", "--score", "0"])
        assert r.exit_code == 0 and f"-> {Path('runs', 'predict', expect)}" in r.stdout, r.output[-1500:]
        assert (tmp_path / "runs" / "predict" / expect / "predictions.json").exists()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "under torchrun give --out" in one_error_line(runner.invoke(app, [*args, "--max-iter", "1"]))


def test_ema_option_saves_the_average_and_resume_can_turn_it_off(tmp_path, monkeypatch):
    """--ema D: the saved "model" is the average (not the online weights, kept under "ema" for --resume); resuming
    with --ema 0 continues from the online weights and says so."""
    from mrcnn.data.synth import generate_synthetic
    from mrcnn.model.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    generate_synthetic(tmp_path / "d", n_train=4, n_val=2, size=96, seed=0)
    args = [
        "train",
        "--config",
        "shapes-tiny",
        "--data",
        "d",
        "--out",
        "r",
        "--batch",
        "2",
        "--set",
        "input.min_size=96",
        "--set",
        "input.max_size=96",
        "--set",
        "solver.ema_tau=0",
    ]
    r = runner.invoke(app, [*args, "--max-iter", "2", "--ema", "0.5"])
    assert r.exit_code == 0 and "COCO AP (weight average)" in r.stdout, r.output[-1500:]
    ck = load_checkpoint(tmp_path / "r" / "model_final.pt")
    avg, online = ck["model"], ck["ema"]["online"]
    k = "roi_heads.box_predictor.cls_score.weight"
    print(f"{k}: |average - online| max {float((avg[k] - online[k]).abs().max()):.3e}, decay {ck['ema']['decay']}")
    assert ck["ema"]["decay"] == 0.5 and ck["ema"]["updates"] == 2 and not torch.equal(avg[k], online[k])
    r = runner.invoke(app, ["train", "--out", "r", "--resume", "--max-iter", "3", "--ema", "0"])
    assert r.exit_code == 0 and "continues without its weight average" in r.stdout, r.output[-1500:]
    assert "ema" not in load_checkpoint(tmp_path / "r" / "model_final.pt")


def test_config_show_round_trips_and_a_file_trains_like_its_preset(tmp_path, monkeypatch):
    """`config show NAME` prints every field; that file, a partial file over the preset and a run's own
    config.json all give the preset's config (with the overrides applied), and train the same weights."""
    from mrcnn.config import get_config

    monkeypatch.chdir(tmp_path)
    sets = ["--set", "input.min_size=96", "--set", "input.max_size=96", "--set", "solver.warmup_iters=1"]
    r = runner.invoke(app, ["config", "show", "shapes-tiny", *sets])
    assert r.exit_code == 0, r.stdout
    (tmp_path / "full.json").write_text(r.stdout)
    want = get_config("shapes-tiny", [s for s in sets if s != "--set"])
    assert get_config(str(tmp_path / "full.json")) == want
    (tmp_path / "part.json").write_text(
        json.dumps({"base": "shapes-tiny", "input": {"min_size": 96, "max_size": 96}, "solver": {"warmup_iters": 1}})
    )
    part = get_config(str(tmp_path / "part.json"))
    assert part.name == "part" and part.model == want.model and part.input == want.input
    assert part.solver == want.solver
    r = runner.invoke(app, ["config", "list"])
    assert r.exit_code == 0 and all(n in r.stdout for n in ("r50-fpn", "shapes-tiny", "torchvision-r50-fpn"))

    r = runner.invoke(app, ["data", "synth", "d", "--train", "4", "--val", "0", "--size", "96"])
    assert r.exit_code == 0, r.stdout
    import torch

    finals = {}
    for run, config in (
        ("preset", ["--config", "shapes-tiny", *sets]),
        ("full", ["--config", "full.json"]),
        ("part", ["--config", "part.json"]),
    ):
        r = runner.invoke(app, ["train", *config, "--data", "d", "--out", run, "--max-iter", "2", "--batch", "2"])
        assert r.exit_code == 0, r.stdout + str(r.exception)
        finals[run] = torch.load(tmp_path / run / "model_final.pt", weights_only=True)["model"]
    again = runner.invoke(app, ["train", "--config", "preset/config.json", "--data", "d", "--out", "again"])
    assert again.exit_code == 0, again.stdout + str(again.exception)  # a run's config.json: max_iter 2, batch 2
    finals["again"] = torch.load(tmp_path / "again" / "model_final.pt", weights_only=True)["model"]
    for run in ("full", "part", "again"):
        diff = max(float((finals[run][k].float() - v.float()).abs().max()) for k, v in finals["preset"].items())
        print(f"{run} vs preset: max |diff| {diff}")
        assert diff == 0.0, (run, diff)


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"base": "shapes-tiny", "solver": {"max_iterz": 3}}', "unknown config key 'solver.max_iterz'"),
        ('{"base": "shapes-tiny", "solver": {"max_iter": "ten"}}', "'solver.max_iter' must be a int"),
        ('{"base": "shapes-tiny", "solver": {"steps": [0.5, "x"]}}', "'solver.steps' must be a list of float"),
        ('{"base": "shapes-tiny", "input": {"pad_to_max": 1}}', "'input.pad_to_max' must be a bool"),
        ('{"base": "shapes-tiny", "model": 3}', "config section model is not a mapping"),
        ('{"base": "nope"}', "unknown base config 'nope'"),
        ('{"base": "shapes-tiny", ', "not a readable JSON config"),
        ("[1, 2]", "holds a JSON object"),
    ],
    ids=["typo", "type", "list", "bool", "section", "base", "json", "array"],
)
def test_bad_config_file_is_one_line(tmp_path, monkeypatch, content, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text(content)
    err = one_error_line(runner.invoke(app, ["train", "--config", "c.json", "--data", ".", "--out", "r"]))
    assert needle in err and "c.json" in err, err
    assert not (tmp_path / "r").exists()
    err = one_error_line(runner.invoke(app, ["config", "show", "missing.json"]))
    assert "missing.json: no such config file" in err


def test_a_val_split_without_images(tmp_path, monkeypatch):
    """Training skips the evaluation of an empty val split with a log line (it raised IndexError once); `mrcnn eval`
    of it is one error line."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["data", "synth", "d", "--train", "2", "--val", "0", "--size", "64"]).exit_code == 0
    r = runner.invoke(
        app,
        [
            "train",
            "--config",
            "shapes-tiny",
            "--data",
            "d",
            "--out",
            "r",
            "--max-iter",
            "1",
            "--batch",
            "2",
            "--set",
            "input.min_size=64",
            "--set",
            "input.max_size=64",
        ],
    )
    assert r.exit_code == 0, r.stdout + repr(r.exception)
    assert "a validation split without images" in r.stdout, r.stdout
    err = one_error_line(runner.invoke(app, ["eval", "r/model_final.pt", "--data", "d"]))
    assert "instances_val2017.json: no images to evaluate" in err, err


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("input.min_size=0", "input.min_size must be in [1, input.max_size]"),
        ("model.fpn_channels=-1", "model.fpn_channels must be >= 1"),
        ("model.rpn_positive_fraction=2", "model.rpn_positive_fraction must be in (0, 1]"),
        ("solver.base_lr=-1", "solver.base_lr must be >= 0"),
        ("input.size_divisible=0", "input.size_divisible must be >= 1"),
        ("solver.steps=60000,80000", "not iteration numbers"),
        ("model.anchor_sizes=16,32", "model.anchor_sizes must be 5 positive sizes"),
        ("model.aspect_ratios=", "model.aspect_ratios must be one or more"),
        ("input.hflip_prob=3", "input.hflip_prob must be in [0, 1]"),
        ("model.mask_resolution=0", "2 x model.mask_roi_size = 28"),
        ("solver.momentum=-1", "solver.momentum must be in [0, 1)"),
        ("model.num_classes=1", "model.num_classes must be >= 2"),
        ("solver.ema_decay=1", "solver.ema_decay must be in [0, 1)"),
    ],
)
def test_out_of_range_config_is_one_line_before_anything_is_written(tmp_path, monkeypatch, setting, needle):
    """Each of these was a traceback from deep inside torch (or, for steps / hflip_prob / mask_resolution, a run
    that silently did something else)."""
    monkeypatch.chdir(tmp_path)
    err = one_error_line(
        runner.invoke(app, ["train", "--config", "shapes-tiny", "--data", ".", "--out", "r", "--set", setting])
    )
    assert needle in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "device, needle", [("tpu", "expected cpu, cuda or cuda:N"), ("cuda:99", "cuda:99"), ("cuda", "cuda")]
)
def test_bad_device_is_one_line(tmp_path, monkeypatch, device, needle):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    monkeypatch.chdir(tmp_path)
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is visible: --device cuda is valid here")
    for args in (["train", "--config", "shapes-tiny", "--data", ".", "--out", "r"], ["eval", "x.pt", "--data", "."]):
        err = one_error_line(runner.invoke(app, [*args, "--device", device]))
        assert "--device" in err and needle in err, err
    assert not (tmp_path / "r").exists()
