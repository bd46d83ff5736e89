"""ONNX export, both flavours, on ONNX Runtime (design.md §4, §6 claim 4).

    trt       mrcnn::AnchorGrid / PreNmsSelect / BoxNms nodes, run on ORT as Python custom ops on the C++ kernels
    portable  standard ONNX ops only

Checks: equality with our PyTorch model (random + synthetic images, >= 20 detections per image), with each other,
batch independence (B = 1, 2, 4, mixed sizes), zero detections, one dynamic model at several sizes, the trt nodes
against the op table in plugins/README.md, and, through the torchvision converter, equality with torchvision's eager
maskrcnn_resnet50_fpn (an outside peer). Detections are matched (same label, nearest box) because near-tied scores
may order differently; every comparison prints its measured differences.

Tolerances (design.md §6): boxes 1e-2 px, scores 1e-4, labels equal, 28x28 and pasted masks 1e-3.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from conftest import one_error_line
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("onnxscript")

from typer.testing import CliRunner  # noqa: E402

from mrcnn.cli.main import app  # noqa: E402
from mrcnn.config import Config, get_config  # noqa: E402
from mrcnn.engine.checkpoint import save_checkpoint  # noqa: E402
from mrcnn.export import export_checkpoint  # noqa: E402
from mrcnn.export.contract import DOMAIN, OPS, register_schemas  # noqa: E402
from mrcnn.model import Predictor, build_model  # noqa: E402
from mrcnn.model.preprocess import batch_images, resize_image, to_float_image  # noqa: E402
from mrcnn.runtime import load_artifact  # noqa: E402
from test_equivalence import (  # noqa: E402  (helpers only; tests/ is on sys.path under pytest)
    MAX_SIZE, MIN_SIZE, _match, _noise, _run_torchvision, _synthetic, _tame,
)

TARGETS = ("trt", "portable")
BOX_TOL, SCORE_TOL, MASK_TOL = 1e-2, 1e-4, 1e-3
MIN_DETECTIONS = 20
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _u8(img: torch.Tensor) -> torch.Tensor:
    return (img * 255).round().to(torch.uint8)


# -- fixtures ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """shapes-tiny with random weights: checkpoint, the same model in PyTorch (score threshold 0), class names."""
    torch.manual_seed(0)
    cfg = get_config("shapes-tiny")
    model = build_model(cfg.model)
    names = ["square", "circle", "triangle", "star", "ellipse"]  # the synthetic set's classes, in another order
    ckpt = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(ckpt, {"config": cfg.to_dict(), "class_names": names, "model": model.state_dict()})
    cfg0 = Config.from_dict(cfg.to_dict()).override(["model.box_score_thresh=0.0"])
    ours = build_model(cfg0.model)
    ours.load_state_dict(model.state_dict())
    return {"ckpt": ckpt, "cfg": cfg0, "model": ours.eval(), "names": names}


@pytest.fixture(scope="module")
def tiny_onnx(tiny):
    """Both flavours of the tiny model, dynamic batch and size, score threshold 0."""
    out = {}
    for target in TARGETS:
        t0 = time.perf_counter()
        out[target] = export_checkpoint(tiny["ckpt"], tiny["ckpt"].parent / f"tiny-{target}.onnx", target=target,
                                        overrides=["model.box_score_thresh=0.0"], log=lambda m: None)
        print(f"export {target}: {time.perf_counter() - t0:.1f} s")
    return out


@pytest.fixture(scope="module")
def predictors(tiny_onnx):
    return {t: load_artifact(p, "cpu", log=print) for t, p in tiny_onnx.items()}


def _images():
    """Random noise and synthetic 'shapes' images of different sizes (uint8, like a dataset)."""
    return [_u8(_noise(200, 256, 1)), _u8(_synthetic(150, 230, 2)), _u8(_synthetic(256, 170, 3))]


# -- comparison helpers -----------------------------------------------------------------------------------------------

def _compare(ref: list[dict], got: list[dict], what: str, min_det: int = MIN_DETECTIONS) -> None:
    """Same detection count per image (>= min_det), then matched boxes / scores / labels / masks within tolerance."""
    assert len(ref) == len(got), what
    lines, failures = [], []
    for i, (r, o) in enumerate(zip(ref, got)):
        n, m = len(r["boxes"]), len(o["boxes"])
        if n != m:
            failures.append(f"{what} image {i}: {m} detections vs {n}")
            continue
        if n < min_det:
            failures.append(f"{what} image {i}: only {n} detections (need >= {min_det})")
            continue
        k = _match(r, o)
        d_box = float((o["boxes"][k] - r["boxes"]).abs().max()) if n else 0.0
        d_score = float((o["scores"][k] - r["scores"]).abs().max()) if n else 0.0
        labels_equal = bool(torch.equal(o["labels"][k], r["labels"]))
        d_m28 = float((o["masks28"][k] - r["masks28"]).abs().max()) if n else 0.0
        d_mask = 0.0
        if "masks" in r and n and r["masks"].shape == o["masks"].shape:
            d_mask = float((o["masks"][k] - r["masks"]).abs().max())
        elif "masks" in r and n:
            failures.append(f"{what} image {i}: pasted masks {tuple(o['masks'].shape)} vs {tuple(r['masks'].shape)}")
        line = (f"{what} image {i}: n={n} box={d_box:.3g} score={d_score:.3g} mask28={d_m28:.3g} pasted={d_mask:.3g} "
                f"labels_equal={labels_equal}")
        lines.append(line)
        if not (labels_equal and d_box <= BOX_TOL and d_score <= SCORE_TOL and d_m28 <= MASK_TOL
                and d_mask <= MASK_TOL):
            failures.append(line)
    print("\n".join(lines))
    assert not failures, "\n".join(failures)


def _per_image(out: dict[str, torch.Tensor]) -> list[dict]:
    """Fixed-size graph outputs -> per-image dicts of the first num_detections slots."""
    res = []
    for i, n in enumerate(out["num_detections"].tolist()):
        res.append({"boxes": out["boxes"][i, :n], "scores": out["scores"][i, :n], "labels": out["labels"][i, :n],
                    "masks28": out["masks"][i, :n]})
    return res


def _padded(images: list[torch.Tensor], cfg) -> tuple[torch.Tensor, torch.Tensor]:
    resized = [resize_image(to_float_image(im), cfg.input.min_size, cfg.input.max_size) for im in images]
    return batch_images(resized, cfg.input.size_divisible)


def _eager(model, images: torch.Tensor, sizes: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model(images, sizes)


# -- 1. both flavours equal PyTorch, and each other -------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_flavour_equals_pytorch(tiny, predictors, target):
    images = _images()
    ref = Predictor(tiny["model"], tiny["cfg"].input)(images)
    got = predictors[target](images)
    _compare(ref, got, f"{target} vs pytorch")


def test_flavours_equal_each_other(predictors):
    images = _images()
    _compare(predictors["portable"](images), predictors["trt"](images), "trt vs portable")


# -- 2. batch: each image's results equal its batch-1 results (same padded tensor) ----------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_batch_independent(tiny, predictors, target):
    images = [_u8(_noise(180, 240, 7)), _u8(_synthetic(256, 192, 8)), _u8(_synthetic(140, 250, 9)),
              _u8(_noise(220, 160, 10))]
    batch, sizes = _padded(images, tiny["cfg"])  # mixed sizes, zero-padded to the largest
    p = predictors[target]
    singles = [_per_image(p.run(batch[i:i + 1], sizes[i:i + 1]))[0] for i in range(4)]
    for B in (2, 4):
        got = _per_image(p.run(batch[:B], sizes[:B]))
        _compare(singles[:B], got, f"{target} B={B} vs B=1")
    _compare(_per_image(_eager(tiny["model"], batch, sizes)), _per_image(p.run(batch, sizes)),
             f"{target} B=4 vs pytorch")


def test_pad_to_max_results_do_not_depend_on_batch_mates(tiny, predictors):
    """A pad_to_max config (shapes-tiny: GroupNorm, trained on 256 x 256 batches) is padded so at inference too, in
    PyTorch and in both ONNX flavours: an image's detections are the same alone and next to a larger image. Without
    it, the padding a batch mate adds changes the GroupNorm statistics."""
    a, mate = _u8(_synthetic(150, 230, 2)), _u8(_noise(256, 200, 4))
    runs = {"pytorch": Predictor(tiny["model"], tiny["cfg"].input), **predictors}
    for name, p in runs.items():
        _compare(p([a]), p([a, mate])[:1], f"{name}: alone vs next to a 256x200 image")
    plain = tiny["cfg"].override(["input.pad_to_max=false"])
    alone, paired = (Predictor(tiny["model"], plain.input)(x)[0] for x in ([a], [a, mate]))
    d = float((alone["scores"][:20] - paired["scores"][:20]).abs().max())
    print(f"without pad_to_max: max score change of the top 20 next to a batch mate {d:.3g}")
    assert d > SCORE_TOL, d


# -- 3. no detection above the threshold: num_detections = 0, no error (static export through the CLI) -------------

@pytest.mark.parametrize("target, opset", [("trt", 17), ("portable", 16)])  # also: the oldest opsets allowed
def test_zero_detections(tiny, tmp_path, target, opset):
    out = tmp_path / f"none-{target}.onnx"
    r = runner.invoke(app, ["export", str(tiny["ckpt"]), "-o", str(out), "--target", target, "--batch", "1",
                            "--height", "256", "--width", "256", "--opset", str(opset),
                            "--set", "model.box_score_thresh=1.0"])
    assert r.exit_code == 0, r.stdout + r.stderr
    model = onnx.load(str(out))
    assert ("", opset) in {(o.domain, o.version) for o in model.opset_import}
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 256], dims
    p = load_artifact(out, "cpu")
    images = _images()[:2]
    results = p(images)  # static batch 1: two runs
    for im, res in zip(images, results):
        assert res["boxes"].shape == (0, 4) and res["scores"].shape == (0,) and res["labels"].shape == (0,)
        assert res["masks"].shape == (0, 1, *im.shape[-2:])
    batch, sizes = _padded(images[:1], tiny["cfg"])
    raw = p.run(torch.nn.functional.pad(batch, (0, 256 - batch.shape[-1], 0, 256 - batch.shape[-2])), sizes)
    print(f"{target}: num_detections={raw['num_detections'].tolist()} max score={float(raw['scores'].max())}")
    assert raw["num_detections"].tolist() == [0]
    assert float(raw["scores"].abs().max()) == 0.0 and float(raw["masks"].abs().max()) == 0.0


# -- 4. one dynamic model, several input sizes ------------------------------------------------------------------------

_EAGER_CACHE: dict = {}


@pytest.mark.parametrize("target", TARGETS)
def test_dynamic_size(tiny, predictors, target):
    p = predictors[target]
    for (H, W), (h, w) in (((320, 320), (300, 317)), ((800, 1216), (790, 1200)), ((640, 480), (629, 470))):
        img = torch.zeros(1, 3, H, W)
        img[0, :, :h, :w] = _synthetic(h, w, H + W)
        sizes = torch.tensor([[h, w]])
        if (H, W) not in _EAGER_CACHE:
            _EAGER_CACHE[(H, W)] = _per_image(_eager(tiny["model"], img, sizes))
        _compare(_EAGER_CACHE[(H, W)], _per_image(p.run(img, sizes)), f"{target} {H}x{W}")


# -- 5. graph contents: trt nodes vs plugins/README.md, portable standard-only, checker, metadata -------------------

def _plugin_table() -> dict[str, dict] | None:
    """The op contract of plugins/README.md (one row per input / output / attribute) as
    {onnx_op_type: {"plugin_version", "input", "output", "attribute": [(name, dtype), ...]}}; None without a table."""
    readme = ROOT / "plugins" / "README.md"
    if not readme.exists():
        return None
    header: list[str] | None = None
    table: dict[str, dict] = {}
    for ln in readme.read_text().splitlines():
        if not ln.strip().startswith("|"):
            header = None if not ln.strip() else header
            continue
        cells = [c.strip().strip("`") for c in ln.strip().strip("|").split("|")]
        if "onnx_op_type" in cells and "kind" in cells:
            header = cells
            continue
        if header is None or all(re.fullmatch(r":?-+:?", c) for c in cells):
            continue
        row = dict(zip(header, cells))
        entry = table.setdefault(row["onnx_op_type"], {"plugin_version": row["plugin_version"], "input": [],
                                                       "output": [], "attribute": []})
        entry[row["kind"]].append((row["name"], row["dtype"]))
    return table or None


_T = onnx.TensorProto
_README_TYPES = {"float32": {_T.FLOAT}, "int64": {_T.INT64}, "bool": {_T.BOOL},
                 "float32, float16": {_T.FLOAT, _T.FLOAT16}}
_README_ATTRS = {"float[]": "floats", "float": "float", "int": "int", "bool": "int"}


def _contract_types(dtype: str) -> set | None:
    """ONNX elem types a contract Port admits (None: any)."""
    from mrcnn.export.contract import TYPE_PARAMS

    names = TYPE_PARAMS.get(dtype, [dtype])
    if dtype == "T_any":
        return None
    m = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
         "tensor(int64)": onnx.TensorProto.INT64, "tensor(bool)": onnx.TensorProto.BOOL}
    return {m[n] for n in names}


def _readme_types(rows: list, i: int) -> set | None:
    dtype = rows[i][1]
    if dtype == "any":
        return None
    if dtype.startswith("same as "):
        ref = dtype[len("same as "):]
        return _readme_types(rows, [n for n, _ in rows].index(ref))
    return _README_TYPES[dtype]


def _attr_value(a):
    v = onnx.helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def test_trt_nodes_match_plugin_table(tiny_onnx):
    register_schemas()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_onnx["trt"])), strict_mode=True)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                           *model.graph.output]}
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    found = {n.op_type for n in nodes}
    assert found == {"AnchorGrid", "PreNmsSelect", "BoxNms"}, found
    assert (DOMAIN, 1) in {(o.domain, o.version) for o in model.opset_import}
    for n in nodes:  # against export/contract.py
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == "1" and sorted(attrs) == sorted(OPS[n.op_type].attribute_names), n
    table = _plugin_table()
    if table is None:
        pytest.skip("plugins/README.md has no op table; nodes checked against export/contract.py only")
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
    table = _plugin_table()
    if table is None:
        pytest.skip("plugins/README.md has no op table")
    for op_type, d in OPS.items():
        row = table.get(op_type)
        assert row is not None, f"{op_type} is not in plugins/README.md"
        assert row["plugin_version"] == "1"
        for kind, ports in (("input", d.inputs), ("output", d.outputs)):
            assert [p.name for p in ports] == [name for name, _ in row[kind]], (op_type, kind)
            for i, p in enumerate(ports):
                assert _contract_types(p.dtype) == _readme_types(row[kind], i), (op_type, kind, p.name)
        assert [(a.name, a.kind) for a in d.attrs] == [(name, _README_ATTRS[t]) for name, t in row["attribute"]], \
            op_type


def test_graphs_check_and_describe_themselves(tiny_onnx, tiny):
    register_schemas()
    for target, path in tiny_onnx.items():
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        domains = {n.domain for n in model.graph.node}
        ops = {n.op_type for n in model.graph.node}
        if target == "portable":
            assert domains <= {"", "ai.onnx"}, domains
            assert {"TopK", "NonMaxSuppression", "RoiAlign"} <= ops
        else:
            assert "NonMaxSuppression" not in ops and "TopK" not in ops
        roi = [n for n in model.graph.node if n.op_type == "RoiAlign"]
        assert roi and all(_attr_value(a) == "output_half_pixel" for n in roi for a in n.attribute
                           if a.name == "coordinate_transformation_mode"), "RoiAlign must be aligned=False semantics"
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
        assert meta["mrcnn.flavour"] == target
        assert json.loads(meta["mrcnn.class_names"]) == tiny["names"]
        assert Config.from_dict(json.loads(meta["mrcnn.config"])).model.box_score_thresh == 0.0
        pre = json.loads(meta["mrcnn.preprocess"])
        inp = tiny["cfg"].input
        assert (pre["min_size"], pre["max_size"], pre["size_divisible"]) == (inp.min_size, inp.max_size,
                                                                              inp.size_divisible)
        assert pre["image_mean"] == list(tiny["cfg"].model.image_mean)
        assert inp.pad_to_max and pre["pad_to"] == [inp.max_size, inp.max_size], pre  # shapes-tiny trains so
        import mrcnn

        assert meta["mrcnn.version"] == mrcnn.__version__


@pytest.mark.parametrize("target", TARGETS)
def test_box_iou_exports(tmp_path, target):
    """BoxIou (a training op, absent from the inference graph) exports too: node or decomposition, on ORT."""
    from mrcnn import kernels
    from mrcnn.export.translations import translation_table
    from mrcnn.runtime.onnx_predictor import ort_session

    class Iou(torch.nn.Module):
        def forward(self, a, b):
            return kernels.box_iou(a, b)

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 7, 4, generator=g) * 50
    a[..., 2:] += a[..., :2]
    b = torch.cat([a[:, :3], torch.zeros(2, 2, 4)], 1)  # duplicates and degenerate boxes
    n, m = torch.export.Dim("n", min=2), torch.export.Dim("m", min=2)
    prog = torch.onnx.export(Iou().eval(), (a, b), dynamo=True, custom_translation_table=translation_table(target),
                             dynamic_shapes=({1: n}, {1: m}), opset_version=18, verbose=False)
    ops = {(x.domain, x.op_type) for x in prog.model_proto.graph.node}
    assert (("mrcnn", "BoxIou") in ops) == (target == "trt"), ops
    sess = ort_session(prog.model_proto, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: a.numpy(), sess.get_inputs()[1].name:
                                            b.numpy()})[0])
    from mrcnn.ops import box_iou

    d = float((got - box_iou(a.double(), b.double())).abs().max())
    print(f"BoxIou {target}: max |ORT - float64 reference| = {d:.3g}")
    assert got.shape == (2, 7, 5) and d <= 1e-5


# -- 6. an outside peer: torchvision's eager Mask R-CNN, through the converter ---------------------------------------

@pytest.fixture(scope="module")
def torchvision_pair(tmp_path_factory):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from mrcnn.model.convert import convert_torchvision

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE,
                               box_score_thresh=0.0)
    _tame(tv)
    tv.eval()
    d = tmp_path_factory.mktemp("tv-onnx")
    torch.save({"model": tv.state_dict()}, d / "tv.pth")
    convert_torchvision(str(d / "tv.pth"), str(d / "r50.pt"))
    images = [_noise(300, 400, 1), _synthetic(256, 200, 2)]  # one batch, mixed sizes
    return images, _run_torchvision(tv, images), d / "r50.pt"


@pytest.mark.parametrize("target", TARGETS)
def test_onnx_equals_torchvision(torchvision_pair, target):
    images, ref, ckpt = torchvision_pair
    t0 = time.perf_counter()
    path = export_checkpoint(ckpt, ckpt.parent / f"r50-{target}.onnx", target=target, log=lambda m: None,
                             overrides=["model.box_score_thresh=0.0", f"input.min_size={MIN_SIZE}",
                                        f"input.max_size={MAX_SIZE}"])
    print(f"export r50 {target}: {time.perf_counter() - t0:.1f} s")
    got = load_artifact(path, "cpu")(images)
    _compare(ref, got, f"{target} vs torchvision")


# -- CLI: export errors are one line, exit 1, no file written; eval accepts .onnx ---------------------------------



@pytest.mark.parametrize("args, needle", [
    (["--target", "tensorrt"], "unknown export target"),
    (["--opset", "15"], "opset 15 is too old"),
    (["--opset", "99"], "opset 99 is newer than the installed onnx package knows"),  # was onnx's checker traceback
    (["--batch", "2", "--dynamic-batch"], "exclude each other"),
    (["--height", "320"], "--height and --width go together"),
    (["--height", "300", "--width", "320"], "multiples of size_divisible"),
    (["--set", "model.nope=1"], "nope"),
])
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


def test_eval_accepts_onnx(tiny_onnx, synth_data):
    r = runner.invoke(app, ["eval", str(tiny_onnx["portable"]), "--data", str(synth_data), "--batch", "2"])
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "bbox" in r.stdout and "segm" in r.stdout
    assert "classes matched by name" in r.stdout  # the ONNX model's classes come in another order than the data's


def test_eval_max_images(tiny, synth_data, tmp_path):
    """--max-images N evaluates the first N images: the json's metrics and results cover those only."""
    out = tmp_path / "m.json"
    r = runner.invoke(app, ["eval", str(tiny["ckpt"]), "--data", str(synth_data), "--max-images", "2", "--json",
                            str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["metrics"]["images"] == 2 and len({d["image_id"] for d in doc["results"]}) <= 2, doc["metrics"]
    err = one_error_line(runner.invoke(app, ["eval", str(tiny["ckpt"]), "--data", str(synth_data),
                                             "--max-images", "-1"]))
    assert "--max-images must be >= 0" in err


# -- mrcnn predict: overlays and predictions.json, from a checkpoint or an ONNX file ------------------------------------

def _write_pngs(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True)
    paths = []
    for k, img in enumerate(_images()):
        p = folder / f"img{k}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
        paths.append(p)
    return paths


def test_predict_writes_what_the_predictor_returns(tiny, tiny_onnx, tmp_path):
    """`mrcnn predict` on a folder: predictions.json (read by pycocotools) holds exactly the detections with score >=
    --score that the PyTorch predictor returns for each file; the portable ONNX model gives the same ones; one
    overlay per image, of the image's size."""
    import contextlib
    import io

    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO

    from mrcnn.predict import read_image

    paths = _write_pngs(tmp_path / "in")
    ref = load_artifact(tiny["ckpt"], "cpu")([read_image(p) for p in paths])
    score = round(float(torch.cat([r["scores"] for r in ref]).median()), 3)  # drops about half of them
    for artifact, out in ((tiny["ckpt"], tmp_path / "pt"), (tiny_onnx["portable"], tmp_path / "onnx")):
        r = runner.invoke(app, ["predict", str(artifact), str(tmp_path / "in"), "--out", str(out), "--score",
                                str(score), "--device", "cpu"])
        assert r.exit_code == 0, r.output[-2000:]
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(out / "predictions.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == tiny["names"]
        counts, worst = [], 0.0
        for i, (p, want) in enumerate(zip(paths, ref)):
            img = coco.imgs[i + 1]
            assert img["file_name"] == str(p) and (img["height"], img["width"]) == tuple(read_image(p).shape[1:])
            anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[i + 1])), key=lambda a: -a["score"])
            keep = want["scores"] >= score
            boxes = want["boxes"][keep]
            xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
            counts.append(len(anns))
            assert len(anns) == int(keep.sum()) > 0, (artifact.suffix, i, len(anns), int(keep.sum()))
            got = torch.tensor([a["bbox"] for a in anns])
            worst = max(worst, float((got - xywh).abs().max()))
            assert [a["category_id"] for a in anns] == want["labels"][keep].tolist()
            assert all(a["score"] >= score and "counts" in a["segmentation"] for a in anns)
            with Image.open(out / f"img{i}.png") as im:
                assert im.size == (img["width"], img["height"])
        print(f"{artifact.suffix}: --score {score}: detections per image {counts} of "
              f"{[len(w['scores']) for w in ref]}, max box diff {worst:.2e} px")
        assert worst <= BOX_TOL


