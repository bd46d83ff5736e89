"""The TensorRT plugin library (plugins/tensorrt, libmrcnn_trt_plugins) as far as this machine can prove it
(docs/design.md §6 claim 6; the "what is proven where" table of plugins/README.md):

- registry: TensorRT-RTX's plugin registry loads the library and lists our creators, whose names, versions,
  namespace and fields equal the contract table of plugins/README.md; `create_plugin` with the fields of each node of
  a real trt-flavour export gives a plugin of that name, version, namespace and number of outputs; a bad field is
  refused (nullptr) with a line naming the op and the field;
- parser: TensorRT-RTX's ONNX parser maps a one-node graph carrying each node's exact attributes onto our creator
  ("Successfully created plugin"), then aborts, having no plugin layers (if a later TensorRT-RTX adds them, the
  same test goes on to build the engine);
- driver: the C++ driver calls each plugin as TensorRT does (fields round trip, output types and shapes, the
  supportsFormatCombination table against the contract's dtypes); with a GPU (`cuda`) also enqueue against the CPU
  kernels.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers import contract_rows, needs_rtx, plugin_table, trt_plugin_driver, trt_plugin_library

from mrcnn.deploy import trt_plugins
from mrcnn.errors import MrcnnError


def _rtx_with_plugins():
    trt = needs_rtx()
    lib = trt_plugin_library()
    trt_plugins.load(trt, lib)
    return trt, lib


def test_registry_creators_equal_the_contract_table():
    trt, lib = _rtx_with_plugins()
    table = plugin_table()
    mine = {c["name"]: c for c in trt_plugins.creators(trt)}
    print(f"{lib} ({trt_plugins.build_info(lib)}) in tensorrt_rtx {trt.__version__}: {mine}")
    assert sorted(mine) == sorted(trt_plugins.PLUGIN_OPS)
    for name, c in mine.items():
        row = table[name]
        assert (c["version"], c["namespace"]) == (row["plugin_version"], "mrcnn"), c
        assert c["fields"] == [n for n, _ in row["attribute"]], (name, c["fields"], row["attribute"])


def _fields(trt, node):
    """The node's attributes as plugin fields, as the ONNX parser passes them (floats FLOAT32, ints INT32)."""
    import onnx

    fields = []
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):  # plugin_version: selects the creator, not a field
            continue
        floaty = a.type in (onnx.AttributeProto.FLOAT, onnx.AttributeProto.FLOATS)
        arr = np.atleast_1d(np.asarray(v, dtype=np.float32 if floaty else np.int32))
        kind = trt.PluginFieldType.FLOAT32 if floaty else trt.PluginFieldType.INT32
        fields.append(trt.PluginField(a.name, arr, kind))
    return trt.PluginFieldCollection(fields)


def _mrcnn_nodes(path) -> list:
    onnx = pytest.importorskip("onnx")
    return [n for n in onnx.load(str(path)).graph.node if n.domain == "mrcnn"]


def test_create_plugin_from_the_fields_of_a_real_export(tiny_onnx):
    trt, _ = _rtx_with_plugins()
    import onnx

    nodes = _mrcnn_nodes(tiny_onnx["trt"])
    assert {n.op_type for n in nodes} == {"AnchorGrid", "PreNmsSelect", "BoxNms"}, {n.op_type for n in nodes}
    reg = trt.get_plugin_registry()
    for node in nodes:
        version = onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "plugin_version"))
        creator = reg.get_creator(node.op_type, version.decode(), node.domain)
        plugin = creator.create_plugin(node.name, _fields(trt, node), trt.TensorRTPhase.BUILD)
        assert plugin is not None, node
        core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        build = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
        got = (core.plugin_name, core.plugin_version, core.plugin_namespace, build.num_outputs)
        print(node.name, got)
        assert got == (node.op_type, version.decode(), "mrcnn", len(node.output)), got


