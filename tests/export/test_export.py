"""ONNX export, every flavour, on ONNX Runtime (docs/design.md §4, §6 claims 4 and 5).

    trt       mrcnn::AnchorGrid / PreNmsSelect / BoxNms nodes, run on ORT as Python custom ops on the C++ kernels
    portable  standard ONNX ops only
    rtx       standard ONNX ops that TensorRT-RTX builds: RoIAlign as gathers, NMS as a Loop (no RoiAlign, NonZero,
              NonMaxSuppression); the whole graph builds into a TensorRT-RTX engine on this CPU machine

Checks: equality with our PyTorch model (random + synthetic images, >= 20 detections per image), with each other,
batch independence (B = 1, 2, 4, mixed sizes), zero detections, one dynamic model at several sizes, the trt nodes
against the op table in plugins/README.md. A converted R-50 on real photographs, every flavour against its
checkpoint (itself equal to torchvision's eager maskrcnn_resnet50_fpn): tests/deploy/test_photographs.py.
Detections are matched (same label, nearest box) because near-tied scores may order differently; every comparison
prints its measured differences.

Tolerances (docs/design.md §6): boxes 1e-2 px, scores 1e-4, labels equal, 28x28 and pasted masks 1e-3.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FLAVOURS,
    SCORE_TOL,
    compare_detections,
    float_elements,
    noise,
    one_error_line,
    plugin_table,
    sample_images,
    synthetic,
    u8,
)
from PIL import Image
from references import box_nms_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.config import Config  # noqa: E402
from mrcnn.deploy import load_artifact  # noqa: E402
from mrcnn.export.contract import DOMAIN, OPS, register_schemas  # noqa: E402
from mrcnn.model import Predictor  # noqa: E402
from mrcnn.model.preprocess import batch_images, resize_image, to_float_image  # noqa: E402

FP16_BOX_TOL, FP16_SCORE_TOL = 0.5, 2e-3  # a float16 network (features within 4e-3, tests/export/test_precision.py)
NOT_IN_RTX = ("RoiAlign", "NonZero", "NonMaxSuppression")  # TensorRT-RTX 1.7: no importer / no kernel
MIN_DETECTIONS = 20
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def predictors(tiny_onnx):
    return {t: load_artifact(p, "cpu", log=print) for t, p in tiny_onnx.items()}


# -- comparison helpers -----------------------------------------------------------------------------------------------


def _per_image(out: dict[str, torch.Tensor]) -> list[dict]:
    """Fixed-size graph outputs -> per-image dicts of the first num_detections slots."""
    res = []
    for i, n in enumerate(out["num_detections"].tolist()):
        res.append(
            {
                "boxes": out["boxes"][i, :n],
                "scores": out["scores"][i, :n],
                "labels": out["labels"][i, :n],
                "masks28": out["masks"][i, :n],
            }
        )
    return res


def _padded(images: list[torch.Tensor], cfg) -> tuple[torch.Tensor, torch.Tensor]:
    resized = [resize_image(to_float_image(im), cfg.input.min_size, cfg.input.max_size) for im in images]
    return batch_images(resized, cfg.input.size_divisible)


def _eager(model, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(images, sizes)


# -- 1. both flavours equal PyTorch, and each other -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_flavour_equals_pytorch(tiny, predictors, flavour):
    images = sample_images()
    ref = Predictor(tiny["model"], tiny["cfg"].input)(images)
    got = predictors[flavour](images)
    compare_detections(ref, got, f"{flavour} vs pytorch")


def test_flavours_equal_each_other(predictors):
    images = sample_images()
    portable = predictors["portable"](images)
    compare_detections(portable, predictors["trt"](images), "trt vs portable")
    compare_detections(portable, predictors["rtx"](images), "rtx vs portable")


def test_fp16_export_holds_float16_weights(tiny_onnx, tiny_fp16):
    """`export --fp16`: the weights are float16 (what stays float32 is GroupNorm's, < 1%), the file about half the
    size, the graph's inputs and outputs the float32 export's, and the metadata says so."""
    for flavour, path in tiny_fp16.items():
        m16, m32 = onnx.load(str(path)), onnx.load(str(tiny_onnx[flavour]))
        e16, e32 = float_elements(m16), float_elements(m32)
        ratio = path.stat().st_size / tiny_onnx[flavour].stat().st_size
        print(
            f"{flavour}: float32 export {e32}, --fp16 {e16}; file {path.stat().st_size / 1e6:.2f} MB = "
            f"{ratio:.2f} of float32"
        )
        assert e16.get("FLOAT16", 0) >= 0.99 * sum(e16.values())
        assert ratio <= 0.65  # the weights halve; the graph itself (rtx: the NMS loop, the gathers) stays
        io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in [*m.graph.input, *m.graph.output]]  # noqa
        assert io(m16) == io(m32)
        meta16 = {p.key: p.value for p in m16.metadata_props}
        meta32 = {p.key: p.value for p in m32.metadata_props}
        assert meta16["mrcnn.precision"] == "fp16" and meta32["mrcnn.precision"] == "fp32"


def test_fp16_graph_tracks_the_float32_model(tiny, tiny_fp16):
    """The float16 graphs on ONNX Runtime: the trt and rtx flavours equal each other (one float16 network, float32
    ops), and nearly every detection of the float32 PyTorch model has a twin (same label, box within 0.5 px, score
    within 2e-3). With random weights many scores are near-tied, so float16 rounding reorders some of the lowest
    ones past the last slot: a share, not all, is asserted."""
    images = sample_images()
    ref = Predictor(tiny["model"], tiny["cfg"].input)(images)
    runs = {t: load_artifact(p, "cpu", log=lambda m: None)(images) for t, p in tiny_fp16.items()}
    compare_detections(runs["trt"], runs["rtx"], "fp16: rtx vs trt")
    got = runs["rtx"]
    twins = total = 0
    d_box, d_score = [], []
    for r, o in zip(ref, got, strict=True):
        for i in range(len(r["boxes"])):
            same = o["labels"] == r["labels"][i]
            if not same.any():
                continue
            db = (o["boxes"][same] - r["boxes"][i]).abs().amax(-1)
            j = int(db.argmin())
            ds = float((o["scores"][same][j] - r["scores"][i]).abs())
            if float(db[j]) <= FP16_BOX_TOL and ds <= FP16_SCORE_TOL:
                twins += 1
                d_box.append(float(db[j]))
                d_score.append(ds)
        total += len(r["boxes"])
    print(
        f"fp16 vs float32 PyTorch: {twins}/{total} detections with a twin; their box diff max "
        f"{max(d_box, default=float('nan')):.3g} px, score diff max {max(d_score, default=float('nan')):.3g}"
    )
    assert total >= MIN_DETECTIONS * len(images)
    assert twins >= 0.9 * total


# -- 2. batch: each image's results equal its batch-1 results (same padded tensor) ----------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_batch_independent(tiny, predictors, flavour):
    images = [u8(noise(180, 240, 7)), u8(synthetic(256, 192, 8)), u8(synthetic(140, 250, 9)), u8(noise(220, 160, 10))]
    batch, sizes = _padded(images, tiny["cfg"])  # mixed sizes, zero-padded to the largest
    p = predictors[flavour]
    singles = [_per_image(p.run(batch[i : i + 1], sizes[i : i + 1]))[0] for i in range(4)]
    for B in (2, 4):
        got = _per_image(p.run(batch[:B], sizes[:B]))
        compare_detections(singles[:B], got, f"{flavour} B={B} vs B=1")
    compare_detections(
        _per_image(_eager(tiny["model"], batch, sizes)), _per_image(p.run(batch, sizes)), f"{flavour} B=4 vs pytorch"
    )


def test_pad_to_max_results_do_not_depend_on_batch_mates(tiny, predictors):
    """A pad_to_max config (shapes-tiny: GroupNorm, trained on 256 x 256 batches) is padded so at inference too, in
    PyTorch and in both ONNX flavours: an image's detections are the same alone and next to a larger image. Without
    it, the padding a batch mate adds changes the GroupNorm statistics."""
    a, mate = u8(synthetic(150, 230, 2)), u8(noise(256, 200, 4))
    runs = {"pytorch": Predictor(tiny["model"], tiny["cfg"].input), **predictors}
    for name, p in runs.items():
        compare_detections(p([a]), p([a, mate])[:1], f"{name}: alone vs next to a 256x200 image")
    plain = tiny["cfg"].override(["input.pad_to_max=false"])
    alone, paired = (Predictor(tiny["model"], plain.input)(x)[0] for x in ([a], [a, mate]))
    d = float((alone["scores"][:20] - paired["scores"][:20]).abs().max())
    print(f"without pad_to_max: max score change of the top 20 next to a batch mate {d:.3g}")
    assert d > SCORE_TOL, d


# -- 3. no detection above the threshold: num_detections = 0, no error (static export through the CLI) -------------


@pytest.mark.slow
@pytest.mark.parametrize("flavour, opset", [("trt", 17), ("portable", 16), ("rtx", 16)])  # the oldest opsets too
def test_zero_detections(tiny, tmp_path, flavour, opset):
    out = tmp_path / f"none-{flavour}.onnx"
    r = runner.invoke(
        app,
        [
            "export",
            str(tiny["ckpt"]),
            "-o",
            str(out),
            "--flavour",
            flavour,
            "--batch",
            "1",
            "--height",
            "256",
            "--width",
            "256",
            "--opset",
            str(opset),
            "--set",
            "model.box_score_thresh=1.0",
        ],
    )
    assert r.exit_code == 0, r.stdout + r.stderr
    model = onnx.load(str(out))
    assert ("", opset) in {(o.domain, o.version) for o in model.opset_import}
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 256], dims
    p = load_artifact(out, "cpu")
    images = sample_images()[:2]
    results = p(images)  # static batch 1: two runs
    for im, res in zip(images, results, strict=True):
        assert res["boxes"].shape == (0, 4) and res["scores"].shape == (0,) and res["labels"].shape == (0,)
        assert res["masks"].shape == (0, 1, *im.shape[-2:])
    batch, sizes = _padded(images[:1], tiny["cfg"])
    raw = p.run(torch.nn.functional.pad(batch, (0, 256 - batch.shape[-1], 0, 256 - batch.shape[-2])), sizes)
    print(f"{flavour}: num_detections={raw['num_detections'].tolist()} max score={float(raw['scores'].max())}")
    assert raw["num_detections"].tolist() == [0]
    assert float(raw["scores"].abs().max()) == 0.0 and float(raw["masks"].abs().max()) == 0.0


# -- 4. one dynamic model, several input sizes ------------------------------------------------------------------------

_EAGER_CACHE: dict = {}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dynamic_size(tiny, predictors, flavour):
    p = predictors[flavour]
    for (H, W), (h, w) in (((320, 320), (300, 317)), ((800, 1216), (790, 1200)), ((640, 480), (629, 470))):
        img = torch.zeros(1, 3, H, W)
        img[0, :, :h, :w] = synthetic(h, w, H + W)
        sizes = torch.tensor([[h, w]])
        if (H, W) not in _EAGER_CACHE:
            _EAGER_CACHE[(H, W)] = _per_image(_eager(tiny["model"], img, sizes))
        compare_detections(_EAGER_CACHE[(H, W)], _per_image(p.run(img, sizes)), f"{flavour} {H}x{W}")


# -- 5. graph contents: trt nodes vs plugins/README.md, portable standard-only, checker, metadata -------------------

_T = onnx.TensorProto
_README_TYPES = {
    "float32": {_T.FLOAT},
    "int64": {_T.INT64},
    "bool": {_T.BOOL},
    "float32, float16": {_T.FLOAT, _T.FLOAT16},
}
_README_ATTRS = {"float[]": "floats", "float": "float", "int": "int", "bool": "int"}


def _contract_types(dtype: str) -> set | None:
    """ONNX elem types a contract Port admits (None: any)."""
    from mrcnn.export.contract import TYPE_PARAMS

    names = TYPE_PARAMS.get(dtype, [dtype])
    if dtype == "T_any":
        return None
    m = {
        "tensor(float)": onnx.TensorProto.FLOAT,
        "tensor(float16)": onnx.TensorProto.FLOAT16,
        "tensor(int64)": onnx.TensorProto.INT64,
        "tensor(bool)": onnx.TensorProto.BOOL,
    }
    return {m[n] for n in names}


def _readme_types(rows: list, i: int) -> set | None:
    dtype = rows[i][1]
    if dtype == "any":
        return None
    if dtype.startswith("same as "):
        ref = dtype[len("same as ") :]
        return _readme_types(rows, [n for n, _ in rows].index(ref))
    return _README_TYPES[dtype]


def _attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def test_trt_nodes_match_plugin_table(tiny_onnx):
    register_schemas()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_onnx["trt"])), strict_mode=True)
    elem = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    found = {n.op_type for n in nodes}
    assert found == {"AnchorGrid", "PreNmsSelect", "BoxNms"}, found
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in model.opset_import}
    for n in nodes:  # against export/contract.py
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == "1" and sorted(attrs) == sorted(OPS[n.op_type].attribute_names), n
    table = plugin_table()
    print("plugins/README.md ops:", {k: [n for n, _ in v["attribute"]] for k, v in table.items()})
    for n in nodes:
        row = table.get(n.op_type)
        assert row is not None, f"{n.op_type} is not in plugins/README.md"
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        assert attrs.pop("plugin_version") == row["plugin_version"], n.op_type
        assert sorted(attrs) == sorted(name for name, _ in row["attribute"]), (n.op_type, sorted(attrs))
        assert len(n.input) == len(row["input"]) and len(n.output) == len(row["output"]), n.op_type
        for kind, names in (("input", n.input), ("output", n.output)):
            for i, v in enumerate(names):
                allowed = _readme_types(row[kind], i)
                assert allowed is None or elem.get(v) in allowed, (n.op_type, kind, row[kind][i], elem.get(v))


def test_contract_matches_plugin_table():
    """export/contract.py (the ONNX schemas, the ORT ops) declares exactly the README's ports and attributes."""
    table = plugin_table()
    for op_type, d in OPS.items():
        row = table.get(op_type)
        assert row is not None, f"{op_type} is not in plugins/README.md"
        assert row["plugin_version"] == "1"
        for kind, ports in (("input", d.inputs), ("output", d.outputs)):
            assert [p.name for p in ports] == [name for name, _ in row[kind]], (op_type, kind)
            for i, p in enumerate(ports):
                assert _contract_types(p.dtype) == _readme_types(row[kind], i), (op_type, kind, p.name)
        assert [(a.name, a.kind) for a in d.attrs] == [(name, _README_ATTRS[t]) for name, t in row["attribute"]], (
            op_type
        )


_CPP_SPEC = re.compile(r'\{"(\w+)", FieldKind::k(FLOATS|FLOAT|INT), ([^,]+), ([^,]+), ([^,]+), ([^}]+)\}')
_CPP_VALUES = {
    "kINF": math.inf,
    "-kINF": -math.inf,
    "std::numeric_limits<int32_t>::max()": 2**31 - 1,
    "MRCNN_ANCHOR_MAX_PARAMS": 32,
    "1 << 30": 1 << 30,
}


def test_ort_field_checks_are_the_plugin_creators():
    """One table for both runtimes: every FieldSpec of the TensorRT plugin creators (plugins/tensorrt/*/*_plugin.cpp)
    has the kind, value count and range of export/contract.py's Attr, which ONNX Runtime's custom ops check."""
    from mrcnn.export.contract import ANCHOR_MAX_PARAMS

    root = Path(__file__).resolve().parents[2] / "plugins" / "tensorrt"
    kernels_h = (root.parent / "kernels" / "include" / "mrcnn" / "kernels.h").read_text()
    assert f"#define MRCNN_ANCHOR_MAX_PARAMS {ANCHOR_MAX_PARAMS}" in kernels_h
    cpp = {}
    for f in sorted(root.glob("*/*_plugin.cpp")):
        op = re.search(r'static char const\* name\(\) \{ return "(\w+)"; \}', f.read_text()).group(1)
        cpp[op] = [
            (m[0], m[1].lower(), *(_CPP_VALUES.get(x.strip()) or float(x) for x in m[2:]))
            for m in _CPP_SPEC.findall(f.read_text())
        ]
    ours = {op: [(a.name, a.kind, a.min_count, a.max_count, a.lo, a.hi) for a in d.attrs] for op, d in OPS.items()}
    print(cpp)
    assert cpp == ours, (cpp, ours)


@pytest.mark.parametrize(
    "op_type, field, value, needle",
    [
        ("BoxNms", "max_output", 2**40, "field 'max_output' = 1099511627776 is out of range"),  # SIGABRT before
        ("BoxNms", "iou_threshold", math.nan, "field 'iou_threshold' = nan is out of range"),  # NMS silently off
        ("PreNmsSelect", "top_k", -5, "field 'top_k' = -5 is out of range"),  # SIGABRT before
        ("AnchorGrid", "stride", -8, "field 'stride' = -8 is out of range"),  # SIGABRT before
        ("PreNmsSelect", "weights", [1.0, 1.0], "field 'weights' needs 4 value(s), got 2"),
    ],
)
def test_bad_custom_op_fields_are_one_line_before_onnx_runtime_runs(tiny_onnx, tmp_path, op_type, field, value, needle):
    """A trt-flavour export whose mrcnn node carries a field the plugin creator refuses: `mrcnn predict` (its own
    process: the failure used to abort it) says so in one line naming the node and the field, exit 1, no output."""
    m = onnx.load(str(tiny_onnx["trt"]))
    node = next(n for n in m.graph.node if n.domain == DOMAIN and n.op_type == op_type)
    attr = next(a for a in node.attribute if a.name == field)
    node.attribute.remove(attr)
    node.attribute.append(onnx.helper.make_attribute(field, value))
    onnx.save(m, str(tmp_path / "bad.onnx"))
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(tmp_path / "a.png")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrcnn",
            "predict",
            str(tmp_path / "bad.onnx"),
            str(tmp_path / "a.png"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = r.stderr.strip().splitlines()
    print(r.returncode, err[-3:])
    assert r.returncode == 1 and len(err) == 1 and err[0].startswith("error: "), (r.returncode, r.stderr[-2000:])
    assert needle in err[0] and op_type in err[0] and "bad.onnx" in err[0], err[0]
    assert not (tmp_path / "out").exists()


def test_graphs_check_and_describe_themselves(tiny_onnx, tiny):
    register_schemas()
    for flavour, path in tiny_onnx.items():
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        domains = {n.domain for n in model.graph.node}
        ops = {n.op_type for n in model.graph.node}
        if flavour == "portable":
            assert domains <= {"", "ai.onnx"}, domains
            assert {"TopK", "NonMaxSuppression", "RoiAlign"} <= ops
        elif flavour == "rtx":
            assert domains <= {"", "ai.onnx"}, domains
            assert not ops & set(NOT_IN_RTX), ops & set(NOT_IN_RTX)
            assert sum(n.op_type == "Loop" for n in model.graph.node) == 2  # the RPN's and the detections' NMS
        else:
            assert "NonMaxSuppression" not in ops and "TopK" not in ops
        if flavour != "rtx":
            roi = [n for n in model.graph.node if n.op_type == "RoiAlign"]
            assert roi and all(
                _attr_value(a) == "output_half_pixel"
                for n in roi
                for a in n.attribute
                if a.name == "coordinate_transformation_mode"
            ), "RoiAlign: aligned=False semantics"
            assert all(any(a.name == "coordinate_transformation_mode" for a in n.attribute) for n in roi)
        outs = {o.name: o.type.tensor_type for o in inferred.graph.output}
        assert list(outs) == ["boxes", "scores", "labels", "masks", "num_detections"]
        assert outs["labels"].elem_type == onnx.TensorProto.INT64
        assert outs["num_detections"].elem_type == onnx.TensorProto.INT64
        assert [d.dim_value for d in outs["masks"].shape.dim][1:] == [50, 28, 28]
        ins = model.graph.input
        assert [i.name for i in ins] == ["images", "image_sizes"]
        dims = ins[0].type.tensor_type.shape.dim  # [batch, 3, height, width]: dynamic except the channels
        assert dims[0].dim_param and dims[2].dim_param and dims[3].dim_param and dims[1].dim_value == 3, dims
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["mrcnn.flavour"] == flavour
        assert json.loads(meta["mrcnn.class_names"]) == tiny["names"]
        assert Config.from_dict(json.loads(meta["mrcnn.config"])).model.box_score_thresh == 0.0
        pre = json.loads(meta["mrcnn.preprocess"])
        inp = tiny["cfg"].input
        assert (pre["min_size"], pre["max_size"], pre["size_divisible"]) == (
            inp.min_size,
            inp.max_size,
            inp.size_divisible,
        )
        assert pre["image_mean"] == list(tiny["cfg"].model.image_mean)
        assert inp.pad_to_max and pre["pad_to"] == [inp.max_size, inp.max_size], pre  # shapes-tiny trains so
        import mrcnn

        assert meta["mrcnn.version"] == mrcnn.__version__


def _op_session(module: torch.nn.Module, args: tuple, dynamic_shapes, flavour: str):
    """One op's graph in `flavour`'s translation, as an ORT session (inputs in `args` order) and its op types."""
    from mrcnn.deploy.ort_predictor import ort_session
    from mrcnn.export.translations import translation_table

    with torch.no_grad():
        prog = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            custom_translation_table=translation_table(flavour),
            dynamic_shapes=dynamic_shapes,
            opset_version=18,
            verbose=False,
        )
    sess = ort_session(prog.model_proto, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(*inputs):
        return [torch.from_numpy(o) for o in sess.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})]

    return run, {(x.domain, x.op_type) for x in prog.model_proto.graph.node}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_box_iou_exports(flavour):
    """BoxIou (a training op, absent from the inference graph) exports too: node or decomposition, on ORT."""
    from mrcnn import native as kernels
    from mrcnn.ops import box_iou

    class Iou(torch.nn.Module):
        def forward(self, a, b):
            return kernels.box_iou(a, b)

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 7, 4, generator=g) * 50
    a[..., 2:] += a[..., :2]
    b = torch.cat([a[:, :3], torch.zeros(2, 2, 4)], 1)  # duplicates and degenerate boxes
    n, m = torch.export.Dim("n", min=2), torch.export.Dim("m", min=2)
    run, ops = _op_session(Iou(), (a, b), ({1: n}, {1: m}), flavour)
    assert (("mrcnn", "BoxIou") in ops) == (flavour == "trt"), ops
    got = run(a, b)[0]
    d = float((got - box_iou(a.double(), b.double())).abs().max())
    print(f"BoxIou {flavour}: max |ORT - float64 reference| = {d:.3g}")
    assert got.shape == (2, 7, 5) and d <= 1e-5


