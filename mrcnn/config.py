"""Typed, plain configuration: named presets, dotted overrides, round-trip through dicts (checkpoints, ONNX metadata).

Defaults are the seed's R-50-FPN 1x (docs/design.md §5). `torchvision` mode reproduces torchvision's
maskrcnn_resnet50_fpn choices exactly (used by `mrcnn convert torchvision`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from mrcnn.errors import MrcnnError

FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class ModelConfig:
    num_classes: int = 81  # including background (label 0)
    # backbone
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    backbone_blocks: tuple[int, ...] = ()  # override the block counts per stage, e.g. (1, 1, 1, 1); () = standard
    backbone_width: int = 64  # channels of the stem / first stage (64 = standard ResNet)
    norm: str = "frozen_bn"  # frozen_bn | bn | gn  (gn is batch-independent: exact accumulation / DDP equivalence)
    bn_eps: float = 1e-5  # eps of frozen_bn / bn (torchvision's official COCO weights use 0.0)
    trainable_layers: int = 3  # ResNet stages trained, counted from the top (5 = all, incl. stem)
    fpn_channels: int = 256
    # anchors / RPN
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)  # one per FPN level (P2..P6)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_nms: float = 0.7
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 1e-3
    # RoI heads
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    box_weights: tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms: float = 0.5
    box_min_size: float = 1e-2
    detections_per_img: int = 100
    representation_size: int = 1024
    box_roi_size: int = 7
    mask_roi_size: int = 14
    mask_head_channels: int = 256
    mask_head_layers: int = 4
    mask_resolution: int = 28
    sampling_ratio: int = 2
    roi_aligned: bool = False
    # input normalisation (applied inside the model, on 0..1 pixel values)
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)


@dataclass
class InputConfig:
    min_size: int = 800  # shorter side after resize
    train_min_sizes: tuple[int, ...] = ()  # multi-scale training: each sample's shorter side drawn from these (e.g.
    # 640,672,704,736,768,800 as detectron2); () = min_size. Evaluation and export use min_size
    max_size: int = 1333  # cap of the longer side
    size_divisible: int = 32  # batches are padded to a multiple of this
    hflip_prob: float = 0.5  # training only
    pad_to_max: bool = False  # training batches padded to max_size x max_size: per-image results independent of
    # batch composition (exact accumulation / DDP equivalence with GroupNorm); costs compute on smaller images
    aspect_ratio_grouping: bool = True  # training batches of landscape-only or portrait-only images (the seed's
    # default; GlobalBatchSampler): less padding. Off where pad_to_max pads every batch to the same size anyway


@dataclass
class SolverConfig:
    batch: int = 2  # images per device per micro-step; global batch = batch x accum x world size
    base_lr: float = 0.02  # for a global batch of `lr_reference_batch` images; scaled linearly
    lr_reference_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 1.0 / 3
    lr_schedule: str = "multistep"  # multistep (the seed's) | cosine (half cosine to 0 over max_iter)
    steps: tuple[float, ...] = (0.667, 0.889)  # multistep: fractions of max_iter where LR drops by gamma
    gamma: float = 0.1
    max_iter: int = 90000
    epochs: float = 0.0  # > 0: max_iter = ceil(epochs x training images / global batch), set when the data is read
    max_minutes: float = 0.0  # > 0: a wall-clock budget for the training loop (as Ultralytics' `time`): max_iter
    # shrinks to what fits at the measured pace, so the LR steps stay at their fractions of the shortened run
    amp: str = "off"  # off | bf16 | fp16
    fp16_init_scale: float = 8192.0
    accum: int = 1
    channels_last: bool = False
    compile: bool = False  # torch.compile (inductor) the backbone + FPN: fused elementwise ops, fewer launches for a
    # host-bound GPU step; the first steps of each new input shape compile (~20 s on 2 CPU cores for R-18)
    grad_clip: float = 0.0  # 0 = off
    ema_decay: float = (
        0.0  # > 0: evaluate and save an exponential moving average of the weights (mrcnn/training/ema.py)
    )
    ema_tau: float = 2000.0  # the average's decay ramps up as decay * (1 - exp(-step / tau)) (Ultralytics' 2000)
    eval_period: int = 0  # 0 = only at the end
    eval_max_images: int = 0  # periodic / final evaluation on the first N val images (0: all); `mrcnn eval` reads all
    checkpoint_period: int = 0  # 0 = only at the end
    max_bad_steps: int = 5  # consecutive non-finite steps before aborting
    best_metric: str = "segm.AP"  # evaluation metric (IOU_TYPE.STAT) whose best value keeps model_best.pt; "" = off
    num_workers: int = -1  # data loader processes; -1: 0 when training on the CPU (the step uses every core),
    # else min(4, CPU cores per rank - 1), as the seed's and torchvision's 4 (a COCO-sized sample costs ~15 ms of
    # decode, mask and resize work, a batch of 4 with collating 60-80 ms: about one GPU step;
    # benchmarks/data_loading.py)


@dataclass
class Config:
    name: str = "r50-fpn"
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    seed: int = 0

    # -- (de)serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return _from_dict(cls, d, "")

    def validate(self) -> Config:
        """Every field within its range, or one MrcnnError naming the key (before any model or file is made)."""
        m, i, s = self.model, self.input, self.solver
        for section in ("model", "input", "solver"):
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                values = value if isinstance(value, (list, tuple)) else [value]
                if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                    raise MrcnnError(f"{section}.{f.name} must be a finite number; got {value!r}")
                if any(isinstance(v, float) and abs(v) > FLOAT32_MAX for v in values):  # (tensors hold them)
                    raise MrcnnError(
                        f"{section}.{f.name} must be within float32's range (|x| <= 3.4e38); got {value!r}"
                    )
        checks = [
            ("model.num_classes", m.num_classes >= 2, "be >= 2 (background + 1 class)"),
            (
                "model.backbone_blocks",
                len(m.backbone_blocks) in (0, 4) and all(b >= 1 for b in m.backbone_blocks),
                "be empty (standard) or 4 block counts >= 1",
            ),
            ("model.backbone_width", m.backbone_width >= 1, "be >= 1"),
            ("model.trainable_layers", 0 <= m.trainable_layers <= 5, "be 0..5"),
            ("model.fpn_channels", m.fpn_channels >= 1, "be >= 1"),
            (
                "model.anchor_sizes",
                len(m.anchor_sizes) == 5 and all(a > 0 for a in m.anchor_sizes),
                "be 5 positive sizes, one per FPN level P2..P6",
            ),
            (
                "model.aspect_ratios",
                len(m.aspect_ratios) >= 1 and all(a > 0 for a in m.aspect_ratios),
                "be one or more positive ratios",
            ),
            ("model.rpn_fg_iou", 0 <= m.rpn_bg_iou <= m.rpn_fg_iou <= 1, "be in [rpn_bg_iou, 1]"),
            ("model.roi_fg_iou", 0 <= m.roi_bg_iou <= m.roi_fg_iou <= 1, "be in [roi_bg_iou, 1]"),
            ("model.rpn_batch_per_image", m.rpn_batch_per_image >= 1, "be >= 1"),
            ("model.roi_batch_per_image", m.roi_batch_per_image >= 1, "be >= 1"),
            ("model.rpn_positive_fraction", 0 < m.rpn_positive_fraction <= 1, "be in (0, 1]"),
            ("model.roi_positive_fraction", 0 < m.roi_positive_fraction <= 1, "be in (0, 1]"),
            ("model.rpn_nms", 0 <= m.rpn_nms <= 1, "be in [0, 1]"),
            ("model.box_nms", 0 <= m.box_nms <= 1, "be in [0, 1]"),
            ("model.rpn_pre_nms_top_n_train", m.rpn_pre_nms_top_n_train >= 1, "be >= 1"),
            ("model.rpn_pre_nms_top_n_test", m.rpn_pre_nms_top_n_test >= 1, "be >= 1"),
            ("model.rpn_post_nms_top_n_train", m.rpn_post_nms_top_n_train >= 1, "be >= 1"),
            ("model.rpn_post_nms_top_n_test", m.rpn_post_nms_top_n_test >= 1, "be >= 1"),
            ("model.box_score_thresh", 0 <= m.box_score_thresh < 1, "be in [0, 1)"),
            ("model.rpn_min_size", m.rpn_min_size >= 0, "be >= 0"),
            ("model.box_min_size", m.box_min_size >= 0, "be >= 0"),
            (
                "model.box_weights",
                len(m.box_weights) == 4 and all(w > 0 for w in m.box_weights),
                "be 4 positive weights (x, y, w, h)",
            ),
            ("model.detections_per_img", m.detections_per_img >= 1, "be >= 1"),
            ("model.representation_size", m.representation_size >= 1, "be >= 1"),
            ("model.box_roi_size", m.box_roi_size >= 1, "be >= 1"),
            ("model.mask_roi_size", m.mask_roi_size >= 1, "be >= 1"),
            ("model.mask_head_channels", m.mask_head_channels >= 1, "be >= 1"),
            ("model.mask_head_layers", m.mask_head_layers >= 1, "be >= 1"),
            (
                "model.mask_resolution",
                m.mask_resolution == 2 * m.mask_roi_size,
                f"be the mask head's output size, 2 x model.mask_roi_size = {2 * m.mask_roi_size}",
            ),
            ("model.image_mean", len(m.image_mean) == 3, "be 3 values (R, G, B)"),
            (
                "model.image_std",
                len(m.image_std) == 3 and all(v > 0 for v in m.image_std),
                "be 3 positive values (R, G, B)",
            ),
            ("input.min_size", 1 <= i.min_size <= i.max_size, "be in [1, input.max_size]"),
            (
                "input.train_min_sizes",
                all(1 <= v <= i.max_size for v in i.train_min_sizes),
                "be sizes in [1, input.max_size]",
            ),
            ("input.size_divisible", i.size_divisible >= 1, "be >= 1"),
            ("input.hflip_prob", 0 <= i.hflip_prob <= 1, "be in [0, 1]"),
            ("solver.batch", s.batch >= 1, "be >= 1 (--batch)"),
            ("solver.accum", s.accum >= 1, "be >= 1 (--accum)"),
            ("solver.max_iter", s.max_iter >= 1, "be >= 1 (--max-iter)"),
            ("solver.epochs", s.epochs >= 0, "be >= 0 (--epochs; 0: --max-iter sets the length)"),
            ("solver.amp", s.amp in ("off", "bf16", "fp16"), "be one of off, bf16, fp16 (--amp)"),
            ("solver.lr_schedule", s.lr_schedule in ("multistep", "cosine"), "be multistep or cosine"),
            ("solver.eval_max_images", s.eval_max_images >= 0, "be >= 0 (0: all)"),
            ("solver.base_lr", s.base_lr >= 0, "be >= 0"),
            ("solver.lr_reference_batch", s.lr_reference_batch >= 1, "be >= 1"),
            ("solver.momentum", 0 <= s.momentum < 1, "be in [0, 1)"),
            ("solver.weight_decay", s.weight_decay >= 0, "be >= 0"),
            ("solver.warmup_iters", s.warmup_iters >= 0, "be >= 0"),
            ("solver.warmup_factor", 0 < s.warmup_factor <= 1, "be in (0, 1]"),
            (
                "solver.steps",
                all(0 < f < 1 for f in s.steps) and list(s.steps) == sorted(s.steps),
                "be increasing fractions of the run in (0, 1) (0.75 = at 75% of max_iter), not iteration numbers",
            ),
            ("solver.gamma", s.gamma > 0, "be > 0"),
            ("solver.max_minutes", s.max_minutes >= 0, "be >= 0 (0: no time budget)"),
            ("solver.fp16_init_scale", s.fp16_init_scale > 0, "be > 0"),
            ("solver.grad_clip", s.grad_clip >= 0, "be >= 0 (0: off)"),
            ("solver.ema_decay", 0 <= s.ema_decay < 1, "be in [0, 1) (0: off)"),
            ("solver.ema_tau", s.ema_tau >= 0, "be >= 0 (0: no ramp)"),
            ("solver.eval_period", s.eval_period >= 0, "be >= 0 (--eval-period; 0: at the end only)"),
            ("solver.checkpoint_period", s.checkpoint_period >= 0, "be >= 0 (--checkpoint-period; 0: at the end only)"),
            ("solver.max_bad_steps", s.max_bad_steps >= 1, "be >= 1"),
        ]
        for key, ok, must in checks:
            if not ok:
                value = getattr({"model": m, "input": i, "solver": s}[key.split(".")[0]], key.split(".")[1])
                raise MrcnnError(f"{key} must {must}; got {value!r}")
        return self

    def override(self, assignments: list[str] | None) -> Config:
        """Apply `section.key=value` strings (e.g. `model.fpn_channels=128`, `solver.steps=0.5,0.8`)."""
        d = self.to_dict()
        for a in assignments or []:
            if "=" not in a:
                raise MrcnnError(f"bad override {a!r}: expected section.key=value")
            key, value = a.split("=", 1)
            parts = key.strip().split(".")
            node = d
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise MrcnnError(f"bad override {a!r}: unknown section {p!r}")
                node = node[p]
            if parts[-1] not in node:
                raise MrcnnError(f"bad override {a!r}: unknown key {parts[-1]!r}")
            node[parts[-1]] = _parse_value(value.strip(), node[parts[-1]], a)
        return Config.from_dict(d)


def _parse_value(text: str, current: Any, where: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            items = [t for t in text.strip("()[]").split(",") if t.strip()]
            if current:
                return tuple(type(current[0])(t) for t in items)
            # an empty default (backbone_blocks, train_min_sizes) says no type: whole numbers stay int
            return tuple(int(t) if t.strip().lstrip("+-").isdigit() else float(t) for t in items)
        return text
    except ValueError:
        raise MrcnnError(f"bad override {where!r}: cannot parse {text!r} as {type(current).__name__}") from None


def _typed(t: Any, v: Any, key: str) -> Any:
    """`v` as a value of the field type `t` (ints are accepted where floats are meant), or one error line."""

    def number(x: Any, kind: type) -> bool:
        return isinstance(x, (int, float) if kind is float else kind) and not isinstance(x, bool)

    if t is bool:
        ok = isinstance(v, bool)
    elif t in (int, float):
        ok = number(v, t)
        v = t(v) if ok else v
    elif t is str:
        ok = isinstance(v, str)
    elif get_origin(t) is tuple:
        kind = get_args(t)[0]
        ok = isinstance(v, (list, tuple)) and all(number(x, kind) for x in v)
        v = tuple(kind(x) for x in v) if ok else v
    else:
        ok = True
    if not ok:
        name = f"a list of {get_args(t)[0].__name__}" if get_origin(t) is tuple else f"a {t.__name__}"
        raise MrcnnError(f"config key {key!r} must be {name}, got {v!r}")
    return v


def _from_dict(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise MrcnnError(f"config section {prefix.rstrip('.') or '<root>'} is not a mapping")
    hints = get_type_hints(cls)
    kwargs = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for k, v in d.items():
        if k not in names:
            raise MrcnnError(f"unknown config key {prefix + k!r}")
        t = hints[k]
        if dataclasses.is_dataclass(t):
            kwargs[k] = _from_dict(t, v, prefix + k + ".")
        else:
            kwargs[k] = _typed(t, v, prefix + k)
    return cls(**kwargs)


def _merge(base: dict[str, Any], changes: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`base` with the keys of `changes` replaced, section by section (a partial config file over a preset)."""
    out = dict(base)
    for k, v in changes.items():
        if k not in base:
            raise MrcnnError(f"unknown config key {prefix + k!r}")
        out[k] = _merge(base[k], v, prefix + k + ".") if isinstance(base[k], dict) and isinstance(v, dict) else v
    return out


