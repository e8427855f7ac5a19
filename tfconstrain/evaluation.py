"""Evaluating constraints: statistics → replica reduction → violation → mask.

One path serves the training step, the test step, the report and the epoch
dual step. For a constraint with summable statistics `S` (e.g. weighted sums
and counts) and a batch split over `R` replicas:

    S_global = Σ_r S_r                      (one all-reduce for all constraints)
    c = result(S_global),  v = c - b  (">=": b - c)
    mask = valid(S_global) ∧ finite(v) ∧ finite(loss)

The dual step sees `v` of the whole global batch, identical on every replica.
The primal term of replica `r` uses the proxy statistics linearised around
the global ones (`distribute.global_value_with_local_gradient`), so the
replicas' gradients add up to the gradient of the global value.

Per-example (indexed) constraints all-gather `(ids, values, weights)`
instead: each replica applies the same sparse dual update.
"""

from __future__ import annotations

import re
import warnings
from typing import NamedTuple

import keras
import tensorflow as tf

from tfconstrain import distribute
from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import MeanStatistics


class ConstraintStep(NamedTuple):
    """One constraint's quantities in one step (graph tensors).

    Attributes:
        constraint: The `tfc.Constraint`.
        violation: Signed violation of the global batch (no gradient).
        mask: Entries with data and finite values (the dual step moves only
            these).
        proxy_violation: Differentiable violation for the primal term, or
            `None` when no primal step is taken.
        indices: Indexed constraints: the ids of the global batch.
        local_indices: Indexed constraints: the ids of this replica.
        primal_scale: Indexed constraints: each example's share of the
            global batch, `w_i / Σ w`.
    """

    constraint: Constraint
    violation: tf.Tensor
    mask: tf.Tensor
    proxy_violation: tf.Tensor | None
    indices: tf.Tensor | None = None
    local_indices: tf.Tensor | None = None
    primal_scale: tf.Tensor | None = None


def vector_groups(steps: list, vectorize: bool = True) -> list[list]:
    """The steps in groups that the primal term and the dual rule treat as
    one vector.

    Scalar constraints aggregated through summed statistics (not
    per-example) form one group per kind class (inequalities, equalities):
    their violations are stacked, so the primal weights, the proposal, the
    projection and the penalty growth of the group are one op each instead
    of one per constraint. Every other step is a group of its own. The
    order within a group is the order of `steps`; elementwise maths makes
    the vector path give the per-constraint path's values.

    Args:
        steps: `ConstraintStep`s.
        vectorize: `False` puts every step in its own group (the
            per-constraint path; tests compare the two).

    Returns:
        Lists of steps; groups of one are handled per constraint.
    """
    groups: dict = {}
    for position, step in enumerate(steps):
        scalar = step.indices is None and step.constraint.shape == ()
        key = (
            ("scalar", step.constraint.is_equality)
            if vectorize and scalar
            else position
        )
        groups.setdefault(key, []).append(step)
    return list(groups.values())


def batch_statistics(constraint: Constraint, batch: Batch, which: str):
    """A constraint's statistics for the batch, checked, as float32.

    Args:
        constraint: The constraint.
        batch: The `Batch`.
        which: `"true"` (the value the dual step and logs use) or `"proxy"`
            (the differentiable surrogate for the primal step).

    Returns:
        A tuple of float32 tensors of the constraint's declared shapes.

    Raises:
        KeyError, TypeError, ValueError: naming the constraint.
    """
    try:
        if which == "true":
            statistics = constraint.statistics(batch)
            shapes = constraint.statistics_shapes()
        else:
            statistics = constraint.proxy_statistics(batch)
            shapes = constraint.proxy_statistics_shapes()
    except (KeyError, TypeError, ValueError) as error:
        raise with_constraint_name(error, constraint, batch) from error
    value = getattr(statistics, "value", None)
    statistics = tuple(tf.cast(s, tf.float32) for s in statistics)
    if value is not None:
        statistics = MeanStatistics(statistics)
        statistics.value = tf.cast(value, tf.float32)
    if len(statistics) != len(shapes) or any(
        not s.shape.is_compatible_with(shape)
        for s, shape in zip(statistics, shapes)
    ):
        raise ValueError(
            f"Constraint '{constraint.name}': its {which} statistics have "
            f"shapes {[tuple(s.shape) for s in statistics]}, expected "
            f"{[tuple(s) for s in shapes]}."
        )
    return statistics


