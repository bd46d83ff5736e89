"""Starting weights (`mrcnn train --weights`): ImageNet ResNet backbones, fine-tuning with classes matched by name,
torchvision Mask R-CNN state dicts, and bad files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torchvision
from helpers import run_cli

from mrcnn.config import get_config
from mrcnn.errors import MrcnnError
from mrcnn.model import build_model
from mrcnn.model.checkpoint import save_checkpoint
from mrcnn.model.weights import CLASS_TENSORS, load_initial_weights

SHAPES = ["circle", "square", "triangle", "star", "ellipse"]


def _model(cfg_name: str, n_fg: int, seed: int, **model_overrides):
    cfg = get_config(cfg_name)
    cfg.model.num_classes = n_fg + 1
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(seed)
    return build_model(cfg.model), cfg


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine terms (fresh ones are the identity, which proves nothing)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)


@pytest.mark.parametrize(
    "depth,config", [("resnet18", "r18-fpn"), pytest.param("resnet50", "r50-fpn", marks=pytest.mark.slow)]
)
def test_imagenet_resnet_backbone_computes_torchvision_features(tmp_path, depth, config):
    """A torchvision ImageNet classifier's weights (BN statistics included) become our backbone body: its C5 equals
    the classifier's layer4 output; every tensor outside the body keeps its fresh initialisation."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, depth)(weights=None).eval()
    _randomize_bn(tv, 1)
    path = tmp_path / f"{depth}.pth"
    torch.save(tv.state_dict(), path)  # the format of torchvision's resnet50-0676ba61.pth: a raw state dict

    model, _ = _model(config, 3, seed=5)
    fresh, _ = _model(config, 3, seed=5)
    report = load_initial_weights(model, path, ["a", "b", "c"])
    assert report.kind == "imagenet-resnet" and report.loaded == sum(
        1 for k in tv.state_dict() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    )

    x = torch.randn(2, 3, 96, 160)
    with torch.no_grad():
        ours = model.backbone.body.eval()(x)[-1]
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(t))))
    err = float((ours - ref).abs().max() / ref.abs().max())
    print(f"{depth}: C5 {tuple(ours.shape)} max rel err {err:.2e}")
    assert err < 1e-5
    fresh_sd, sd = fresh.state_dict(), model.state_dict()
    changed = [k for k in sd if not k.startswith("backbone.body.") and not torch.equal(sd[k], fresh_sd[k])]
    assert not changed, changed[:3]


def test_finetuning_keeps_rows_of_classes_known_by_name(tmp_path):
    src, cfg = _model("shapes-tiny", len(SHAPES), seed=1)
    path = tmp_path / "src.pt"
    save_checkpoint(path, {"config": cfg.to_dict(), "class_names": SHAPES, "model": src.state_dict()})

    new_names = ["star", "hexagon", "circle"]
    model, _ = _model("shapes-tiny", len(new_names), seed=2)
    fresh, _ = _model("shapes-tiny", len(new_names), seed=2)
    report = load_initial_weights(model, path, new_names)
    print(report.describe())
    assert report.kept_classes == ["star", "circle"] and report.new_classes == ["hexagon"]

    a, b, f = src.state_dict(), model.state_dict(), fresh.state_dict()
    for k in b:
        if k not in CLASS_TENSORS:
            assert torch.equal(b[k], a[k]), k
    rows = {0: ("src", 0), 1: ("src", 4), 2: ("fresh", 2), 3: ("src", 1)}  # new index -> where its rows come from
    for k, per in CLASS_TENSORS.items():
        for new_i, (where, old_i) in rows.items():
            want = (a if where == "src" else f)[k][old_i * per : (old_i + 1) * per]
            assert torch.equal(b[k][new_i * per : (new_i + 1) * per], want), (k, new_i)


def test_torchvision_mask_rcnn_state_dict_is_converted_on_the_fly(tmp_path):
    from mrcnn.model.convert import convert_torchvision_state_dict

    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    path = tmp_path / "tv.pth"
    torch.save({"model": tv.state_dict()}, path)  # as torchvision's reference scripts save
    model, _ = _model("torchvision-r50-fpn", 3, seed=1)
    # unnamed classes: class_1..class_3 of the file match a dataset whose names are those placeholders
    report = load_initial_weights(model, path, ["class_1", "class_2", "class_3"])
    assert report.new_classes == [] and report.loaded > 200
    conv, sd = convert_torchvision_state_dict(tv.state_dict()), model.state_dict()
    assert conv.keys() == sd.keys()
    bad = [k for k in sd if not torch.equal(sd[k], conv[k])]
    assert not bad, bad[:3]


def test_untrained_frozen_config_is_warned_about():
    from mrcnn.model.weights import initial_weights

    said: list[str] = []
    for name in ("r50-fpn", "shapes-tiny"):
        model, cfg = _model(name, 2, seed=0)
        assert initial_weights(model, cfg, None, ["a", "b"], False, said.append) == {}
    assert len(said) == 1 and "r50-fpn starts from random weights" in said[0] and "--weights" in said[0], said


