"""The dual rule, in one place: mask → propose → project → write → penalty.

For each constraint with global-batch violation `v` and data mask `m`:

    λ_prop = propose(λ, v)                     (the dual optimizer)
    λ ← Π( m ? λ_prop : λ )                    Π: [0, λ_max] for "<=", ">=",
                                                  [-λ_max, λ_max] for "=="
    c ← m_any ? grow(c, max₊(v)) : c           (penalty formulations)

`propose` is a pure function of its inputs for stateless dual optimizers
(`stateful = False`, e.g. gradient ascent, `λ + η·v`); stateful ones (νPI,
Keras optimizers, `ScaledAscent`) update their own state variables in it, so
masked-out entries receive a zero violation first. The same rule serves the
per-step dual step (inside the compiled train step, on the schedule set by
`tfc.MultiplierCallback`) and the per-epoch one (from dataset-level
violations, after the epoch).
"""

from __future__ import annotations

import tensorflow as tf

from tfconstrain.constraint import Constraint
from tfconstrain.evaluation import ConstraintStep
from tfconstrain.evaluation import vector_groups
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import stack_values
from tfconstrain.optimizers.base import write_entries


def scheduled_dual_step(state, steps, iteration) -> None:
    """The dual step, when the schedule says it is due at `iteration`.

    Args:
        state: The model's `DualState`.
        steps: The `ConstraintStep`s of the batch.
        iteration: The optimizer's step counter before this step's update.
    """
    every, warmup = state.schedule
    if every == "epoch" or not steps:
        return
    if every == 1 and warmup == 0:
        dual_step(state, steps)
        return
    due = tf.logical_and(iteration >= warmup, (iteration - warmup) % every == 0)

    def run():
        dual_step(state, steps)
        return tf.constant(True)

    tf.cond(due, run, lambda: tf.constant(False))


def dual_step(state, steps) -> None:
    """Moves multipliers (and penalties) given global-batch violations.

    Scalar constraints with summed statistics go through the rule as one
    vector per kind class (`evaluation.vector_groups`): one proposal, one
    projection and one penalty growth for all of them.

    Args:
        state: The model's `DualState` (formulation, dual optimizer,
            multipliers, penalties).
        steps: One `ConstraintStep` per constraint.
    """
    dual = state.dual_optimizer
    if dual is None and not state.formulation.has_penalty:
        return
    for group in vector_groups(steps, state.vectorize):
        if len(group) == 1:
            _constraint_dual_step(state, group[0])
        else:
            _vector_dual_step(state, group)
    if dual is not None:
        dual.finish_step()


def _constraint_dual_step(state, step: ConstraintStep) -> None:
    """The rule for one constraint (any shape, dense or per-example)."""
    formulation = state.formulation
    dual = state.dual_optimizer
    constraint = step.constraint
    name = constraint.name
    penalty = state.penalties.get(name)
    penalty_value = None if penalty is None else tf.convert_to_tensor(penalty)
    violation = step.violation
    if getattr(dual, "stateful", True) or penalty is not None:
        # Masked entries must not reach optimizer state or penalties.
        violation = tf.where(step.mask, violation, tf.zeros_like(violation))
    if dual is not None:
        multiplier = state.multipliers[name]
        old = read_entries(multiplier, step.indices)
        proposed = propose_entries(
            dual,
            name,
            multiplier,
            violation,
            step.mask,
            penalty_value,
            step.indices,
        )
        new = project(
            tf.where(step.mask, proposed, old),
            constraint,
            formulation.max_multiplier,
        )
        write_entries(multiplier, new, step.indices)
    if penalty is not None:
        worst = tf.reduce_max(constraint.positive_violation(violation))
        grown = formulation.next_penalty(penalty_value, worst)
        # A step without any data (e.g. a skipped non-finite batch)
        # leaves the penalty as it is.
        penalty.assign(tf.where(tf.reduce_any(step.mask), grown, penalty_value))