def evaluate(
    constraints: list[Constraint],
    batch: Batch,
    *,
    metrics: dict | None,
    primal: bool,
    loss: tf.Tensor | None = None,
    on_nonfinite: str = "raise",
    iterations=None,
    skip_counter=None,
) -> list[ConstraintStep]:
    """Every constraint's step quantities for one batch.

    Args:
        constraints: The constraints, in order.
        batch: The `Batch`.
        metrics: `name -> ConstraintMetric` to accumulate the true
            statistics into, or `None`.
        primal: Whether to compute the differentiable proxy violations.
        loss: The step's loss; when it is not finite the batch gets no dual
            step. `None` in evaluation.
        on_nonfinite: `"raise"`: one assertion per step naming the
            constraints with a non-finite value; `"skip"`: mask them.
        iterations: The optimizer's step counter (for the message).
        skip_counter: Optional `keras.metrics.Sum` counting skipped batches.

    Returns:
        One `ConstraintStep` per constraint, in order, with masks that hold
        only for entries with data and finite values in a finite batch.
    """
    dense = [c for c in constraints if not c.indexed]
    steps = dict(zip(dense, _dense_steps(dense, batch, metrics, primal)))
    for constraint in constraints:
        if constraint.indexed:
            steps[constraint] = _indexed_step(
                constraint, batch, metrics, primal
            )
    if loss is None:
        return [steps[c] for c in constraints]
    finite_batch = tf.math.is_finite(loss)
    if distribute.num_replicas() > 1:
        # Every replica must take the same decision, or the multiplier
        # copies would diverge.
        bad = distribute.all_reduce_sum(
            tf.cast(tf.logical_not(finite_batch), tf.float32)
        )
        finite_batch = tf.equal(bad, 0.0)
    finite = {c: tf.math.is_finite(steps[c].violation) for c in constraints}
    if constraints:
        all_finite = tf.stack(
            [
                finite[c] if c.shape == () else tf.reduce_all(finite[c])
                for c in constraints
            ]
        )
        if on_nonfinite == "raise":
            _assert_finite(constraints, all_finite, iterations)
        finite_batch = tf.logical_and(finite_batch, tf.reduce_all(all_finite))
    if skip_counter is not None:
        # Every replica takes the same decision and the metric sums
        # replicas when read: count 1/R per replica, 1 per batch.
        skip_counter.update_state(
            tf.cast(tf.logical_not(finite_batch), tf.float32)
            / distribute.num_replicas()
        )
    return [
        steps[c]._replace(
            mask=steps[c].mask & finite[c] & finite_batch,
        )
        for c in constraints
    ]


def accumulate(constraints: list[Constraint], batch: Batch, metrics: dict):
    """Adds the batch's true statistics to the metrics (`test_step`).

    Summable statistics need no all-reduce here: the metric variables are
    summed across replicas when read. Indexed constraints are all-gathered
    and scattered, as in training.
    """
    dense = {}
    for constraint in constraints:
        if constraint.indexed:
            _indexed_step(constraint, batch, metrics, primal=False)
        else:
            dense[constraint.name] = batch_statistics(constraint, batch, "true")
    _add_statistics(metrics, dense)


def epoch_violations(constraints: list[Constraint], metrics: dict) -> list:
    """`(violation, mask)` per constraint from the epoch's accumulated
    statistics (numpy arrays; eager)."""
    return violations_from_totals(
        constraints, epoch_totals(constraints, metrics)
    )


def epoch_totals(constraints: list[Constraint], metrics: dict) -> list:
    """Each constraint's accumulated statistics (tensors; eager)."""
    return [
        tuple(tf.convert_to_tensor(t) for t in metrics[c.name].totals)
        for c in constraints
    ]