@pytest.mark.slow
def test_finetuning_run_starts_from_the_checkpoints_loss(synth_data, tmp_path):
    """Train from scratch, then fine-tune with `mrcnn train --weights` on the same data with one class renamed: the
    fine-tuning run's first losses are far below the scratch run's first losses (they start where it ended)."""
    base = [
        "train",
        "--config",
        "shapes-tiny",
        "--set",
        "input.min_size=128",
        "--set",
        "input.max_size=128",
        "--batch",
        "2",
        "--eval-period",
        "0",
        "--set",
        "solver.warmup_iters=5",
    ]
    scratch = tmp_path / "scratch"
    r = run_cli([*base, "--data", str(synth_data), "--out", str(scratch), "--max-iter", "60"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]

    data = tmp_path / "renamed"
    shutil.copytree(synth_data, data)
    for split in ("train2017", "val2017"):
        ann = data / "annotations" / f"instances_{split}.json"
        d = json.loads(ann.read_text())
        d["categories"][-1]["name"] = "blob"  # a class the checkpoint does not know
        ann.write_text(json.dumps(d))
    tuned = tmp_path / "tuned"
    r = run_cli(
        [
            *base,
            "--data",
            str(data),
            "--out",
            str(tuned),
            "--max-iter",
            "5",
            "--weights",
            str(scratch / "model_final.pt"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "initialised from Mask R-CNN weights" in r.stdout and "new (fresh class-specific rows): blob" in r.stdout

    def losses(run):
        return [
            row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row
        ]

    s, t = losses(scratch), losses(tuned)
    first_scratch, first_tuned, last_scratch = sum(s[:3]) / 3, sum(t[:3]) / 3, sum(s[-5:]) / 5
    print(f"scratch first3 {first_scratch:.3f} last5 {last_scratch:.3f}; fine-tuned first3 {first_tuned:.3f}")
    assert first_tuned < 0.7 * first_scratch
    init = json.loads((tuned / "metrics.jsonl").read_text().splitlines()[0])["init"]
    assert init["kind"] == "mask-rcnn" and init["new_classes"] == ["blob"]


def _state_dict_file(tmp_path, name, sd):
    p = tmp_path / name
    torch.save(sd, p)
    return p


@pytest.mark.parametrize(
    "case,needle",
    [
        ("garbage", "not a readable weights file"),
        ("unrelated", "holds 'foo.weight', which this model has not"),
        ("resnet50_into_r18", "which the backbone of this config has not"),
        ("bn_resnet_into_gn", "GroupNorm"),
        ("other_width", "has shape"),
    ],
)
def test_bad_weights_file_is_one_error_line_and_writes_nothing(synth_data, tmp_path, case, needle):
    config = "r18-fpn"
    if case == "garbage":
        path = tmp_path / "w.pth"
        path.write_bytes(b"\x80\x04not a pickle at all")
    elif case == "unrelated":
        path = _state_dict_file(tmp_path, "w.pth", {"foo.weight": torch.zeros(3)})
    elif case == "resnet50_into_r18":
        path = _state_dict_file(tmp_path, "w.pth", torchvision.models.resnet50(weights=None).state_dict())
    elif case == "bn_resnet_into_gn":
        config = "shapes-tiny"
        path = _state_dict_file(tmp_path, "w.pth", torchvision.models.resnet18(weights=None).state_dict())
    else:  # a Mask R-CNN checkpoint of another FPN width
        src, cfg = _model("shapes-tiny", 5, seed=0, fpn_channels=32)
        path = tmp_path / "w.pt"
        save_checkpoint(path, {"config": cfg.to_dict(), "class_names": SHAPES, "model": src.state_dict()})
        config = "shapes-tiny"
    out = tmp_path / "run"
    r = run_cli(
        [
            "train",
            "--config",
            config,
            "--data",
            str(synth_data),
            "--out",
            str(out),
            "--max-iter",
            "1",
            "--weights",
            str(path),
        ],
        tmp_path,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()


def test_load_initial_weights_refuses_a_file_missing_tensors(tmp_path):
    src, cfg = _model("shapes-tiny", 5, seed=0)
    sd = src.state_dict()
    del sd["rpn.head.conv.weight"]
    path = _state_dict_file(tmp_path, "w.pth", sd)
    model, _ = _model("shapes-tiny", 5, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(MrcnnError, match="lacks 1 of the model's tensors, e.g. 'rpn.head.conv.weight'"):
        load_initial_weights(model, path, SHAPES)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


@pytest.mark.slow
def test_fine_tuning_torchvision_weights_end_to_end(synth_data, tmp_path):
    """The path a user takes with torchvision's COCO weights: `mrcnn convert torchvision` (with class names), then
    `mrcnn train --config torchvision-r50-fpn --weights` on a dataset sharing one class name: that class keeps its
    rows, the others start fresh, and the run trains and evaluates. A later `--resume` does not reload --weights."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=4)
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    ckpt = tmp_path / "tv.pt"
    r = run_cli(["convert", "torchvision", str(src), str(ckpt), "--classes", "person,circle,car"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    args = [
        "train",
        "--config",
        "torchvision-r50-fpn",
        "--data",
        str(synth_data),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "input.min_size=128",
        "--set",
        "input.max_size=128",
        "--batch",
        "2",
        "--set",
        "solver.warmup_iters=1",
        "--checkpoint-period",
        "1",
        "--weights",
        str(ckpt),
    ]
    r = run_cli([*args, "--max-iter", "1"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "classes kept by name: circle; new (fresh class-specific rows): square, triangle, star, ellipse" in r.stdout
    ), r.stdout[-2000:]
    assert "COCO AP" in r.stdout
    r = run_cli([*args, "--max-iter", "2", "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "--weights" in r.stdout and "is not used" in r.stdout and "at iteration 1" in r.stdout
