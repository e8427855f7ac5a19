"""How any layer registers a constraint, as layers register losses.

A layer calls `add_layer_constraint(self, ...)` (typically in `__init__` or
`build`); a `ConstrainedModel` that contains the layer collects the constraint
at `compile` (and before its step functions are traced), creates its
multiplier, and trains under it like any constraint added with
`model.add_constraint`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from tfconstrain.constraint import Constraint
from tfconstrain.constraint import FunctionConstraint

_ATTRIBUTE = "_tfc_layer_constraints"


def add_layer_constraint(
    layer: keras.layers.Layer,
    constraint: Constraint | Callable,
    kind: str | None = None,
    bound: Any = None,
    *,
    name: str | None = None,
    proxy: Callable | None = None,
    multiplier_init: Any = 0.0,
) -> Constraint:
    """Declares a constraint owned by `layer`.

    Args:
        layer: The layer that owns the constraint.
        constraint: A `tfc.Constraint` or a callable `fn(batch) -> Tensor`.
        kind: `"<="`, `">="` or `"=="` (required for callables).
        bound: Float or 1-D array (required for callables).
        name: Unique name. Defaults to `"<layer name>/<function name>"`.
        proxy: Optional differentiable surrogate for the primal step.
        multiplier_init: Initial multiplier. Defaults to `0.0`.

    Returns:
        The `tfc.Constraint`.
    """
    if not isinstance(constraint, Constraint):
        if not callable(constraint):
            raise TypeError(
                f"Layer '{layer.name}': expected a callable or a "
                f"`tfc.Constraint`, got {constraint!r}."
            )
        if kind is None:
            raise ValueError(
                f"Layer '{layer.name}': `kind` is required for a callable "
                "constraint."
            )
        default = getattr(constraint, "__name__", "constraint")
        if default == "<lambda>":
            default = "constraint"
        constraint = FunctionConstraint(
            constraint,
            kind,
            bound,
            name=name or f"{layer.name}/{default}",
            proxy=proxy,
        )
    elif name is not None:
        constraint.name = name
    registered = layer.__dict__.setdefault(_ATTRIBUTE, [])
    registered.append((constraint, multiplier_init))
    return constraint


def layer_constraints(model: keras.Model) -> list:
    """`(constraint, multiplier_init)` pairs declared by the model's layers."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        found.extend(layer.__dict__.get(_ATTRIBUTE, ()))
    return found
