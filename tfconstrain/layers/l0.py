"""L0 hard-concrete gates with a constrained density (controlled sparsity).

Each output unit (Dense) or filter (Conv2D) is multiplied by a gate
`z ∈ [0, 1]` (Louizos, Welling & Kingma, 2018, "Learning Sparse Neural
Networks through L0 Regularization"). Gate `i` has one parameter
`log α_i`; with temperature `β` and stretch `(γ, ζ)`:

    training:  u ~ U(0, 1),
               s = sigmoid((log u − log(1 − u) + log α) / β),
               z = clip(s · (ζ − γ) + γ, 0, 1)
    inference: ẑ = clip(sigmoid(log α) · (ζ − γ) + γ, 0, 1)

so gates are exactly 0 (or 1) with positive probability, and

    P(z_i ≠ 0) = sigmoid(log α_i − β · log(−γ/ζ)),
    ẑ_i ≠ 0   ⟺  log α_i > log(−γ/ζ).

Instead of a penalty `λ·E[‖z‖₀]` with a hand-tuned `λ`, the layer registers
the constraint `density <kind> target_density`, whose multiplier is learned.
Two densities are involved:

- the *expected density* `E = mean_i P(z_i ≠ 0)`, smooth in `log α`;
- the *inference density* `D = mean_i 1[ẑ_i ≠ 0]`, the fraction of units the
  deployed layer keeps (piecewise constant in `log α`).

By default (`density_measure="inference"`) the constraint's value is `D` and
its gradient is `∂E/∂log α` (a straight-through estimator:
`D + E − stop_gradient(E)`): the dual step, the logs, the reports and the
penalty terms of `tfc.AugmentedLagrangian` see the density of the pruned
model, while the primal step moves the gates along the expected density.
With `density_measure="expected"`, value and gradient are those of `E`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.layers.registration import LayerConstraintMixin

TEMPERATURE = 2.0 / 3.0
STRETCH = (-0.1, 1.1)
INITIAL_KEEP_PROBABILITY = 0.9
DENSITY_MEASURES = ("inference", "expected")
_EPSILON = 1e-6


class L0Density(Constraint):
    """The density constraint of an L0-gated layer.

    With `measure="inference"`, its value is the inference density `D` (the
    fraction of non-zero inference gates) and its gradient that of the
    expected density `E`: `c = D + E − stop_gradient(E)`. With
    `measure="expected"`, `c = E`. Both depend on the weights only, so
    dataset-level values are exact.

    Args:
        layer: The gated layer (`L0Dense` or `L0Conv2D`).
        kind: String. `"<="`, `">="` or `"=="`.
        bound: Float in `[0, 1]`, the target density.
        measure: String. `"inference"` or `"expected"`. Defaults to
            `"inference"`.
        name: String. Defaults to the class name.
        tolerance: Float >= 0. Defaults to `1e-4`.
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        *,
        kind: str,
        bound: Any,
        measure: str = "inference",
        name: str | None = None,
        tolerance: float = 1e-4,
    ):
        super().__init__(kind=kind, bound=bound, name=name, tolerance=tolerance)
        if self.shape != () or not 0.0 <= float(self.bound) <= 1.0:
            raise ValueError(
                f"Constraint '{self.name}': the target density must be a "
                f"float in [0, 1], got {self.bound.tolist()!r}."
            )
        if measure not in DENSITY_MEASURES:
            raise ValueError(
                f"Constraint '{self.name}': `density_measure` must be one of "
                f"{DENSITY_MEASURES}, got {measure!r}."
            )
        self.layer = layer
        self.measure = measure

    def call(self, batch: Batch) -> tf.Tensor:
        expected = self.layer.expected_density()
        if self.measure == "expected":
            return expected
        return self.layer.density() + (expected - tf.stop_gradient(expected))

    def get_config(self) -> dict:
        raise NotImplementedError(
            f"Constraint '{self.name}' belongs to the layer "
            f"'{self.layer.name}'; it is saved and restored with the layer's "
            "config, not on its own."
        )


