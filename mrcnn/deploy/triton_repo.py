"""Triton model repositories of mrcnn: config.pbtxt text and the one-line model.py files.

    serve_repository(root, name, params, ...)   what `mrcnn serve` runs: one Python-backend model (ServeModel)
    gpu_repository(engine, out, ...)            for GPU servers: the engine as a `tensorrt_plan` model, Python-backend
                                                pre- and post-processing (PreprocessModel, PostprocessModel) and an
                                                ensemble with the schema of `mrcnn serve` (mrcnn/deploy/serving.py)

The text follows Triton's model configuration (protobuf text format of inference.ModelConfig); the tests parse every
file into tritonclient's ModelConfig and check the ensemble's wiring.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from mrcnn.deploy.serving import INPUTS, OUTPUTS, TensorSpec
from mrcnn.errors import MrcnnError, require_file


def quoted(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid protobuf text string (escapes included)


def tensor_block(kind: str, specs: Iterable[TensorSpec]) -> str:
    """`input [ ... ]` / `output [ ... ]` of a config."""
    items = []
    for t in specs:
        fields = [f"name: {quoted(t.name)}", f"data_type: TYPE_{t.dtype}", f"dims: [ {', '.join(map(str, t.dims))} ]"]
        if t.optional:
            fields.append("optional: true")
        items.append("  {\n    " + "\n    ".join(fields) + "\n  }")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def parameters_block(params: dict[str, str]) -> str:
    return "".join(
        f"parameters: {{ key: {quoted(k)} value: {{ string_value: {quoted(v)} }} }}\n" for k, v in params.items()
    )


def model_py(class_name: str) -> str:
    """A model.py that runs the class of mrcnn/deploy/triton_models.py, importing mrcnn from where this process does
    (Triton's stub starts its own interpreter)."""
    root = str(Path(__file__).resolve().parents[2])
    return (
        f'"""Triton Python-backend model: mrcnn.deploy.triton_models.{class_name} (written by mrcnn)."""\n\n'
        "import sys\n\n"
        f"if {quoted(root)} not in sys.path:\n"
        f"    sys.path.insert(0, {quoted(root)})\n\n"
        f"from mrcnn.deploy.triton_models import {class_name} as TritonPythonModel  # noqa: E402, F401\n"
    )


def python_model(
    folder: Path,
    name: str,
    class_name: str,
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
    params: dict[str, str],
    max_batch: int,
    instances: int = 1,
    kind: str = "KIND_CPU",
    delay_us: int | None = None,
) -> Path:
    """A Python-backend model folder (config.pbtxt, 1/model.py)."""
    d = folder / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    text = f'name: {quoted(name)}\nbackend: "python"\nmax_batch_size: {max_batch}\n'
    text += tensor_block("input", inputs) + tensor_block("output", outputs)
    if delay_us is not None:
        text += f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n"
    text += f"instance_group [ {{ kind: {kind} count: {instances} }} ]\n"
    text += parameters_block(params)
    (d / "config.pbtxt").write_text(text)
    (d / "1" / "model.py").write_text(model_py(class_name))
    return d


def serve_repository(
    root: Path,
    name: str,
    params: dict[str, str],
    max_batch: int,
    delay_us: int,
    instances: int,
    kind: str = "KIND_CPU",
) -> Path:
    """The repository of `mrcnn serve`: one model `name` (ServeModel) with dynamic batching up to `max_batch`."""
    if max_batch < 1:
        raise MrcnnError(f"--max-batch must be >= 1, got {max_batch}")
    if delay_us < 0:
        raise MrcnnError(f"--max-queue-delay-us must be >= 0, got {delay_us}")
    if instances < 1:
        raise MrcnnError(f"--instances must be >= 1, got {instances}")
    python_model(root, name, "ServeModel", INPUTS, OUTPUTS, params, max_batch, instances, kind, delay_us)
    return root


def python_version_tag() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


# -- the repository for GPU servers -------------------------------------------------------------------------------
ENGINE_INPUTS = (TensorSpec("images", "FP32", (3, -1, -1)), TensorSpec("image_sizes", "INT64", (2,)))
PRE_OUTPUTS = (*ENGINE_INPUTS, TensorSpec("original_size", "INT64", (2,)))


def engine_outputs(detections: int, mask: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("boxes", "FP32", (detections, 4)),
        TensorSpec("scores", "FP32", (detections,)),
        TensorSpec("labels", "INT64", (detections,)),
        TensorSpec("masks", "FP32", (detections, mask, mask)),
        TensorSpec("num_detections", "INT64", (1,)),
    )


def engine_model(folder: Path, name: str, engine: Path, outputs, max_batch: int, instances: int, delay_us: int) -> Path:
    """The engine as a `tensorrt_plan` model: its profile's batch, dynamic batching, one GPU instance group; the
    engine's `num_detections` [B] reaches Triton as [B, 1] (reshape)."""
    d = folder / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(engine, d / "1" / "model.plan")
    text = f'name: {quoted(name)}\nplatform: "tensorrt_plan"\nmax_batch_size: {max_batch}\n'
    text += tensor_block("input", ENGINE_INPUTS)
    out = tensor_block("output", outputs)
    out = out.replace(
        'name: "num_detections"\n    data_type: TYPE_INT64\n    dims: [ 1 ]',
        'name: "num_detections"\n    data_type: TYPE_INT64\n    dims: [ 1 ]\n    reshape: { shape: [ ] }',
    )
    text += out
    sizes = sorted({b for b in (1, 2, 4, 8, max_batch) if b <= max_batch})
    text += (
        f"dynamic_batching {{ preferred_batch_size: [ {', '.join(map(str, sizes))} ] "
        f"max_queue_delay_microseconds: {delay_us} }}\n"
    )
    text += f"instance_group [ {{ kind: KIND_GPU count: {instances} }} ]\n"
    (d / "config.pbtxt").write_text(text)
    return d


def ensemble_model(folder: Path, name: str, steps: list[tuple[str, dict[str, str], dict[str, str]]], max_batch: int):
    """An ensemble with the schema of `mrcnn serve`; `steps`: (model, {its input: ensemble tensor}, {its output:
    ensemble tensor}) in order."""
    d = folder / name
    (d / "1").mkdir(parents=True, exist_ok=True)
    text = f'name: {quoted(name)}\nplatform: "ensemble"\nmax_batch_size: {max_batch}\n'
    text += tensor_block("input", INPUTS) + tensor_block("output", OUTPUTS)
    blocks = []
    for model, inputs, outputs in steps:
        maps = [f"      input_map {{ key: {quoted(k)} value: {quoted(v)} }}" for k, v in inputs.items()]
        maps += [f"      output_map {{ key: {quoted(k)} value: {quoted(v)} }}" for k, v in outputs.items()]
        blocks.append(
            f"    {{\n      model_name: {quoted(model)}\n      model_version: -1\n" + "\n".join(maps) + "\n    }"
        )
    text += "ensemble_scheduling {\n  step [\n" + ",\n".join(blocks) + "\n  ]\n}\n"
    (d / "config.pbtxt").write_text(text)
    return d


GPU_README = """# A Triton model repository of mrcnn for GPU servers

Written by `mrcnn triton-repo {engine_name}` ({runtime} {runtime_version}, built for {gpu}).

    {name}              the ensemble a client calls: the request / response schema of `mrcnn serve`
                        (docs/serving.md): input `image` (the file's bytes, BYTES) and optional
                        `score_threshold`; outputs boxes, scores, labels, classes, masks (COCO RLE), image_size
    {name}_preprocess   Python backend: decode (every image mode, EXIF, the pixel limit), resize, pad to the
                        {canvas} canvas (so that the engine batches requests)
    {name}_engine       the engine (tensorrt_plan), batch 1..{max_batch}, dynamic batching, on the GPU
    {name}_postprocess  Python backend: boxes to the image's pixels, masks pasted and encoded as COCO RLE

The Python models run mrcnn's own code: the server's Python environment needs `pip install mrcnn` (same version,
{version}) besides Triton's Python backend. The engine's plugins{plugins_note}

Start it (Triton Inference Server with the TensorRT and Python backends, e.g. NVIDIA's container
nvcr.io/nvidia/tritonserver:<yy.mm>-py3 matching TensorRT {runtime_version}):

    tritonserver --model-repository=$PWD{plugin_flag}

If your Triton build has no `--backend-config=tensorrt,plugins=...` option, preload the library instead:

    LD_PRELOAD={plugin_library} tritonserver --model-repository=$PWD

Call it as `mrcnn serve` (docs/serving.md): `mrcnn bench --server http://HOST:8000 --model-name {name}`.
"""


def gpu_repository(
    engine: str | Path,
    out: str | Path,
    *,
    name: str = "mrcnn",
    score: float = 0.5,
    instances: int = 1,
    delay_us: int = 2000,
    plugins: str | Path | None = None,
) -> Path:
    """The repository of the module docstring for `engine` (its .plan.json gives the profile and the metadata).
    `plugins`: the plugin library the README's command line loads (an engine of the trt flavour needs it unless it
    was built with --serialize-plugins)."""
    from mrcnn.deploy.trt_predictor import read_description

    engine, out = Path(engine), Path(out)
    info = read_description(require_file(engine, "no such engine", "an engine (.plan)"))
    if out.exists() and any(out.iterdir()):
        raise MrcnnError(f"{out}: not empty; give a new folder for the repository")
    if not 0.0 <= score <= 1.0:
        raise MrcnnError(f"--score must be in [0, 1], got {score}")
    meta = info["metadata"]
    profile = info["profile"]["images"]
    cfg = json.loads(meta["mrcnn.config"])
    pre = json.loads(meta.get("mrcnn.preprocess", "{}"))
    max_batch = int(profile["max"][0])
    canvas = (int(profile["max"][-2]), int(profile["max"][-1]))  # (the profile of `images`: [B, H, W])
    div = int(pre.get("size_divisible", 32))
    need = -(-int(pre.get("max_size", 1333)) // div) * div
    if min(canvas) < need and not pre.get("pad_to"):
        raise MrcnnError(
            f"{engine}: its profile's largest input is {canvas[0]}x{canvas[1]}; a resized image can be {need} on "
            f"either side: rebuild it with --max-shape {max_batch}x3x{need}x{need}"
        )
    model_cfg = cfg["model"]
    outputs = engine_outputs(int(model_cfg["detections_per_img"]), int(model_cfg["mask_resolution"]))
    out.mkdir(parents=True, exist_ok=True)
    engine_name, pre_name, post_name = f"{name}_engine", f"{name}_preprocess", f"{name}_postprocess"
    engine_model(out, engine_name, engine, outputs, max_batch, instances, delay_us)
    common = {"max_pixels": ""}
    python_model(
        out,
        pre_name,
        "PreprocessModel",
        [INPUTS[0]],
        PRE_OUTPUTS,
        {
            **common,
            "min_size": str(pre.get("min_size")),
            "max_size": str(pre.get("max_size")),
            "canvas": f"{canvas[0]}x{canvas[1]}",
        },
        max_batch,
        max(1, instances),
    )
    python_model(
        out,
        post_name,
        "PostprocessModel",
        [*outputs, *PRE_OUTPUTS[1:], INPUTS[1]],
        OUTPUTS,
        {"class_names": meta.get("mrcnn.class_names", "[]"), "score": repr(score), "config": meta["mrcnn.config"]},
        max_batch,
        max(1, instances),
    )
    steps = [
        (pre_name, {"image": "image"}, {t.name: f"pre_{t.name}" for t in PRE_OUTPUTS}),
        (engine_name, {t.name: f"pre_{t.name}" for t in ENGINE_INPUTS}, {t.name: f"engine_{t.name}" for t in outputs}),
        (
            post_name,
            {
                **{t.name: f"engine_{t.name}" for t in outputs},
                "image_sizes": "pre_image_sizes",
                "original_size": "pre_original_size",
                "score_threshold": "score_threshold",
            },
            {t.name: t.name for t in OUTPUTS},
        ),
    ]
    ensemble_model(out, name, steps, max_batch)
    need_plugins = info.get("plugins") and not info["plugins"].get("serialized")
    lib = Path(plugins) if plugins else Path("/path/to/libmrcnn_trt_plugins.so")
    (out / "README.md").write_text(
        GPU_README.format(
            engine_name=engine.name,
            runtime=info["runtime"],
            runtime_version=info["runtime_version"],
            gpu=(info.get("gpu") or {}).get("name", "the GPU that built it"),
            name=name,
            canvas=f"{canvas[0]}x{canvas[1]}",
            max_batch=max_batch,
            version=meta.get("mrcnn.version", "?"),
            plugins_note=(
                " live in libmrcnn_trt_plugins.so, which the server loads:"
                if need_plugins
                else ": none to load (a portable or rtx export, or plugins serialized into the engine)."
            ),
            plugin_flag=f" --backend-config=tensorrt,plugins={lib}" if need_plugins else "",
            plugin_library=lib,
        )
    )
    return out
