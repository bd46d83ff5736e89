"""The Mask R-CNN network (`MaskRCNN`), its builder, its checkpoint format, the torchvision converter, starting
weights and the PyTorch predictor."""

from __future__ import annotations

from mrcnn.model.convert import convert_torchvision, convert_torchvision_state_dict
from mrcnn.model.mask_rcnn import MaskRCNN, build_model
from mrcnn.model.predictor import Predictor

__all__ = ["MaskRCNN", "build_model", "Predictor", "convert_torchvision", "convert_torchvision_state_dict"]
