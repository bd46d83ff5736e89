"""`mrcnn info`: versions, the GPU, and which runtimes and native parts work on this machine."""

from __future__ import annotations

import importlib
import platform


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:
        return None
    return str(getattr(m, "__version__", "installed"))


def runtime_info() -> list[tuple[str, str]]:
    """(name, status) rows."""
    import torch
    import torchvision

    import mrcnn
    from mrcnn.errors import message_line

    rows = [
        ("mrcnn", mrcnn.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("CUDA (torch build)", str(torch.version.cuda or "none")),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
    else:
        rows.append(("GPU", "none visible (CPU only)"))
    try:
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        rows.append(("torchvision ops", "ok"))
    except Exception as e:
        rows.append(("torchvision ops", f"broken: {message_line(e, 80)}"))
    from mrcnn.native.library import native_status

    rows.append(("mrcnn native kernels", native_status()))
    for name, mod in (
        ("onnx", "onnx"),
        ("onnxruntime", "onnxruntime"),
        ("onnxruntime-extensions", "onnxruntime_extensions"),
        ("TensorRT", "tensorrt"),
        ("TensorRT-RTX", "tensorrt_rtx"),
        ("OpenVINO", "openvino"),
        ("NVIDIA ModelOpt (--int8)", "modelopt"),
    ):
        v = _version(mod)
        rows.append((name, v if v else "not installed"))
    rows.append(serve_row())
    rows += plugin_rows()
    return rows


def serve_row() -> tuple[str, str]:
    """Whether `mrcnn serve` can start a server here: the tritonserver of nvidia-pytriton, and tritonclient."""
    from mrcnn.deploy.server import triton_dist
    from mrcnn.errors import MrcnnError

    try:
        where = triton_dist() / "bin" / "tritonserver"
    except MrcnnError:
        return ("Triton Inference Server", "not installed (pip install 'mrcnn[serve]')")
    client = _version("tritonclient")
    return ("Triton Inference Server", f"{where}; tritonclient {client or 'not installed'}")


def plugin_rows() -> list[tuple[str, str]]:
    """The TensorRT plugin library: its path and the headers it was built against, and the creators it registers in
    whichever TensorRT runtime imports here."""
    from mrcnn.deploy import trt_plugins
    from mrcnn.errors import MrcnnError

    path = trt_plugins.library_path()
    if path is None:
        return [("TensorRT plugin library", "not built (pip install found no TensorRT headers; docs/deployment.md)")]
    try:
        rows = [("TensorRT plugin library", f"{path} ({trt_plugins.build_info(path)})")]
    except MrcnnError as e:
        return [("TensorRT plugin library", str(e))]
    for mod in ("tensorrt", "tensorrt_rtx"):
        if _version(mod) is None:
            continue
        trt = importlib.import_module(mod)
        try:
            trt_plugins.load(trt, path)
            names = [f"{c['namespace']}::{c['name']} v{c['version']}" for c in trt_plugins.creators(trt)]
            rows.append(("plugin creators", f"{', '.join(names)} (registered in {mod} {trt.__version__})"))
        except MrcnnError as e:
            rows.append(("plugin creators", f"{mod}: {e}"))
        break
    else:
        rows.append(("plugin creators", "not listed: neither tensorrt nor tensorrt_rtx imports here"))
    return rows
