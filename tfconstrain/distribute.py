"""The few helpers that know about replicas.

Keras scales the loss of each replica by `1 / num_replicas` and then
SUM-all-reduces the gradients. tfconstrain instead reduces constraint
*statistics* across replicas before forming values, so the dual step sees the
value of the whole global batch on every replica, and the primal term of each
replica is the linearisation of the global value around the global statistics
(see `global_value_with_local_gradient`), whose gradients add up across
replicas to the gradient of the global value.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def num_replicas() -> int:
    """The number of replicas of the current strategy (a Python int)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_sum(values):
    """Sums a nest of tensors across replicas (identity on one replica).

    Works in replica context (inside `strategy.run`), where every replica
    receives the same sum, and in cross-replica context (returns the input).
    """
    if num_replicas() == 1 or not tf.nest.flatten(values):
        return values
    context = tf.distribute.get_replica_context()
    if context is None:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def all_gather(values):
    """Concatenates a nest of tensors across replicas along axis 0.

    Every replica receives the same concatenation (identity on one
    replica), so per-example dual updates are identical on all replicas.
    """
    if num_replicas() == 1 or not tf.nest.flatten(values):
        return values
    context = tf.distribute.get_replica_context()
    if context is None:
        return values
    return tf.nest.map_structure(
        lambda value: context.all_gather(value, axis=0), values
    )


def unscale_replica_loss(loss: tf.Tensor) -> tf.Tensor:
    """Undoes Keras' per-replica `1 / num_replicas` loss scaling."""
    replicas = num_replicas()
    if replicas == 1:
        return loss
    return loss * tf.cast(replicas, loss.dtype)


def global_value_with_local_gradient(
    result_fn: Callable, local_statistics: tuple, global_statistics: tuple
) -> tf.Tensor:
    """Value at the global statistics, differentiable in the local ones.

    Returns `result_fn(G + s - stop_gradient(s))` with `G` the statistics
    summed over replicas and `s` this replica's. Its value is exactly
    `result_fn(G)` (since `s - stop_gradient(s) == 0`), and its gradient is
    `∂result/∂stats |_G · ∇s`, so the replicas' gradients add up to the
    gradient of the global value. On one replica it is `result_fn(s)`.
    """
    if global_statistics is local_statistics:
        return result_fn(local_statistics)
    mixed = tuple(
        tf.stop_gradient(g) + (s - tf.stop_gradient(s))
        for g, s in zip(global_statistics, local_statistics)
    )
    return result_fn(mixed)