class _Nms(torch.nn.Module):
    def __init__(self, iou: float, score: float, k: int) -> None:
        super().__init__()
        self.args = (iou, score, k)

    def forward(self, boxes, scores, classes, valid):
        from mrcnn import native as kernels

        return kernels.box_nms(boxes, scores, classes, valid, *self.args)


def _nms_case(B: int, N: int, seed: int, clusters: int = 4, classes: int = 3):
    """Boxes jittered around a few centres (chains of suppression), classes 1..classes, scores rounded to 0.01
    (ties), some invalid and some degenerate (zero-width) boxes."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(B, clusters, 2, generator=g) * 200
    pick = torch.randint(0, clusters, (B, N), generator=g)
    c = centre.gather(1, pick[..., None].expand(B, N, 2)) + torch.randn(B, N, 2, generator=g) * 6
    wh = 20 + torch.rand(B, N, 2, generator=g) * 30
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    boxes[:, ::9, 2] = boxes[:, ::9, 0]  # degenerate
    scores = (torch.rand(B, N, generator=g) * 100).round() / 100
    cls = torch.randint(1, classes + 1, (B, N), generator=g)
    valid = torch.rand(B, N, generator=g) > 0.1
    return boxes, scores, cls, valid


def _nms_dims():
    b, n = torch.export.Dim("b", min=1, max=64), torch.export.Dim("n", min=2, max=100000)
    return ({0: b, 1: n}, {0: b, 1: n}, {0: b, 1: n}, {0: b, 1: n})


def _check_nms(got, ref, what: str) -> None:
    gb, gs, gc, gi, gn = got
    rb, rs, rc, ri, rn = ref
    print(
        f"{what}: num {gn.tolist()} (reference {rn.tolist()}), max box diff "
        f"{float((gb - rb.float()).abs().max()) if gb.numel() else 0.0:.3g}"
    )
    assert gn.tolist() == rn.tolist(), what
    assert torch.equal(gi, ri) and torch.equal(gc, rc), f"{what}: indices {gi.tolist()} vs {ri.tolist()}"
    assert torch.equal(gb, rb.float()) and torch.equal(gs, rs.float()), what  # gathered, not computed


@pytest.mark.parametrize("flavour", ["portable", "rtx"])
@pytest.mark.parametrize("score", [0.05, float("-inf")])  # detections; RPN (no score threshold)
def test_box_nms_decompositions_equal_reference(flavour, score):
    """The portable BoxNms (NonMaxSuppression with one score row per class) and the rtx one (top-T, suppression
    matrix, greedy keep as an ONNX Loop) on ORT equal the float64 greedy loop exactly (same kept indices in the
    same order) on clustered boxes with suppression chains, score ties, invalid and degenerate boxes, batch 2; on
    one box, on no candidate at all, with fewer candidates than slots (padding), and on a pair whose IoU 0.500001
    lies within float32's rounding of the threshold once the box is shifted by its class (torchvision's
    batched_nms keeps both; the portable export did too before it decided each class on its own coordinates)."""
    K = 40
    case = _nms_case(2, 300, 0)
    run, ops = _op_session(_Nms(0.5, score, K), case, _nms_dims(), flavour)
    if flavour == "rtx":
        assert ("", "Loop") in ops and ("", "NonMaxSuppression") not in ops, ops
    else:
        assert ("", "NonMaxSuppression") in ops and ("", "Loop") not in ops, ops
    none = list(_nms_case(2, 30, 1))
    none[3] = torch.zeros_like(none[3])
    for what, args in (
        ("clusters", case),
        ("dense", _nms_case(2, 2000, 2, clusters=2, classes=1)),
        (
            "one box",
            (
                torch.tensor([[[1.0, 2.0, 30.0, 40.0]]]),
                torch.tensor([[0.9]]),
                torch.tensor([[2]]),
                torch.tensor([[True]]),
            ),
        ),
        ("no candidate", tuple(none)),
        ("fewer than K", _nms_case(2, 12, 3)),
        (
            "IoU 0.500001, class 90",
            (
                torch.tensor([[[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 50.0001, 100.0], [10.0, 10.0, 20.0, 20.0]]]),
                torch.tensor([[0.9, 0.8, 0.7]]),
                torch.tensor([[90, 90, 1]]),
                torch.ones(1, 3, dtype=torch.bool),
            ),
        ),
    ):
        ref = box_nms_reference(*args, 0.5, score, K)
        _check_nms(run(*args), ref, f"{what} (score > {score})")
    assert int(ref[4].min()) < K  # the last cases pad


def test_box_nms_rtx_beyond_the_topk_limit():
    """N > 3840 (TensorRT's TopK limit): the rtx BoxNms sees the 3840 highest-scored candidates. It still equals the
    reference when at least K of those are kept (greedy NMS decides each box from higher-scored ones only); when
    fewer are kept it returns those, where the reference goes on into the lower-scored rest (the documented
    limit: a conversion gap `mrcnn validate` shows)."""
    from mrcnn.export.translations import RTX_MAX_TOPK

    N, K = 5000, 100
    g = torch.Generator().manual_seed(4)
    xy = torch.stack(torch.meshgrid(torch.arange(100.0), torch.arange(50.0), indexing="ij"), -1).reshape(1, N, 2)
    boxes = torch.cat([xy * 20, xy * 20 + 10], -1)  # disjoint
    scores = torch.rand(1, N, generator=g)
    cls, valid = torch.ones(1, N, dtype=torch.int64), torch.ones(1, N, dtype=torch.bool)
    run, _ = _op_session(_Nms(0.5, 0.0, K), (boxes, scores, cls, valid), _nms_dims(), "rtx")
    _check_nms(
        run(boxes, scores, cls, valid),
        box_nms_reference(boxes, scores, cls, valid, 0.5, 0.0, K),
        "disjoint, 5000 candidates",
    )
    same = boxes.clone()
    top = scores[0].argsort(descending=True)[:RTX_MAX_TOPK]
    same[0, top] = boxes[0, top[0]]  # the top 3840 are one box: 1 kept among them
    got = run(same, scores, cls, valid)
    ref = box_nms_reference(same, scores, cls, valid, 0.5, 0.0, K)
    print(f"top {RTX_MAX_TOPK} identical: rtx keeps {got[4].tolist()}, the reference {ref[4].tolist()}")
    assert got[4].tolist() == [1] and ref[4].tolist() == [K] and int(got[3][0, 0]) == int(ref[3][0, 0])


@pytest.mark.parametrize("size, aligned", [(7, False), (14, True)])
def test_roi_align_rtx_equals_torchvision(size, aligned):
    """The rtx RoIAlign (torch.ops.mrcnn.roi_align over a 3-level pyramid as gathers) on ORT equals torchvision's
    roi_align in float64, each RoI on its own level, within 1e-5: RoIs inside, partly and wholly outside the image,
    sub-pixel, on the border, batch 2; and on no RoI at all."""
    from torchvision.ops import roi_align

    from mrcnn import native

    scales = [0.25, 0.125, 0.0625]

    class Pyramid(torch.nn.Module):
        def forward(self, f0, f1, f2, rois, levels):
            return native.multilevel_roi_align([f0, f1, f2], rois, levels, scales, size, 2, aligned)

    g = torch.Generator().manual_seed(5)
    feats = [torch.rand(2, 3, 64 // d, 80 // d, generator=g) for d in (4, 8, 16)]
    xy = torch.rand(40, 2, generator=g) * 100 - 10
    wh = torch.rand(40, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([0.0, 0.0, 80.0, 64.0])  # the whole image
    boxes[1] = torch.tensor([79.0, 63.0, 80.0, 64.0])  # the bottom-right corner
    boxes[2] = torch.tensor([-50.0, -40.0, -20.0, -5.0])  # wholly outside
    boxes[3] = torch.tensor([10.2, 10.3, 10.4, 10.5])  # sub-pixel
    rois = torch.cat([torch.randint(0, 2, (40, 1), generator=g).float(), boxes], 1)
    levels = torch.randint(0, 3, (40,), generator=g)
    r = torch.export.Dim("r", min=2, max=100000)
    run, ops = _op_session(Pyramid(), (*feats, rois, levels), (None, None, None, {0: r}, {0: r}), "rtx")
    assert not {o for _, o in ops} & set(NOT_IN_RTX), ops
    got = run(*feats, rois, levels)[0]
    ref = torch.cat(
        [
            roi_align(feats[int(lv)].double(), rois[i : i + 1].double(), size, scales[int(lv)], 2, aligned)
            for i, lv in enumerate(levels)
        ]
    )
    d = float((got - ref).abs().max())
    print(
        f"RoIAlign rtx {size}x{size} aligned={aligned}: max |ORT - torchvision float64| = {d:.3g} over "
        f"{rois.shape[0]} RoIs; RoI 2 (outside) max {float(got[2].abs().max()):.3g}"
    )
    assert got.shape == ref.shape and d <= 1e-5
    empty = run(*feats, rois[:0], levels[:0])[0]
    assert empty.shape == (0, 3, size, size)


# -- CLI: export errors are one line, exit 1, no file written; eval accepts .onnx ---------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--flavour", "tensorrt"], "unknown ONNX flavour"),
        (["--opset", "15"], "opset 15 is too old"),
        (["--opset", "99"], "opset 99 is newer than the installed onnx package knows"),  # was onnx's checker traceback
        (["--batch", "2", "--dynamic-batch"], "exclude each other"),
        (["--height", "320"], "--height and --width go together"),
        (["--height", "300", "--width", "320"], "multiples of size_divisible"),
        (["--set", "model.nope=1"], "nope"),
    ],
)
def test_export_bad_options(tiny, tmp_path, args, needle):
    out = tmp_path / "m.onnx"
    err = one_error_line(runner.invoke(app, ["export", str(tiny["ckpt"]), "-o", str(out), *args]))
    assert needle in err
    assert list(tmp_path.iterdir()) == [], "a failed export left files behind"


def test_export_bad_paths(tiny, tmp_path):
    # output path is a directory
    (tmp_path / "dir.onnx").mkdir()
    err = one_error_line(runner.invoke(app, ["export", str(tiny["ckpt"]), "-o", str(tmp_path / "dir.onnx")]))
    assert "is a directory" in err
    # a checkpoint without an embedded config
    bad = tmp_path / "noconfig.pt"
    torch.save({"format": "mrcnn-checkpoint", "version": 1, "model": {}}, bad)
    err = one_error_line(runner.invoke(app, ["export", str(bad), "-o", str(tmp_path / "x.onnx")]))
    assert "no embedded config" in err
    # a missing checkpoint
    err = one_error_line(runner.invoke(app, ["export", str(tmp_path / "missing.pt")]))
    assert "missing.pt" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.onnx", "noconfig.pt"]
