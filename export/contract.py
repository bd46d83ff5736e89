"""The `mrcnn` ONNX domain: one entry per custom op (docs/design.md §3), its ONNX schema and shape inference.

    op_type       torch op                         in the exported inference graph
    AnchorGrid    torch.ops.mrcnn.anchor_grid      RPN, one per FPN level
    PreNmsSelect  torch.ops.mrcnn.pre_nms_select   RPN, one per FPN level
    BoxNms        torch.ops.mrcnn.box_nms          RPN proposals, final detections
    BoxIou        torch.ops.mrcnn.box_iou          (training matcher; exportable when a graph calls it)

A node is `domain="mrcnn"`, `op_type=<CamelName>`, attribute `plugin_version="1"` plus one attribute per plugin
field, named like the torch op's arguments (TensorRT's ONNX parser turns every other attribute of an unknown node into
a PluginField of the creator `<op_type>`). Inputs/outputs and dtypes follow the torch ops (mrcnn/native/); the
human-readable contract table is plugins/README.md, and tests/export/test_export.py checks that the two agree.

`register_schemas()` adds the domain's OpSchemas (with type and shape inference) to onnx's registry of this process,
so `onnx.checker.check_model(full_check=True)` and `onnx.shape_inference` accept trt-flavour models. Only onnx is
imported here: the ONNX Runtime custom ops (mrcnn/deploy/ort_ops.py) use this module too.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrcnn.errors import MrcnnError

DOMAIN = "mrcnn"
DOMAIN_VERSION = 1
PLUGIN_VERSION = "1"


INF = float("inf")
INT32_MAX = 2**31 - 1
ANCHOR_MAX_PARAMS = 32  # MRCNN_ANCHOR_MAX_PARAMS of plugins/kernels/include/mrcnn/kernels.h


@dataclass(frozen=True)
class Attr:
    """A plugin field. Its bounds are the TensorRT plugin creator's FieldSpec ({name, kind, min_count, max_count,
    lo, hi} in plugins/tensorrt/*/*_plugin.cpp; tests/export/test_export.py checks the two agree): every value in
    [lo, hi] (never NaN; an int a whole number), min_count..max_count values (1 for scalars)."""

    name: str
    kind: str  # "int" | "float" | "floats"
    doc: str
    lo: float = -INF
    hi: float = INF
    min_count: int = 1
    max_count: int = 1


@dataclass(frozen=True)
class Port:
    name: str
    dtype: str  # onnx type string, e.g. "tensor(float)", or a type parameter ("T", "T_any")
    shape: str  # human-readable, e.g. "[B,K,4]"


@dataclass(frozen=True)
class OpDef:
    op_type: str
    torch_name: str  # torch.ops.mrcnn.<torch_name>
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    attrs: tuple[Attr, ...]
    doc: str

    @property
    def attribute_names(self) -> list[str]:
        return ["plugin_version"] + [a.name for a in self.attrs]


F32, I64, BOOL = "tensor(float)", "tensor(int64)", "tensor(bool)"
TYPE_PARAMS = {  # type parameters of the schemas (plugins/README.md: "any", "float32, float16")
    "T_any": [
        "tensor(float)",
        "tensor(float16)",
        "tensor(bfloat16)",
        "tensor(double)",
        "tensor(uint8)",
        "tensor(int8)",
        "tensor(int32)",
        "tensor(int64)",
        "tensor(bool)",
    ],
    "T_box": ["tensor(float)", "tensor(float16)"],
}

OPS: dict[str, OpDef] = {
    op.op_type: op
    for op in (
        OpDef(
            "AnchorGrid",
            "anchor_grid",
            (Port("feature", "T_any", "[B,C,H,W]"), Port("image", "T_any", "[B,3,Hi,Wi]")),
            (Port("anchors", F32, "[H*W*A,4]"),),
            (
                Attr(
                    "sizes",
                    "floats",
                    "anchor sizes (A = len(sizes) * len(aspect_ratios))",
                    0.0,
                    1e9,
                    1,
                    ANCHOR_MAX_PARAMS,
                ),
                Attr("aspect_ratios", "floats", "h/w ratios", 1e-9, 1e9, 1, ANCHOR_MAX_PARAMS),
                Attr("stride", "int", "0: Hi // H and Wi // W per axis; > 0 forces both", 0, 1 << 30),
            ),
            "anchors of one FPN level from the runtime shapes of its feature map and the padded image",
        ),
        OpDef(
            "PreNmsSelect",
            "pre_nms_select",
            (
                Port("anchors", F32, "[A,4]"),
                Port("objectness", F32, "[B,A]"),
                Port("deltas", F32, "[B,A,4]"),
                Port("image_sizes", I64, "[B,2]"),
            ),
            (Port("boxes", F32, "[B,K,4]"), Port("scores", F32, "[B,K]"), Port("valid", BOOL, "[B,K]")),
            (
                Attr("top_k", "int", "K = min(top_k, A)", 0, INT32_MAX),
                Attr("min_size", "float", "boxes with a side < min_size are invalid", 0.0, INF),
                Attr("weights", "floats", "box coder weights (wx, wy, ww, wh)", 1e-12, INF, 4, 4),
                Attr("clip", "float", "upper clamp of dw, dh"),
            ),
            "top-k by objectness, decode on anchors, clip to the image, mark small boxes invalid",
        ),
        OpDef(
            "BoxNms",
            "box_nms",
            (
                Port("boxes", F32, "[B,N,4]"),
                Port("scores", F32, "[B,N]"),
                Port("classes", I64, "[B,N]"),
                Port("valid", BOOL, "[B,N]"),
            ),
            (
                Port("boxes", F32, "[B,K,4]"),
                Port("scores", F32, "[B,K]"),
                Port("classes", I64, "[B,K]"),
                Port("indices", I64, "[B,K]"),
                Port("num", I64, "[B]"),
            ),
            (
                Attr("iou_threshold", "float", "suppress IoU > iou_threshold within a class"),
                Attr("score_threshold", "float", "candidates: valid and score > score_threshold (-inf: no test)"),
                Attr("max_output", "int", "K output slots", 0, INT32_MAX),
            ),
            "batched class-aware greedy NMS, fixed-size outputs (padding: 0, index -1) and valid counts",
        ),
        OpDef(
            "BoxIou",
            "box_iou",
            (Port("a", "T_box", "[B,N,4]"), Port("b", "T_box", "[B,M,4]")),
            (Port("iou", F32, "[B,N,M]"),),
            (),
            "pairwise IoU of two batched box sets (0 where the union is not positive)",
        ),
    )
}


def check_fields(op: OpDef, values: dict, where: str) -> None:
    """The fields of one `op` node (name -> value, as onnx.helper.get_attribute_value gives them) checked against the
    table above, as the TensorRT plugin creator checks its PluginFields: a MrcnnError naming `where`, the node's op
    and the field (missing, unknown, wrong type or count, NaN or out of range)."""

    def bad(msg: str) -> MrcnnError:
        return MrcnnError(f"{where}: {op.op_type} {msg}")

    known = {a.name for a in op.attrs}
    for name in values:
        if name not in known and name != "plugin_version":
            raise bad(f"has an unknown field {name!r}")
    for a in op.attrs:
        if a.name not in values:
            raise bad(f"misses its field {a.name!r}")
        v = values[a.name]
        seq = list(v) if isinstance(v, (list, tuple)) else [v]
        if (a.kind == "floats") != isinstance(v, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in seq
        ):
            raise bad(f"field {a.name!r} must be {'a list of floats' if a.kind == 'floats' else 'a ' + a.kind}")
        if not a.min_count <= len(seq) <= a.max_count:
            span = f"{a.min_count}" if a.min_count == a.max_count else f"{a.min_count} to {a.max_count}"
            raise bad(f"field {a.name!r} needs {span} value(s), got {len(seq)}")
        for x in seq:
            if x != x or not a.lo <= x <= a.hi or (a.kind == "int" and float(x) != int(x)):
                lo, hi = (f"{b:.0f}" if a.kind == "int" else f"{b:g}" for b in (a.lo, a.hi))
                raise bad(f"field {a.name!r} = {x} is out of range [{lo}, {hi}]")


# -- shape inference ------------------------------------------------------------------------------------------------


def _dims(ctx, i: int) -> list | None:
    """Input i's dims as ints / strings (dim_param) / None (unknown); None when the rank is unknown."""
    t = ctx.get_input_type(i)
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _set(ctx, i: int, elem_type: int, dims: list | None) -> None:
    import onnx

    tp = onnx.TypeProto()
    tp.tensor_type.elem_type = elem_type
    if dims is not None:
        shape = tp.tensor_type.shape
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
    ctx.set_output_type(i, tp)


def _attr(ctx, name: str):
    import onnx

    a = ctx.get_attribute(name)
    return None if a is None else onnx.helper.get_attribute_value(a)


def _infer_anchor_grid(ctx) -> None:
    import onnx

    f = _dims(ctx, 0)
    A = len(_attr(ctx, "sizes") or []) * len(_attr(ctx, "aspect_ratios") or [])
    n = None
    if f is not None and len(f) >= 2 and isinstance(f[-2], int) and isinstance(f[-1], int) and A:
        n = f[-2] * f[-1] * A
    _set(ctx, 0, onnx.TensorProto.FLOAT, [n, 4])


def _infer_pre_nms_select(ctx) -> None:
    import onnx

    o = _dims(ctx, 1)
    B = o[0] if o else None
    top_k = _attr(ctx, "top_k")
    K = None
    if o and len(o) == 2 and isinstance(o[1], int) and top_k is not None:
        K = min(int(top_k), o[1])
    _set(ctx, 0, onnx.TensorProto.FLOAT, [B, K, 4])
    _set(ctx, 1, onnx.TensorProto.FLOAT, [B, K])
    _set(ctx, 2, onnx.TensorProto.BOOL, [B, K])


def _infer_box_nms(ctx) -> None:
    import onnx

    b = _dims(ctx, 0)
    B = b[0] if b else None
    K = _attr(ctx, "max_output")
    K = int(K) if K is not None else None
    T = onnx.TensorProto
    _set(ctx, 0, T.FLOAT, [B, K, 4])
    _set(ctx, 1, T.FLOAT, [B, K])
    _set(ctx, 2, T.INT64, [B, K])
    _set(ctx, 3, T.INT64, [B, K])
    _set(ctx, 4, T.INT64, [B])


def _infer_box_iou(ctx) -> None:
    import onnx

    a, b = _dims(ctx, 0), _dims(ctx, 1)
    _set(ctx, 0, onnx.TensorProto.FLOAT, [a[0] if a else None, a[1] if a else None, b[1] if b else None])


_INFER = {
    "AnchorGrid": _infer_anchor_grid,
    "PreNmsSelect": _infer_pre_nms_select,
    "BoxNms": _infer_box_nms,
    "BoxIou": _infer_box_iou,
}


def schemas() -> list:
    from onnx.defs import OpSchema

    kinds = {
        "int": OpSchema.AttrType.INT,
        "float": OpSchema.AttrType.FLOAT,
        "floats": OpSchema.AttrType.FLOATS,
        "string": OpSchema.AttrType.STRING,
    }
    out = []
    for op in OPS.values():
        attrs = [OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version")]
        attrs += [OpSchema.Attribute(a.name, kinds[a.kind], a.doc) for a in op.attrs]
        params = sorted({p.dtype for p in op.inputs + op.outputs if p.dtype in TYPE_PARAMS})
        s = OpSchema(
            op.op_type,
            DOMAIN,
            DOMAIN_VERSION,
            doc=op.doc,
            inputs=[OpSchema.FormalParameter(p.name, p.dtype) for p in op.inputs],
            outputs=[OpSchema.FormalParameter(p.name, p.dtype) for p in op.outputs],
            type_constraints=[(t, TYPE_PARAMS[t], "") for t in params],
            attributes=attrs,
        )
        s.set_type_and_shape_inference_function(_INFER[op.op_type])
        out.append(s)
    return out


def register_schemas() -> None:
    """Register the mrcnn domain with onnx in this process (idempotent)."""
    import onnx.defs

    for s in schemas():
        if onnx.defs.has(s.name, s.since_version, s.domain):
            continue
        onnx.defs.register_schema(s)
