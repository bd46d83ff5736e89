"""mrcnn: Mask R-CNN training and deployment toolchain."""

from __future__ import annotations

from mrcnn.errors import MrcnnError

__version__ = "0.1.0"

__all__ = ["MrcnnError", "__version__"]