def _vector_dual_step(state, group: list) -> None:
    """The rule for scalar constraints of one kind class, as one vector.

    Entry `j` of every vector is constraint `j` of the group: the same
    elementwise maths as `_constraint_dual_step`, on `(k,)` tensors, with
    one read and one write per variable.
    """
    formulation = state.formulation
    dual = state.dual_optimizer
    names = [step.constraint.name for step in group]
    violation = tf.stack([step.violation for step in group])
    mask = tf.stack([step.mask for step in group])
    penalties = [state.penalties.get(name) for name in names]
    has_penalty = penalties[0] is not None
    penalty_value = stack_values(penalties) if has_penalty else None
    if getattr(dual, "stateful", True) or has_penalty:
        violation = tf.where(mask, violation, tf.zeros_like(violation))
    if dual is not None:
        multipliers = [state.multipliers[name] for name in names]
        old = stack_values(multipliers)
        proposed = dual.propose_group(
            names, multipliers, violation, mask, penalty_value
        )
        new = project(
            tf.where(mask, proposed, old),
            group[0].constraint,
            formulation.max_multiplier,
        )
        for multiplier, value in zip(multipliers, tf.unstack(new)):
            multiplier.assign(value)
    if has_penalty:
        worst = group[0].constraint.positive_violation(violation)
        grown = formulation.next_penalty(penalty_value, worst)
        new_penalty = tf.where(mask, grown, penalty_value)
        for penalty, value in zip(penalties, tf.unstack(new_penalty)):
            penalty.assign(value)


def propose_entries(dual, name, multiplier, violation, mask, penalty, indices):
    """`dual.propose` for all entries, or for the entries at `indices`.

    Dual optimizers that declare `supports_indices` read and write only
    those entries (and their state); others see a dense violation that is
    zero, and masked out, everywhere else, and the result is gathered. An id
    that appears several times in the batch gets the mean of its
    violations, so every dual optimizer moves it once (as the indexed ones
    do), not once per occurrence.
    """
    if indices is None:
        return dual.propose(name, multiplier, violation, mask, penalty)
    if getattr(dual, "supports_indices", False):
        return dual.propose(
            name, multiplier, violation, mask, penalty, indices=indices
        )
    shape = tf.shape(multiplier)
    positions = indices[:, None]
    valid = tf.cast(mask, violation.dtype)
    counts = tf.scatter_nd(positions, valid, shape)
    dense_violation = tf.math.divide_no_nan(
        tf.scatter_nd(positions, violation * valid, shape), counts
    )
    dense_mask = counts > 0
    proposed = dual.propose(
        name, multiplier, dense_violation, dense_mask, penalty
    )
    return tf.gather(proposed, indices)


def project(value, constraint: Constraint, cap: float | None):
    """`Π`: onto `[0, cap]` (inequalities) or `[-cap, cap]` (equalities)."""
    if constraint.is_equality:
        if cap is None:
            return value
        return tf.clip_by_value(value, -cap, cap)
    value = tf.maximum(value, 0.0)
    if cap is not None:
        value = tf.minimum(value, cap)
    return value


class EpochDualStep:
    """One dual step from dataset-level violations, on every replica.

    Built once per set of constraints (a `tf.function` running the rule in
    each replica of the model's strategy); `tfc.MultiplierCallback` calls it
    after an epoch with `update_every="epoch"`.

    Args:
        state: The model's `DualState`.
        strategy: The model's `tf.distribute.Strategy`.
    """

    def __init__(self, state, strategy):
        constraints = list(state.constraints)

        def replica_step(violations, masks):
            dual_step(
                state,
                [
                    ConstraintStep(c, v, m, None)
                    for c, v, m in zip(constraints, violations, masks)
                ],
            )
            return tf.constant(0)

        self._function = tf.function(
            lambda v, m: strategy.run(replica_step, args=(v, m))
        )

    def __call__(self, values: list) -> None:
        """Runs the step.

        Args:
            values: `(violation, mask)` numpy pairs, one per constraint (see
                `tfconstrain.evaluation.epoch_violations`).
        """
        self._function(
            [tf.constant(v, tf.float32) for v, _ in values],
            [tf.constant(m, tf.bool) for _, m in values],
        )
