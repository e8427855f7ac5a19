"""Per-sample (indexed) constraints: one constraint, and one multiplier, per
training example, as in feasible learning (`loss_i <= ε` for every i)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import FunctionConstraint
from tfconstrain.constraint import default_name


@keras.saving.register_keras_serializable(package="tfconstrain")
class PerSampleConstraint(FunctionConstraint):
    """`c_i(θ) <kind> bound` for every training example `i`.

    `fn(batch)` returns one value per example of the batch (shape `(B,)`),
    and `batch.features[id_key]` holds the examples' integer ids in
    `[0, num_samples)`. The constraint has shape `(num_samples,)`, so
    `model.multipliers[name]` holds one multiplier per example.

    Lagrangian term: `(1/N) Σ_i λ_i · v_i`, estimated on a batch by the mean
    of `λ_i · v_i` over its examples (the same scaling as Keras' mean loss,
    so multipliers are O(1)). Dual step: only the entries of examples seen
    in the batch move, `λ_i ← [λ_i + η · v_i]₊`; all other entries (and
    their dual-optimizer state) are untouched.

    A training step costs O(batch size), not O(N): the batch's ids, values
    and weights are all-gathered across replicas (dense tensors, no sparse
    all-reduce), every replica gathers the multipliers of those ids, and
    writes back only those entries. Epoch logs report the example with the
    largest violation over the epoch (the mean of its values if it was seen
    more than once). An id should appear at most once per global batch:
    if it appears twice, one of its two dual updates is kept.

    Dual optimizers: gradient ascent, the classical augmented-Lagrangian
    step and `NuPI` read and write only the batch's entries; a Keras
    optimizer sees a violation that is zero elsewhere, which is exact
    without momentum and rejected with it.

    Entry `i` is example id `i` (`entry_labels` is `None`).

    Example:

    ```python
    def per_example_loss(batch):
        return keras.losses.binary_crossentropy(batch.y, batch.y_pred)

    model.add_constraint(tfc.constraints.PerSampleConstraint(
        per_example_loss, num_samples=len(x), name="fit_each") <= 0.1)
    model.fit({"features": x, "sample_id": np.arange(len(x))}, y)
    ```

    Args:
        fn: Callable `fn(batch) -> Tensor` of shape `(B,)`.
        num_samples: Int. Number of examples (ids are `0 .. N-1`).
        kind: Optional string. `"<="`, `">="` or `"=="`. Defaults to `None`
            (unbound: state it by comparison).
        bound: Optional float, the same bound for every example. Defaults
            to `None` (unbound).
        id_key: String. Side-information key of the ids. Defaults to
            `"sample_id"`.
        name: String. Defaults to `fn.__name__` (`"per_sample_constraint"`
            for a lambda).
        proxy: Optional differentiable callable returning per-example
            values, used by the primal step instead of `fn`.
        tolerance: Float. Defaults to `1e-4`.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        num_samples: int,
        kind: str | None = None,
        bound: float | None = None,
        id_key: str = "sample_id",
        name: str | None = None,
        proxy: Callable | None = None,
        tolerance: float = 1e-4,
    ):
        label = name
        if label is None:
            label = getattr(fn, "__name__", "<lambda>")
            if label == "<lambda>":
                label = default_name(self)
        if not callable(fn):
            raise TypeError(
                f"Constraint '{label}': `fn` must be callable, got {fn!r}."
            )
        if bound is not None and np.ndim(bound) != 0:
            raise ValueError(
                f"Constraint '{label}': the bound of a per-sample constraint "
                f"is one float shared by all examples, got {bound!r}."
            )
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(
                f"Constraint '{label}': `num_samples` must be a positive "
                f"int, got {num_samples!r}."
            )
        self.num_samples = int(num_samples)
        self.id_key = id_key
        self.scalar_bound = None if bound is None else float(bound)
        super().__init__(
            fn,
            kind,
            None
            if bound is None
            else np.full((self.num_samples,), bound, np.float32),
            name=label,
            proxy=proxy,
            tolerance=tolerance,
        )

    def statistics_shapes(self) -> tuple:
        return ((self.num_samples,), (self.num_samples,))

    def proxy_statistics_shapes(self) -> tuple:
        return self.statistics_shapes()

    def statistics(self, batch: Batch):
        """Dense `(N,)` statistics (used by reports, not by training)."""
        return self._dense_statistics(batch, proxy=False)

    def proxy_statistics(self, batch: Batch):
        return self._dense_statistics(batch, proxy=True)

    def proxy_result(self, statistics):
        return self.result(statistics)

    indexed = True

    def examples(self, batch: Batch, proxy: bool = False):
        """`(ids, values, weights)` of the batch's examples, each `(B,)`.

        With `proxy=True`, the values of the primal step: the user's
        `proxy` when one was given, else `fn`. With `proxy=False`, those of
        `fn` (the dual step). Values are differentiable.
        """
        function = self.proxy if proxy and self.proxy is not None else self.fn
        values = self._per_example(
            function(batch), "proxy" if proxy else "value"
        )
        ids = tf.reshape(tf.cast(batch.features[self.id_key], tf.int32), [-1])
        if batch.sample_weight is None:
            weights = tf.ones_like(values)
        else:
            weights = tf.reshape(tf.cast(batch.sample_weight, tf.float32), [-1])
        return ids, values, weights

    def example_violation(self, values: tf.Tensor) -> tf.Tensor:
        """Per-example signed violation `v_i` for values of shape `(B,)`."""
        if self.kind == ">=":
            return self.scalar_bound - values
        return values - self.scalar_bound

    def _per_example(self, values: Any, what: str) -> tf.Tensor:
        values = tf.convert_to_tensor(values)
        if not values.dtype.is_floating:
            raise TypeError(
                f"Constraint '{self.name}': the {what} function must return "
                f"float values, got dtype {values.dtype.name}."
            )
        if values.shape.rank == 2 and values.shape[-1] == 1:
            values = tf.squeeze(values, -1)
        if values.shape.rank != 1:
            raise ValueError(
                f"Constraint '{self.name}': the {what} function must return "
                f"one value per example (shape (batch,)), got shape "
                f"{values.shape}."
            )
        return tf.cast(values, tf.float32)

    def _dense_statistics(self, batch: Batch, proxy: bool):
        ids, values, weights = self.examples(batch, proxy)
        ids = ids[:, None]
        shape = [self.num_samples]
        return (
            tf.scatter_nd(ids, weights * values, shape),
            tf.scatter_nd(ids, weights, shape),
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            bound=self.scalar_bound,
            num_samples=self.num_samples,
            id_key=self.id_key,
        )
        return config