def test_overlay_blends_masks_and_leaves_other_pixels():
    import numpy as np

    from mrcnn.predict import MASK_ALPHA, draw_detections, palette

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 64, 80), generator=g, dtype=torch.uint8)
    masks = torch.zeros(1, 1, 64, 80)
    masks[..., 25:46, 15:36] = 0.9
    result = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]), "scores": torch.tensor([0.9]),
              "labels": torch.tensor([2]), "masks": masks}
    pic = np.array(draw_detections(image, result, ["a", "b"], score=0.5)).astype(np.float64)
    orig = image.permute(1, 2, 0).numpy().astype(np.float64)
    want = np.rint((1 - MASK_ALPHA) * orig[30:41, 20:31] + MASK_ALPHA * np.array(palette(3)[2]))
    assert np.abs(pic[30:41, 20:31] - want).max() <= 1  # float32 blend vs float64 formula
    assert np.array_equal(pic[53:], orig[53:]) and np.array_equal(pic[:, 44:], orig[:, 44:])  # away from box, label
    assert not np.array_equal(pic[20:22, 10:41], orig[20:22, 10:41])  # the box's top edge is drawn
    below = np.array(draw_detections(image, result, ["a", "b"], score=0.95))
    assert np.array_equal(below, orig.astype(np.uint8))  # under the score threshold: nothing drawn


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such image file or folder"),
    ("corrupt", "not a readable image"),
    ("empty_folder", "no image files"),
    ("bad_score", "--score must be in [0, 1]"),
])
def test_predict_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, case, needle):
    target = tmp_path / "x.png"
    extra = []
    if case == "corrupt":
        target.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif case == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "bad_score":
        target = _write_pngs(tmp_path / "in")[0]
        extra = ["--score", "2"]
    out = tmp_path / "out"
    err = one_error_line(runner.invoke(app, ["predict", str(tiny["ckpt"]), str(target), "--out", str(out), *extra]))
    assert needle in err and not out.exists()


