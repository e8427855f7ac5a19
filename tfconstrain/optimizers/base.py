"""The dual-optimizer protocol and plain gradient ascent.

A dual optimizer turns a constraint's violation `e_t` into a proposed new
multiplier. The model then keeps the old value where the constraint had no data
(`mask`), projects inequality multipliers onto `λ >= 0`, and writes the result.
Dual optimizers never all-reduce: the violation they receive is already the
value of the whole global batch, identical on every replica, so every replica
computes the same update locally.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

# `create_state(name, shape, initial_value) -> variable`: how a dual optimizer
# asks the model for a state variable (saved and restored with the model).
StateFactory = Callable[[str, tuple, float], Any]


def check_learning_rate(learning_rate: Any, owner: str) -> float:
    """Validates a positive, finite dual learning rate."""
    try:
        value = float(learning_rate)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{owner}: `learning_rate` must be a float, got {learning_rate!r}."
        ) from error
    if not value > 0 or value == float("inf"):
        raise ValueError(
            f"{owner}: `learning_rate` must be a finite number > 0, got "
            f"{learning_rate!r}. (Dual ascent needs a positive step.)"
        )
    return value


class DualOptimizer:
    """Base class of dual optimizers.

    Subclasses implement `propose`, and `build` when they keep state.
    Those that set `supports_indices = True` also accept `indices=` in
    `propose`: the violation then holds only the entries at those indices
    (per-example constraints), and only those entries and their state are
    read and written. Others receive a dense violation instead.
    """

    supports_indices = False
    # Whether `propose` updates state from the violation (then masked-out
    # entries must be zeroed first); stateless ones skip that op.
    stateful = True

    def build(
        self, multipliers: dict[str, Any], create_state: StateFactory
    ) -> None:
        """Creates the optimizer's state, once, outside any traced step."""
        del multipliers, create_state

    def set_constraints(self, constraints: dict[str, Any]) -> None:
        """Receives the model's constraints (`name -> tfc.Constraint`)
        before `build`, for optimizers whose rule depends on a constraint's
        kind or bound (e.g. an integral's anti-windup at `λ >= 0`, a scale
        taken from the bound). The default ignores them."""
        del constraints

    def propose(
        self,
        name: str,
        multiplier: Any,
        violation: tf.Tensor,
        mask: tf.Tensor | None,
        penalty: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Returns the proposed (unprojected) multiplier value.

        Args:
            name: The constraint's name.
            multiplier: The multiplier variable (read, not written, except by
                adapters of Keras optimizers).
            violation: `e_t`, the global-batch violation (float32).
            mask: Boolean tensor of entries that have data, or `None`.
                State of masked-out entries must not change.
            penalty: The penalty coefficient of the formulation, if any.
        """
        raise NotImplementedError

    def propose_group(
        self,
        names: list[str],
        multipliers: list,
        violation: tf.Tensor,
        mask: tf.Tensor,
        penalty: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """`propose` for scalar constraints stacked as one vector.

        The model's vectorized path (`tfconstrain.evaluation.vector_groups`)
        calls this once for a group of scalar constraints; entry `j` of
        `violation`, `mask`, `penalty` and of the result belongs to
        `names[j]` / `multipliers[j]`. The default runs `propose` per
        constraint (same values as the per-constraint path); stateless
        optimizers override it with one vector op.
        """
        proposals = [
            self.propose(
                name,
                multiplier,
                violation[j],
                mask[j],
                None if penalty is None else penalty[j],
            )
            for j, (name, multiplier) in enumerate(zip(names, multipliers))
        ]
        return tf.stack(proposals)

    @tf.autograph.experimental.do_not_convert
    def finish_step(self) -> None:
        """Called once after every constraint's `propose` of a dual step."""

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> DualOptimizer:
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfconstrain")
class GradientAscent(DualOptimizer):
    """Projected gradient ascent on the multipliers.

    `λ ← [λ + η · v]₊` for inequalities (`λ ← λ + η · v` for equalities),
    with `v` the violation and `η` the learning rate.

    Args:
        learning_rate: Float > 0. The dual step size `η`. Defaults to `0.01`.
    """

    def __init__(self, learning_rate: float = 0.01):
        self.learning_rate = check_learning_rate(
            learning_rate, "GradientAscent"
        )

    supports_indices = True
    stateful = False

    def propose(
        self, name, multiplier, violation, mask, penalty=None, indices=None
    ):
        return (
            read_entries(multiplier, indices) + self.learning_rate * violation
        )

    def propose_group(self, names, multipliers, violation, mask, penalty=None):
        return stack_values(multipliers) + self.learning_rate * violation

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate}


@keras.saving.register_keras_serializable(package="tfconstrain")
class PenaltyStepAscent(DualOptimizer):
    """The classical augmented-Lagrangian step: ascent with step `c`.

    `λ ← [λ + c · v]₊` (inequality), `μ ← μ + c · h` (equality), with `c` the
    current penalty coefficient of the constraint.
    """

    supports_indices = True
    stateful = False

    def propose(
        self, name, multiplier, violation, mask, penalty=None, indices=None
    ):
        if penalty is None:
            raise ValueError(
                f"Constraint '{name}': the classical augmented-Lagrangian "
                "dual step needs a penalty coefficient."
            )
        return read_entries(multiplier, indices) + penalty * violation

    def propose_group(self, names, multipliers, violation, mask, penalty=None):
        if penalty is None:
            return self.propose(names[0], None, violation, mask)
        return stack_values(multipliers) + penalty * violation


def read_entries(variable, indices) -> tf.Tensor:
    """A variable's value, or its entries at `indices`.

    Entries are read with a sparse gather on the variable itself: a dense
    read followed by a scatter update would make TensorFlow copy the whole
    variable (copy-on-write), an O(N) cost per step for per-example
    multipliers.
    """
    if indices is None:
        return tf.convert_to_tensor(variable)
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return tf.gather(variable, indices)


def stack_values(variables) -> tf.Tensor:
    """The values of scalar variables as one vector."""
    return tf.stack([tf.convert_to_tensor(v) for v in variables])


def write_entries(variable, value, indices) -> None:
    """Assigns a variable, or only its entries at `indices`."""
    if indices is None:
        variable.assign(value)
    else:
        variable.value.scatter_update(tf.IndexedSlices(value, indices))
