"""`ActivityConstraint`: an identity layer that constrains its input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.layers.registration import LayerConstraintMixin
from tfconstrain.layers.registration import recorded_value


class ActivityValue(Constraint):
    """The constraint of an `ActivityConstraint` layer.

    Its value is `fn(a)` with `a` the activations the layer received in the
    current forward pass. With `per_example=False`, `fn` returns one value
    per batch, and dataset-level values are the means of batch values
    weighted by the batch weights (exact when `fn` is a mean over the
    batch). With `per_example=True`, `fn` returns one value per example
    (leading batch axis) and the constraint is their sample-weighted mean:
    statistics `(Σ_i w_i · c_i, Σ_i w_i)`, exact at any batch size.

    Args:
        layer: The `ActivityConstraint` layer.
        fn: Callable `fn(activations) -> Tensor`.
        kind: String. `"<="`, `">="` or `"=="`.
        bound: Float or 1-D array.
        activation_proxy: Optional differentiable callable of the
            activations, used by the primal step instead of `fn`.
        per_example: Bool. Whether `fn` returns one value per example.
        name: String.
        tolerance: Float.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        fn: Callable,
        *,
        kind: str,
        bound: Any,
        activation_proxy: Callable | None = None,
        per_example: bool = False,
        name: str | None = None,
        tolerance: float = 1e-4,
    ):
        super().__init__(kind=kind, bound=bound, name=name, tolerance=tolerance)
        self.layer = layer
        self.fn = fn
        self.activation_proxy = activation_proxy
        self.per_example = bool(per_example)

    @property
    def has_distinct_true_value(self) -> bool:
        return self.activation_proxy is not None

    def call(self, batch: Batch) -> tf.Tensor:
        function = self.activation_proxy or self.fn
        return function(recorded_value(self.layer))

    def true_value(self, batch: Batch) -> tf.Tensor:
        return self.fn(recorded_value(self.layer))

    def statistics(self, batch: Batch) -> tuple:
        return self._activity_statistics(self.true_value(batch), batch)

    def proxy_statistics(self, batch: Batch) -> tuple:
        return self._activity_statistics(self.call(batch), batch, "proxy")

    def _activity_statistics(self, value, batch, what="value") -> tuple:
        if not self.per_example:
            return self._mean_statistics(value, batch, what)
        value = tf.convert_to_tensor(value)
        expected = (None, *self.shape)
        if value.shape.rank != len(expected) or not value.dtype.is_floating:
            raise ValueError(
                f"Constraint '{self.name}': with `per_example=True` the "
                f"{what} function must return a float tensor of shape "
                f"(batch_size, *{self.shape}), got {value.dtype.name} "
                f"{tuple(value.shape)}."
            )
        value = tf.cast(value, tf.float32)
        weights = _example_weights(batch.sample_weight, tf.shape(value)[0])
        return (tf.tensordot(weights, value, axes=1), tf.reduce_sum(weights))

    def get_config(self) -> dict:
        raise NotImplementedError(
            f"Constraint '{self.name}' belongs to the layer "
            f"'{self.layer.name}'; it is saved and restored with the layer's "
            "config, not on its own."
        )


def _example_weights(sample_weight, size) -> tf.Tensor:
    """Per-example weights of shape `(size,)` (ones without sample weights)."""
    if sample_weight is None:
        return tf.ones([size], tf.float32)
    weights = tf.cast(sample_weight, tf.float32)
    if weights.shape.rank == 1:
        return weights
    return tf.reduce_mean(tf.reshape(weights, [size, -1]), axis=1)


@keras.saving.register_keras_serializable(package="tfconstrain")
class ActivityConstraint(LayerConstraintMixin, keras.layers.Layer):
    """Identity layer that constrains a function of its input.

    The layer passes its input through unchanged and registers the
    constraint `fn(input) <kind> bound` with the model that contains it
    (collected at `compile`, like `add_loss` terms). The constraint is
    trained, logged and reported like any model constraint, under the
    layer's name: logs `NAME`, `NAME_violation`, `NAME_multiplier`.

    The activations are those of the model's own forward pass on the batch
    (the training pass inside `fit`, the inference pass in `evaluate` and
    `constraint_report`).

    Example:

    ```python
    inputs = keras.Input((20,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    hidden = tfc.layers.ActivityConstraint(
        lambda a: keras.ops.mean(a), kind="<=", bound=0.1,
        name="mean_activation",
    )(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    ```

    Args:
        fn: Callable `fn(activations) -> Tensor`. Without `per_example`, it
            returns a scalar or 1-D tensor of the bound's shape for the
            whole batch (a mean over the batch gives exact dataset-level
            values); with `per_example=True`, a tensor of shape
            `(batch_size, *bound_shape)`. Register it with
            `@keras.saving.register_keras_serializable()` to save the model.
        kind: String. `"<="`, `">="` or `"=="`.
        bound: Float or 1-D array. Its shape declares the constraint's shape.
        proxy: Optional callable of the activations, differentiable, used by
            the primal step instead of `fn` (which then may be
            non-differentiable, e.g. the fraction of active units). Defaults
            to `None`.
        per_example: Bool. Whether `fn` (and `proxy`) return one value per
            example, averaged with the sample weights. Defaults to `False`.
        multiplier_init: Float or array. Initial multiplier. Defaults to
            `0.0`.
        tolerance: Float >= 0. Defaults to `1e-4`.
        name: String. Name of the layer and of its constraint. Defaults to
            a unique name derived from the class name.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        kind: str,
        bound: Any,
        proxy: Callable | None = None,
        per_example: bool = False,
        multiplier_init: Any = 0.0,
        tolerance: float = 1e-4,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        label = self.name
        if not callable(fn):
            raise TypeError(
                f"Constraint '{label}': `fn` must be a callable of the "
                f"activations, got {fn!r}."
            )
        if proxy is not None and not callable(proxy):
            raise TypeError(
                f"Constraint '{label}': `proxy` must be a callable of the "
                f"activations, got {proxy!r}."
            )
        self.fn = fn
        self.proxy = proxy
        self.per_example = bool(per_example)
        self.multiplier_init = multiplier_init
        self.supports_masking = True
        self.constraint = self.add_constraint(
            ActivityValue(
                self,
                fn,
                kind=kind,
                bound=bound,
                activation_proxy=proxy,
                per_example=per_example,
                name=label,
                tolerance=tolerance,
            ),
            multiplier_init=multiplier_init,
        )

    def call(self, inputs):
        self.record_value(inputs)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        constraint = self.constraint
        config.update(
            {
                "fn": keras.saving.serialize_keras_object(self.fn),
                "kind": constraint.kind,
                "bound": constraint.bound.tolist(),
                "proxy": (
                    None
                    if self.proxy is None
                    else keras.saving.serialize_keras_object(self.proxy)
                ),
                "per_example": self.per_example,
                "multiplier_init": _as_list(self.multiplier_init),
                "tolerance": constraint.tolerance,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> ActivityConstraint:
        config = dict(config)
        for key in ("fn", "proxy"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _as_list(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
