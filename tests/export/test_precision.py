"""The float16 network of `mrcnn export --fp16` (export/precision.py), in PyTorch.

Checks: folding BatchNorm into the convolutions leaves the float32 model's features and detections unchanged
(random BN statistics, so the fold is not the identity); the float16 networks' FPN features stay within float16's
tolerance of float32 (docs/design.md §6: fp16 ~4e-3) with GroupNorm (shapes-tiny) and frozen BN (R-50); what is float16
and what stays float32.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from mrcnn.config import get_config
from mrcnn.export.precision import fold_batch_norms, half_network
from mrcnn.model import build_model

FP16_FEATURE_TOL = 4e-3  # max |diff| / max |feature| per FPN level


def _model(name: str, *overrides: str) -> nn.Module:
    torch.manual_seed(0)
    m = build_model(get_config(name).override(["model.box_score_thresh=0.0", *overrides]).model).eval()
    with torch.no_grad():  # BN statistics of a trained model, not the identity a fresh FrozenBN is
        for mod in m.modules():
            if isinstance(mod, FrozenBatchNorm2d):
                mod.running_var.uniform_(0.5, 2.0)
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m


def _inputs(size: int):
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, size, size, generator=g), torch.tensor([[size, size], [size - 40, size - 64]])


def _features(model, x, sizes):
    with torch.no_grad():
        return model.backbone(model.normalize(x, sizes))


@pytest.mark.slow
def test_folded_batch_norm_equals_the_unfolded_model():
    m = _model("torchvision-r50-fpn")
    n_bn = sum(isinstance(mod, FrozenBatchNorm2d) for mod in m.modules())
    folded = copy.deepcopy(m)
    fold_batch_norms(folded.backbone)
    left = sum(isinstance(mod, FrozenBatchNorm2d) for mod in folded.modules())
    x, sizes = _inputs(160)
    rel = [
        float((a - b).abs().max() / a.abs().max())
        for a, b in zip(_features(m, x, sizes), _features(folded, x, sizes), strict=True)
    ]
    with torch.no_grad():
        ref, got = m(x, sizes), folded(x, sizes)
    d_box = float((ref["boxes"] - got["boxes"]).abs().max())
    print(
        f"R-50: {n_bn} frozen BN folded ({left} left); FPN features max rel diff {max(rel):.3g}; "
        f"detections {ref['num_detections'].tolist()} vs {got['num_detections'].tolist()}, box {d_box:.3g} px"
    )
    assert n_bn == 53 and left == 0  # stem + 16 bottlenecks x 3 + 4 downsamples: every one sits after its conv
    assert max(rel) <= 1e-5
    assert torch.equal(ref["num_detections"], got["num_detections"]) and ref["num_detections"].min() >= 20
    assert d_box <= 1e-2 and torch.equal(ref["labels"], got["labels"])


@pytest.mark.parametrize(
    "name, size", [("shapes-tiny", 256), pytest.param("torchvision-r50-fpn", 160, marks=pytest.mark.slow)]
)
def test_half_network_features_within_fp16_tolerance(name, size):
    # few proposals and detections: the features do not depend on them, and float16 box and mask heads on a CPU
    # without float16 vector units take minutes for R-50's default 1000 proposals per image
    m = _model(name, "model.rpn_post_nms_top_n_test=64", "model.detections_per_img=16")
    half = half_network(copy.deepcopy(m))
    x, sizes = _inputs(size)
    ref, got = _features(m, x, sizes), _features(half, x, sizes)
    rel = [float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref, got, strict=True)]
    print(f"{name}: FPN features P2..P6 max rel diff float16 vs float32 " + " ".join(f"{r:.3g}" for r in rel))
    assert all(g.dtype == torch.float32 for g in got)  # the ops after the network get float32
    assert max(rel) <= FP16_FEATURE_TOL
    assert max(rel) > 1e-5  # it did compute in float16
    with torch.no_grad():
        out = half(x, sizes)
    assert int(out["num_detections"].min()) > 0
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in m(x, sizes).items()}


def test_half_network_keeps_norms_in_float32():
    """Weights of convolutions and linear layers float16; GroupNorm (shapes-tiny) float32 between casts; the model's
    own buffers (image mean / std: normalisation happens before the network) float32."""
    half = half_network(_model("shapes-tiny"))
    norm_params = {id(p) for mod in half.modules() if isinstance(mod, nn.GroupNorm) for p in mod.parameters()}
    dtypes: dict = {}
    for p in half.parameters():
        key = ("norm" if id(p) in norm_params else "other", p.dtype)
        dtypes[key] = dtypes.get(key, 0) + p.numel()
    print({f"{k[0]} {k[1]}": v for k, v in dtypes.items()})
    assert set(dtypes) == {("other", torch.float16), ("norm", torch.float32)}
    assert dtypes[("norm", torch.float32)] < 0.01 * dtypes[("other", torch.float16)]
    assert half.image_mean.dtype == torch.float32