def load_config_file(path: str | Path) -> Config:
    """A JSON config: a whole one (a run's `config.json`, `mrcnn config show NAME` output) or a partial one naming
    its preset, `{"base": "shapes-tiny", "solver": {"max_iter": 1000}}` (the keys it gives replace the preset's)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise MrcnnError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise MrcnnError(f"{path}: is a directory, expected a .json config file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        from mrcnn.errors import unreadable

        raise unreadable(path, "JSON config", e, "JSON") from None
    if not isinstance(d, dict):
        raise MrcnnError(f"{path}: a config file holds a JSON object, got {type(d).__name__}")
    base = d.pop("base", None)
    if base is not None and base not in PRESETS:
        raise MrcnnError(f"{path}: unknown base config {base!r}; choose one of: {', '.join(PRESETS)}")
    try:
        if base is not None:
            d = _merge(PRESETS[base]().to_dict(), {"name": path.stem, **d})
        return Config.from_dict(d)
    except MrcnnError as e:
        raise MrcnnError(f"{path}: {e}") from None


# -- named presets --------------------------------------------------------------------------------------------------


def _r50() -> Config:
    """The seed's R-50-FPN 1x (frozen BN, 2 frozen stages: train from ImageNet weights with --weights)."""
    return Config(name="r50-fpn")


