"""Scaled ascent: the scale-free dual step chosen by the catalogue study.

Expected numbers come from the update rule itself,

    s_t = max(s_{t-1}, max_i |v_{t,i}|),  u_t = v_t / s_t,
    I_{t+1} = Π(I_t + o_t·(η/n)·u_t / s_t),
    λ_{t+1} = Π(I_{t+1} + κ_p·u_t / s_t),

(`o_t = 0` until the violation first changes, `n` the number of steps that
took; `n = 1` for a violation that changes on its second step), and from
closed-form KKT points.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import built_dual_optimizer
from problems import objective
from problems import point_model
from problems import run_steps

import tfconstrain as tfc
from tfconstrain.optimizers.scaled import ScaledAscent


class _Spec:
    """What `set_constraints` reads of a constraint: kind and bound."""

    def __init__(self, is_equality=False, bound=0.0):
        self.is_equality = is_equality
        self.bound = bound


def _built_with_bounds(optimizer, shapes, lower=0.0, bound=0.0):
    optimizer.set_constraints(
        {name: _Spec(lower is None, bound) for name in shapes}
    )
    return built_dual_optimizer(optimizer, shapes)


def test_first_step_is_kp_over_the_violation():
    """s_0 = |v_0|, u_0 = 1, o_0 = 0: I_1 = λ_0 = 0, λ_1 = κ_p/|v_0|.

    With κ_p = 0 the first step is integrated instead (o_0 = 1, n = 1):
    I_1 = λ_1 = η/|v_0|.
    """
    for kp, integral in ((3.0, 0.0), (0.0, 0.2 / 4.0)):
        optimizer = ScaledAscent(0.2, kp=kp)
        multipliers, state = _built_with_bounds(optimizer, {"c": ()})
        proposed = optimizer.propose(
            "c", multipliers["c"], tf.constant(4.0), None
        )
        assert float(proposed) == pytest.approx(integral + kp / 4.0)
        assert float(state["c_integral"]) == pytest.approx(integral)


def test_without_proportional_term_a_model_at_its_unconstrained_minimum_moves():
    """κ_p = 0 and a start at the unconstrained minimum x = 3 of (x − 3)²
    with x <= 1: were the first step not integrated, λ would stay 0, x at 3
    and the violation at 2 for ever. It reaches x* = 1, λ* = 4."""
    model, point = point_model([3.0])
    x = point.x
    model.add_constraint(lambda b: x[0], "<=", 1.0, name="c")
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=objective(lambda: (x[0] - 3.0) ** 2),
        dual_optimizer=ScaledAscent(1.0, kp=0.0),
        steps_per_execution=100,
    )
    run_steps(model, 3000)
    assert float(x.numpy()[0]) == pytest.approx(1.0, abs=1e-2)
    assert float(model.multipliers["c"].numpy()) == pytest.approx(4.0, rel=2e-2)


def test_proportional_term_by_hand():
    """v = 2 then 1, η = 0.1: s = 2; u = 1, 0.5.

    κ_p = 1: I_1 = 0 (o_0 = 0), λ_1 = 1/2;
             I_2 = 0 + 0.1·0.5/2 = 0.025 (n = 1), λ_2 = 0.025 + 0.5/2.
    κ_p = 0: the first step is integrated: I_1 = λ_1 = 0.1·1/2 = 0.05;
             I_2 = λ_2 = 0.05 + 0.025 = 0.075.
    """
    for kp, first, second in ((1.0, 0.5, 0.275), (0.0, 0.05, 0.075)):
        optimizer = ScaledAscent(0.1, kp=kp)
        multipliers, _ = _built_with_bounds(optimizer, {"c": ()})
        lam = multipliers["c"]
        lam.assign(optimizer.propose("c", lam, tf.constant(2.0), None))
        assert float(lam) == pytest.approx(first)
        lam.assign(optimizer.propose("c", lam, tf.constant(1.0), None))
        assert float(lam) == pytest.approx(second)


def test_noise_around_the_bound_does_not_ratchet_the_multiplier():
    """v = +1, -1, +1, -1, ... (s = 1), η = 0.1, κ_p = 1, λ projected.

    I: 0 (first step), [−0.1]₊ = 0, 0.1, 0, 0.1, ...; λ = [I ± 1]₊: 1, 0,
    1.1, 0, 1.1, ... The incremental form λ ← [λ + (η·u + κ_p·Δu)/s]₊
    would give 1, 0, 2.1, 0, 2.1, ...: it keeps every upward kick of 2 and
    cuts the downward ones. Here every other value is exactly 1.1, for
    ever.
    """
    optimizer = ScaledAscent(0.1, kp=1.0)
    multipliers, _ = _built_with_bounds(optimizer, {"c": ()})
    lam = multipliers["c"]
    values = []
    for t in range(20):
        v = 1.0 if t % 2 == 0 else -1.0
        proposed = optimizer.propose("c", lam, tf.constant(v), None)
        lam.assign(tf.maximum(proposed, 0.0))  # the model's projection
        values.append(float(lam))
    assert values[0] == pytest.approx(1.0)
    np.testing.assert_allclose(values[2::2], 1.1, rtol=1e-6)
    np.testing.assert_allclose(values[1::2], 0.0, atol=1e-7)


def test_equality_integral_is_not_projected():
    """Equality (lower bound None): I goes negative, λ = I + κ_p·u/s."""
    optimizer = ScaledAscent(0.5, kp=1.0)
    multipliers, state = _built_with_bounds(optimizer, {"c": ()}, None)
    lam = multipliers["c"]
    # Step 1: s = 2, u = -1, o = 0: I = 0, λ = -1/2.
    lam.assign(optimizer.propose("c", lam, tf.constant(-2.0), None))
    assert float(lam) == pytest.approx(-0.5)
    # Step 2: u = -0.5, n = 1: I = 0.5·(-0.5)/2 = -0.125, λ = -0.375.
    proposed = optimizer.propose("c", lam, tf.constant(-1.0), None)
    assert float(state["c_integral"]) == pytest.approx(-0.125)
    assert float(proposed) == pytest.approx(-0.375)


def test_scale_is_the_largest_violation_magnitude_over_entries():
    """Vector constraint: s = max_i |v_i| over entries with data only."""
    optimizer = ScaledAscent(1.0, kp=1.0)
    multipliers, state = built_dual_optimizer(optimizer, {"c": (3,)})
    violation = tf.constant([0.5, -2.0, 8.0])
    mask = tf.constant([True, True, False])
    # The model zeroes masked entries before a stateful optimizer sees them.
    masked = tf.where(mask, violation, 0.0)
    proposed = optimizer.propose("c", multipliers["c"], masked, mask)
    assert float(state["c_scale"]) == pytest.approx(2.0)
    # First step: λ = κ_p·u/s = v / s² on entries with data.
    np.testing.assert_allclose(proposed.numpy()[:2], [0.5 / 4, -2.0 / 4])
    # The masked entry's state is untouched.
    assert float(state["c_started"][2]) == 0.0
    assert float(state["c_integral"][2]) == 0.0


def test_zero_violation_gives_zero_step_and_no_nan():
    optimizer = ScaledAscent(0.1, kp=1.0)
    multipliers, state = built_dual_optimizer(optimizer, {"c": ()})
    proposed = optimizer.propose("c", multipliers["c"], tf.constant(0.0), None)
    assert float(proposed) == 0.0
    assert float(state["c_scale"]) == 0.0


def test_indices_read_and_write_only_those_entries():
    optimizer = ScaledAscent(1.0, kp=1.0)
    multipliers, state = built_dual_optimizer(optimizer, {"each": (5,)})
    multipliers["each"].assign([1.0, 1.0, 1.0, 1.0, 1.0])
    proposed = optimizer.propose(
        "each",
        multipliers["each"],
        tf.constant([2.0, -1.0]),
        tf.constant([True, True]),
        indices=tf.constant([3, 0]),
    )
    # s = 2, u = (1, -0.5), first step (o = 0): I = λ_0 = 1; λ = I + u/2.
    np.testing.assert_allclose(proposed.numpy(), [1.5, 0.75])
    np.testing.assert_array_equal(
        state["each_started"].numpy(), [1, 0, 0, 1, 0]
    )


def _solve_lower_bound(scale, steps=3000):
    """min (x - 3)² s.t. scale·x <= scale·1: x* = 1, λ* = 4 / scale."""
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda b: scale * x[0], "<=", scale * 1.0, name="c")
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=objective(lambda: (x[0] - 3.0) ** 2),
        dual_optimizer=ScaledAscent(),
        steps_per_execution=100,
    )
    run_steps(model, steps)
    return float(x.numpy()[0]), float(model.multipliers["c"].numpy())


def test_kkt_point_and_multiplier_whatever_the_units():
    """The same iterates in units 1, 100 and 0.001: x* = 1, λ* = 4/scale.

    Stationarity 2(x - 3) + λ·scale = 0 at x = 1 gives λ* = 4 / scale. The
    update is invariant to the constraint's units, so one step size serves
    all three (plain ascent would need steps 10⁵·² apart).
    """
    for scale in (1.0, 100.0, 0.001):
        x, lam = _solve_lower_bound(scale)
        assert x == pytest.approx(1.0, abs=1e-3), scale
        assert lam * scale == pytest.approx(4.0, rel=1e-2), scale


def test_config_round_trip_and_bad_arguments():
    optimizer = ScaledAscent(0.3, kp=2.0)
    clone = tfc.optimizers.get(optimizer)
    assert isinstance(clone, ScaledAscent)
    assert clone.get_config() == {
        "learning_rate": 0.3,
        "kp": 2.0,
    }
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(optimizer)
    )
    assert restored.get_config() == optimizer.get_config()
    with pytest.raises(ValueError, match="learning_rate"):
        ScaledAscent(0.0)
    with pytest.raises(ValueError, match="kp"):
        ScaledAscent(0.1, kp=-1.0)
