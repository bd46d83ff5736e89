"""The library's entry points behind the CLI commands that combine parts (the CLI only parses and prints):
`evaluate_artifact` (`mrcnn eval`), `validate_artifact` (`mrcnn validate`), `demo` (`mrcnn demo`), `runtime_info`
(`mrcnn info`). Single-purpose commands call their package directly (mrcnn.training, mrcnn.deploy, mrcnn.export)."""

from mrcnn.api.demo import demo
from mrcnn.api.info import runtime_info
from mrcnn.api.validate import evaluate_artifact, validate_artifact

__all__ = ["demo", "evaluate_artifact", "runtime_info", "validate_artifact"]
