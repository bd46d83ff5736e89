"""Peer equivalence: our MaskRCNN in eval mode equals torchvision's maskrcnn_resnet50_fpn given the same weights.

The torchvision model is randomly initialised (no downloads) and then shaped like the official COCO_V1 model:
its BatchNorm layers become FrozenBatchNorm2d with eps 0 (torchvision's `overwrite_eps(model, 0.0)`), their
statistics calibrated on random images. The last BatchNorm of every residual branch is scaled by 0.3 so that the
random network is well conditioned (like trained ResNets; see `tame`): a plain random ResNet-50 amplifies the
~1e-7 rounding difference between "normalise then resize" (torchvision) and "resize then normalise" (ours, the
normalisation lives in the exported graph) to ~1e-4 in the scores, which would test the random weights' chaos,
not the pipeline. Thresholds are lowered in both (score 0.0) so that every image yields >= 20 detections.

Tolerances (docs/design.md §6): boxes 1e-2 px, scores 1e-4, labels equal, 28x28 and pasted masks 1e-3.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import (
    BOX_TOL,
    MASK_TOL,
    MAX_SIZE,
    MIN_SIZE,
    SCORE_TOL,
    fp32_exact_cuda,
    match,
    max_rel_diff,
    noise,
    on_devices,
    run_torchvision,
    synthetic,
    tame,
)
from torchvision.models.detection import maskrcnn_resnet50_fpn

from mrcnn.config import Config, InputConfig, get_config
from mrcnn.errors import MrcnnError
from mrcnn.model import MaskRCNN, build_model
from mrcnn.model.convert import convert_torchvision, convert_torchvision_state_dict
from mrcnn.model.predictor import Predictor


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE, box_score_thresh=0.0
    )
    tame(tv)
    tv.eval()
    src = tmp_path_factory.mktemp("tv") / "tv.pth"
    torch.save({"model": tv.state_dict()}, src)
    dst = src.parent / "ours.pt"
    convert_torchvision(str(src), str(dst))
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["format"] == "mrcnn-checkpoint" and ckpt["version"] == 1
    assert ckpt["class_names"] == [f"class_{i}" for i in range(1, 91)]
    cfg = Config.from_dict(ckpt["config"]).override(["model.box_score_thresh=0.0"])
    assert cfg.model.num_classes == 91 and cfg.model.bn_eps == 0.0
    ours = build_model(cfg.model)
    ours.load_state_dict(ckpt["model"])
    ours.eval()
    return tv, ours


CASES = {
    "batch2_mixed_sizes": [noise(300, 400, 1), synthetic(256, 200, 2)],
    "synthetic_landscape": [synthetic(240, 360, 3)],
    "odd_size_smooth": [(synthetic(333, 517, 4) * 0.7 + noise(333, 517, 5) * 0.3)],
}


def _ops_backend(model, name: str):
    """`model` running its custom ops on backend `name` inside the block."""
    from mrcnn import native
    from mrcnn.ops import Ops

    if name == "native" and not native.available():
        pytest.skip("native kernels not built (pip install . builds them)")
    return model.using_ops(Ops(backend=name))


@pytest.fixture(scope="module")
def cuda_models(models):
    tv, ours = models
    return copy.deepcopy(tv).cuda(), copy.deepcopy(ours).cuda()


@pytest.mark.slow
@pytest.mark.parametrize("device", on_devices("cpu", "cuda"))
@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("case", list(CASES))
def test_equals_torchvision(request, case, backend, device):
    tv, ours = request.getfixturevalue("models" if device == "cpu" else "cuda_models")
    images = [im.to(device) for im in CASES[case]]
    with fp32_exact_cuda():
        ref = run_torchvision(tv, images)
        with _ops_backend(ours, backend):
            got = Predictor(ours, InputConfig(min_size=MIN_SIZE, max_size=MAX_SIZE))(images)
    ref = [{k: v.cpu() for k, v in r.items()} for r in ref]
    got = [{k: v.cpu() for k, v in r.items()} for r in got]
    assert len(got) == len(ref)
    report = []
    for i, (r, o) in enumerate(zip(ref, got, strict=True)):
        n = len(r["boxes"])
        assert n >= 20, f"image {i}: torchvision gave only {n} detections"
        assert len(o["boxes"]) == n, f"image {i}: {len(o['boxes'])} detections vs torchvision {n}"
        k = match(r, o)
        d_box = float((o["boxes"][k] - r["boxes"]).abs().max())
        d_score = float((o["scores"][k] - r["scores"]).abs().max())
        d_m28 = float((o["masks28"][k] - r["masks28"]).abs().max())
        d_mask = float((o["masks"][k] - r["masks"]).abs().max())
        labels_equal = bool(torch.equal(o["labels"][k], r["labels"]))
        reordered = sum(a != b for a, b in enumerate(k))
        report.append(
            f"image {i}: scores {float(r['scores'][-1]):.3f}..{float(r['scores'][0]):.3f} "
            f"labels {len(set(r['labels'].tolist()))} distinct; n={n} reordered={reordered} box={d_box:.3g} "
            f"score={d_score:.3g} "
            f"mask28={d_m28:.3g} pasted={d_mask:.3g} labels_equal={labels_equal}"
        )
    print("\n".join(report))
    for line, r, o in zip(report, ref, got, strict=True):
        k = match(r, o)
        assert torch.equal(o["labels"][k], r["labels"]), line
        assert (o["boxes"][k] - r["boxes"]).abs().max() <= BOX_TOL, line
        assert (o["scores"][k] - r["scores"]).abs().max() <= SCORE_TOL, line
        assert (o["masks28"][k] - r["masks28"]).abs().max() <= MASK_TOL, line
        assert o["masks"].shape == r["masks"].shape, line
        assert (o["masks"][k] - r["masks"]).abs().max() <= MASK_TOL, line


@pytest.mark.slow
def test_converter_rejects_unknown_and_missing_keys(models, tmp_path):
    tv, _ = models
    sd = dict(tv.state_dict())
    with pytest.raises(MrcnnError, match="unknown key"):
        convert_torchvision_state_dict({**sd, "roi_heads.keypoint_head.0.weight": torch.zeros(1)})
    del sd["rpn.head.cls_logits.bias"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(MrcnnError, match="lacks"):
        convert_torchvision(str(tmp_path / "partial.pth"), str(tmp_path / "out.pt"))
    assert not (tmp_path / "out.pt").exists()
    with pytest.raises(MrcnnError, match="nope.pth: no such torchvision checkpoint"):
        convert_torchvision(str(tmp_path / "nope.pth"), str(tmp_path / "out.pt"))


# -- training-mode smoke tests (shapes-tiny: GroupNorm, small) --------------------------------------------------


def _tiny(seed: int = 0) -> MaskRCNN:
    torch.manual_seed(seed)
    cfg = get_config("shapes-tiny").model
    assert cfg.norm == "gn"
    return build_model(cfg)


def _target(h: int, w: int, boxes: list[list[float]], labels: list[int], seed=None) -> dict:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        masks[j, int(y0) : int(y1), int(x0) : int(x1)] = 1
    t = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }
    if seed is not None:
        t["seed"] = seed
    return t


def _pair():
    g = torch.Generator().manual_seed(11)
    images = torch.zeros(2, 3, 192, 256)
    images[0] = torch.rand(3, 192, 256, generator=g)
    images[1, :, :160, :224] = torch.rand(3, 160, 224, generator=g)
    sizes = torch.tensor([[192, 256], [160, 224]])
    targets = [
        _target(192, 256, [[20, 30, 90, 120], [120, 40, 200, 100]], [1, 3], seed=101),
        _target(160, 224, [[50, 20, 110, 150]], [5], seed=202),
    ]
    return images, sizes, targets


LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def test_train_losses_finite_backward_and_empty_image():
    model = _tiny().train()
    images, sizes, targets = _pair()
    targets[1] = _target(160, 224, [], [], seed=202)  # an image without objects: all background
    losses = model(images, sizes, targets)
    assert set(losses) == LOSS_KEYS
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # a batch where no image has objects
    model.zero_grad()
    empty = [_target(192, 256, [], []), _target(160, 224, [], [])]
    losses = model(images, sizes, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_box_reg"].item() == 0.0
    sum(losses.values()).backward()


def test_seeded_loss_independent_of_batch_composition():
    """loss([a, b]) == (loss([a]) + loss([b])) / 2: per-image losses + per-image sampling generators."""
    model = _tiny(1).train()
    images, sizes, targets = _pair()
    with torch.no_grad():
        both = model(images, sizes, targets)
        a = model(images[:1], sizes[:1], targets[:1])
        b = model(images[1:], sizes[1:], targets[1:])
    for k in LOSS_KEYS:
        mean = (a[k] + b[k]) / 2
        assert abs(float(both[k]) - float(mean)) <= 1e-5, f"{k}: batch {float(both[k])} vs mean {float(mean)}"
    # the same seed gives the same sample: the loss is reproducible
    with torch.no_grad():
        again = model(images[:1], sizes[:1], targets[:1])
    for k in LOSS_KEYS:
        assert float(again[k]) == float(a[k]), k


def test_autocast_bf16_and_channels_last_train_and_eval():
    model = _tiny(2).to(memory_format=torch.channels_last).train()
    images, sizes, targets = _pair()
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, sizes, targets)
    assert set(losses) == LOSS_KEYS
    for k, v in losses.items():
        assert v.dtype == torch.float32 and torch.isfinite(v), k
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images, sizes)
    K = model.cfg.detections_per_img
    assert out["boxes"].shape == (2, K, 4) and out["masks"].shape == (2, K, 28, 28)
    assert torch.isfinite(out["boxes"]).all() and torch.isfinite(out["masks"]).all()


def test_eval_outputs_fixed_size_and_zero_padding():
    model = _tiny(3)
    model.cfg.box_score_thresh = 0.05  # (a random model) a few detections, padding slots after them
    model.eval()
    images, sizes, _ = _pair()
    with torch.no_grad():
        out = model(images, sizes)
    K = model.cfg.detections_per_img
    assert out["boxes"].shape == (2, K, 4) and out["scores"].shape == (2, K) and out["labels"].shape == (2, K)
    assert out["masks"].shape == (2, K, 28, 28) and out["num_detections"].shape == (2,)
    assert out["labels"].dtype == torch.int64 and out["num_detections"].dtype == torch.int64
    for i in range(2):
        n = int(out["num_detections"][i])
        h, w = sizes[i].tolist()
        assert torch.all(out["scores"][i, n:] == 0) and torch.all(out["boxes"][i, n:] == 0)
        assert torch.all(out["labels"][i, n:] == 0) and torch.all(out["masks"][i, n:] == 0)
        assert torch.all(out["scores"][i, :n] > 0.05) and torch.all(out["labels"][i, :n] >= 1)
        b = out["boxes"][i, :n]
        assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 2] <= w) and torch.all(b[:, 3] <= h)
    # the predictor accepts uint8 images of any size and returns torchvision's format
    pred = Predictor(model, InputConfig(min_size=192, max_size=256))
    res = pred([torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8)])
    assert res[0]["masks"].shape[1:] == (1, 100, 150) and res[0]["masks28"].shape[1:] == (28, 28)


# -- building blocks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, norm, trainable",
    [("resnet18", "gn", 5), ("resnet34", "bn", 3), ("resnet50", "frozen_bn", 0), ("resnet101", "gn", 2)],
)
def test_backbone_variants(backbone, norm, trainable):
    cfg = (
        get_config("shapes-tiny")
        .override(
            [
                f"model.backbone={backbone}",
                f"model.norm={norm}",
                f"model.trainable_layers={trainable}",
                "model.backbone_blocks=1,1,2,1",
                "model.backbone_width=16",
            ]
        )
        .model
    )
    model = build_model(cfg)
    body = model.backbone.body
    expansion = 4 if backbone in ("resnet50", "resnet101") else 1
    assert body.out_channels == [16 * 2**i * expansion for i in range(4)]
    assert len(body.layer3) == 2
    trained = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    expected = set(["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable])
    if trainable == 5 and norm != "frozen_bn":
        expected.add("bn1")
    assert trained == expected
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 96, 128), torch.tensor([[90, 128]]))
    assert out["boxes"].shape == (1, cfg.detections_per_img, 4)


@pytest.mark.slow
def test_converter_accepts_legacy_key_layout(models):
    tv, ours = models
    sd = dict(tv.state_dict())
    legacy = {}
    for k, v in sd.items():
        k = k.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            k = k.replace(f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}.")
            k = k.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            k = k.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
        legacy[k] = v
    assert legacy.keys() != sd.keys()
    converted = convert_torchvision_state_dict(legacy)
    assert converted.keys() == ours.state_dict().keys()


@pytest.mark.parametrize("device", on_devices("cpu", "cuda"))
def test_kernels_on_off_same_forward(device):
    """The full forward (eval and train) with the native kernels on and off."""
    model = _tiny(0).to(device)
    model.cfg.box_score_thresh = 0.0
    images, sizes, targets = _pair()
    images, sizes = images.to(device), sizes.to(device)
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    outs, grads = {}, {}
    for name in ("reference", "native"):
        with _ops_backend(model, name), fp32_exact_cuda():
            model.eval()
            with torch.no_grad():
                ev = model(images, sizes)
            model.train()
            model.zero_grad(set_to_none=True)
            tr = model(images, sizes, [dict(t) for t in targets])
            sum(tr.values()).backward()  # the backward too: on CPU the native RoIAlign's
            grads[name] = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
        outs[name] = (ev, tr)
    (ev_r, tr_r), (ev_k, tr_k) = outs["reference"], outs["native"]
    rel, key = max_rel_diff(grads["native"], grads["reference"])
    print(f"gradients native vs reference: rel {rel:.2e} (largest at {key}); {len(grads['reference'])} tensors")
    assert grads["native"].keys() == grads["reference"].keys() and len(grads["reference"]) > 10
    assert rel <= 1e-4, f"gradients differ by rel {rel:.2e} at {key}"
    n = ev_r["num_detections"]
    print(f"detections {n.tolist()} vs {ev_k['num_detections'].tolist()}")
    assert int(n.min()) >= 20, f"too few detections to compare: {n.tolist()}"
    assert torch.equal(n, ev_k["num_detections"])
    for i, k in enumerate(n.tolist()):
        d_box = float((ev_r["boxes"][i, :k] - ev_k["boxes"][i, :k]).abs().max())
        d_score = float((ev_r["scores"][i, :k] - ev_k["scores"][i, :k]).abs().max())
        d_mask = float((ev_r["masks"][i, :k] - ev_k["masks"][i, :k]).abs().max())
        print(f"image {i}: box {d_box:.2e} score {d_score:.2e} mask {d_mask:.2e}")
        assert torch.equal(ev_r["labels"][i, :k], ev_k["labels"][i, :k])
        assert d_box <= 1e-2 and d_score <= 1e-4 and d_mask <= 1e-3
    for key in tr_r:
        a, b = tr_r[key].item(), tr_k[key].item()
        print(f"{key}: reference {a:.6f} kernels {b:.6f}")
        assert abs(a - b) <= 1e-4 * max(1.0, abs(a)), key


def _boxes_target(h: int, w: int, boxes: list, labels: list) -> dict:
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for j, (x1, y1, x2, y2) in enumerate(boxes):
        masks[j, y1:y2, x1 + (x2 - x1) // 4 : x2] = 1  # not the whole box: the mask targets vary inside it
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels), "masks": masks}


@pytest.mark.slow
def test_train_losses_equal_torchvision_when_every_candidate_is_sampled(models):
    """The training losses against torchvision's, same weights and inputs. The samplers are random (different
    random draws), so both take every candidate here (sample size above the candidate count): then matching,
    labels, regression/mask targets and the five losses must agree. torchvision normalises over the batch, we per
    image (batch-composition independent): our loss of [a, b] equals the mean of torchvision's of [a] and [b]."""
    from torchvision.models.detection._utils import BalancedPositiveNegativeSampler  # noqa: PLC2701 - the peer's own helper

    from mrcnn.model.preprocess import batch_images

    tv_eval, ours_eval = models
    tv = copy.deepcopy(tv_eval)
    everything = 10**7
    tv.rpn.fg_bg_sampler = BalancedPositiveNegativeSampler(everything, 0.5)
    tv.roi_heads.fg_bg_sampler = BalancedPositiveNegativeSampler(everything, 0.25)
    tv.transform.min_size, tv.transform.max_size = (256,), 352  # the images' own size: torchvision's resize is a no-op
    cfg = copy.deepcopy(ours_eval.cfg)
    cfg.rpn_batch_per_image = cfg.roi_batch_per_image = everything
    ours = build_model(cfg)
    ours.load_state_dict(ours_eval.state_dict())
    # one image size: torchvision batches each image alone, so a smaller image would have fewer anchors there
    images = [synthetic(256, 352, 11), noise(256, 352, 12) * 0.5 + synthetic(256, 352, 13) * 0.5]
    targets = [
        _boxes_target(256, 352, [[20, 30, 120, 140], [150, 60, 300, 200], [40, 160, 90, 250]], [1, 7, 3]),
        _boxes_target(256, 352, [[60, 40, 230, 220]], [18]),
    ]
    tv.train()
    ours.train()
    with torch.no_grad():
        ref = [tv([img], [dict(t)]) for img, t in zip(images, targets, strict=True)]
    batch, sizes = batch_images(images, 32)
    got = ours(batch, sizes, [dict(t) for t in targets])  # with autograd: the training path (native RoIAlign on CPU)
    assert set(got) == LOSS_KEYS == set(ref[0])  # torchvision's loss names are ours
    rels = {}
    for key in sorted(LOSS_KEYS):
        r0, r1, g = ref[0][key].item(), ref[1][key].item(), got[key].item()
        want = (r0 + r1) / 2
        rels[key] = abs(g - want) / max(abs(want), 1e-12)
        print(f"{key}: ours {g:.7f} torchvision {want:.7f} (rel {rels[key]:.1e}; per image {r0:.5f}, {r1:.5f})")
        assert want > 0, f"{key}: zero loss compares nothing"
    assert max(rels.values()) <= 1e-4, rels


