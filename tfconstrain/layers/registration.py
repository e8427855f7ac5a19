"""How any layer registers a constraint, as layers register losses.

A layer declares a constraint with `add_layer_constraint(self, ...)` (or
`self.add_constraint(...)` when it mixes in `LayerConstraintMixin`), typically
in `__init__` or `build`. A `ConstrainedModel` that contains the layer collects
the constraint at `compile` (and before its step functions are traced),
creates its multiplier, and trains under it like any constraint added with
`model.add_constraint`.

Constraints on a layer's *activations* need a tensor computed during the
forward pass. The layer records it in `call` with
`record_value(self, value)`, and the constraint reads it back with
`recorded_value(layer)`. Within one compiled step, the forward pass runs
before the constraints are evaluated, so the constraint sees the tensor of
the same trace. Records are kept per thread (replicas of a
`MirroredStrategy` run in their own threads), and forward passes made inside
`no_recording()` (extra passes of constraints that evaluate the model on
other inputs, e.g. counterfactuals) leave them untouched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

from tfconstrain import _keras_compat
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import FunctionConstraint
from tfconstrain.constraint import default_name
from tfconstrain.constraint import with_overrides

_CONSTRAINTS = "_tfc_layer_constraints"
_RECORDS = "_tfc_records"
_state = threading.local()


def add_layer_constraint(
    layer: keras.layers.Layer,
    constraint: Constraint | Callable,
    kind: str | None = None,
    bound: Any = None,
    *,
    name: str | None = None,
    proxy: Callable | None = None,
    multiplier_init: Any = 0.0,
    tolerance: float | None = None,
) -> Constraint:
    """Declares a constraint owned by `layer`.

    The model that contains `layer` adds the constraint at `compile`, as if
    `model.add_constraint(constraint, kind, bound, ...)` had been called.

    Example:

    ```python
    class UnitNormDense(keras.layers.Dense):
        def __init__(self, units, **kwargs):
            super().__init__(units, **kwargs)
            tfc.layers.add_layer_constraint(
                self,
                lambda batch: keras.ops.sum(keras.ops.square(self.kernel)),
                "<=",
                1.0,
                name=f"{self.name}_kernel_norm",
            )
    ```

    Args:
        layer: The `keras.layers.Layer` that owns the constraint.
        constraint: A `tfc.Constraint`, or a callable `fn(batch) -> Tensor`
            returning a scalar or 1-D float tensor.
        kind: String. `"<="`, `">="` or `"=="`. Required for callables;
            overrides a `Constraint`'s kind when given.
        bound: Float or 1-D array. Required for callables; overrides a
            `Constraint`'s bound when given.
        name: String. Unique name in the model. Defaults to
            `"<layer name>_<function name>"` for callables and to the
            constraint's own name for a `Constraint`.
        proxy: Optional differentiable callable `fn(batch) -> Tensor` used by
            the primal step. Defaults to `None`.
        multiplier_init: Float or array. Initial multiplier. Defaults to
            `0.0`.
        tolerance: Optional float >= 0. Defaults to the constraint's own
            (`1e-4` for callables).

    Returns:
        The registered `tfc.Constraint`.

    Raises:
        TypeError: if `constraint` is neither callable nor a `Constraint`.
        ValueError: if the constraint has no kind or no bound (given here,
            or by the `Constraint` itself), or the layer already owns a
            constraint of the same name.
    """
    if isinstance(constraint, Constraint):
        constraint = with_overrides(
            constraint,
            kind=kind,
            bound=bound,
            name=name,
            tolerance=tolerance,
            proxy=proxy,
        )
    else:
        label = name or f"{layer.name}_{default_name(constraint)}"
        if not callable(constraint):
            raise TypeError(
                f"Layer '{layer.name}': constraint '{label}' must be a "
                f"callable `fn(batch)` or a `tfc.Constraint`, got "
                f"{constraint!r}."
            )
        if kind is None:
            raise ValueError(
                f"Layer '{layer.name}': `kind` is required for the callable "
                f"constraint '{label}' ('<=', '>=' or '==')."
            )
        constraint = FunctionConstraint(
            constraint,
            kind,
            bound,
            name=label,
            proxy=proxy,
            tolerance=1e-4 if tolerance is None else tolerance,
        )
    constraint.require_bound()
    registered = layer.__dict__.setdefault(_CONSTRAINTS, [])
    if any(c.name == constraint.name for c, _ in registered):
        raise ValueError(
            f"Layer '{layer.name}' already registered a constraint named "
            f"'{constraint.name}'. Pass a unique `name=`."
        )
    registered.append((constraint, multiplier_init))
    return constraint


def registered_constraints(layer: keras.layers.Layer) -> list[Constraint]:
    """The constraints that `layer` itself registered (not its sublayers)."""
    return [c for c, _ in layer.__dict__.get(_CONSTRAINTS, ())]


def layer_constraints(model: keras.Model) -> list:
    """`(constraint, multiplier_init)` pairs declared by the model's layers."""
    found = []
    for layer in _keras_compat.flatten_layers(model):
        found.extend(layer.__dict__.get(_CONSTRAINTS, ()))
    return found


