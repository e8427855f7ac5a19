"""`constraint_report`: every constraint evaluated over a whole dataset."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch


def as_dataset(data: Any, batch_size: int | None):
    """Turns what `evaluate` accepts into a batched `tf.data.Dataset`.

    Args:
        data: A `tf.data.Dataset` (used as is), a tuple `(x, y)` or
            `(x, y, sample_weight)` (`y` may be `None`), or `x` alone (array
            or dict of arrays).
        batch_size: Batch size for arrays. Defaults to 32.

    Returns:
        `(dataset, has_weights_without_y)`: the second is `True` for
        `(x, None, sample_weight)`, whose dataset yields `(x, sample_weight)`.
    """
    if isinstance(data, tf.data.Dataset):
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must not be given with a `tf.data.Dataset`; "
                "batch the dataset itself."
            )
        return data, False
    if isinstance(data, list):
        data = tuple(data)
    if isinstance(data, tuple) and not 1 <= len(data) <= 3:
        raise ValueError(
            "`data` must be x, (x, y) or (x, y, sample_weight); got a tuple "
            f"of length {len(data)}."
        )
    weights_without_y = (
        isinstance(data, tuple)
        and len(data) == 3
        and data[1] is None
        and data[2] is not None
    )
    data = tf.nest.map_structure(
        lambda a: None if a is None else np.asarray(a), data
    )
    if isinstance(data, tuple):
        data = tuple(d for d in data if d is not None)
        if len(data) == 1:
            data = data[0]
    dataset = tf.data.Dataset.from_tensor_slices(data)
    return dataset.batch(batch_size or 32), weights_without_y


def constraint_report(model, data: Any, batch_size: int | None = None):
    """See `ConstrainedModel.constraint_report`."""
    model._collect_layer_constraints()
    constraints = model.constraints
    dataset, weights_without_y = as_dataset(data, batch_size)
    step = _report_step(model, weights_without_y)
    strategy = model.distribute_strategy
    totals = None
    for element in strategy.experimental_distribute_dataset(dataset):
        values = tf.nest.map_structure(
            lambda t: t.numpy().astype(np.float64), step(element)
        )
        totals = (
            values
            if totals is None
            else tf.nest.map_structure(np.add, totals, values)
        )
    if totals is None:
        raise ValueError("`constraint_report` received an empty dataset.")

    report = {}
    for constraint, statistics in zip(constraints, totals):
        statistics = tuple(tf.constant(s, tf.float32) for s in statistics)
        value = constraint.result(statistics)
        violation = constraint.positive_violation(constraint.violation(value))
        valid = constraint.valid(statistics)
        if valid is not None:
            # Entries without data (e.g. an absent group) are not violated.
            violation = tf.where(valid, violation, tf.zeros_like(violation))
        multiplier = keras.ops.convert_to_numpy(
            model.multipliers[constraint.name]
        )
        value, violation = value.numpy(), violation.numpy()
        report[constraint.name] = {
            "value": _scalar_or_array(value),
            "bound": _scalar_or_array(constraint.bound),
            "kind": constraint.kind,
            "violation": _scalar_or_array(violation),
            "satisfied": bool(np.all(violation <= constraint.tolerance)),
            "multiplier": _scalar_or_array(multiplier),
        }
    return report


def _report_step(model, weights_without_y: bool):
    """The compiled per-batch statistics function, cached on the model."""
    cache = model.__dict__.setdefault("_tfc_report_step", {})
    if weights_without_y in cache:
        return cache[weights_without_y]
    constraints = list(model.constraints)
    strategy = model.distribute_strategy

    def replica_step(element):
        if weights_without_y:
            (x, sample_weight), y = element, None
        else:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(element)
        x, features = model._split_side_information(x)
        y_pred = model._forward(x, training=False)
        batch = Batch(x, y, y_pred, sample_weight, features, False, model)
        return [model._statistics(c, batch, "true") for c in constraints]

    @tf.function
    def step(element):
        per_replica = strategy.run(replica_step, args=(element,))
        return strategy.reduce(
            tf.distribute.ReduceOp.SUM, per_replica, axis=None
        )

    cache[weights_without_y] = step
    return step


def _scalar_or_array(array):
    array = np.asarray(array)
    if array.ndim == 0:
        return float(array)
    return array.astype(np.float64)
