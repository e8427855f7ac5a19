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
        # Dense constraints sum their statistics into the model's shared
        # `StatisticsAccumulator` (one op per step for all of them).
        self.accumulator: StatisticsAccumulator | None = None
        self._indexed_totals = None
        if constraint.indexed:
            # Updated sparsely with all-gathered examples, identically on
            # every replica: mirrored (on-write) variables, not sync-on-read
            # ones (which have no scatter updates).
            self._indexed_totals = [
                keras.Variable(
                    tf.zeros(shape, tf.float32),
                    trainable=False,
                    dtype="float32",
                    name=f"statistic_{i}",
                )
                for i, shape in enumerate(constraint.statistics_shapes())
            ]

    @property
    def totals(self) -> list:
        """The summed statistics (variables, or the accumulator's slices)."""
        if self._indexed_totals is not None:
            return self._indexed_totals
        return self.accumulator.totals(self._constraint.name)

    def set_penalty(self, penalty: Callable | None) -> None:
        self._penalty = penalty

    def update_state(self, statistics) -> None:
        """Adds one batch's statistics (dense constraints)."""
        self.accumulator.update_state({self._constraint.name: statistics})

    def reset_state(self) -> None:
        for total in self._indexed_totals or ():
            total.assign(tf.zeros_like(total))

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


class StatisticsAccumulator(keras.metrics.Metric):
    """The summed statistics of all dense constraints, as one vector.

    Each step adds every constraint's batch statistics with one
    `assign_add` on one sync-on-read variable (summed across replicas when
    read), instead of one per statistic; `ConstraintMetric.totals` reads a
    constraint's slices. Reset with the other metrics at each epoch. It
    logs nothing itself.

    Args:
        constraints: The dense (not per-example) constraints, in order.
    """

    def __init__(self, constraints: list[Constraint]):
        super().__init__(name="constraint_statistics", dtype="float32")
        self.layout: dict[str, list] = {}
        offset = 0
        for constraint in constraints:
            entries = []
            for shape in constraint.statistics_shapes():
                size = int(np.prod(shape, dtype=np.int64))
                entries.append((offset, size, tuple(shape)))
                offset += size
            self.layout[constraint.name] = entries
        self.total = self.add_variable(
            shape=(offset,),
            initializer="zeros",
            dtype="float32",
            name="total",
        )

    def update_state(self, statistics: dict) -> None:
        """Adds `name -> statistics` of one batch (missing names add 0)."""
        parts = []
        for name, entries in self.layout.items():
            values = statistics.get(name)
            for i, (_, size, _) in enumerate(entries):
                if values is None:
                    parts.append(tf.zeros([size], tf.float32))
                else:
                    parts.append(
                        tf.reshape(tf.cast(values[i], tf.float32), [size])
                    )
        self.total.assign_add(
            tf.concat(parts, 0) if len(parts) > 1 else parts[0]
        )

    def totals(self, name: str) -> list:
        """The summed statistics of constraint `name` (tensors)."""
        value = tf.convert_to_tensor(self.total)
        return [
            tf.reshape(value[offset : offset + size], shape)
            for offset, size, shape in self.layout[name]
        ]

    def result(self) -> dict:
        return {}
