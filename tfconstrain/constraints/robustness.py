"""Robustness constraints: input-gradient norm, spectral norm, monotonicity.

These constraints evaluate the model again on the batch's inputs (`batch.model`
and `batch.x`) under a nested `tf.GradientTape`, so their values are
differentiable in the weights (double backpropagation) and can drive the
primal step directly.

The extra forward pass runs with `training=False` by default, so dropout is
off, batch normalisation uses its moving statistics, L0 gates are
deterministic, and every example's input gradient is its own (no coupling
through batch statistics). It runs inside `tfc.layers.no_recording()`, so
activity constraints keep seeing the activations of the main forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import _keras_compat
from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import copying
from tfconstrain.constraint import default_name
from tfconstrain.constraint import normalize_kind
from tfconstrain.layers.registration import no_recording

NORMS = {1: 1, 2: 2, "1": 1, "2": 2, "inf": np.inf, np.inf: np.inf}
DIRECTIONS = {
    "increasing": 1.0,
    "decreasing": -1.0,
    1: 1.0,
    -1: -1.0,
}


# ------------------------------------------------------------------ helpers
def model_outputs(
    model: keras.Model,
    x: Any,
    training: bool = False,
    output_index: int | None = None,
    name: str = "constraint",
) -> tf.Tensor:
    """The model's predictions for `x` as a float32 `(batch, k)` matrix.

    The forward pass runs inside `no_recording()`.

    Args:
        model: The model (`batch.model`).
        x: Model input.
        training: Bool. Forward-pass mode. Defaults to `False`.
        output_index: Optional int. Keep only this column of the flattened
            output.
        name: String. Constraint name for error messages.

    Raises:
        ValueError: if the model is missing or has several outputs.
    """
    if model is None:
        raise ValueError(
            f"Constraint '{name}': it needs the model (`batch.model`) to "
            "evaluate it on modified inputs, but the batch has none. Use it "
            "through `ConstrainedModel.add_constraint`."
        )
    with no_recording():
        y = model(x, training=training)
    leaves = tf.nest.flatten(y)
    if len(leaves) != 1:
        raise ValueError(
            f"Constraint '{name}': the model has {len(leaves)} outputs; this "
            "constraint needs a model with a single output tensor."
        )
    y = tf.cast(leaves[0], tf.float32)
    if y.shape.rank == 1:
        y = y[:, None]
    y = tf.reshape(y, [tf.shape(y)[0], int(np.prod(y.shape[1:]))])
    if output_index is not None:
        y = y[:, output_index : output_index + 1]
    return y


def scalar_output(y: tf.Tensor, name: str) -> tf.Tensor:
    """`y[:, 0]` for a one-column output; raises for wider outputs."""
    if y.shape[-1] != 1:
        raise ValueError(
            f"Constraint '{name}': the model output has {y.shape[-1]} "
            "columns; pass `output_index=` to choose the one to constrain."
        )
    return y[:, 0]


def example_weights(batch: Batch, size: Any) -> tf.Tensor:
    """Per-example weights `(n,)`: the sample weights, or ones."""
    if batch.sample_weight is None:
        return tf.ones([size], tf.float32)
    weights = tf.cast(batch.sample_weight, tf.float32)
    if weights.shape.rank == 1:
        return weights
    return tf.reduce_mean(tf.reshape(weights, [size, -1]), axis=1)


def weighted_sum(weights: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """`Σ_i w_i · values_i` over the leading (example) axis."""
    return tf.tensordot(weights, values, axes=1)


class FeatureRef:
    """Where a feature lives in the model input.

    A feature is an int (a column of the last axis of the input tensor, or of
    the dict input named `input_name`) or a string (a dict input whose
    examples have one element).
    """

    def __init__(self, feature: Any, input_name: str | None, owner: str):
        if isinstance(feature, (bool, np.bool_)) or not isinstance(
            feature, (int, np.integer, str)
        ):
            raise TypeError(
                f"Constraint '{owner}': a feature must be an int (a column "
                f"index) or a string (an input name), got {feature!r}."
            )
        self.feature = feature if isinstance(feature, str) else int(feature)
        self.input_name = input_name
        self.owner = owner

    @property
    def is_column(self) -> bool:
        return isinstance(self.feature, int)

    def key(self, x: Any) -> str | None:
        """The dict key of the tensor holding the feature (None: `x`)."""
        if not isinstance(x, dict):
            if isinstance(self.feature, str) or self.input_name is not None:
                raise ValueError(
                    f"Constraint '{self.owner}': feature {self.feature!r} "
                    f"(input {self.input_name!r}) names a dict input, but "
                    "the model input is a single tensor. Use a column index."
                )
            return None
        key = self.feature if isinstance(self.feature, str) else None
        key = key or self.input_name
        if key is None:
            raise ValueError(
                f"Constraint '{self.owner}': the model input is a dict "
                f"{sorted(x)}; pass `input_name=` to say which input holds "
                f"column {self.feature}, or name the feature by its input."
            )
        if key not in x:
            raise KeyError(key)
        return key

    def tensor(self, x: Any) -> tf.Tensor:
        key = self.key(x)
        return x if key is None else x[key]

    def column(self, values: tf.Tensor) -> tf.Tensor:
        """The feature's values `(n,)` from its tensor (or its gradient)."""
        if self.is_column:
            if values.shape.rank != 2:
                raise ValueError(
                    f"Constraint '{self.owner}': column features need a "
                    f"2-D input (batch, features), got shape "
                    f"{tuple(values.shape)}."
                )
            return values[:, self.feature]
        return tf.reshape(values, [tf.shape(values)[0], -1])[:, 0]

    def replace(self, x: Any, new_column_fn) -> Any:
        """A copy of `x` where the feature's values are `fn(values)`."""
        key = self.key(x)
        tensor = x if key is None else x[key]
        if self.is_column:
            column = self.column(tensor)
            new = tf.cast(new_column_fn(column), tensor.dtype)
            mask = tf.one_hot(
                self.feature, tf.shape(tensor)[-1], dtype=tensor.dtype
            )
            replaced = tensor + (new - column)[:, None] * mask
        else:
            replaced = tf.cast(new_column_fn(tensor), tensor.dtype)
            replaced = tf.broadcast_to(replaced, tf.shape(tensor))
        if key is None:
            return replaced
        out = dict(x)
        out[key] = replaced
        return out

    def config(self) -> Any:
        return self.feature