class HardConcreteGatesMixin(LayerConstraintMixin):
    """Hard-concrete gates on the last (channels) axis of a layer's output.

    Used by `L0Dense` and `L0Conv2D`; a subclass calls `_init_gates` in
    `__init__`, `_build_gates(n)` in `build` and `_apply_gates` in `call`.
    """

    def _init_gates(
        self,
        target_density,
        density_kind,
        density_measure,
        gate_initializer,
        temperature,
        stretch,
        seed,
        multiplier_init,
        density_tolerance,
    ):
        gamma, zeta = (float(s) for s in stretch)
        if not gamma < 0.0 < 1.0 < zeta:
            raise ValueError(
                f"Layer '{self.name}': `stretch` must be (γ, ζ) with γ < 0 "
                f"and ζ > 1, got {stretch!r}."
            )
        if not float(temperature) > 0.0:
            raise ValueError(
                f"Layer '{self.name}': `temperature` must be > 0, got "
                f"{temperature!r}."
            )
        if density_measure not in DENSITY_MEASURES:
            raise ValueError(
                f"Layer '{self.name}': `density_measure` must be one of "
                f"{DENSITY_MEASURES}, got {density_measure!r}."
            )
        self.target_density = (
            None if target_density is None else float(target_density)
        )
        self.density_kind = density_kind
        self.density_measure = density_measure
        self.temperature = float(temperature)
        self.stretch = (gamma, zeta)
        self.seed = seed
        self.multiplier_init = multiplier_init
        self.density_tolerance = float(density_tolerance)
        if gate_initializer is None:
            gate_initializer = keras.initializers.RandomNormal(
                mean=math.log(
                    INITIAL_KEEP_PROBABILITY / (1.0 - INITIAL_KEEP_PROBABILITY)
                ),
                stddev=0.01,
                seed=seed,
            )
        self.gate_initializer = keras.initializers.get(gate_initializer)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.density_constraint = None
        if self.target_density is not None:
            self.density_constraint = self.add_constraint(
                L0Density(
                    self,
                    kind=density_kind,
                    bound=self.target_density,
                    measure=density_measure,
                    name=f"{self.name}_density",
                    tolerance=self.density_tolerance,
                ),
                multiplier_init=multiplier_init,
            )

    def _build_gates(self, count: int) -> None:
        self.log_alpha = self.add_weight(
            name="log_alpha",
            shape=(count,),
            initializer=self.gate_initializer,
            trainable=True,
            autocast=False,
        )

    def _apply_gates(self, outputs, training, channels_axis: int = -1):
        """Multiplies `outputs` by the gates (sampled per example if training).

        Args:
            outputs: The layer's (activated) outputs.
            training: Whether to sample the gates (one draw per example and
                gate) or use the inference gates.
            channels_axis: Int. The axis of the gated units.
        """
        rank = len(outputs.shape)
        axis = channels_axis % rank
        gate_shape = [1] * rank
        gate_shape[axis] = -1
        if training:
            log_alpha = tf.reshape(
                tf.convert_to_tensor(self.log_alpha), gate_shape
            )
            noise_shape = tf.tensor_scatter_nd_update(
                tf.ones([rank], tf.int32),
                [[0], [axis]],
                tf.stack([tf.shape(outputs)[0], tf.shape(self.log_alpha)[0]]),
            )
            gates = self._sample(log_alpha, noise_shape)
        else:
            gates = tf.reshape(self.gate_values(), gate_shape)
        return outputs * tf.cast(gates, outputs.dtype)

    def _sample(self, log_alpha, noise_shape) -> tf.Tensor:
        """`clip(sigmoid((log u − log(1−u) + log α)/β)·(ζ−γ) + γ, 0, 1)`."""
        gamma, zeta = self.stretch
        u = keras.random.uniform(
            noise_shape,
            minval=_EPSILON,
            maxval=1.0 - _EPSILON,
            seed=self.seed_generator,
        )
        logits = tf.math.log(u) - tf.math.log(1.0 - u) + log_alpha
        s = tf.sigmoid(logits / self.temperature)
        return tf.clip_by_value(s * (zeta - gamma) + gamma, 0.0, 1.0)

    # Keras' Dense and Conv layers save a fixed list of their own variables;
    # the gate parameters are added to it.
    def save_own_variables(self, store):
        super().save_own_variables(store)
        if self.built:
            store["log_alpha"] = self.log_alpha

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.built and "log_alpha" in store:
            self.log_alpha.assign(store["log_alpha"])

    # --------------------------------------------------------------- public
    def gate_values(self) -> tf.Tensor:
        """The inference gates `clip(sigmoid(log α)·(ζ − γ) + γ, 0, 1)`."""
        gamma, zeta = self.stretch
        log_alpha = tf.convert_to_tensor(self.log_alpha)
        return tf.clip_by_value(
            tf.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0
        )

    def nonzero_probabilities(self) -> tf.Tensor:
        """`P(z_i ≠ 0) = sigmoid(log α_i − β·log(−γ/ζ))` for each gate."""
        gamma, zeta = self.stretch
        shift = self.temperature * math.log(-gamma / zeta)
        return tf.sigmoid(tf.convert_to_tensor(self.log_alpha) - shift)

    def expected_density(self) -> tf.Tensor:
        """Mean over gates of `P(z_i ≠ 0)` (differentiable in `log α`)."""
        return tf.reduce_mean(self.nonzero_probabilities())

    def density(self) -> tf.Tensor:
        """Fraction of non-zero inference gates (units the layer keeps)."""
        return tf.reduce_mean(tf.cast(self.gate_values() > 0.0, tf.float32))

    def _gates_config(self) -> dict:
        return {
            "target_density": self.target_density,
            "density_kind": self.density_kind,
            "density_measure": self.density_measure,
            "gate_initializer": keras.initializers.serialize(
                self.gate_initializer
            ),
            "temperature": self.temperature,
            "stretch": list(self.stretch),
            "seed": self.seed,
            "multiplier_init": _as_list(self.multiplier_init),
            "density_tolerance": self.density_tolerance,
        }


