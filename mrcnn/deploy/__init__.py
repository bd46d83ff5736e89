"""Everything that runs or measures an artifact: a checkpoint (.pt) on PyTorch, an exported model (.onnx) on ONNX
Runtime, a TensorRT(-RTX) engine (.plan) built from an export.

    artifacts     load_artifact(path) -> predictor; the artifact types there are runtimes for
    ort_predictor OnnxPredictor: an export on ONNX Runtime (ort_ops: the mrcnn custom ops there)
    build         `mrcnn build`: ONNX -> engine (.plan + .plan.json)
    bench         `mrcnn bench`: latency of artifacts side by side
    predict       `mrcnn predict`: detections on image files, overlays and a COCO json
"""

from mrcnn.deploy.artifacts import ARTIFACT_SUFFIXES, check_artifact_type, load_artifact

__all__ = ["ARTIFACT_SUFFIXES", "check_artifact_type", "load_artifact"]