def _as_list(features: Any) -> list:
    if isinstance(features, (str, int, np.integer)):
        return [features]
    return list(features)


# --------------------------------------------------------------- constraints
@keras.saving.register_keras_serializable(package="tfconstrain")
class InputGradientNorm(Constraint):
    """Bound on the input-gradient norm of the model (local Lipschitz).

    For each example, `n_i = ‖∂f(x_i)/∂x_i‖` is the norm of the gradient of
    the model output with respect to the input (for several output columns,
    of the flattened Jacobian: the Frobenius norm for `ord=2`). The
    constraint's value is the sample-weighted power mean

        c = (Σ_i w_i · n_i^p / Σ_i w_i)^(1/p),

    the mean for `p = 1` (default), the root mean square for `p = 2`, and a
    smooth approximation of the maximum for large `p`. (The exact maximum
    is not a sum over examples, so it cannot be accumulated exactly.) The
    statistics `(Σ w·n^p, Σ w)` add up across batches and replicas, so
    `evaluate` and `constraint_report` return the exact dataset value.

    The value is differentiable in the weights (double backpropagation), so
    the primal step uses it directly. Cost: one extra forward pass and one
    backward pass per output column.

    Example:

    ```python
    model.add_constraint(tfc.constraints.InputGradientNorm() <= 1.0)
    # Only with respect to the dict input "image":
    model.add_constraint(
        tfc.constraints.InputGradientNorm("image", bound=1.0))
    ```

    Args:
        inputs: Optional string or list of strings. For dict inputs, the
            inputs to differentiate with respect to. Defaults to every
            floating-point input.
        kind: String. Defaults to `"<="`.
        bound: Optional float, the bound on `c`. Defaults to `None`
            (unbound: state it by comparison, `<= 1.0`).
        output_index: Optional int. Constrain this output column only.
            Defaults to all columns.
        ord: `1`, `2` or `"inf"`. The vector norm. Defaults to `2`.
        power: Float >= 1. The `p` of the power mean. Defaults to `1.0`.
        training: Bool. Mode of the extra forward pass. Defaults to `False`.
        name: String. Defaults to `"input_gradient_norm"`.
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float >= 0. Defaults to `1e-4`.
    """

    def __init__(
        self,
        inputs: str | Sequence[str] | None = None,
        *,
        kind: str = "<=",
        bound: float | None = None,
        output_index: int | None = None,
        ord: Any = 2,
        power: float = 1.0,
        training: bool = False,
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        super().__init__(
            kind=kind, bound=bound, name=name, proxy=proxy, tolerance=tolerance
        )
        if inputs is not None and not (
            isinstance(inputs, str)
            or (
                isinstance(inputs, (list, tuple))
                and all(isinstance(key, str) for key in inputs)
            )
        ):
            raise TypeError(
                f"Constraint '{self.name}': `inputs` must be an input name or "
                f"a list of input names, got {inputs!r}. (The bound is a "
                "keyword argument: `InputGradientNorm() <= 1.0` or "
                "`InputGradientNorm(bound=1.0)`.)"
            )
        if self.bound is not None and self.shape != ():
            raise ValueError(
                f"Constraint '{self.name}': the bound must be a scalar, got "
                f"shape {self.shape}."
            )
        key = ord if not isinstance(ord, float) or np.isinf(ord) else int(ord)
        if key not in NORMS:
            raise ValueError(
                f"Constraint '{self.name}': `ord` must be 1, 2 or 'inf', got "
                f"{ord!r}."
            )
        power = float(power)
        if not np.isfinite(power) or power < 1.0:
            raise ValueError(
                f"Constraint '{self.name}': `power` must be a finite number "
                f">= 1, got {power}."
            )
        self.inputs = None if inputs is None else _as_list(inputs)
        self.output_index = output_index
        self.ord = NORMS[key]
        self.power = power
        self.training = bool(training)

    def norms(self, batch: Batch) -> tf.Tensor:
        """Per-example input-gradient norms `n_i`, shape `(n,)`."""
        x = batch.x
        leaves = self._differentiated_inputs(x)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(leaves)
            y = model_outputs(
                batch.model, x, self.training, self.output_index, self.name
            )
            sums = [tf.reduce_sum(y[:, j]) for j in range(y.shape[-1])]
        size = tf.shape(y)[0]
        pieces = []
        for total in sums:
            grads = tape.gradient(
                total,
                leaves,
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            pieces.extend(
                tf.reshape(tf.cast(g, tf.float32), [size, -1]) for g in grads
            )
        del tape
        jacobian = tf.concat(pieces, axis=1)
        if self.ord == 1:
            return tf.reduce_sum(tf.abs(jacobian), axis=1)
        if self.ord == 2:
            return tf.sqrt(tf.reduce_sum(tf.square(jacobian), axis=1) + 1e-12)
        return tf.reduce_max(tf.abs(jacobian), axis=1)

    def _differentiated_inputs(self, x) -> list:
        if not isinstance(x, dict):
            if self.inputs is not None:
                raise ValueError(
                    f"Constraint '{self.name}': `inputs={self.inputs}` names "
                    "dict inputs, but the model input is not a dict."
                )
            return [x]
        keys = self.inputs
        if keys is None:
            keys = [k for k in sorted(x) if x[k].dtype.is_floating]
        missing = [k for k in keys if k not in x]
        if missing:
            raise KeyError(missing[0])
        return [x[k] for k in keys]

    def call(self, batch: Batch) -> tf.Tensor:
        return self.result(self.statistics(batch))

    def statistics(self, batch: Batch) -> tuple:
        norms = self.norms(batch)
        weights = example_weights(batch, tf.shape(norms)[0])
        powered = norms if self.power == 1.0 else norms**self.power
        return (weighted_sum(weights, powered), tf.reduce_sum(weights))

    def result(self, statistics: tuple) -> tf.Tensor:
        total, weight = statistics
        mean = tf.math.divide_no_nan(total, weight)
        if self.power == 1.0:
            return mean
        return mean ** (1.0 / self.power)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "inputs": self.inputs,
                "output_index": self.output_index,
                "ord": "inf" if np.isinf(self.ord) else int(self.ord),
                "power": self.power,
                "training": self.training,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfconstrain")
class SpectralNorm(Constraint):
    """Bound on the spectral norm (largest singular value) of a weight.

    `c = σ_max(W)` with `W` the layer's weight reshaped to a matrix
    `(-1, last_dim)` (for a `Conv2D` kernel `(kh, kw, c_in, c_out)`, the
    `(kh·kw·c_in, c_out)` matrix; the operator norm of the convolution
    itself is at most `sqrt(kh·kw)` times this value). `σ_max` is computed
    exactly by SVD, and its gradient is `u₁·v₁ᵀ` (the leading singular
    vectors, held constant): `c = u₁ᵀ·W·v₁`. The value depends on the
    weights only, so dataset-level values are exact.

    The product of the layers' spectral norms bounds the Lipschitz constant
    of a network with 1-Lipschitz activations; constrain each layer with its
    own `SpectralNorm`. The SVD costs `O(m·n·min(m, n))` per step.

    Example:

    ```python
    dense = keras.layers.Dense(32, activation="relu")
    ...
    model.add_constraint(tfc.constraints.SpectralNorm(dense) <= 1.0)
    model.add_constraint(tfc.constraints.SpectralNorm("dense_1", bound=1.0))
    ```

    Args:
        layer: A layer, or the name of a layer of the model.
        kind: String. Defaults to `"<="`.
        bound: Optional float, the bound on `σ_max`. Defaults to `None`
            (unbound: state it by comparison, `<= 1.0`).
        weight: String. The layer attribute holding the weight. Defaults to
            `"kernel"`.
        name: String. Defaults to `"<layer name>_spectral_norm"` (the
            class's name, qualified by the layer, so that every layer can
            have its own).
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float >= 0. Defaults to `1e-4`.
    """

    def __init__(
        self,
        layer: keras.layers.Layer | str,
        *,
        kind: str = "<=",
        bound: float | None = None,
        weight: str = "kernel",
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        if not isinstance(layer, (str, keras.layers.Layer)):
            raise TypeError(
                f"Constraint '{name or 'spectral_norm'}': `layer` must be a "
                f"layer or a layer name, got {layer!r}."
            )
        layer_name = layer if isinstance(layer, str) else layer.name
        super().__init__(
            kind=kind,
            bound=bound,
            name=name or f"{layer_name}_spectral_norm",
            proxy=proxy,
            tolerance=tolerance,
        )
        if self.bound is not None and self.shape != ():
            raise ValueError(
                f"Constraint '{self.name}': the bound must be a scalar, got "
                f"shape {self.shape}."
            )
        self.layer_name = layer_name
        self.weight = weight
        self._layer = None if isinstance(layer, str) else layer

    def _find_layer(self, model) -> keras.layers.Layer:
        if self._layer is not None:
            return self._layer
        if model is not None:
            for layer in _keras_compat.flatten_layers(model):
                if layer.name == self.layer_name:
                    self._layer = layer
                    return layer
        raise ValueError(
            f"Constraint '{self.name}': no layer named '{self.layer_name}' "
            "in the model."
        )

    def matrix(self, model=None) -> tf.Tensor:
        """The constrained weight as a float32 matrix `(-1, last_dim)`."""
        layer = self._find_layer(model)
        value = getattr(layer, self.weight, None)
        if value is None:
            raise ValueError(
                f"Constraint '{self.name}': layer '{layer.name}' has no "
                f"weight '{self.weight}' (is it built?)."
            )
        value = tf.cast(tf.convert_to_tensor(value), tf.float32)
        if value.shape.rank < 2:
            raise ValueError(
                f"Constraint '{self.name}': weight '{self.weight}' of layer "
                f"'{layer.name}' has shape {tuple(value.shape)}; a matrix "
                "(rank >= 2) is needed."
            )
        return tf.reshape(value, [-1, value.shape[-1]])

    def call(self, batch: Batch) -> tf.Tensor:
        matrix = self.matrix(batch.model)
        _, u, v = tf.linalg.svd(matrix)
        u1 = tf.stop_gradient(u[:, 0])
        v1 = tf.stop_gradient(v[:, 0])
        return tf.tensordot(u1, tf.linalg.matvec(matrix, v1), axes=1)

    def get_config(self) -> dict:
        config = super().get_config()
        layer = self.layer_name
        if copying() and self._layer is not None:
            layer = self._layer
        config.update({"layer": layer, "weight": self.weight})
        return config


@keras.saving.register_keras_serializable(package="tfconstrain")
class Monotonicity(Constraint):
    """Shape restriction: the output is monotone in chosen input features.

    For feature `j` with direction `s_j` (`+1` increasing, `-1`
    decreasing), the value is the sample-weighted mean of the negative part
    of the directional partial derivative,

        c_j = Σ_i w_i · max(0, −s_j · ∂f(x_i)/∂x_ij) / Σ_i w_i,

    constrained by `c_j <= bound` (`bound = 0`, the default: no example may
    have a derivative of the wrong sign). It is penalty-free: no coefficient
    trades monotonicity against the loss; the multiplier grows until the
    restriction holds. With several features the constraint is a vector
    (one multiplier per feature, labelled by `entry_labels`). The
    statistics `(Σ w·c, Σ w)` are exact over a dataset.

    Example:

    ```python
    # Output increasing in column 0 (exactly: bound 0).
    model.add_constraint(tfc.constraints.Monotonicity(0))
    # Price increases with size (column 0), decreases with age (column 3).
    model.add_constraint(tfc.constraints.Monotonicity(
        [0, 3], ["increasing", "decreasing"]) <= 1e-3)
    ```

    Args:
        features: Int, string, or a list of them. Ints are columns of the
            (2-D) input tensor, or of the dict input `input_name`; strings
            name dict inputs with one value per example.
        directions: `"increasing"` / `"decreasing"` (or `+1` / `-1`), one for
            all features or one per feature. Defaults to `"increasing"`.
        kind: Must be `"<="`. Defaults to `"<="`.
        bound: Float or 1-D array (one per feature), >= 0. Defaults to
            `0.0`.
        input_name: Optional string. For dict inputs, the input holding the
            integer feature columns.
        output_index: Optional int. The output column (required for
            outputs with several columns).
        training: Bool. Mode of the extra forward pass. Defaults to `False`.
        name: String. Defaults to `"monotonicity"`.
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float >= 0. Defaults to `1e-4`.
    """

    def __init__(
        self,
        features: Any,
        directions: Any = "increasing",
        *,
        kind: str = "<=",
        bound: Any = 0.0,
        input_name: str | None = None,
        output_index: int | None = None,
        training: bool = False,
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        label = name or default_name(self)
        if normalize_kind(kind, label) != "<=":
            raise ValueError(
                f"Constraint '{label}': monotonicity bounds the mean "
                f"wrong-sign derivative above; `kind` must be '<=', got "
                f"{kind!r}."
            )
        features = _as_list(features)
        if not features:
            raise ValueError(f"Constraint '{label}': no features given.")
        if isinstance(directions, (str, int)):
            directions = [directions] * len(features)
        directions = list(directions)
        if len(directions) != len(features):
            raise ValueError(
                f"Constraint '{label}': {len(directions)} directions for "
                f"{len(features)} features."
            )
        signs = []
        for direction in directions:
            if direction not in DIRECTIONS:
                raise ValueError(
                    f"Constraint '{label}': direction must be 'increasing' "
                    f"or 'decreasing' (or +1/-1), got {direction!r}."
                )
            signs.append(DIRECTIONS[direction])
        if bound is not None and np.ndim(bound) == 0 and len(features) > 1:
            bound = np.full(len(features), float(bound))
        super().__init__(
            kind="<=", bound=bound, name=label, proxy=proxy, tolerance=tolerance
        )
        shape = () if len(features) == 1 else (len(features),)
        if self.bound is not None and self.shape != shape:
            raise ValueError(
                f"Constraint '{self.name}': the bound must be a scalar or "
                f"have one entry per feature ({len(features)}), got shape "
                f"{self.shape}."
            )
        self.features = [FeatureRef(f, input_name, self.name) for f in features]
        self.directions = [
            "increasing" if s > 0 else "decreasing" for s in signs
        ]
        self.signs = np.asarray(signs, np.float32)
        self.input_name = input_name
        self.output_index = output_index
        self.training = bool(training)

    @property
    def entry_labels(self) -> list[str] | None:
        """`"<feature> (<direction>)"` per feature (None: one feature)."""
        if len(self.features) == 1:
            return None
        return [
            f"{ref.feature} ({direction})"
            for ref, direction in zip(self.features, self.directions)
        ]

    def derivatives(self, batch: Batch) -> tf.Tensor:
        """`∂f(x_i)/∂x_ij` for each example and feature, shape `(n, k)`."""
        x = batch.x
        tensors = {}
        for ref in self.features:
            tensors.setdefault(ref.key(x), ref.tensor(x))
        keys = list(tensors)
        with tf.GradientTape() as tape:
            tape.watch([tensors[k] for k in keys])
            y = model_outputs(
                batch.model, x, self.training, self.output_index, self.name
            )
            total = tf.reduce_sum(scalar_output(y, self.name))
        grads = tape.gradient(
            total,
            [tensors[k] for k in keys],
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        by_key = dict(zip(keys, grads))
        columns = [
            tf.cast(ref.column(by_key[ref.key(x)]), tf.float32)
            for ref in self.features
        ]
        return tf.stack(columns, axis=1)

    def call(self, batch: Batch) -> tf.Tensor:
        return self.result(self.statistics(batch))

    def statistics(self, batch: Batch) -> tuple:
        derivatives = self.derivatives(batch)
        negative = tf.nn.relu(-derivatives * tf.constant(self.signs))
        if self.shape == ():
            negative = negative[:, 0]
        weights = example_weights(batch, tf.shape(derivatives)[0])
        return (weighted_sum(weights, negative), tf.reduce_sum(weights))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "features": [ref.config() for ref in self.features],
                "directions": list(self.directions),
                "input_name": self.input_name,
                "output_index": self.output_index,
                "training": self.training,
            }
        )
        return config
