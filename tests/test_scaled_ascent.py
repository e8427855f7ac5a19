"""ScaledAscent's dead time: no integral before the constraint responds,
then an integral gain divided by the number of steps that took.

Expected numbers come from the update rule,

    s_t = max(s_{t-1}, max_i |v_{t,i}|),  u_t = v_t / s_t,
    I_{t+1} = Π(I_t + o_t·(η/n)·u_t / s_t),
    λ_{t+1} = Π(I_{t+1} + κ_p·u_t / s_t),

with `o_t = 1` from the first step whose violation differs from the
previous one, `0` before, and `n` the number of steps (with data) before
that step.
"""

import numpy as np
import pytest
import tensorflow as tf
from problems import built_dual_optimizer

from tfconstrain.optimizers.scaled import ScaledAscent


def _run(optimizer, lam, violations, mask=None, lower=0.0):
    """Applies the model's side of a dual step (projection) each time."""
    values = []
    for v in violations:
        proposed = optimizer.propose("c", lam, tf.constant(v), mask)
        if lower is not None:
            proposed = tf.maximum(proposed, lower)
        lam.assign(proposed)
        values.append(float(lam))
    return values


def test_a_repeated_violation_is_not_integrated_until_it_changes():
    """η = κ_p = 1; v = 0.5 five times, then 0.25 twice (s = 0.5).

    Steps 1-5: u = 1, v unchanged, o = 0: I = 0, λ = 1/0.5 = 2; n = 5.
    Step 6: v changed, o = 1 from now on, gain η/n = 0.2: u = 0.5,
    I = 0.2·0.5/0.5 = 0.2, λ = 0.2 + 0.5/0.5 = 1.2.
    Step 7: v repeated, but the integral is open: I = 0.4, λ = 1.4.
    """
    optimizer = ScaledAscent(1.0, kp=1.0)
    multipliers, state = built_dual_optimizer(
        optimizer, {"c": ()}, equality=False
    )
    values = _run(optimizer, multipliers["c"], [0.5] * 5 + [0.25, 0.25])
    np.testing.assert_allclose(values, [2, 2, 2, 2, 2, 1.2, 1.4], rtol=1e-6)
    assert float(state["c_integral"]) == pytest.approx(0.4)
    assert float(state["c_open"]) == 1.0
    assert float(state["c_delay"]) == 5.0


def test_dead_time_is_scale_free():
    """The same violations in units 1000× smaller: λ exactly 1000× larger."""
    sequence = [0.5] * 4 + [0.3, 0.1, 0.1, -0.2]
    runs = []
    for a in (1.0, 1e-3):
        optimizer = ScaledAscent(0.5, kp=2.0)
        multipliers, _ = built_dual_optimizer(
            optimizer, {"c": ()}, equality=True
        )
        runs.append(
            _run(
                optimizer,
                multipliers["c"],
                [a * v for v in sequence],
                lower=None,
            )
        )
    np.testing.assert_allclose(
        np.array(runs[1]) * 1e-3, runs[0], rtol=1e-5, atol=1e-5
    )


def test_equality_dead_time_keeps_the_first_multiplier():
    """Equality, v = -0.5 for 100 steps (η = 1, κ_p = 1): λ = -2 throughout.

    Plain PI would integrate to I = -100·2 = -200 by step 100.
    """
    optimizer = ScaledAscent(1.0, kp=1.0)
    multipliers, _ = built_dual_optimizer(optimizer, {"c": ()}, equality=True)
    values = _run(optimizer, multipliers["c"], [-0.5] * 100, lower=None)
    np.testing.assert_allclose(values, -2.0, rtol=1e-6)


def test_a_step_without_data_neither_opens_nor_counts():
    """A fully masked step (the model zeroes its violation) is no change."""
    optimizer = ScaledAscent(1.0, kp=1.0)
    multipliers, state = built_dual_optimizer(
        optimizer, {"c": (2,)}, equality=False
    )
    lam = multipliers["c"]
    full = tf.constant([True, True])
    empty = tf.constant([False, False])
    lam.assign(optimizer.propose("c", lam, tf.constant([0.5, 0.5]), full))
    # s = 0.5, u = 1, o = 0: I = 0, λ = 1/0.5 = 2 on both entries; n = 1.
    np.testing.assert_allclose(lam.numpy(), [2.0, 2.0])
    optimizer.propose("c", lam, tf.constant([0.0, 0.0]), empty)
    assert float(state["c_open"]) == 0.0
    assert float(state["c_delay"]) == 1.0  # a step without data: no count
    proposed = optimizer.propose("c", lam, tf.constant([0.5, 0.5]), full)
    np.testing.assert_allclose(proposed.numpy(), [2.0, 2.0])
    # A changed violation opens it after n = 2 steps: gain 1/2,
    # u = (0.5, 1): I = 0.5·u/0.5 = u, λ = I + u/0.5 = 3·u.
    proposed = optimizer.propose("c", lam, tf.constant([0.25, 0.5]), full)
    np.testing.assert_allclose(proposed.numpy(), [1.5, 3.0])


def test_a_varying_violation_is_plain_positional_pi():
    """v = 2, 1, 0.5 (η = 0.1, κ_p = 1, s = 2): it responds at step 2, n = 1.

    I: 0, 0.1·0.5/2 = 0.025, + 0.1·0.25/2 = 0.0375;
    λ = I + u/2: 0.5, 0.275, 0.1625.
    """
    optimizer = ScaledAscent(0.1, kp=1.0)
    multipliers, state = built_dual_optimizer(
        optimizer, {"c": ()}, equality=False
    )
    values = _run(optimizer, multipliers["c"], [2.0, 1.0, 0.5])
    np.testing.assert_allclose(values, [0.5, 0.275, 0.1625], rtol=1e-6)
    assert float(state["c_delay"]) == 1.0
