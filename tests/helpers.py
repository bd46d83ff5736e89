"""Helpers the tests share (one place; no test file imports another's): tolerances, devices, test images,
the torchvision peer's set-up, detection matching, CLI runs. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.detection._utils import overwrite_eps  # noqa: PLC2701 - torchvision's own helper
from torchvision.ops import FrozenBatchNorm2d

# tolerances (docs/design.md): whole pipeline boxes 1e-2 px, scores 1e-4, masks 1e-3
BOX_TOL, SCORE_TOL, MASK_TOL = 1e-2, 1e-4, 1e-3
MIN_SIZE, MAX_SIZE = 320, 512  # the torchvision peer's input sizes
FLAVOURS = ("trt", "portable", "rtx")  # the ONNX flavours
FP16_FLAVOURS = ("trt", "rtx")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


def on_devices(*devices: str) -> list:
    """pytest params for a device argument: 'cuda' is marked `cuda` and skips with a reason without a GPU."""
    return [pytest.param(d, marks=[pytest.mark.cuda, needs_cuda]) if d == "cuda" else d for d in devices]


@contextlib.contextmanager
def fp32_exact_cuda():
    """CUDA convolutions and matmuls in true float32 (no TF32) inside the block, restored afterwards: peers compared
    at float32 tolerances must not differ by TF32 rounding (about 1e-3 relative)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def tiny_config(**solver):
    """shapes-tiny at 128 px: a few training steps take about a second on 2 cores."""
    from mrcnn.config import get_config

    cfg = get_config("shapes-tiny")
    cfg.input.min_size = 128
    cfg.input.max_size = 128
    cfg.solver.batch = 2
    cfg.solver.max_iter = 3
    cfg.solver.warmup_iters = 1
    for k, v in solver.items():
        setattr(cfg.solver, k, v)
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None):
    """Run `python -m mrcnn ARGS` in a subprocess (cwd outside the checkout, so the installed package is used)."""
    import subprocess

    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, "-m", "mrcnn", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=e
    )


def max_rel_diff(sd_a: dict, sd_b: dict) -> tuple[float, str]:
    """Relative difference of two state dicts: ||a - b|| / ||b|| over all floating-point parameters together.
    Also returns the key whose tensor contributes most to ||a - b||."""
    assert sd_a.keys() == sd_b.keys()
    num = den = 0.0
    worst, key = -1.0, ""
    for k in sd_a:
        a, b = sd_a[k], sd_b[k]
        if not a.is_floating_point() or a.numel() == 0:
            continue
        d = float(((a.double() - b.double()) ** 2).sum())
        num += d
        den += float((b.double() ** 2).sum())
        if d > worst:
            worst, key = d, k
    return (num**0.5) / max(den**0.5, 1e-30), key


def one_error_line(result) -> str:
    """A CliRunner result that failed the project way: exit 1, one `error: ...` line on stderr, no traceback."""
    err = result.stderr.strip()
    assert result.exit_code == 1, (result.exit_code, result.stdout, err)
    assert "Traceback" not in err + result.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    return err


def freeze_bn(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features)
            for k in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, k).copy_(getattr(child, k).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child)


def tame(tv: torch.nn.Module) -> None:
    body = tv.backbone.body
    # 1. calibrate the BatchNorm statistics (cumulative average over a few random images)
    for m in body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    body.train()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        body(torch.randn(2, 3, 224, 224, generator=g))
    tv.eval()
    # 2. damp the residual branches (trained ResNets are close to identity per block)
    with torch.no_grad():
        for name, m in body.named_modules():
            if name.endswith("bn3"):
                m.weight.mul_(0.3)
        # 3. a more decisive classifier, so that scores are spread out (fewer near-ties)
        tv.roi_heads.box_predictor.cls_score.weight.mul_(3.0)
    # 4. the official COCO_V1 architecture: FrozenBatchNorm2d with eps 0
    freeze_bn(body)
    overwrite_eps(tv, 0.0)