def violations_from_totals(constraints: list[Constraint], totals) -> list:
    """`(violation, mask)` per constraint from summed statistics (numpy
    arrays; eager): the input of the epoch dual step. Entries without data
    or with a non-finite value are masked."""
    values = []
    for constraint, statistics in zip(constraints, totals):
        statistics = tuple(tf.cast(s, tf.float32) for s in statistics)
        violation = constraint.violation(constraint.result(statistics))
        mask = tf.math.is_finite(violation)
        valid = constraint.valid(statistics)
        if valid is not None:
            mask = tf.logical_and(mask, valid)
        values.append((violation.numpy(), mask.numpy()))
    return values


def with_feasibility(constraints, logs):
    """`logs` with `feasible`: 1.0 when every constraint is within its
    tolerance, read from the dataset-level `NAME_violation` entries (epoch
    logs of `fit`, logs of `evaluate`; `val_feasible` follows from Keras'
    `val_` prefix). Logs without every violation are returned unchanged."""
    if not isinstance(logs, dict) or not constraints:
        return logs
    keys = [f"{c.name}_violation" for c in constraints]
    if not all(key in logs for key in keys):
        return logs
    feasible = all(
        float(keras.ops.convert_to_numpy(logs[key])) <= c.tolerance
        for key, c in zip(keys, constraints)
    )
    return {**logs, "feasible": 1.0 if feasible else 0.0}


def with_lagrangian(state, logs):
    """`logs` with `lagrangian`: the formulation's objective at the
    dataset-level values, `f + Σ_j Σ_entries ψ(v_j; λ_j, c_j)`.

    `f` is the logged `loss`; `v_j` the violations of the accumulated
    statistics (entries without data add nothing); `ψ` the formulation's
    `objective_term`, e.g. `λ·v` for `tfc.Lagrangian`, with the current
    multipliers and penalties. A per-example constraint adds the
    data-weighted mean of its examples' `ψ(v_i; λ_i, c)`, as in its primal
    term. Logs without `loss` and every violation key are returned
    unchanged (step logs).

    Args:
        state: The model's `DualState`.
        logs: Epoch logs of `fit` or logs of `evaluate` (`val_lagrangian`
            follows from Keras' `val_` prefix).
    """
    constraints = state.constraints
    if not isinstance(logs, dict) or not constraints or "loss" not in logs:
        return logs
    if not all(f"{c.name}_violation" in logs for c in constraints):
        return logs
    formulation = state.formulation
    if formulation is None:
        return logs
    totals = epoch_totals(constraints, state.metrics)
    total = float(keras.ops.convert_to_numpy(logs["loss"]))
    for constraint, statistics, (violation, mask) in zip(
        constraints, totals, violations_from_totals(constraints, totals)
    ):
        penalty = state.penalties.get(constraint.name)
        terms = formulation.objective_term(
            tf.where(mask, violation, tf.zeros_like(violation)),
            tf.convert_to_tensor(state.multipliers[constraint.name]),
            None if penalty is None else tf.convert_to_tensor(penalty),
            constraint.is_equality,
        )
        terms = tf.where(mask, terms, tf.zeros_like(terms))
        if constraint.indexed:
            weights = tf.cast(statistics[-1], terms.dtype)
            terms = tf.math.divide_no_nan(
                terms * weights, tf.reduce_sum(weights)
            )
        total += float(tf.reduce_sum(terms))
    return {**logs, "lagrangian": total}


def warn_if_independent_of_weights(steps, variables) -> None:
    """At trace time: does each primal term depend on trainable weights?

    A proxy without a gradient is an error (the primal step could not
    follow it); a constraint without one only gets a warning, since its
    multiplier still moves (e.g. a constraint on data statistics). Symbolic
    gradients that are not used are pruned from the graph.
    """
    if not tf.inside_function():
        return
    variables = [v.value for v in variables]
    for step in steps:
        if step.proxy_violation is None or not variables:
            continue
        gradients = tf.gradients(tf.reduce_sum(step.proxy_violation), variables)
        if any(g is not None for g in gradients):
            continue
        constraint = step.constraint
        if constraint.proxy is not None:
            raise ValueError(
                f"Constraint '{constraint.name}': its proxy has no gradient "
                "with respect to any trainable weight, so the primal step "
                "cannot follow it. A proxy must be a differentiable function "
                "of the model's outputs or weights."
            )
        warnings.warn(
            f"Constraint '{constraint.name}' does not depend on any "
            "trainable weight: the primal step cannot reduce its violation "
            "(only its multiplier moves). Give a differentiable `proxy` if "
            "its value has no gradient.",
            UserWarning,
            stacklevel=3,
        )


