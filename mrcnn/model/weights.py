"""Starting weights for training (`mrcnn train --weights FILE`): fine-tune a Mask R-CNN, or start from an ImageNet
ResNet (the seed's and torchvision's default: R-50-FPN trains with its stem and first stage frozen, on frozen BN).

Accepted files, all read with `weights_only=True` (no code from the file runs):
  - an mrcnn checkpoint (`mrcnn train`, `mrcnn convert torchvision`): the whole model
  - a torchvision `maskrcnn_resnet50_fpn` state dict (raw or under "model"): converted on the fly, the whole model
  - a torchvision ImageNet ResNet classifier state dict (`resnet50-0676ba61.pth` and the like: conv1, bn1,
    layer1..4, fc): the backbone body only; its BatchNorm statistics become the frozen BN's, `fc` is dropped

Class-specific tensors (the box classifier's rows, the class-specific box regression's 4 rows per class, the mask
logits' channels) follow the class *names*: a class of the new dataset that the file knows by name keeps its rows,
background keeps background's, and any other class keeps its fresh initialisation. Every other tensor of the part
the file covers must be present with the same shape: a file of another architecture is an error naming the first
tensor that does not fit, never a silent partial load.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mrcnn.errors import MrcnnError

# class-specific tensor -> rows per class along dim 0
CLASS_TENSORS = {
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}
BODY = "backbone.body."


@dataclass
class InitReport:
    """What `load_initial_weights` did, for the log line and the checkpoint."""

    path: str
    kind: str  # "mask-rcnn" | "imagenet-resnet"
    loaded: int  # tensors copied whole
    kept_classes: list[str] = field(default_factory=list)  # foreground classes whose rows came from the file
    new_classes: list[str] = field(default_factory=list)  # foreground classes left freshly initialised

    def describe(self) -> str:
        if self.kind == "imagenet-resnet":
            return f"backbone initialised from ImageNet ResNet weights {self.path} ({self.loaded} tensors)"
        text = f"initialised from Mask R-CNN weights {self.path}: {self.loaded} tensors"
        if not self.new_classes:
            text += ", every class by name"
        else:
            kept = ", ".join(self.kept_classes) if self.kept_classes else "none"
            text += f"; classes kept by name: {kept}; new (fresh class-specific rows): {', '.join(self.new_classes)}"
        return text

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "kind": self.kind,
            "loaded": self.loaded,
            "kept_classes": list(self.kept_classes),
            "new_classes": list(self.new_classes),
        }


def _state_dict_of(obj, path: Path) -> tuple[dict, list[str] | None]:
    """(state dict, class names or None) of whatever the file holds; torchvision Mask R-CNN keys are converted."""
    from mrcnn.model.checkpoint import FORMAT
    from mrcnn.model.convert import unwrap_state_dict

    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("model"), dict):
            raise MrcnnError(f"{path}: checkpoint has no model weights")
        names = obj.get("class_names")
        return obj["model"], [str(n) for n in names] if isinstance(names, (list, tuple)) else None
    obj = unwrap_state_dict(obj)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MrcnnError(f"{path}: holds no state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}, None  # DDP models save "module." keys


def _is_imagenet_resnet(sd: dict) -> bool:
    return "conv1.weight" in sd and any(k.startswith("layer4.") for k in sd)


def _check_fit(src: dict, dst: dict, keys, path: Path, what: str) -> None:
    missing = [k for k in keys if k not in src]
    if missing:
        raise MrcnnError(
            f"{path}: {what} lacks {len(missing)} of the model's tensors, e.g. {missing[0]!r} "
            "(another architecture than --config?)"
        )
    for k in keys:
        if tuple(src[k].shape) != tuple(dst[k].shape):
            raise MrcnnError(
                f"{path}: {k!r} has shape {tuple(src[k].shape)}, the model's is {tuple(dst[k].shape)} "
                "(another architecture than --config?)"
            )


def load_initial_weights(model: nn.Module, path: str | Path, class_names: list[str]) -> InitReport:
    """Copy the file's weights into `model` (freshly built for `class_names`, background excluded) in place."""
    from mrcnn.model.checkpoint import safe_load
    from mrcnn.model.convert import convert_torchvision_state_dict

    path = Path(path)
    sd, file_names = _state_dict_of(safe_load(path, "weights file"), path)
    bad = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise MrcnnError(
            f"{path}: {len(bad)} tensors hold non-finite values (e.g. {bad[0]}): not weights to start from"
        )
    target = model.state_dict()

    if _is_imagenet_resnet(sd):
        body = {k: v for k, v in sd.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
        keys = [k[len(BODY) :] for k in target if k.startswith(BODY) and not k.endswith("num_batches_tracked")]
        extra = sorted(set(body) - set(keys))
        if extra:
            raise MrcnnError(
                f"{path}: ImageNet weights hold {extra[0]!r}, which the backbone of this config has not "
                "(a BatchNorm ResNet into a GroupNorm config? another depth?)"
            )
        _check_fit(body, {k: target[BODY + k] for k in keys}, keys, path, "ImageNet ResNet weights")
        with torch.no_grad():
            for k in keys:
                target[BODY + k].copy_(body[k])
        return InitReport(str(path), "imagenet-resnet", len(keys))

    if not set(sd) <= set(target):
        with contextlib.suppress(MrcnnError):  # torchvision's key layout (its v1 and v2 names) -> ours
            sd = convert_torchvision_state_dict(sd)
    unknown = sorted(set(sd) - set(target))
    if unknown:
        raise MrcnnError(
            f"{path}: holds {unknown[0]!r}, which this model has not (another architecture than "
            "--config, or not Mask R-CNN weights)"
        )
    whole = [k for k in target if k not in CLASS_TENSORS]
    _check_fit(sd, target, whole, path, "the file")
    classy = [k for k in CLASS_TENSORS if k in target]
    missing = [k for k in classy if k not in sd]
    if missing:
        raise MrcnnError(f"{path}: lacks {missing[0]!r} (not Mask R-CNN weights?)")
    n_file = int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0])  # incl. background
    for k in classy:
        want = (n_file * CLASS_TENSORS[k], *target[k].shape[1:])
        if tuple(sd[k].shape) != want:
            raise MrcnnError(f"{path}: {k!r} has shape {tuple(sd[k].shape)}, expected {want}")
    # 1. which of the file's classes each new class takes its rows from (by name; background from background)
    new_fg = [str(n) for n in class_names]
    file_fg = (
        file_names
        if file_names is not None and len(file_names) == n_file - 1
        else [f"class_{i}" for i in range(1, n_file)]
    )  # unnamed: classes match by index only where the names do too
    src_row = {0: 0}
    for i, name in enumerate(new_fg, start=1):
        if name in file_fg:
            src_row[i] = file_fg.index(name) + 1
    # 2. copy: whole tensors, then the class-specific rows
    with torch.no_grad():
        for k in whole:
            target[k].copy_(sd[k])
        for k in classy:
            per = CLASS_TENSORS[k]
            for new_i, old_i in src_row.items():
                target[k][new_i * per : (new_i + 1) * per].copy_(sd[k][old_i * per : (old_i + 1) * per])
    kept = [n for i, n in enumerate(new_fg, start=1) if i in src_row]
    new = [n for i, n in enumerate(new_fg, start=1) if i not in src_row]
    return InitReport(str(path), "mask-rcnn", len(whole), kept, new)


