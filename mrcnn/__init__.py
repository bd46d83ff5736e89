"""mrcnn: Mask R-CNN training and deployment toolchain."""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# In a source checkout `export/` and `cli/` sit beside `mrcnn/` (design.md §2) and are installed as
# `mrcnn.export` / `mrcnn.cli`. Make the same import names work when running from the checkout.
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_root, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_root, "cli", "__init__.py")
):
    for _sub in ("export", "cli"):
        _p = _os.path.join(_root, _sub)
        if _os.path.isdir(_p) and not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), _sub)):
            __path__.append(_root)  # type: ignore[name-defined]
            break

from mrcnn.errors import MrcnnError  # noqa: E402

__all__ = ["MrcnnError", "__version__"]