def with_constraint_name(error: Exception, constraint: Constraint, batch):
    """`error` with a message that names the constraint (and, for a missing
    key, the side information available)."""
    message = str(error.args[0]) if error.args else str(error)
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else "?"
        return KeyError(
            f"Constraint '{constraint.name}': key {key!r} is not in the "
            f"batch's side information (available: "
            f"{sorted(batch.features)}). Put it in the `x` dict (and, for "
            "subclassed models, declare it in `side_information=`)."
        )
    if constraint.name in message:
        return error
    return type(error)(f"Constraint '{constraint.name}': {message}")


# ------------------------------------------------------------------ internals
def _dense_steps(constraints, batch, metrics, primal: bool):
    """Steps of constraints aggregated through summed statistics."""
    local = []
    accumulated = {}
    for constraint in constraints:
        proxy = batch_statistics(constraint, batch, "proxy") if primal else None
        if proxy is None or constraint.has_distinct_true_value:
            true = tuple(
                tf.stop_gradient(s)
                for s in batch_statistics(constraint, batch, "true")
            )
        else:
            true = proxy
        local.append((constraint, true, proxy))
        accumulated[constraint.name] = tuple(tf.stop_gradient(s) for s in true)
    if metrics is not None:
        _add_statistics(metrics, accumulated)
    if distribute.num_replicas() == 1:
        return [_local_step(*entry) for entry in local]
    flat = []
    for _, true, proxy in local:
        flat.extend(tf.stop_gradient(s) for s in true)
        if proxy is not None and proxy is not true:
            flat.extend(tf.stop_gradient(s) for s in proxy)
    reduced = iter(distribute.all_reduce_sum(flat))
    steps = []
    for constraint, true, proxy in local:
        true_global = tuple(next(reduced) for _ in true)
        violation = constraint.violation(constraint.result(true_global))
        proxy_violation = None
        if proxy is not None:
            if proxy is true:
                result_fn, proxy_global = constraint.result, true_global
            else:
                result_fn = constraint.proxy_result
                proxy_global = tuple(next(reduced) for _ in proxy)
            proxy_violation = constraint.violation(
                distribute.global_value_with_local_gradient(
                    result_fn, proxy, proxy_global
                )
            )
        steps.append(
            ConstraintStep(
                constraint,
                violation,
                _valid_mask(constraint, true_global, violation),
                proxy_violation,
            )
        )
    return steps


def _add_statistics(metrics: dict, statistics: dict) -> None:
    """Adds dense constraints' batch statistics to their metrics' shared
    accumulator (one op for all of them)."""
    if statistics:
        metrics[next(iter(statistics))].accumulator.update_state(statistics)


def _local_step(constraint, true, proxy) -> ConstraintStep:
    """One replica: the batch's statistics are the global ones.

    Without a separate true value, the dual violation is the primal one
    with its gradient stopped (one evaluation instead of two).
    """
    proxy_violation = None
    if proxy is not None:
        value = _batch_mean(constraint, proxy, primal=proxy is not true)
        if value is None:
            result_fn = (
                constraint.result if proxy is true else constraint.proxy_result
            )
            value = result_fn(proxy)
        proxy_violation = constraint.violation(value)
    if proxy is true:
        violation = tf.stop_gradient(proxy_violation)
    else:
        violation = constraint.violation(constraint.result(true))
    return ConstraintStep(
        constraint,
        violation,
        _valid_mask(constraint, true, violation),
        proxy_violation,
    )


def _batch_mean(constraint: Constraint, statistics, primal: bool):
    """The batch value carried by `MeanStatistics`, when the constraint
    forms its value as their plain ratio (`Constraint.result`), else
    `None`."""
    value = getattr(statistics, "value", None)
    if value is None or type(constraint).result is not Constraint.result:
        return None
    if primal and type(constraint).proxy_result is not Constraint.proxy_result:
        return None
    return value