def test_validate_applies_the_export_overrides_to_the_reference(tiny, synth_data, tmp_path):
    """An ONNX exported with `--set model.detections_per_img=10`: validate's default reference, the checkpoint named
    in the metadata, runs with the same setting (every detection pairs), whereas the checkpoint as saved keeps 50
    per image; the metadata records the override."""
    from mrcnn.pipeline import validate_artifact

    path = export_checkpoint(tiny["ckpt"], tmp_path / "ten.onnx", target="portable",
                             overrides=["model.detections_per_img=10"], log=lambda m: None)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["mrcnn.source"])["overrides"] == ["model.detections_per_img=10"]
    same = validate_artifact(path, synth_data, device="cpu", max_images=2, log=lambda m: None,
                             progress=False)["detections"]
    saved = validate_artifact(path, synth_data, reference=tiny["ckpt"], device="cpu", max_images=2,
                              log=lambda m: None, progress=False)["detections"]
    print(f"default reference: {same['paired']} of {same['detections']} paired; the saved checkpoint keeps "
          f"{saved['reference_detections']}")
    assert same["detections"] == 20 and same["paired"] == same["reference_detections"] == 20
    assert saved["reference_detections"] > 20 and saved["paired"] == 20


POST_OPS = ("TopK", "NonZero", "NonMaxSuppression", "RoiAlign")  # where the detection post-processing begins