@keras.saving.register_keras_serializable(package="tfconstrain")
class L0Dense(HardConcreteGatesMixin, keras.layers.Dense):
    """`Dense` layer whose units are switched off by L0 hard-concrete gates.

    The output of unit `i` is `z_i · activation(x·W + b)_i` with `z_i` a
    hard-concrete gate (sampled per example in training, deterministic at
    inference; see the module docstring for the equations). With
    `target_density`, the layer registers the constraint
    `density <density_kind> target_density` (named `"<layer name>_density"`)
    with the model that contains it: the primal step moves the gates through
    the expected density `mean_i P(z_i ≠ 0)`, while the dual step, logs and
    reports use the fraction of units whose inference gate is non-zero.

    Example:

    ```python
    inputs = keras.Input((64,))
    hidden = tfc.layers.L0Dense(
        64, activation="relu", target_density=0.5)(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy",
                  dual_optimizer=0.05)
    ```

    Args:
        units: Int. Number of units.
        activation: Activation function. Defaults to `None`.
        use_bias: Bool. Defaults to `True`.
        target_density: Optional float in `[0, 1]`. The constrained
            fraction of active units; `None` adds gates without constraint.
            Defaults to `None`.
        density_kind: String. `"=="` (density exactly `target_density`),
            `"<="` (a budget) or `">="`. Defaults to `"=="`.
        density_measure: String. `"inference"` (the constrained value is the
            fraction of non-zero inference gates, moved along the gradient
            of the expected density) or `"expected"` (the expected density).
            Defaults to `"inference"`.
        gate_initializer: Initializer of `log α`. Defaults to
            `RandomNormal(mean=log 9, stddev=0.01)`, i.e. keep probability
            0.9 in the underlying concrete distribution.
        temperature: Float > 0, `β`. Defaults to `2/3`.
        stretch: Pair `(γ, ζ)` with `γ < 0 < 1 < ζ`. Defaults to
            `(-0.1, 1.1)`.
        seed: Optional int, seed of the gate noise. Defaults to `None`.
        multiplier_init: Float. Initial multiplier of the density
            constraint. Defaults to `0.0`.
        density_tolerance: Float >= 0. Tolerance of the density constraint.
            Defaults to `1e-4`.
        **kwargs: Other `keras.layers.Dense` arguments.
    """

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        *,
        target_density: float | None = None,
        density_kind: str = "==",
        density_measure: str = "inference",
        gate_initializer: Any = None,
        temperature: float = TEMPERATURE,
        stretch: tuple = STRETCH,
        seed: int | None = None,
        multiplier_init: Any = 0.0,
        density_tolerance: float = 1e-4,
        **kwargs,
    ):
        super().__init__(
            units, activation=activation, use_bias=use_bias, **kwargs
        )
        self._init_gates(
            target_density,
            density_kind,
            density_measure,
            gate_initializer,
            temperature,
            stretch,
            seed,
            multiplier_init,
            density_tolerance,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._build_gates(self.units)

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        return self._apply_gates(outputs, bool(training))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._gates_config())
        return config


