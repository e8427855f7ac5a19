"""Full-batch `fit` reaches textbook KKT points and multipliers.

Each problem's optimum (x*, λ*) is derived in closed form in the docstring of
its test; the model's weights are x and its multipliers must match λ*.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import objective
from problems import point_model
from problems import run_steps

import tfconstrain as tfc

X_TOL = 1e-3
MULTIPLIER_TOL = 1e-2


def compile_point(model, fn, lr=0.05, dual=0.05, **kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=objective(fn),
        dual_optimizer=dual,
        steps_per_execution=100,
        **kwargs,
    )


@pytest.mark.smoke
def test_linear_inequality_active():
    """min (x1-2)² + (x2-1)² s.t. x1 + x2 <= 2.

    Stationarity 2(x-(2,1)) + λ(1,1) = 0 with x1 + x2 = 2 gives
    x* = (1.5, 0.5), λ* = 1.
    """
    model, point = point_model([0.0, 0.0])
    x = point.x
    model.add_constraint(lambda b: x[0] + x[1], "<=", 2.0, name="sum")
    compile_point(model, lambda: (x[0] - 2.0) ** 2 + (x[1] - 1.0) ** 2)
    run_steps(model, 3000)
    np.testing.assert_allclose(x.numpy(), [1.5, 0.5], atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["sum"].numpy(), 1.0, atol=MULTIPLIER_TOL
    )


def test_lower_bound_active():
    """min x² s.t. x >= 1: 2x - λ = 0 at x = 1, so λ* = 2."""
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda b: x[0], ">=", 1.0, name="lower")
    compile_point(model, lambda: x[0] ** 2)
    run_steps(model, 3000)
    np.testing.assert_allclose(x.numpy(), [1.0], atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["lower"].numpy(), 2.0, atol=MULTIPLIER_TOL
    )


def test_inactive_constraint_multiplier_stays_zero():
    """min (x-1)² s.t. x <= 2: the unconstrained optimum x = 1 is feasible.

    The constraint is never violated on the way from x0 = 0, so the
    multiplier stays exactly 0 at every step.
    """
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda b: x[0], "<=", 2.0, name="upper")
    compile_point(model, lambda: (x[0] - 1.0) ** 2)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(model.multipliers["upper"].numpy()))

    dummy = np.zeros((1, 1), "float32")
    model.fit(
        tf.data.Dataset.from_tensors((dummy, dummy)).repeat(2000),
        verbose=0,
        shuffle=False,
        callbacks=[Record()],
    )
    np.testing.assert_allclose(x.numpy(), [1.0], atol=X_TOL)
    assert seen and all(value == 0.0 for value in seen)


def test_equality_multiplier_goes_negative():
    """min x1² + x2² s.t. x1 + x2 = 1.

    2x + μ(1,1) = 0 with x1 + x2 = 1 gives x* = (1/2, 1/2), μ* = -1: an
    equality multiplier is free and must become negative.
    """
    model, point = point_model([0.0, 0.0])
    x = point.x
    model.add_constraint(lambda b: x[0] + x[1], "==", 1.0, name="budget")
    compile_point(model, lambda: x[0] ** 2 + x[1] ** 2)
    run_steps(model, 3000)
    np.testing.assert_allclose(x.numpy(), [0.5, 0.5], atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["budget"].numpy(), -1.0, atol=MULTIPLIER_TOL
    )


def test_two_constraints_one_active():
    """min x² + 2y² s.t. x + y >= 1, x² + y <= 1.

    With only the first constraint active: 2x = λ, 4y = λ, x + y = 1 give
    x* = (2/3, 1/3), λ1* = 4/3; then x² + y = 7/9 < 1, so λ2* = 0.
    """
    model, point = point_model([0.0, 0.0])
    x = point.x
    model.add_constraint(lambda b: x[0] + x[1], ">=", 1.0, name="c1")
    model.add_constraint(lambda b: x[0] ** 2 + x[1], "<=", 1.0, name="c2")
    compile_point(model, lambda: x[0] ** 2 + 2.0 * x[1] ** 2)
    run_steps(model, 4000)
    np.testing.assert_allclose(x.numpy(), [2 / 3, 1 / 3], atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["c1"].numpy(), 4 / 3, atol=MULTIPLIER_TOL
    )
    np.testing.assert_allclose(
        model.multipliers["c2"].numpy(), 0.0, atol=MULTIPLIER_TOL
    )


def least_squares_kkt(features, targets, a, b):
    """Closed-form KKT point of min mean((Xw - y)²) s.t. a·w <= b (active).

    With H = (2/n) XᵀX and g = (2/n) Xᵀy, stationarity H w - g + λ a = 0 and
    a·w = b give λ = (a·H⁻¹g - b) / (a·H⁻¹a) and w = H⁻¹(g - λ a).
    """
    n = features.shape[0]
    hessian = 2.0 / n * features.T @ features
    gradient = 2.0 / n * features.T @ targets
    h_inv_g = np.linalg.solve(hessian, gradient)
    h_inv_a = np.linalg.solve(hessian, a)
    multiplier = (a @ h_inv_g - b) / (a @ h_inv_a)
    return h_inv_g - multiplier * h_inv_a, multiplier


def test_least_squares_with_active_linear_inequality():
    rng = np.random.default_rng(42)
    features = rng.normal(size=(64, 3))
    targets = features @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=64)
    a, b = np.array([1.0, 1.0, 1.0]), -1.0
    unconstrained = np.linalg.lstsq(features, targets, rcond=None)[0]
    assert a @ unconstrained > b  # the constraint is active at the optimum
    w_star, multiplier_star = least_squares_kkt(features, targets, a, b)
    assert multiplier_star > 0

    inputs = keras.Input((3,))
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    model = tfc.ConstrainedModel(inputs, dense(inputs))
    direction = tf.constant(a[:, None], tf.float32)
    model.add_constraint(
        lambda batch: tf.reduce_sum(direction * dense.kernel),
        "<=",
        b,
        name="linear",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="mse",
        dual_optimizer=0.1,
        steps_per_execution=100,
    )
    data = tf.data.Dataset.from_tensors(
        (features.astype("float32"), targets[:, None].astype("float32"))
    ).repeat(4000)
    model.fit(data, verbose=0, shuffle=False)
    np.testing.assert_allclose(dense.kernel.numpy()[:, 0], w_star, atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["linear"].numpy(),
        multiplier_star,
        atol=MULTIPLIER_TOL,
    )


@pytest.mark.parametrize("update", ["alternating", "simultaneous"])
def test_update_schemes_reach_the_same_kkt_point(update):
    """Both update orders converge to x* = (1.5, 0.5), λ* = 1."""
    model, point = point_model([0.0, 0.0])
    x = point.x
    model.add_constraint(lambda b: x[0] + x[1], "<=", 2.0, name="sum")
    compile_point(
        model, lambda: (x[0] - 2.0) ** 2 + (x[1] - 1.0) ** 2, update=update
    )
    run_steps(model, 3000)
    np.testing.assert_allclose(x.numpy(), [1.5, 0.5], atol=X_TOL)
    np.testing.assert_allclose(
        model.multipliers["sum"].numpy(), 1.0, atol=MULTIPLIER_TOL
    )
