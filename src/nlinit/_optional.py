"""Optional dependencies (timm, transformers, ...): imported only when asked for by name.

A missing one is a :class:`MissingDependencyError` (an ImportError) whose one-line message says what needed
it and what to install; the command line prints it as such.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(ImportError):
    """An optional dependency that a requested feature needs is not installed."""


def require(module: str, *, needed_for: str, install: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming ``needed_for`` and the install command.

    Example:
        >>> timm = require("timm", needed_for="model 'timm:resnet18'")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{needed_for} needs {module}, which is not installed: pip install {install or module}"
        ) from None