@keras.saving.register_keras_serializable(package="tfconstrain")
class L0Conv2D(HardConcreteGatesMixin, keras.layers.Conv2D):
    """`Conv2D` layer whose filters are switched off by L0 gates.

    Filter `i`'s output map is multiplied by the hard-concrete gate `z_i`
    (one draw per example and filter in training, deterministic at
    inference). With `target_density`, the layer registers the constraint
    `density <density_kind> target_density` on the fraction of filters it
    keeps, exactly as `L0Dense` does for units.

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    hidden = tfc.layers.L0Conv2D(
        16, 3, activation="relu", target_density=0.5)(inputs)
    outputs = keras.layers.Dense(10, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(hidden))
    model = tfc.ConstrainedModel(inputs, outputs)
    ```

    Args:
        filters: Int. Number of filters.
        kernel_size: Int or pair. Size of the convolution window.
        target_density: Optional float in `[0, 1]`, the constrained fraction
            of active filters. Defaults to `None`.
        density_kind: String. `"=="`, `"<="` or `">="`. Defaults to `"=="`.
        density_measure: String. `"inference"` or `"expected"`. Defaults to
            `"inference"`.
        gate_initializer: Initializer of `log α`. Defaults to
            `RandomNormal(mean=log 9, stddev=0.01)`.
        temperature: Float > 0. Defaults to `2/3`.
        stretch: Pair `(γ, ζ)`. Defaults to `(-0.1, 1.1)`.
        seed: Optional int. Defaults to `None`.
        multiplier_init: Float. Defaults to `0.0`.
        density_tolerance: Float >= 0. Defaults to `1e-4`.
        **kwargs: Other `keras.layers.Conv2D` arguments.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        *,
        target_density: float | None = None,
        density_kind: str = "==",
        density_measure: str = "inference",
        gate_initializer: Any = None,
        temperature: float = TEMPERATURE,
        stretch: tuple = STRETCH,
        seed: int | None = None,
        multiplier_init: Any = 0.0,
        density_tolerance: float = 1e-4,
        **kwargs,
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_gates(
            target_density,
            density_kind,
            density_measure,
            gate_initializer,
            temperature,
            stretch,
            seed,
            multiplier_init,
            density_tolerance,
        )

    def build(self, input_shape):
        super().build(input_shape)
        self._build_gates(self.filters)

    def call(self, inputs, training=None):
        outputs = super().call(inputs)
        axis = -1 if self.data_format == "channels_last" else 1
        return self._apply_gates(outputs, bool(training), axis)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self._gates_config())
        return config


def _as_list(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