@pytest.mark.parametrize(
    "op, fields, needle",
    [
        ("BoxNms", {"iou_threshold": [0.5], "max_output": [10]}, "missing field 'score_threshold'"),
        ("BoxNms", {"iou_threshold": [0.5], "score_threshold": [0.0], "max_output": [10.5]}, "field 'max_output'"),
        (
            "PreNmsSelect",
            {"top_k": [10], "min_size": [0.0], "weights": [1.0, 1.0, 1.0], "clip": [4.0]},
            "field 'weights' needs 4 value(s), got 3",
        ),
        (
            "PreNmsSelect",
            {"top_k": [-1], "min_size": [0.0], "weights": [1.0] * 4, "clip": [4.0]},
            "field 'top_k' = -1 is out of range",
        ),
        (
            "AnchorGrid",
            {"sizes": [32.0], "aspect_ratios": [1.0], "stride": [4], "strides": [4]},
            "unknown field 'strides'",
        ),
    ],
)
def test_bad_fields_are_refused_with_a_line_naming_them(op, fields, needle, capfd):
    trt, _ = _rtx_with_plugins()
    fc = []
    for name, values in fields.items():
        floaty = any(isinstance(v, float) for v in values)
        fc.append(
            trt.PluginField(
                name,
                np.asarray(values, np.float32 if floaty else np.int32),
                trt.PluginFieldType.FLOAT32 if floaty else trt.PluginFieldType.INT32,
            )
        )
    creator = trt.get_plugin_registry().get_creator(op, "1", "mrcnn")
    plugin = creator.create_plugin(op, trt.PluginFieldCollection(fc), trt.TensorRTPhase.BUILD)
    out, err = capfd.readouterr()
    print(err.strip())
    assert plugin is None
    assert f"mrcnn::{op}" in err + out and needle in err + out, err + out


def test_a_missing_creator_is_one_line_naming_it():
    trt, lib = _rtx_with_plugins()
    with pytest.raises(MrcnnError, match="registers no mrcnn::RoiAlignPyramid"):
        trt_plugins.load(trt, lib, needed=("BoxNms", "RoiAlignPyramid"))
    with pytest.raises(MrcnnError, match="no such TensorRT plugin library"):
        trt_plugins.load(trt, lib.parent / "libnothing.so")


_PARSE = textwrap.dedent("""
    import sys
    import tensorrt_rtx as trt
    lib, model, op = sys.argv[1:4]
    class Log(trt.ILogger):
        def log(self, severity, msg):
            print(f"[{severity.name}] {msg}", flush=True)
    logger = Log()
    trt.ILogger.__init__(logger)
    trt.get_plugin_registry().load_library(lib)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(model)
    print(f"PARSED {ok} layers {network.num_layers}", flush=True)
    if ok:  # a TensorRT-RTX with plugin layers: build the one-node engine too
        plan = builder.build_serialized_network(network, builder.create_builder_config())
        print(f"BUILT {plan is not None}", flush=True)
""")


def _one_node_model(export, node, path) -> None:
    """A graph of `node` alone, with its exact attributes, its inputs as graph inputs of the types and shapes
    shape inference gives them in the export."""
    import onnx

    from mrcnn.export.contract import register_schemas

    register_schemas()
    full = onnx.shape_inference.infer_shapes(export, strict_mode=True)
    info = {v.name: v for v in [*full.graph.value_info, *full.graph.input, *full.graph.output]}
    inputs = [info[name] for name in node.input]
    outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = onnx.helper.make_graph([node], f"one-{node.op_type}", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=list(export.opset_import))
    onnx.save(model, str(path))


def test_the_parser_maps_each_node_type_onto_our_creator(tiny_onnx, tmp_path):
    """One subprocess per node type: the parser's log must show our creator found in namespace mrcnn and the plugin
    created; then TensorRT-RTX 1.7 (no plugin layers) aborts while adding the layer, and that abort is the end."""
    _, lib = _rtx_with_plugins()
    onnx = pytest.importorskip("onnx")
    export = onnx.load(str(tiny_onnx["trt"]))
    seen = {}
    for node in export.graph.node:
        if node.domain != "mrcnn" or node.op_type in seen:
            continue
        path = tmp_path / f"{node.op_type}.onnx"
        _one_node_model(export, node, path)
        r = subprocess.run(
            [sys.executable, "-c", _PARSE, str(lib), str(path), node.op_type],
            capture_output=True,
            text=True,
            timeout=300,
        )
        log = r.stdout + r.stderr
        created = f"Successfully created plugin: {node.op_type}"
        print(
            f"{node.op_type}: exit {r.returncode}; "
            + " | ".join(ln for ln in log.splitlines() if "plugin" in ln.lower() or "PARSED" in ln or "BUILT" in ln)[
                -600:
            ]
        )
        assert "namespace: mrcnn" in log, log[-2000:]
        assert created in log, log[-2000:]
        if r.returncode == 0:  # plugin layers exist in this TensorRT-RTX: the parse went on and built the engine
            assert "PARSED True" in log and "BUILT True" in log, log[-2000:]
        else:  # TensorRT-RTX 1.7: the process ends in std::terminate right after creating the plugin
            assert r.returncode in (-6, 134) and "PARSED" not in log, (r.returncode, log[-2000:])
            assert log.index(created) > log.index("namespace: mrcnn")
        seen[node.op_type] = r.returncode
    assert set(seen) == {"AnchorGrid", "PreNmsSelect", "BoxNms"}, seen