def initial_weights(model: nn.Module, cfg, weights, class_names: list[str], resume: bool, say) -> dict:
    """`--weights`: load the file into the fresh model (not when resuming: the run's own checkpoint wins). Without
    it, a config that freezes BN and lower stages is told that those stay random."""
    if resume:
        if weights is not None:
            say(f"--resume: continuing from the run's own checkpoint; --weights {weights} is not used")
        return {}
    if weights is not None:
        report = load_initial_weights(model, weights, class_names)
        say(report.describe())
        return report.to_dict()
    m = cfg.model
    frozen = (["its BatchNorm is frozen"] if m.norm == "frozen_bn" else []) + (
        [f"{5 - m.trainable_layers} of 5 backbone stages do not train"] if m.trainable_layers < 5 else []
    )
    if frozen:
        say(
            f"warning: {cfg.name} starts from random weights, yet {' and '.join(frozen)}; pass --weights (an "
            "ImageNet ResNet such as torchvision's resnet50-0676ba61.pth, or Mask R-CNN weights), or train "
            "everything from scratch with --set model.norm=gn --set model.trainable_layers=5"
        )
    return {}


def check_weights_file(path: str | Path) -> Path:
    """Before data loading and model building: `--weights` names a non-empty file in torch's format (a zip archive
    or a legacy pickle), else one error line; its contents are checked when it is loaded."""
    from mrcnn.errors import file_kind, require_file

    path = require_file(path, "no such file", "a weights file (.pth / .pt)", label="--weights ")

    kind = file_kind(path)
    if kind == "empty":
        raise MrcnnError(f"--weights {path}: the file is empty")
    if kind is None or "torch" not in kind:
        raise MrcnnError(
            f"--weights {path}: not a torch weights file ("
            + (f"the file is {kind})" if kind else "neither a zip archive nor a pickle)")
        )
    return path