# -- real photographs at the default sizes ----------------------------------------------------------------------

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png"]  # scikit-image's own, 451..741 px


@pytest.fixture(scope="module")
def photo_models(tmp_path_factory):
    """torchvision's maskrcnn_resnet50_fpn at its defaults (800/1333, score 0.05, 100 detections), tamed with seed 1
    (100 detections on most photographs), and the same weights through `mrcnn convert torchvision`."""
    from mrcnn.model.checkpoint import load_model

    torch.manual_seed(1)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    tame(tv)
    tv.eval()
    src = tmp_path_factory.mktemp("tv-photo") / "tv.pth"
    torch.save({"model": tv.state_dict()}, src)
    convert_torchvision(str(src), str(src.parent / "ours.pt"))
    model, cfg, _ = load_model(src.parent / "ours.pt", "cpu")
    assert (cfg.input.min_size, cfg.input.max_size, cfg.model.box_score_thresh) == (800, 1333, 0.05)
    return tv, Predictor(model, cfg.input), Predictor(copy.deepcopy(model), cfg.input, optimize=True)


def _torchvision_exact_nms(monkeypatch):
    """torchvision with its own per-class NMS (what its batched_nms runs above 1,000 boxes) in the box head: the
    IoUs of the boxes' true coordinates, as ours (see test_box_nms_decides_on_true_coordinates_...)."""
    from torchvision.models.detection import roi_heads
    from torchvision.ops.boxes import _batched_nms_vanilla  # noqa: PLC2701 - the peer's own exact path

    monkeypatch.setattr(roi_heads.box_ops, "batched_nms", _batched_nms_vanilla)


