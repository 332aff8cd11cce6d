"""Import a user-defined component from its path."""

from __future__ import annotations

import importlib
from typing import Any


def import_object(path: str) -> Any:
    """Import ``package.module:Name`` or ``package.module.Name`` and return the object."""
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"invalid import path {path!r}; expected 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import module {module_name!r} named in {path!r}: {error}") from error
    try:
        return getattr(module, attribute)
    except AttributeError as error:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (from {path!r})") from error


def resolve_class(name: str, builtins: dict[str, type], base: type, kind: str) -> type:
    """Return a built-in class by short name, or import a subclass of ``base`` from ``module:Class``."""
    if name in builtins:
        return builtins[name]
    if "." not in name and ":" not in name:
        known = ", ".join(sorted(builtins))
        raise ValueError(f"unknown {kind} {name!r}; use one of {known} or an import path 'module:Class'")
    cls = import_object(name)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{name!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls
