"""Import torchvision `maskrcnn_resnet50_fpn` (v1) weights into our model and checkpoint format."""

from __future__ import annotations

import re

from mrcnn.config import get_config
from mrcnn.errors import MrcnnError

CHECKPOINT_FORMAT = "mrcnn-checkpoint"
CHECKPOINT_VERSION = 1

# (torchvision key pattern, our key template); both the current and the pre-v2 torchvision key layouts
_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^backbone\.body\.(.+)$"), r"backbone.body.\1"),
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.0\.(weight|bias)$"), r"backbone.fpn.\1.\2.\3"),
    (re.compile(r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$"), r"backbone.fpn.\1.\2.\3"),
    (re.compile(r"^rpn\.head\.conv\.0\.0\.(weight|bias)$"), r"rpn.head.conv.\1"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.\1"),
    (re.compile(r"^rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)$"), r"rpn.head.\1.\2"),
    (re.compile(r"^roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)$"), r"roi_heads.box_head.\1.\2"),
    (re.compile(r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$"), r"roi_heads.box_predictor.\1.\2"),
    (
        re.compile(r"^roi_heads\.mask_predictor\.(conv5_mask|mask_fcn_logits)\.(weight|bias)$"),
        r"roi_heads.mask_predictor.\1.\2",
    ),
]
_MASK_HEAD_V2 = re.compile(r"^roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$")
_MASK_HEAD_V1 = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


def _map_key(key: str) -> str | None:
    m = _MASK_HEAD_V2.match(key)
    if m:  # our MaskHead is [conv, relu] * layers
        return f"roi_heads.mask_head.{2 * int(m.group(1))}.{m.group(2)}"
    m = _MASK_HEAD_V1.match(key)
    if m:
        return f"roi_heads.mask_head.{2 * (int(m.group(1)) - 1)}.{m.group(2)}"
    for pat, tmpl in _RULES:
        if pat.match(key):
            return pat.sub(tmpl, key)
    return None


def unwrap_state_dict(obj):
    """The state dict inside a training script's checkpoint ({"model": sd} as torchvision's reference scripts save,
    {"state_dict": sd} as many trainers do); anything else as it is."""
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def num_classes_of(sd: dict) -> int:
    w = sd.get("roi_heads.box_predictor.cls_score.weight")
    if w is None:
        raise MrcnnError("not a torchvision Mask R-CNN state dict: no roi_heads.box_predictor.cls_score.weight")
    return int(w.shape[0])


def convert_torchvision_state_dict(sd: dict) -> dict:
    """torchvision maskrcnn_resnet50_fpn state dict -> our MaskRCNN state dict (config `torchvision-r50-fpn`)."""
    out = {}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm bookkeeping; our frozen BN has none
        new = _map_key(key)
        if new is None:
            raise MrcnnError(f"unknown key in torchvision state dict: {key!r} (not a maskrcnn_resnet50_fpn v1?)")
        out[new] = value
    return out


def _model_config(num_classes: int, bn_eps: float):
    cfg = get_config("torchvision-r50-fpn")
    cfg.model.num_classes = num_classes
    cfg.model.bn_eps = bn_eps
    return cfg


def load_torchvision(sd: dict, bn_eps: float = 0.0):
    """Build our model (`torchvision-r50-fpn` config) loaded with a torchvision state dict; returns (model, config)."""
    from mrcnn.model.mask_rcnn import build_model

    cfg = _model_config(num_classes_of(sd), bn_eps)
    model = build_model(cfg.model)
    ours = convert_torchvision_state_dict(sd)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise MrcnnError(f"torchvision state dict lacks {len(missing)} weights, e.g. {missing[0]!r}")
    for k, v in ours.items():
        if k not in expected:
            raise MrcnnError(f"torchvision state dict has an unexpected weight {k!r}")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise MrcnnError(f"shape mismatch for {k!r}: {tuple(v.shape)} vs {tuple(expected[k].shape)}")
    model.load_state_dict(ours)
    return model, cfg


def convert_torchvision(
    src_path: str, dst_path: str, class_names: list[str] | None = None, bn_eps: float = 0.0
) -> dict:
    """Read a torchvision checkpoint (raw state dict or {'model': sd}) and write our checkpoint atomically.

    `bn_eps`: eps of the frozen BatchNorm; torchvision's official COCO_V1 weights are used with 0.0, weights trained
    with torchvision's reference scripts with 1e-5. `class_names`: the foreground classes (num_classes - 1 names);
    default `class_1`.. Returns the written checkpoint dict.
    """
    from mrcnn.io import check_writable_file
    from mrcnn.model.checkpoint import FORMAT, VERSION, safe_load, save_checkpoint

    check_writable_file(dst_path, "destination")
    obj = unwrap_state_dict(safe_load(src_path, "torchvision checkpoint"))
    if not isinstance(obj, dict):
        raise MrcnnError(f"{src_path} holds no state dict")
    model, cfg = load_torchvision(obj, bn_eps)
    n_fg = cfg.model.num_classes - 1
    if class_names is None:
        class_names = [f"class_{i}" for i in range(1, n_fg + 1)]
    elif len(class_names) != n_fg:
        raise MrcnnError(f"{len(class_names)} class names given, the model has {n_fg} foreground classes")
    assert (FORMAT, VERSION) == (CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "model": model.state_dict(),
    }
    save_checkpoint(dst_path, ckpt)  # atomic: tmp file + os.replace
    return ckpt
