"""Regularizers of RSPO and the registry that maps YAML names to them.

Built-in short names: ``reverse_kl``, ``is_forward_kl``, ``forward_kl``,
``chi_squared``. A user-defined regularizer is named in YAML by its import path,
``package.module:ClassName`` (or ``package.module.ClassName``); it must subclass
:class:`Regularizer`. The name is resolved once, when the config is loaded.
"""

from __future__ import annotations

from typing import Any

from ..registry import resolve_class
from .base import Regularizer
from .chi_squared import ChiSquared
from .forward_kl import ForwardKL, ImportanceForwardKL
from .reverse_kl import ReverseKL

BUILTIN_REGULARIZERS: dict[str, type[Regularizer]] = {
    cls.name: cls for cls in (ReverseKL, ImportanceForwardKL, ForwardKL, ChiSquared)
}


def regularizer_class(name: str) -> type[Regularizer]:
    """Return the class for a built-in short name or an import path."""
    return resolve_class(name, BUILTIN_REGULARIZERS, Regularizer, "regularizer")


def build_regularizer(name: str, params: dict[str, Any] | None = None) -> Regularizer:
    """Instantiate a regularizer by name with keyword parameters, naming the bad parameter on error."""
    cls = regularizer_class(name)
    try:
        return cls(**(params or {}))
    except TypeError as error:
        raise ValueError(f"invalid parameters {params!r} for regularizer {name!r}: {error}") from error


__all__ = [
    "BUILTIN_REGULARIZERS",
    "ChiSquared",
    "ForwardKL",
    "ImportanceForwardKL",
    "Regularizer",
    "ReverseKL",
    "build_regularizer",
    "regularizer_class",
]
