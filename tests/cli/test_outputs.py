"""Outputs and inputs at the edges: an output that cannot be written is one line before the work
and nothing half-written; outputs get the mode a plain open() gives; non-finite numbers never pass silently; data
check and train apply one rule; messages say what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import one_error_line, tiny_config
from PIL import Image
from typer.testing import CliRunner

from mrcnn.cli.main import app
from mrcnn.errors import MrcnnError

runner = CliRunner()


def _unwritable(tmp_path):
    """A place nobody can write, root included: below a regular file (ENOTDIR)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    return blocker / "out"


def _files(folder) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")}


@pytest.mark.parametrize("command", ["data synth", "train", "export", "eval", "validate", "bench", "predict"])
def test_an_output_that_cannot_be_written_is_one_line_before_the_work(command, tiny, synth_data, tmp_path):
    bad = _unwritable(tmp_path)
    ck, data = str(tiny["ckpt"]), str(synth_data)
    args = {
        "data synth": ["data", "synth", str(bad), "--train", "2", "--val", "1"],
        "train": ["train", "--config", "shapes-tiny", "--data", data, "--out", str(bad), "--max-iter", "1"],
        "export": ["export", ck, "-o", str(bad / "m.onnx")],
        "eval": ["eval", ck, "--data", data, "--json", str(bad / "m.json")],
        "validate": ["validate", ck, "--data", data, "--json", str(bad / "m.json")],
        "bench": ["bench", ck, "--iters", "2", "--json", str(bad / "b.json")],
        "predict": ["predict", ck, str(synth_data / "val2017"), "--out", str(bad)],
    }[command]
    before = _files(tmp_path)
    err = one_error_line(runner.invoke(app, args))
    print(command, "->", err)
    assert "cannot write there" in err and "a-file" in err, err
    assert _files(tmp_path) == before  # nothing made, not even a folder


def test_a_failure_while_writing_is_one_line_and_leaves_nothing(tmp_path):
    import errno

    from mrcnn.io import atomic_write

    def full_disk(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MrcnnError, match=r"out\.bin: could not be written \(No space left on device\)"):
        atomic_write(tmp_path / "out.bin", full_disk)
    assert not list(tmp_path.iterdir())


def test_any_other_os_error_is_one_line(capsys):
    """The CLI's last guard: an OSError no library code turned into a message (here a real ENOSPC from /dev/full)
    is one error line with the system's reason, exit 1, no traceback."""
    import typer

    from mrcnn.cli.main import handled

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")

    @handled
    def write_to_a_full_device():
        with open("/dev/full", "w") as f:
            f.write("x")

    with pytest.raises(typer.Exit) as info:
        write_to_a_full_device()
    err = capsys.readouterr().err.strip()
    assert info.value.exit_code == 1 and err.splitlines() == [err], err
    assert err.startswith("error: ") and "No space left on device" in err, err


def _in_mount_namespace(script: str, cwd) -> subprocess.CompletedProcess:
    """`script` (sh) in a private mount namespace, where it may mount a small tmpfs; skips where this process may
    not make one (not root, or a sandbox without unshare)."""
    probe = (
        subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True, text=True
        )
        if shutil.which("unshare")
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root and unshare): " + (probe.stderr.strip() if probe else "no unshare")
        )
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize(
    "case, opts, needle",
    [
        pytest.param("export", "size=256k", "No space left on device", marks=pytest.mark.slow),  # ENOSPC writing it
        ("export", "size=1m,ro", "cannot write there"),  # refused before the work
        ("train", "size=64k", "No space left on device"),  # config and metrics fit, the first checkpoint does not
        ("train", "size=4k", "No space left on device"),  # one page: config.json fits, metrics.jsonl's first row not
    ],
)
def test_a_real_full_disk_or_read_only_mount_is_one_line(case, opts, needle, tiny, synth_data, tmp_path):
    """`mrcnn export` and `mrcnn train` onto a small or read-only tmpfs: one error line naming the file, exit 1, and
    nothing half-written on the mount (a run folder keeps its config and the metrics rows written before)."""
    import shlex

    target = tmp_path / "mnt"
    target.mkdir()
    args = {
        "export": ["export", str(tiny["ckpt"]), "-o", str(target / "m.onnx"), "--flavour", "portable"],
        "train": [
            "train",
            "--data",
            str(synth_data),
            "--out",
            str(target / "run"),
            "--config",
            "shapes-tiny",
            "--max-iter",
            "2",
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    }[case]
    cli = shlex.join([sys.executable, "-c", "from mrcnn.cli.main import main; main()", *args])
    r = _in_mount_namespace(
        f"mount -t tmpfs -o {opts} tmpfs {target} && {cli} >/dev/null; code=$?; "
        f"echo left: $(cd {target} && find . -type f | sort) >&2; exit $code",
        cwd=tmp_path,
    )  # (not the checkout)
    err = [line for line in r.stderr.splitlines() if not line.startswith("left:")]
    left = [line for line in r.stderr.splitlines() if line.startswith("left:")]
    print(case, opts, r.returncode, err, left)
    assert r.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and needle in err[0], err
    expect = {"export": "left:", "train": "left: ./run/config.json ./run/metrics.jsonl"}[case]
    assert left == [expect], left  # no temp file, no partial export or checkpoint


def test_outputs_get_the_mode_a_plain_open_gives(tiny, synth_data, tmp_path):
    """umask 022: 0644 for a checkpoint, an export, predictions and overlays (mkstemp alone gives 0600)."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "pred"
        r = runner.invoke(
            app, ["predict", str(tiny["ckpt"]), str(synth_data / "val2017"), "--out", str(out), "--device", "cpu"]
        )
        assert r.exit_code == 0, r.stdout + r.stderr
        from mrcnn.io import write_json

        write_json(tmp_path / "j.json", {"a": 1})
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in [*out.iterdir(), tmp_path / "j.json"]}
        print(modes)
        assert set(modes.values()) == {"0o644"}, modes
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--lr", "inf"], "solver.base_lr must be a finite number; got inf"),
        (["--set", "solver.momentum=nan"], "solver.momentum must be a finite number; got nan"),
        (["--lr", "1e40"], "solver.base_lr must be within float32's range"),
        (["--eval-period", "-1"], "solver.eval_period must be >= 0"),
        (["--checkpoint-period", "-1"], "solver.checkpoint_period must be >= 0"),
        (["--weights", "missing.pth"], "--weights missing.pth: no such file"),
    ],
)
def test_bad_training_options_are_one_line_before_anything(args, needle, synth_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_error_line(
        runner.invoke(
            app, ["train", "--config", "shapes-tiny", "--data", str(synth_data), "--out", "r", "--max-iter", "1", *args]
        )
    )
    assert needle in err and not (tmp_path / "r").exists(), err


def test_non_finite_weights_end_the_run_as_an_error_and_metrics_stay_strict_json(synth_data, tmp_path, monkeypatch):
    """Weights that end non-finite (here: one tensor set to inf by the last optimizer step) make the run an error
    with no model_final.pt, and metrics.jsonl is strict JSON (null where a loss was not finite: the steps after an
    LR blow-up); starting weights that are not finite are refused at the start."""
    from mrcnn.model import build_model
    from mrcnn.model.checkpoint import save_checkpoint
    from mrcnn.training.trainer import Trainer, train

    step = Trainer.optimizer_step

    def blow_up(self, finite):
        out = step(self, finite)
        if self.iter >= 1:  # (iter: the iterations done before this one)
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(Trainer, "optimizer_step", blow_up)
    with pytest.raises(MrcnnError, match="the weights are not finite after iteration 3"):
        train(
            tiny_config(max_iter=3, max_bad_steps=100),
            synth_data,
            tmp_path / "run",
            log=lambda m: None,
            progress=False,
            evaluate_at_end=False,
            device="cpu",
        )
    monkeypatch.undo()
    assert not (tmp_path / "run" / "model_final.pt").exists()

    def no_constants(name):
        raise ValueError(f"{name} is not strict JSON")

    rows = [
        json.loads(line, parse_constant=no_constants)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in rows if "loss" in r]
    print("losses", losses)
    assert len(losses) == 3 and losses[0] is not None and losses[-1] is None

    cfg = tiny_config()
    cfg.model.num_classes = 6
    sd = build_model(cfg.model).state_dict()
    key = next(k for k, v in sd.items() if v.is_floating_point())
    sd[key] = torch.full_like(sd[key], float("nan"))
    save_checkpoint(tmp_path / "nan.pt", {"config": cfg.to_dict(), "class_names": ["a"] * 5, "model": sd})
    with pytest.raises(MrcnnError, match=r"nan\.pt: 1 tensors hold non-finite values"):
        train(
            tiny_config(max_iter=1),
            synth_data,
            tmp_path / "run2",
            weights=tmp_path / "nan.pt",
            log=lambda m: None,
            progress=False,
            evaluate_at_end=False,
            device="cpu",
        )


def _dataset_without(tmp_path, synth_data, what: str):
    """The synthetic set with its training split emptied of images, or with every box degenerate."""
    import shutil

    root = tmp_path / what
    shutil.copytree(synth_data, root)
    ann = root / "annotations" / "instances_train2017.json"
    doc = json.loads(ann.read_text())
    if what == "no-images":
        doc["images"], doc["annotations"] = [], []
    elif what == "no-star":
        star = next(c["id"] for c in doc["categories"] if c["name"] == "star")
        doc["annotations"] = [a for a in doc["annotations"] if a["category_id"] != star]
    else:
        for a in doc["annotations"]:
            a["bbox"][2] = a["bbox"][3] = 0.5
    ann.write_text(json.dumps(doc))
    return root, len(doc["annotations"])


@pytest.mark.parametrize(
    "what, needle", [("no-images", "no usable training images"), ("degenerate", "no usable training instances")]
)
def test_data_check_refuses_what_train_refuses(what, needle, synth_data, tmp_path):
    root, n = _dataset_without(tmp_path, synth_data, what)
    check = one_error_line(runner.invoke(app, ["data", "check", str(root)]))
    train = one_error_line(
        runner.invoke(
            app,
            ["train", "--config", "shapes-tiny", "--data", str(root), "--out", str(tmp_path / "r"), "--max-iter", "1"],
        )
    )
    print(f"{what} ({n} annotations): check: {check}\ntrain: {train}")
    assert needle in check and needle in train
    assert check.removeprefix("error: ").startswith(train.removeprefix("error: "))


def test_a_class_without_training_instances_is_said_at_the_start(synth_data, tmp_path):
    """The synthetic set without its stars: data check and train both name the class before anything runs."""
    root, _ = _dataset_without(tmp_path, synth_data, "no-star")
    check = runner.invoke(app, ["data", "check", str(root)])
    train = runner.invoke(
        app,
        [
            "train",
            "--config",
            "shapes-tiny",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "r"),
            "--max-iter",
            "1",
            "--device",
            "cpu",
        ],
    )
    print(check.output, train.output[:600], sep="\n")
    assert check.exit_code == 0 and train.exit_code == 0, (check.output[-800:], train.output[-800:])
    assert "classes without instances: star" in check.output
    warned = [line for line in train.output.splitlines() if "classes without training instances" in line]
    assert warned and "star" in warned[0], train.output[:1500]
    assert train.output.index(warned[0]) < train.output.index("train: ")  # before the first step


def test_messages_say_what_is_wrong(tiny, synth_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pt").write_bytes(tiny["ckpt"].read_bytes())
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = [
        (
            ["eval", str(run), "--data", str(synth_data)],
            f"is a training run folder; give one of its checkpoints, e.g. {run / 'model_final.pt'}",
        ),
        (["eval", str(tmp_path / "empty.pt"), "--data", str(synth_data)], "the file is empty or cut short"),
        (["eval", str(tmp_path / "empty.onnx"), "--data", str(synth_data)], "not an ONNX model (the file is empty)"),
        (["build", str(run)], "is a directory; `mrcnn build` takes an exported model (.onnx)"),
        (["export", str(tmp_path / "empty.onnx")], "is an exported model; `mrcnn export` takes a checkpoint"),
    ]
    for args, needle in cases:
        err = one_error_line(runner.invoke(app, args))
        print(err)
        assert needle in err, (args, err)
    bad = tmp_path / "badjson"
    (bad / "annotations").mkdir(parents=True)
    (bad / "annotations" / "instances_val2017.json").write_text('{"images": [')
    (bad / "val2017").mkdir()
    err = one_error_line(runner.invoke(app, ["eval", str(tiny["ckpt"]), "--data", str(bad)]))
    assert str(bad / "annotations" / "instances_val2017.json") in err and "malformed JSON" in err, err


def test_a_16_bit_photo_predicts_as_its_8_bit_view(tiny, tmp_path):
    """`mrcnn predict` of a 16-bit grayscale PNG gives the detections of the same picture at 8 bits (it was read as
    a white image: the detections of a blank one)."""
    g = np.linspace(0, 1, 256 * 256).reshape(256, 256)
    pattern = (np.sin(g * 40) * 0.5 + 0.5) * np.cos(np.arange(256)[None, :] / 17) ** 2
    g16 = np.rint(pattern * 65535).astype(np.uint16)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(g16).save(tmp_path / "a" / "photo.png")
    Image.fromarray(np.rint(g16 / 257).astype(np.uint8)).save(tmp_path / "b" / "photo.png")
    docs = []
    for sub in ("a", "b"):
        out = tmp_path / f"out-{sub}"
        r = runner.invoke(
            app,
            [
                "predict",
                str(tiny["ckpt"]),
                str(tmp_path / sub),
                "--out",
                str(out),
                "--score",
                "0.05",
                "--device",
                "cpu",
            ],
        )
        assert r.exit_code == 0, r.stdout + r.stderr
        docs.append(json.loads((out / "predictions.json").read_text())["annotations"])
    print(f"16-bit: {len(docs[0])} detections, 8-bit: {len(docs[1])}")
    assert docs[0] == docs[1] and len(docs[0]) > 0


def test_predict_pastes_only_inside_each_box_and_writes_what_a_full_paste_gives(tiny):
    """The crop pasting of `mrcnn predict` (memory of a box per detection) equals the full [n,1,H,W] paste it
    replaced: the same RLE for every detection, the same overlay."""
    from mrcnn.deploy.predict import coco_annotations, draw_detections, kept_with_crops
    from mrcnn.evaluation.coco import detections_to_coco
    from mrcnn.model.preprocess import paste_masks

    torch.manual_seed(0)
    image = (torch.rand(3, 300, 410) * 255).to(torch.uint8)
    from mrcnn.deploy import load_artifact

    result = load_artifact(tiny["ckpt"], "cpu", overrides=["model.box_score_thresh=0.0"], paste=False)([image])[0]
    kept = kept_with_crops(result, 0.05, (300, 410))
    full = dict(kept, masks=paste_masks(kept["masks28"], kept["boxes"], (300, 410)))
    full.pop("mask_crops")
    ours = coco_annotations(kept, (300, 410), 1, 1, len(tiny["names"]))
    ref = detections_to_coco(full, 1, list(range(1, len(tiny["names"]) + 1)))
    print(f"{len(ours)} detections")
    assert len(ours) >= 10 and [o["segmentation"] for o in ours] == [r["segmentation"] for r in ref]
    a = np.asarray(draw_detections(image, kept, tiny["names"], 0.05))
    b = np.asarray(draw_detections(image, full, tiny["names"], 0.05))
    assert np.array_equal(a, b)