def _r18() -> Config:
    """R-18-FPN, otherwise r50-fpn."""
    c = Config(name="r18-fpn")
    c.model.backbone = "resnet18"
    return c


def _torchvision() -> Config:
    """torchvision's maskrcnn_resnet50_fpn (what `mrcnn convert torchvision` produces; 91 COCO ids, BN eps 0)."""
    # torchvision maskrcnn_resnet50_fpn: same structure, RoIAlign aligned=False, frozen BN, 3 trainable stages.
    c = Config(name="torchvision-r50-fpn")
    c.model.num_classes = 91  # torchvision's COCO category ids (1..90, with gaps)
    c.model.bn_eps = 0.0  # torchvision overwrites the FrozenBatchNorm eps of its COCO_V1 weights with 0.0
    return c


def _shapes_tiny() -> Config:
    """Small CPU config for the embedded synthetic dataset: trains from scratch in minutes on 2 cores (GN, 256 px)."""
    c = Config(name="shapes-tiny")
    m = c.model
    m.num_classes = 6
    m.backbone = "resnet18"
    m.backbone_blocks = (1, 1, 1, 1)
    m.backbone_width = 32
    m.norm = "gn"
    m.trainable_layers = 5
    m.fpn_channels = 64
    m.anchor_sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
    m.rpn_batch_per_image = 128
    m.rpn_pre_nms_top_n_train = 600
    m.rpn_post_nms_top_n_train = 300
    m.rpn_pre_nms_top_n_test = 300
    m.rpn_post_nms_top_n_test = 150
    m.roi_batch_per_image = 64
    m.representation_size = 256
    m.mask_head_channels = 64
    m.mask_head_layers = 2
    m.detections_per_img = 50
    c.input = InputConfig(min_size=256, max_size=256, size_divisible=32, hflip_prob=0.5, pad_to_max=True)
    s = c.solver
    s.batch = 4
    s.base_lr = 0.02
    s.lr_reference_batch = 4
    s.warmup_iters = 50
    s.warmup_factor = 0.1
    s.max_iter = 2400  # 6-10 min on the 2-core hosts of 11-25..12-02, ~20 min on 2 AVX2-only ones (README)
    s.grad_clip = 10.0  # at LR 0.02 / batch 4 the unclipped run sits at the edge of divergence: a 0.04% smaller LR
    # during warmup (solver.lr_schedule=cosine) sent it to inf at iteration 50; gradient norms are ~4 (median), with
    # spikes of 30-40 early. Clipped: bbox / segm AP 0.548 / 0.538 (unclipped 0.522 / 0.519)
    s.steps = (0.75, 0.92)
    return c


def describe_presets() -> list[tuple[str, str]]:
    """(name, first line of its docstring) of every named config."""
    return [
        (name, (make.__doc__ or "").strip().splitlines()[0] if make.__doc__ else "") for name, make in PRESETS.items()
    ]


PRESETS = {
    "r50-fpn": _r50,
    "r18-fpn": _r18,
    "torchvision-r50-fpn": _torchvision,
    "shapes-tiny": _shapes_tiny,
}


def get_config(name: str, overrides: list[str] | None = None) -> Config:
    """A preset by name, or a JSON config file (`load_config_file`), then the `section.key=value` overrides."""
    if name in PRESETS:
        return PRESETS[name]().override(overrides).validate()
    if name.endswith(".json") or Path(name).is_file():
        return load_config_file(name).override(overrides).validate()
    raise MrcnnError(f"unknown config {name!r}; choose one of: {', '.join(PRESETS)}, or a .json config file")
