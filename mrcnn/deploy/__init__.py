"""Everything that runs or measures an artifact: a checkpoint (.pt) on PyTorch, an exported model (.onnx) on ONNX
Runtime, a TensorRT(-RTX) engine (.plan) or an OpenVINO IR (.xml) built from an export.

    artifacts     load_artifact(path) -> predictor; the artifact types there are runtimes for
    ort_predictor OnnxPredictor: an export on ONNX Runtime (ort_ops: the mrcnn custom ops there)
    openvino_runtime  OpenVinoPredictor and `mrcnn build --runtime openvino`: an export as an OpenVINO IR (.xml)
    build         `mrcnn build`: ONNX -> engine (.plan + .plan.json), or an OpenVINO IR
    bench         `mrcnn bench`: latency of artifacts side by side
    predict       `mrcnn predict`: detections on image files, overlays and a COCO json
"""

from mrcnn.deploy.artifacts import ARTIFACT_SUFFIXES, THREADED_SUFFIXES, check_artifact_type, load_artifact

__all__ = ["ARTIFACT_SUFFIXES", "THREADED_SUFFIXES", "check_artifact_type", "load_artifact"]