# ------------------------------------------------------------- recording
def record_value(
    layer: keras.layers.Layer, value: Any, key: str = "value"
) -> None:
    """Records a tensor computed in `layer.call` for its constraints.

    Call it from `call`; a constraint reads the tensor back with
    `recorded_value(layer, key)`. A later forward pass (in the same thread)
    replaces it; passes inside `no_recording()` do not.

    Args:
        layer: The layer whose forward pass computed `value`.
        value: A tensor (or nest of tensors).
        key: String. Name of the record, for layers that record several
            values. Defaults to `"value"`.
    """
    if getattr(_state, "paused", 0):
        return
    records = layer.__dict__.setdefault(_RECORDS, {})
    alive = {thread.ident for thread in threading.enumerate()}
    for stale in [k for k in records if k[0] not in alive]:
        del records[stale]
    records[(threading.get_ident(), key)] = value


def recorded_value(layer: keras.layers.Layer, key: str = "value") -> Any:
    """The tensor that `layer` recorded in the current forward pass.

    Args:
        layer: The layer.
        key: String. The name the layer recorded the value under. Defaults
            to `"value"`.

    Returns:
        The recorded tensor (or nest).

    Raises:
        RuntimeError: if the layer has not run in this thread, or its record
            belongs to another traced function (the layer is not part of
            the forward pass being trained or evaluated).
    """
    records = layer.__dict__.get(_RECORDS, {})
    value = records.get((threading.get_ident(), key))
    if value is None:
        raise RuntimeError(
            f"Layer '{layer.name}' has no recorded '{key}': its constraint "
            "reads a value computed in the layer's forward pass, but the "
            "layer has not been called. Make sure the layer is part of the "
            "model that is trained or evaluated."
        )
    graph = tf.compat.v1.get_default_graph()
    for leaf in tf.nest.flatten(value):
        if tf.is_symbolic_tensor(leaf) and leaf.graph is not graph:
            raise RuntimeError(
                f"Layer '{layer.name}': its recorded '{key}' comes from "
                "another traced function than the one evaluating its "
                "constraint, so the layer did not run in this forward pass. "
                "Make sure the layer is part of the model that is trained "
                "or evaluated (a layer shared by two models records the "
                "pass that ran last)."
            )
    return value


@contextlib.contextmanager
def no_recording() -> Iterator[None]:
    """Forward passes inside this context do not replace recorded values.

    Constraints that call the model again on other inputs (input gradients,
    counterfactuals) use it, so that activity constraints keep seeing the
    activations of the batch itself.

    Example:

    ```python
    with tfc.layers.no_recording():
        counterfactual = batch.model(x_flipped, training=False)
    ```
    """
    _state.paused = getattr(_state, "paused", 0) + 1
    try:
        yield
    finally:
        _state.paused -= 1


class LayerConstraintMixin:
    """Gives a layer `add_constraint`, as `add_loss` adds a loss.

    Mix it into any `keras.layers.Layer` subclass (before the Keras base
    class) to declare constraints from the layer's own code. The model that
    contains the layer collects them at `compile`.

    Example:

    ```python
    class SparseActivation(tfc.layers.LayerConstraintMixin,
                           keras.layers.Layer):
        def __init__(self, budget, **kwargs):
            super().__init__(**kwargs)
            self.add_constraint(
                lambda batch: keras.ops.mean(
                    keras.ops.abs(self.recorded_value())),
                "<=", budget, name=f"{self.name}_l1")

        def call(self, inputs):
            self.record_value(inputs)
            return inputs
    ```
    """

    def add_constraint(
        self,
        constraint: Constraint | Callable,
        kind: str | None = None,
        bound: Any = None,
        *,
        name: str | None = None,
        proxy: Callable | None = None,
        multiplier_init: Any = 0.0,
        tolerance: float | None = None,
    ) -> Constraint:
        """Declares a constraint; see `tfc.layers.add_layer_constraint`."""
        return add_layer_constraint(
            self,
            constraint,
            kind,
            bound,
            name=name,
            proxy=proxy,
            multiplier_init=multiplier_init,
            tolerance=tolerance,
        )

    @property
    def layer_constraints(self) -> list[Constraint]:
        """The constraints this layer registered."""
        return registered_constraints(self)

    def record_value(self, value: Any, key: str = "value") -> None:
        """Records `value` for this layer's constraints (see `record_value`)."""
        record_value(self, value, key)

    def recorded_value(self, key: str = "value") -> Any:
        """The value recorded in this forward pass (see `recorded_value`)."""
        return recorded_value(self, key)
