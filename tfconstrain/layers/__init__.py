"""Layers that register constraints, as layers register losses."""

from tfconstrain.layers.registration import add_layer_constraint

__all__ = ["add_layer_constraint"]