def synthetic(h: int, w: int, seed: int) -> torch.Tensor:
    """A 'shapes' image: smooth background, a few filled rectangles and discs."""
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(h, w), mode="bilinear")[0]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for k in range(6):
        color = torch.rand(3, 1, generator=g)
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        r = int(torch.randint(10, max(11, min(h, w) // 3), (1,), generator=g))
        if k % 2:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r // 2 + 3)
        img[:, inside] = color
    return img.clamp(0, 1)


def noise(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def run_torchvision(tv, images):
    logits = []
    hook = tv.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: logits.append(o))
    try:
        with torch.no_grad():
            results = tv(images)
    finally:
        hook.remove()
    # 28x28 probabilities of the predicted label (torchvision's maskrcnn_inference, before pasting)
    counts = [len(r["labels"]) for r in results]
    labels = torch.cat([r["labels"] for r in results])
    probs = logits[0][torch.arange(len(labels)), labels].sigmoid().split(counts)
    for r, p in zip(results, probs, strict=True):
        r["masks28"] = p
    return results


def match(ref: dict, got: dict) -> list[int]:
    """For each reference detection (score order) the index of our detection: same label, nearest box.

    Near-tied scores may order differently; matching makes the comparison independent of that."""
    used: set[int] = set()
    order = []
    for j in range(len(ref["labels"])):
        best, best_d = -1, math.inf
        for k in range(len(got["labels"])):
            if k in used or int(got["labels"][k]) != int(ref["labels"][j]):
                continue
            d = float((got["boxes"][k] - ref["boxes"][j]).abs().max()) + abs(float(got["scores"][k] - ref["scores"][j]))
            if d < best_d:
                best, best_d = k, d
        assert best >= 0, f"reference detection {j} (label {int(ref['labels'][j])}) has no counterpart"
        used.add(best)
        order.append(best)
    return order


def u8(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round().to(torch.uint8)


def sample_images():
    """Random noise and synthetic 'shapes' images of different sizes (uint8, like a dataset)."""
    return [u8(noise(200, 256, 1)), u8(synthetic(150, 230, 2)), u8(synthetic(256, 170, 3))]


def float_elements(model) -> dict[str, int]:
    """Initializer elements per data type name (FLOAT, FLOAT16, ...), floating types only."""
    out: dict[str, int] = {}
    for t in model.graph.initializer:
        name = __import__("onnx").TensorProto.DataType.Name(t.data_type)
        if name.startswith(("FLOAT", "DOUBLE", "BFLOAT")):
            n = 1
            for d in t.dims:
                n *= d
            out[name] = out.get(name, 0) + n
    return out


def needs_rtx():
    return pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13)")


def roboflow(data: Path, dst: Path) -> Path:
    """The synthetic set rearranged as a Roboflow COCO export: SPLIT/_annotations.coco.json beside its images."""
    for split, name in (("train2017", "train"), ("val2017", "valid")):
        shutil.copytree(data / split, dst / name)
        shutil.copy(data / "annotations" / f"instances_{split}.json", dst / name / "_annotations.coco.json")
    return dst


def compare_detections(ref: list[dict], got: list[dict], what: str, min_det: int = 20) -> None:
    """Same detection count per image (>= min_det), then matched boxes / scores / labels / masks within the
    whole-pipeline tolerances (BOX_TOL, SCORE_TOL, MASK_TOL); prints every image's differences."""
    assert len(ref) == len(got), what
    lines, failures = [], []
    for i, (r, o) in enumerate(zip(ref, got, strict=True)):
        n, m = len(r["boxes"]), len(o["boxes"])
        if n != m:
            failures.append(f"{what} image {i}: {m} detections vs {n}")
            continue
        if n < min_det:
            failures.append(f"{what} image {i}: only {n} detections (need >= {min_det})")
            continue
        k = match(r, o)
        d_box = float((o["boxes"][k] - r["boxes"]).abs().max()) if n else 0.0
        d_score = float((o["scores"][k] - r["scores"]).abs().max()) if n else 0.0
        labels_equal = bool(torch.equal(o["labels"][k], r["labels"]))
        d_m28 = float((o["masks28"][k] - r["masks28"]).abs().max()) if n else 0.0
        d_mask = 0.0
        if "masks" in r and n and r["masks"].shape == o["masks"].shape:
            d_mask = float((o["masks"][k] - r["masks"]).abs().max())
        elif "masks" in r and n:
            failures.append(f"{what} image {i}: pasted masks {tuple(o['masks'].shape)} vs {tuple(r['masks'].shape)}")
        line = (
            f"{what} image {i}: n={n} box={d_box:.3g} score={d_score:.3g} mask28={d_m28:.3g} pasted={d_mask:.3g} "
            f"labels_equal={labels_equal}"
        )
        lines.append(line)
        if not (
            labels_equal and d_box <= BOX_TOL and d_score <= SCORE_TOL and d_m28 <= MASK_TOL and d_mask <= MASK_TOL
        ):
            failures.append(line)
    print("\n".join(lines))
    assert not failures, "\n".join(failures)


# ---- the op contract: the table of plugins/README.md ----------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def contract_rows() -> list[dict]:
    """The rows of the op contract table in plugins/README.md (one per input / output / attribute), as dicts keyed
    by the table's header (op, torch, onnx_op_type, plugin_version, kind, name, dtype, shape, fill, notes)."""
    text = (ROOT / "plugins" / "README.md").read_text()
    lines, inside = [], False
    for ln in text.splitlines():
        if ln.startswith("| op | torch | onnx_op_type |"):
            inside = True
        elif inside and not ln.startswith("|"):
            break
        if inside:
            lines.append(ln)
    assert lines, "plugins/README.md has no op contract table"
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:9] == ["op", "torch", "onnx_op_type", "plugin_version", "kind", "name", "dtype", "shape", "fill"]
    return [
        dict(zip(header, (c.strip().strip("`") for c in ln.strip().strip("|").split("|")), strict=True))
        for ln in lines[1:]
        if not set(ln) <= set("|-: ")
    ]


def plugin_table() -> dict[str, dict]:
    """The contract by ONNX op type: {"plugin_version", "input", "output", "attribute": [(name, dtype), ...]}."""
    table: dict[str, dict] = {}
    for row in contract_rows():
        entry = table.setdefault(
            row["onnx_op_type"], {"plugin_version": row["plugin_version"], "input": [], "output": [], "attribute": []}
        )
        entry[row["kind"]].append((row["name"], row["dtype"]))
    return table


# ---- TensorRT -------------------------------------------------------------------------------------------------------
def trt_plugin_library() -> Path:
    """The installed TensorRT plugin library, or a skip saying why there is none."""
    from mrcnn.deploy import trt_plugins

    path = trt_plugins.library_path()
    if path is None:
        pytest.skip("the TensorRT plugin library is not built (no TensorRT headers or nvcc at install)")
    return path


def trt_plugin_driver() -> Path:
    """The C++ plugin driver of the newest CMake tree of this checkout (scripts/test.sh builds build/dev; the wheel
    holds none), $MRCNN_TRT_PLUGIN_DRIVER if set, or a skip saying how to build it."""
    env = os.environ.get("MRCNN_TRT_PLUGIN_DRIVER")
    found = (
        [Path(env)]
        if env
        else sorted(ROOT.glob("build/*/plugins/tensorrt/mrcnn_trt_plugin_driver"), key=lambda p: p.stat().st_mtime)
    )
    if not found or not found[-1].is_file():
        pytest.skip(
            "no plugin driver built (cmake -S . -B build/dev && cmake --build build/dev, with TensorRT "
            "headers; scripts/test.sh does it)"
        )
    return found[-1]


def needs_tensorrt():
    """Full TensorRT and a CUDA GPU (the `tensorrt` tests), or a skip saying which is missing."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("TensorRT is not installed (pip install tensorrt; not installable on this project's machines)")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch (TensorRT engines run on one)")
    import tensorrt

    return tensorrt
