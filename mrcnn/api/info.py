"""`mrcnn info`: versions, the GPU, and which runtimes and native parts work on this machine."""
from __future__ import annotations

import importlib
import platform


def _version(mod: str) -> str | None:
    try:
        m = importlib.import_module(mod)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return None
    return str(getattr(m, "__version__", "installed"))


def runtime_info() -> list[tuple[str, str]]:
    """(name, status) rows."""
    import torch
    import torchvision

    import mrcnn

    rows = [("mrcnn", mrcnn.__version__), ("python", platform.python_version()),
            ("torch", torch.__version__), ("torchvision", torchvision.__version__),
            ("CUDA (torch build)", str(torch.version.cuda or "none"))]
    if torch.cuda.is_available():
        rows.append(("GPU", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
    else:
        rows.append(("GPU", "none visible (CPU only)"))
    try:
        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        rows.append(("torchvision ops", "ok"))
    except Exception as e:  # noqa: BLE001
        rows.append(("torchvision ops", f"broken: {str(e).splitlines()[0][:80]}"))
    from mrcnn.native.library import native_status

    rows.append(("mrcnn native kernels", native_status()))
    for name, mod in (("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                      ("onnxruntime-extensions", "onnxruntime_extensions"),
                      ("TensorRT", "tensorrt"), ("TensorRT-RTX", "tensorrt_rtx")):
        v = _version(mod)
        rows.append((name, v if v else "not installed"))
    rows.append(("TensorRT plugin library", "not built yet (arrives with the plugins issue)"))
    return rows