def test_portable_network_builds_into_a_tensorrt_rtx_engine_on_cpu(tiny, tiny_onnx):
    """design.md §6 claim 5, as far as TensorRT-RTX allows: the portable graph's network (backbone, FPN, RPN head:
    everything before the first TopK / NonZero / NonMaxSuppression / RoiAlign) builds into an engine on this CPU
    machine (CPU-only AOT), dynamic batch and size. The whole graph does not: TensorRT-RTX 1.7 has no RoiAlign or
    NonZero importer and no NonMaxSuppression kernel (README)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx-cu13)")
    model = onnx.load(str(tiny_onnx["portable"]))
    nodes = list(model.graph.node)
    first = next(i for i, n in enumerate(nodes) if n.op_type in POST_OPS)
    convs = [n for n in nodes[:first] if n.op_type == "Conv"]
    weights = {t.name: t.dims[0] for t in model.graph.initializer if len(t.dims) == 4}  # conv weights [O,I,k,k]
    A = len(tiny["cfg"].model.aspect_ratios)  # anchors per location: objectness A, deltas 4A channels
    heads = [c.output[0] for c in convs if weights.get(c.input[1]) in (A, 4 * A)]  # the RPN head, every level
    sub = onnx.utils.Extractor(model).extract_model(["images", "image_sizes"], heads)
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(sub.SerializeToString())
    assert ok, [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 64, 64), (1, 3, 256, 256), (2, 3, 512, 512))
    profile.set_shape("image_sizes", (1, 2), (1, 2), (2, 2))
    config.add_optimization_profile(profile)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT-RTX could not build the network part"
    print(f"TensorRT-RTX {trt.__version__}: {len(sub.graph.node)} nodes ({len(heads)} RPN head outputs, op types "
          f"{sorted({n.op_type for n in sub.graph.node})}) -> engine of {plan.nbytes / 1e6:.1f} MB in "
          f"{time.perf_counter() - t0:.1f} s")
    assert len(heads) == 10 and plan.nbytes > 1e6  # 5 levels x (objectness, deltas); the weights are in the engine