@pytest.mark.slow
@pytest.mark.parametrize("photo", PHOTOS)
def test_equals_torchvision_on_photographs(photo_models, photo, monkeypatch):
    """A real photograph at the default 800/1333 through `mrcnn predict`'s path, kernels on and off, and with the
    inference levers (BatchNorms folded, channels-last, masks of the detections only): as many
    detections as torchvision's, each paired (same label) within the design tolerances. torchvision's shifted-box
    NMS can flip a candidate whose IoU is within ~1e-4 of the threshold (the arbitrary choice, shown on a constructed
    case in tests/ops), so the reference is torchvision with its exact per-class NMS."""
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (a test dependency) ships the photos")
    from pathlib import Path

    from mrcnn import native
    from mrcnn.deploy.predict import read_image
    from mrcnn.ops import Ops

    tv, plain, optimized = photo_models
    image = read_image(Path(skimage_data.__file__).parent / photo)
    with torch.no_grad(), monkeypatch.context() as m:
        _torchvision_exact_nms(m)
        ref = tv([image.float() / 255])[0]
    backends = ["reference"] + (["native"] if native.available() else []) + ["optimized"]
    report = [f"{photo} {tuple(image.shape[1:])}: torchvision {len(ref['scores'])} detections"]
    for backend in backends:
        predictor = optimized if backend == "optimized" else plain  # optimized: the inference levers
        with predictor.model.using_ops(Ops(backend="auto" if backend == "optimized" else backend)):
            got = predictor([image])[0]
        assert len(got["scores"]) == len(ref["scores"]), (backend, len(got["scores"]), len(ref["scores"]))
        k = match(ref, got)
        d_box = float((got["boxes"][k] - ref["boxes"]).abs().max()) if k else 0.0
        d_score = float((got["scores"][k] - ref["scores"]).abs().max()) if k else 0.0
        report.append(f"  {backend}: {len(got['scores'])} detections, max box {d_box:.3g} px, score {d_score:.3g}")
        assert d_box <= BOX_TOL and d_score <= SCORE_TOL, report
    print("\n".join(report))
    assert len(ref["scores"]) >= 20, report
