"""The Mask R-CNN network (`MaskRCNN`), its builder, the torchvision converter and the PyTorch predictor."""
from __future__ import annotations

from mrcnn.config import ModelConfig
from mrcnn.model.mask_rcnn import MaskRCNN


def build_model(cfg: ModelConfig) -> MaskRCNN:
    return MaskRCNN(cfg)


from mrcnn.model.convert import convert_torchvision, convert_torchvision_state_dict  # noqa: E402
from mrcnn.model.predictor import Predictor  # noqa: E402

__all__ = ["MaskRCNN", "build_model", "Predictor", "convert_torchvision", "convert_torchvision_state_dict"]
