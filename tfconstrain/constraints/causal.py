"""Counterfactual invariance: predictions must not depend on a feature.

`CounterfactualInvariance` compares the model's predictions on each example
with its predictions on the same example after an intervention on a named
input feature (`do(A = a')`, everything else held fixed), and bounds the mean
absolute change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import default_name
from tfconstrain.constraint import normalize_kind
from tfconstrain.constraint import serialize_callable
from tfconstrain.constraints.robustness import FeatureRef
from tfconstrain.constraints.robustness import example_weights
from tfconstrain.constraints.robustness import model_outputs
from tfconstrain.constraints.robustness import weighted_sum


@keras.saving.register_keras_serializable(package="tfconstrain")
class CounterfactualInvariance(Constraint):
    """Predictions change by at most `bound` under an intervention.

    For each example `x_i` and each counterfactual `x'_i` (the same example
    with feature `A` set by the intervention), the change is the mean over
    output columns of `|f(x_i) − f(x'_i)|`. With several interventions
    (e.g. every level of a categorical feature), changes are averaged over
    them. The constraint is

        c = Σ_i w_i · mean |f(x_i) − f(x'_i)| / Σ_i w_i  <=  bound,

    with statistics `(Σ w·Δ, Σ w)`, exact over a dataset. Both predictions
    come from one extra forward pass on the concatenated batch `[x; x']`
    (with `training=False` by default, so dropout does not count as a
    change), and `c` is differentiable in the weights.

    The intervention changes only the named input. When other inputs are
    causal descendants of `A`, pass a callable `intervention` that rewrites
    the whole input (e.g. from a structural causal model) with
    `feature=None`.

    Example:

    ```python
    # The prediction may move by at most 0.02 when the binary column 4
    # ("group") is flipped.
    model.add_constraint(
        tfc.constraints.CounterfactualInvariance(4) <= 0.02)
    # Set column 2 to each of -1 and 2:
    model.add_constraint(tfc.constraints.CounterfactualInvariance(
        2, intervention=[-1.0, 2.0], bound=0.02))
    ```

    Args:
        feature: Int (a column of the 2-D input tensor, or of the dict input
            `input_name`), string (a dict input), or `None` (the
            intervention receives and returns the whole input).
        kind: Must be `"<="`. Defaults to `"<="`.
        bound: Optional float >= 0, the bound on the mean absolute change.
            Defaults to `None` (unbound: state it by comparison, `<= b`).
        intervention: `"flip"` (`a' = 1 − a`, for binary features), a float
            or a list of floats (`a'` set to each value), or a callable
            `fn(values) -> new values` (`fn(x) -> x'` with `feature=None`).
            Defaults to `"flip"`.
        input_name: Optional string. For dict inputs, the input holding the
            integer feature column.
        output_index: Optional int. Compare this output column only.
            Defaults to all columns.
        training: Bool. Mode of the extra forward pass. Defaults to `False`.
        name: String. Defaults to `"counterfactual_invariance"`.
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float >= 0. Defaults to `1e-4`.
    """

    def __init__(
        self,
        feature: int | str | None,
        *,
        kind: str = "<=",
        bound: float | None = None,
        intervention: Any = "flip",
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
                f"Constraint '{label}': a change of predictions is bounded "
                f"above; `kind` must be '<=', got {kind!r}."
            )
        super().__init__(
            kind="<=", bound=bound, name=label, proxy=proxy, tolerance=tolerance
        )
        if self.bound is not None and (
            self.shape != () or float(self.bound) < 0
        ):
            raise ValueError(
                f"Constraint '{self.name}': the bound must be a scalar >= 0, "
                f"got {self.bound.tolist()!r}."
            )
        self.interventions = self._check_intervention(feature, intervention)
        self.intervention = intervention
        self.feature = (
            None
            if feature is None
            else FeatureRef(feature, input_name, self.name)
        )
        self.input_name = input_name
        self.output_index = output_index
        self.training = bool(training)

    def _check_intervention(self, feature, intervention) -> list[Callable]:
        """The interventions as functions of the feature values (or of x)."""
        if callable(intervention):
            return [intervention]
        if feature is None:
            raise ValueError(
                f"Constraint '{self.name}': with `feature=None` the "
                "intervention must be a callable `fn(x) -> x'`."
            )
        if isinstance(intervention, str):
            if intervention != "flip":
                raise ValueError(
                    f"Constraint '{self.name}': unknown intervention "
                    f"{intervention!r}; expected 'flip', a value, a list of "
                    "values or a callable."
                )
            return [lambda values: 1 - values]
        values = np.atleast_1d(np.asarray(intervention, dtype=np.float64))
        if (
            values.ndim != 1
            or values.size == 0
            or not np.all(np.isfinite(values))
        ):
            raise ValueError(
                f"Constraint '{self.name}': the intervention values must be "
                f"finite numbers, got {intervention!r}."
            )
        return [
            (lambda values, v=float(v): tf.fill(tf.shape(values), v))
            for v in values
        ]

    def counterfactuals(self, x: Any) -> list:
        """The intervened inputs `x'`, one per intervention."""
        if self.feature is None:
            return [fn(x) for fn in self.interventions]
        return [
            self.feature.replace(
                x, lambda values, fn=fn: fn(tf.cast(values, tf.float32))
            )
            for fn in self.interventions
        ]

    def changes(self, batch: Batch) -> tf.Tensor:
        """Per-example mean absolute change `Δ_i`, shape `(n,)`."""
        x = batch.x
        variants = [x, *self.counterfactuals(x)]
        stacked = tf.nest.map_structure(
            lambda *leaves: tf.concat(leaves, axis=0), *variants
        )
        y = model_outputs(
            batch.model, stacked, self.training, self.output_index, self.name
        )
        size = tf.shape(tf.nest.flatten(x)[0])[0]
        y = tf.reshape(y, [len(variants), size, -1])
        factual, counterfactual = y[0], y[1:]
        return tf.reduce_mean(tf.abs(counterfactual - factual), axis=[0, 2])

    def call(self, batch: Batch) -> tf.Tensor:
        return self.result(self.statistics(batch))

    def statistics(self, batch: Batch) -> tuple:
        changes = self.changes(batch)
        weights = example_weights(batch, tf.shape(changes)[0])
        return (weighted_sum(weights, changes), tf.reduce_sum(weights))

    def get_config(self) -> dict:
        config = super().get_config()
        intervention = self.intervention
        if callable(intervention):
            intervention = serialize_callable(intervention)
        elif isinstance(intervention, np.ndarray):
            intervention = intervention.tolist()
        config.update(
            {
                "feature": None
                if self.feature is None
                else self.feature.config(),
                "intervention": intervention,
                "input_name": self.input_name,
                "output_index": self.output_index,
                "training": self.training,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> CounterfactualInvariance:
        config = dict(config)
        if isinstance(config.get("intervention"), dict):
            config["intervention"] = keras.saving.deserialize_keras_object(
                config["intervention"]
            )
        return super().from_config(config)