def _indexed_step(constraint, batch, metrics, primal: bool) -> ConstraintStep:
    """Step of a per-example (indexed) constraint, O(batch) not O(N).

    The dual step needs every replica's examples: ids, values and weights
    are all-gathered, so each replica applies the same sparse update to its
    copy of the multipliers. The primal term of replica r is
    `Σ_{i in r} w_i · λ_i · v_i / Σ_all w`, whose gradients add up to the
    gradient of the global batch mean of `λ_i · v_i`.
    """
    try:
        ids, values, weights = constraint.examples(batch, proxy=False)
        proxy_values = values
        if primal and constraint.has_distinct_true_value:
            _, proxy_values, _ = constraint.examples(batch, proxy=True)
    except (KeyError, TypeError, ValueError) as error:
        raise with_constraint_name(error, constraint, batch) from error
    all_ids, all_values, all_weights = distribute.all_gather(
        (ids, tf.stop_gradient(values), weights)
    )
    if metrics is not None:
        metrics[constraint.name].update_indexed(
            all_ids, all_weights * all_values, all_weights
        )
    proxy_violation = share = None
    if primal:
        share = tf.math.divide_no_nan(weights, tf.reduce_sum(all_weights))
        proxy_violation = constraint.example_violation(proxy_values)
    return ConstraintStep(
        constraint,
        constraint.example_violation(all_values),
        all_weights > 0,
        proxy_violation,
        indices=all_ids,
        local_indices=ids,
        primal_scale=share,
    )


def _valid_mask(constraint: Constraint, statistics, violation):
    """Entries with data (all of them when the constraint cannot tell)."""
    valid = constraint.valid(statistics)
    return tf.ones_like(violation, tf.bool) if valid is None else valid


def _assert_finite(constraints, finite, iterations) -> None:
    """One assertion for all constraints (`on_nonfinite="raise"`).

    A single `Assert` op per step; its message lists the constraints with
    a finite/non-finite flag each, and the step. The raw op, not
    `tf.debugging.Assert`, which wraps it in a conditional (an `If` op and
    a function call per step, a few microseconds on the hot path).
    """
    names = ", ".join(c.name for c in constraints)
    tf.raw_ops.Assert(
        condition=tf.reduce_all(finite),
        data=[
            tf.constant(
                f"Non-finite (NaN or Inf) constraint value. Constraints "
                f"[{names}] finite:"
            ),
            finite,
            tf.constant("at training step (optimizer iteration)"),
            iterations,
            tf.constant(
                "; no multiplier was updated. Pass on_nonfinite=skip to "
                "compile() to skip such dual steps instead."
            ),
        ],
        summarize=len(constraints),
    )


_NONFINITE = re.compile(
    r"Non-finite \(NaN or Inf\) constraint value\. Constraints "
    r"\[(?P<names>[^\]]*)\] finite:\] \[(?P<flags>[^\]]*)\] "
    r"\[at training step \(optimizer iteration\)\] \[(?P<step>\d+)\]"
)


def clear_nonfinite_error(error: Exception) -> Exception | None:
    """The error of `on_nonfinite="raise"` with its message first.

    TensorFlow reports a failed in-graph assertion as "Graph execution
    error" followed by the trace of where the op was defined; the message
    is at the end. Returns a new `InvalidArgumentError` whose message
    names the non-finite constraints and the step first (the original
    message follows), or `None` when `error` is not that assertion.
    """
    message = getattr(error, "message", None) or str(error)
    match = _NONFINITE.search(message)
    if match is None:
        return None
    names = [n.strip() for n in match["names"].split(",")]
    flags = match["flags"].split()
    bad = [n for n, f in zip(names, flags) if f in ("0", "false", "False")]
    summary = (
        f"Constraint(s) {bad or names} had a non-finite (NaN or Inf) value "
        f"at training step {match['step']}; no multiplier was updated. "
        "Check the constraint functions for log(0), 0/0 or overflow; pass "
        "on_nonfinite='skip' to compile() to skip such dual steps instead."
    )
    return tf.errors.InvalidArgumentError(
        getattr(error, "node_def", None),
        getattr(error, "op", None),
        f"{summary}\n\nTensorFlow's report:\n{message}",
    )