# ---- the C++ driver --------------------------------------------------------------------------------------------------
def _driver(*extra: str) -> dict:
    lib = trt_plugin_library()
    exe = trt_plugin_driver()
    r = subprocess.run([str(exe), str(lib), *extra], capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    report = json.loads(r.stdout)
    print(json.dumps(report)[:3000])
    return report


_DTYPE_NAMES = {
    "float32": {"float32"},
    "int64": {"int64"},
    "bool": {"bool"},
    "float32, float16": {"float32", "float16"},
    "any": {"float32", "float16", "bfloat16"},
}


def _contract_formats(op: str) -> list[set]:
    """The dtypes the contract table allows at each plugin position (inputs, then outputs)."""
    rows = [r for r in contract_rows() if r["op"] == op and r["kind"] in ("input", "output")]
    rows.sort(key=lambda r: r["kind"] != "input")  # (stable: the table's order within inputs and outputs)
    out: list[set] = []
    for r in rows:
        out.append(set(out[0]) if r["dtype"].startswith("same as") else _DTYPE_NAMES[r["dtype"]])
    return out


def test_the_driver_calls_each_plugin_as_tensorrt_does():
    report = _driver()
    assert report["creators"] == 4 and report["passed"], report
    for p in report["plugins"]:
        name = p["name"]
        assert p["fields_round_trip"] and (p["version"], p["namespace"]) == ("1", "mrcnn"), p
        allowed = _contract_formats(name)
        assert [set(f) for f in p["formats"]] == allowed, (name, p["formats"], allowed)
        n_in = len([r for r in contract_rows() if r["op"] == name and r["kind"] == "input"])
        assert p["output_types"] == [next(iter(a)) for a in allowed[n_in:]], p  # (one dtype per output)
    shapes = {p["name"]: (p["input_shapes"], p["output_shapes"]) for p in report["plugins"]}
    (feat, img), (anchors,) = shapes["AnchorGrid"]
    assert anchors == [feat[2] * feat[3] * 3, 4]  # H * W * (1 size x 3 ratios)
    (a, b), (iou,) = shapes["BoxIou"]
    assert iou == [a[0], a[1], b[1]]
    inputs, outputs = shapes["PreNmsSelect"]
    k = min(1000, inputs[1][1])  # K = min(top_k, A)
    assert outputs == [[inputs[1][0], k, 4], [inputs[1][0], k], [inputs[1][0], k]]
    inputs, outputs = shapes["BoxNms"]
    assert outputs == [[inputs[0][0], 1000, 4]] + [[inputs[0][0], 1000]] * 3 + [[inputs[0][0]]]


@pytest.mark.cuda
def test_the_driver_enqueues_each_plugin_against_the_cpu_kernels():
    """On a GPU: every plugin's enqueue (batch 1 and 3, empty inputs, the largest R-50 shapes) equals the CPU kernel
    of its op (float 1e-5, integers and bools exactly)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    report = _driver("--gpu")
    for p in report["plugins"]:
        for run in p["gpu"]:
            print(p["name"], run)
    assert report["passed"], report


@pytest.mark.parametrize("mode", ["AUTO", "ON", "OFF"])
def test_cmake_option_without_headers(tmp_path, mode):
    """MRCNN_WITH_TENSORRT without TensorRT headers: AUTO prints one line and skips the library, ON fails, OFF skips
    without looking (configured without CUDA, which is fast)."""
    import shutil
    from pathlib import Path

    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    root = Path(__file__).resolve().parents[2]
    headers = str(tmp_path / "no-headers")
    r = subprocess.run(
        [
            cmake,
            "-S",
            str(root),
            "-B",
            str(tmp_path / "b"),
            "-DMRCNN_WITH_CUDA=OFF",
            f"-DMRCNN_WITH_TENSORRT={mode}",
            f"-DTensorRT_INCLUDE_DIR={headers}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "TensorRT plugin library" in ln or "TENSORRT" in ln]
    print(mode, r.returncode, lines)
    if mode == "ON":
        assert r.returncode != 0 and any("MRCNN_WITH_TENSORRT=ON but no TensorRT headers" in ln for ln in lines)
    else:
        assert r.returncode == 0 and len(lines) == 1 and ("skipped" in lines[0] or "OFF" in lines[0]), lines


def test_mrcnn_info_lists_the_library_and_its_creators():
    from typer.testing import CliRunner

    from mrcnn.cli.main import app

    needs_rtx()
    lib = trt_plugin_library()
    r = CliRunner().invoke(app, ["info"])
    print(r.stdout)
    assert r.exit_code == 0
    assert f"{lib}" in r.stdout and "TensorRT headers" in r.stdout
    assert all(f"mrcnn::{op} v1" in r.stdout for op in trt_plugins.PLUGIN_OPS), r.stdout
