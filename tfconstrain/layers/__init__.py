"""Layers that register constraints, as layers register losses.

- `ActivityConstraint`: identity layer constraining a function of its input.
- `L0Dense`, `L0Conv2D`: hard-concrete L0 gates with a constrained density.
- `add_layer_constraint` / `LayerConstraintMixin`: the generic way for any
  custom layer to declare a constraint; `record_value` / `recorded_value` /
  `no_recording` for constraints on values computed in the forward pass.
"""

from tfconstrain.layers.activity import ActivityConstraint
from tfconstrain.layers.l0 import L0Conv2D
from tfconstrain.layers.l0 import L0Dense
from tfconstrain.layers.l0 import L0Density
from tfconstrain.layers.registration import LayerConstraintMixin
from tfconstrain.layers.registration import add_layer_constraint
from tfconstrain.layers.registration import no_recording
from tfconstrain.layers.registration import record_value
from tfconstrain.layers.registration import recorded_value
from tfconstrain.layers.registration import registered_constraints

__all__ = [
    "ActivityConstraint",
    "L0Conv2D",
    "L0Dense",
    "L0Density",
    "LayerConstraintMixin",
    "add_layer_constraint",
    "no_recording",
    "record_value",
    "recorded_value",
    "registered_constraints",
]
