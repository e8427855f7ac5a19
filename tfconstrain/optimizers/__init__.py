"""Dual optimizers: how multipliers move given the constraints' violations."""

from __future__ import annotations

from typing import Any

import keras

from tfconstrain.optimizers.base import DualOptimizer
from tfconstrain.optimizers.base import GradientAscent
from tfconstrain.optimizers.base import PenaltyStepAscent
from tfconstrain.optimizers.keras_adapter import KerasDualOptimizer
from tfconstrain.optimizers.nupi import NuPI
from tfconstrain.optimizers.scaled import ScaledAscent

__all__ = [
    "DualOptimizer",
    "GradientAscent",
    "KerasDualOptimizer",
    "NuPI",
    "PenaltyStepAscent",
    "ScaledAscent",
    "get",
]


def get(identifier: Any) -> DualOptimizer:
    """Resolves a `dual_optimizer` argument of `compile`.

    Args:
        identifier: A float (learning rate of projected gradient ascent), a
            `keras.optimizers.Optimizer`, or a `DualOptimizer` such as
            `NuPI`.

    Returns:
        A fresh `DualOptimizer`.

    Raises:
        TypeError: for anything else.
        ValueError: for a non-positive learning rate.
    """
    if isinstance(identifier, DualOptimizer):
        return type(identifier).from_config(identifier.get_config())
    if isinstance(identifier, keras.optimizers.Optimizer):
        return KerasDualOptimizer(identifier)
    if isinstance(identifier, (int, float)) and not isinstance(
        identifier, bool
    ):
        return GradientAscent(identifier)
    raise TypeError(
        "`dual_optimizer` must be a float (the dual learning rate), a "
        "`keras.optimizers.Optimizer`, or a `tfc.optimizers` dual optimizer "
        f"such as `NuPI`; got {identifier!r}."
    )
