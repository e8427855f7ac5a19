"""`ConstraintMetric`: dataset-level accumulation of a constraint's statistics.

One metric per constraint accumulates the constraint's summable statistics
over an epoch (or an `evaluate` run). Its variables are Keras metric variables
(sync-on-read, summed across replicas when read outside the step), so the
epoch-level value is the exact value over the whole dataset, independent of
batch size and replica count.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.constraint import Constraint


class ConstraintMetric(keras.metrics.Metric):
    """Accumulates one constraint's statistics and reports its log keys.

    `result()` returns the constraint's log entries:

    - `NAME`: the value (for vectors, the entry with the largest violation),
    - `NAME_violation`: `max(0, v)` (`|v|` for equalities), max over entries,
    - `NAME_multiplier`: the multiplier (mean over entries),
    - `NAME_penalty`: the penalty coefficient, when the formulation has one.

    Args:
        constraint: The `tfc.Constraint`.
        multiplier: Callable returning the multiplier variable.
        penalty: Callable returning the penalty variable, or `None`.
    """

    def __init__(
        self,
        constraint: Constraint,
        multiplier: Callable,
        penalty: Callable | None = None,
    ):
        super().__init__(name=constraint.name, dtype="float32")
        self._constraint = constraint
        self._multiplier = multiplier
        self._penalty = penalty
        if constraint.indexed:
            # Updated sparsely with all-gathered examples, identically on
            # every replica: mirrored (on-write) variables, not sync-on-read
            # ones (which have no scatter updates).
            self.totals = [
                keras.Variable(
                    tf.zeros(shape, tf.float32),
                    trainable=False,
                    dtype="float32",
                    name=f"statistic_{i}",
                )
                for i, shape in enumerate(constraint.statistics_shapes())
            ]
        else:
            self.totals = [
                self.add_variable(
                    shape=shape,
                    initializer="zeros",
                    dtype="float32",
                    name=f"statistic_{i}",
                )
                for i, shape in enumerate(constraint.statistics_shapes())
            ]

    def set_penalty(self, penalty: Callable | None) -> None:
        self._penalty = penalty

    def update_state(self, statistics) -> None:
        for total, statistic in zip(self.totals, statistics):
            total.assign_add(tf.cast(statistic, total.dtype))

    def update_indexed(self, indices, weighted_values, weights) -> None:
        """Adds examples' weighted values and weights at their indices."""
        self.totals[0].value.scatter_add(
            tf.IndexedSlices(weighted_values, indices)
        )
        self.totals[1].value.scatter_add(tf.IndexedSlices(weights, indices))

    def result(self) -> dict:
        name = self._constraint.name
        constraint = self._constraint
        totals = tuple(tf.convert_to_tensor(t) for t in self.totals)
        value = constraint.result(totals)
        signed = constraint.violation(value)
        violation = constraint.positive_violation(signed)
        if value.shape.rank:
            # Entries without data are left out; the others are ranked by
            # signed violation, so a satisfied vector constraint reports
            # the entry closest to its bound (e.g. the largest gap).
            ranking = tf.abs(signed) if constraint.is_equality else signed
            valid = constraint.valid(totals)
            if valid is not None:
                ranking = tf.where(
                    valid, ranking, tf.fill(tf.shape(ranking), -np.inf)
                )
                violation = tf.where(valid, violation, tf.zeros_like(violation))
            worst = tf.argmax(ranking)
            value = tf.gather(value, worst)
            violation = tf.reduce_max(violation)
        logs = {
            name: value,
            f"{name}_violation": violation,
            f"{name}_multiplier": tf.reduce_mean(
                tf.convert_to_tensor(self._multiplier())
            ),
        }
        if self._penalty is not None:
            logs[f"{name}_penalty"] = tf.convert_to_tensor(self._penalty())
        return logs
