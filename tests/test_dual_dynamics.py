"""Dual dynamics: where plain gradient ascent fails and νPI / ALM converge.

Problems are written as Keras models whose only weights are the decision
variables (a `Point` layer whose output is the point itself, repeated for
every row of a dummy batch), trained full-batch: one training step is one
primal-dual iteration. Expected values are closed-form solutions computed
here.
"""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc
from tfconstrain.safeguards import MultiplierGrowthMonitor

DUMMY = np.zeros((1, 1), "float32")


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
class Box(keras.constraints.Constraint):
    """Projection onto `[lower, upper]` after every primal step."""

    def __init__(self, lower, upper):
        self.lower = [float(v) for v in lower]
        self.upper = [float(v) for v in upper]

    def __call__(self, w):
        return tf.clip_by_value(w, self.lower, self.upper)

    def get_config(self):
        return {"lower": self.lower, "upper": self.upper}


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
class Point(keras.layers.Layer):
    """Holds the decision vector; outputs it for every row of the batch."""

    def __init__(self, initial, lower=None, upper=None, **kwargs):
        super().__init__(**kwargs)
        self.initial = [float(v) for v in initial]
        self.lower = lower
        self.upper = upper
        box = None if lower is None else Box(lower, upper)
        self.x = self.add_weight(
            shape=(len(self.initial),),
            initializer=keras.initializers.Constant(self.initial),
            constraint=box,
            name="x",
        )

    def call(self, inputs):
        return tf.zeros((tf.shape(inputs)[0], 1)) + self.x

    def get_config(self):
        config = super().get_config()
        config.update(initial=self.initial, lower=self.lower, upper=self.upper)
        return config


def point_model(initial, lower=None, upper=None):
    inputs = keras.Input((1,))
    point = Point(initial, lower, upper, name="point")
    return tfc.ConstrainedModel(inputs, point(inputs)), point


def run_steps(model, steps, callbacks=None):
    """`steps` full-batch primal-dual iterations, in one epoch."""
    data = tf.data.Dataset.from_tensors((DUMMY, DUMMY)).repeat(steps)
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)


def run_epochs(model, epochs, callbacks=None):
    """`epochs` epochs of one full-batch iteration each."""
    data = tf.data.Dataset.from_tensors((DUMMY, DUMMY)).repeat()
    model.fit(
        data,
        epochs=epochs,
        steps_per_epoch=1,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )


# ---------------------------------------------------------------------------
# Paper Example 1 (Sohrabi et al., 2024):
#   min (1 + y²)·cos x   s.t.  (1 + y²)·sin x <= ε,   x ∈ [0, π/2].
# Solution y* = 0, x* = arcsin ε, and from -sin x + λ·cos x = 0,
# λ* = tan x* = ε / √(1 - ε²). The Lagrangian is concave in x
# (∂²L/∂x² = -(cos x + λ sin x) < 0), so for a fixed λ the primal step runs to
# an end of [0, π/2]: the saddle point repels gradient descent-ascent.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
def example1_objective(y_true, y_pred):
    x, y = y_pred[:, 0], y_pred[:, 1]
    return (1.0 + y**2) * tf.cos(x)


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
def example1_constraint(batch):
    x, y = batch.y_pred[:, 0], batch.y_pred[:, 1]
    return tf.reduce_mean((1.0 + y**2) * tf.sin(x))


def example1_model(epsilon, learning_rate=0.01, **compile_kwargs):
    model, point = point_model(
        [0.5, 0.5], lower=[0.0, -1e6], upper=[math.pi / 2, 1e6]
    )
    model.add_constraint(example1_constraint, "<=", epsilon, name="g")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=example1_objective,
        steps_per_execution=500,
        **compile_kwargs,
    )
    return model, point


def example1_solution(epsilon):
    return math.asin(epsilon), epsilon / math.sqrt(1.0 - epsilon**2)


EPSILONS = [0.2, 0.5, 0.8]


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_nupi_converges_on_paper_example_1(epsilon):
    model, point = example1_model(
        epsilon, dual_optimizer=tfc.optimizers.NuPI(0.3, kp=40.0)
    )
    run_steps(model, 3000)
    x_star, lambda_star = example1_solution(epsilon)
    x, y = point.x.numpy()
    assert abs(x - x_star) < 1e-3
    assert abs(y) < 1e-3
    assert abs(model.multipliers["g"].numpy() - lambda_star) < 1e-2


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_augmented_lagrangian_converges_on_paper_example_1(epsilon):
    # The augmented Lagrangian is locally convex in x at the solution iff
    # c > 1/cos³x* = (1 - ε²)^(-3/2); the classical step λ ← [λ + c·v]₊
    # assumes the primal has (nearly) minimised L_c between dual steps, hence
    # a primal step of 0.1 (with 0.01 and ε = 0.2 the first multiplier jumps
    # throw x onto the corner x = 0, λ = 0, an exact stationary point).
    penalty = max(2.0 * (1.0 - epsilon**2) ** -1.5, 5.0)
    model, point = example1_model(
        epsilon,
        learning_rate=0.1,
        formulation=tfc.AugmentedLagrangian(penalty),
    )
    run_steps(model, 3000)
    x_star, lambda_star = example1_solution(epsilon)
    x, y = point.x.numpy()
    assert abs(x - x_star) < 1e-3
    assert abs(y) < 1e-3
    assert abs(model.multipliers["g"].numpy() - lambda_star) < 1e-2
    assert model.penalties["g"].numpy() == pytest.approx(penalty)


def test_augmented_lagrangian_with_explicit_dual_step_on_example_1():
    # With a dual step smaller than c, the same primal step as νPI works.
    epsilon = 0.2
    model, point = example1_model(
        epsilon,
        formulation=tfc.AugmentedLagrangian(5.0),
        dual_optimizer=0.3,
    )
    run_steps(model, 3000)
    x_star, lambda_star = example1_solution(epsilon)
    assert abs(point.x.numpy()[0] - x_star) < 1e-3
    assert abs(model.multipliers["g"].numpy() - lambda_star) < 1e-2


@pytest.mark.parametrize(
    "coefficients",
    [
        # The full grid of 20 coefficients (about 1.5 s each on a loaded
        # machine); the quick grid straddles tan(0.5) ≈ 0.55, the
        # coefficient at which the start point's x-gradient changes sign.
        pytest.param(np.logspace(-2, 2, 20), marks=pytest.mark.slow),
        [0.01, 0.3, 3.0, 100.0],
    ],
    ids=["20_coefficients", "4_coefficients"],
)
def test_every_fixed_penalty_ends_at_an_end_of_the_interval(coefficients):
    # f + c·(g - ε) = (1 + y²)(cos x + c·sin x) - c·ε is concave in x for
    # every c >= 0, so its minimum over [0, π/2] is at an end: never at
    # x* = arcsin ε, whatever the coefficient.
    epsilon = 0.5
    x_star, _ = example1_solution(epsilon)
    ends = []
    for coefficient in coefficients:
        keras.backend.clear_session()
        model, point = example1_model(
            epsilon, formulation=tfc.Penalty(float(coefficient))
        )
        run_steps(model, 500)
        x = float(point.x.numpy()[0])
        assert model.multipliers["g"].numpy() == pytest.approx(coefficient)
        assert min(abs(x), abs(x - math.pi / 2)) < 1e-6, (coefficient, x)
        assert abs(x - x_star) > 0.5
        ends.append(round(x, 3))
    # Small coefficients leave the constraint violated (x = π/2), large ones
    # over-satisfy it (x = 0): the grid sees both ends, never the optimum.
    assert set(ends) == {0.0, round(math.pi / 2, 3)}


def test_gradient_ascent_still_oscillates_after_10k_steps():
    epsilon = 0.5
    x_star, lambda_star = example1_solution(epsilon)
    model, point = example1_model(epsilon, dual_optimizer=0.3)
    run_steps(model, 10_000)
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trajectory.append(
                (point.x.numpy()[0], model.multipliers["g"].numpy())
            )

    # Record 2000 more steps, every 10 steps.
    model.compile(
        optimizer=model.optimizer,
        loss=example1_objective,
        dual_optimizer=0.3,
        steps_per_execution=10,
    )
    run_steps(model, 2000, callbacks=[Record()])
    x, multiplier = np.array(trajectory).T
    # Bang-bang: the multiplier is projected back to 0 and climbs far above
    # λ*, and x swings around x* by much more than the 1e-3 that νPI reaches.
    assert multiplier.min() == 0.0
    assert multiplier.max() > 2.0 * lambda_star
    assert x.min() < x_star - 0.1 and x.max() > x_star + 0.1


def test_nupi_without_proportional_term_is_gradient_ascent_on_example_1():
    epsilon = 0.5
    plain, plain_point = example1_model(epsilon, dual_optimizer=0.3)
    nupi, nupi_point = example1_model(
        epsilon, dual_optimizer=tfc.optimizers.NuPI(0.3, kp=0.0, ki=1.0)
    )
    run_steps(plain, 1000)
    run_steps(nupi, 1000)
    np.testing.assert_array_equal(nupi_point.x.numpy(), plain_point.x.numpy())
    np.testing.assert_array_equal(
        nupi.multipliers["g"].numpy(), plain.multipliers["g"].numpy()
    )


# ---------------------------------------------------------------------------
# Update schemes and proxies, checked against hand-computed iterations.
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
def proxy_objective(y_true, y_pred):
    return y_pred[:, 0] ** 2 + 2.0 * y_pred[:, 1] ** 2


def test_proxy_trajectory_simultaneous_matches_hand_computation():
    # min x² + 2y²  s.t.  x + y >= 1,  x² + y <= 1, with proxies
    # 0.9x + y >= 1 (violation 1 - 0.9x - y) and x² + 0.9y <= 1
    # (violation x² + 0.9y - 1). Simultaneous: both steps from (z_t, λ_t);
    # the primal gradient uses the proxies, the dual step the true values.
    model, point = point_model([0.0, -1.0])

    def first(batch):
        return tf.reduce_mean(batch.y_pred[:, 0] + batch.y_pred[:, 1])

    def first_proxy(batch):
        return tf.reduce_mean(0.9 * batch.y_pred[:, 0] + batch.y_pred[:, 1])

    def second(batch):
        return tf.reduce_mean(batch.y_pred[:, 0] ** 2 + batch.y_pred[:, 1])

    def second_proxy(batch):
        return tf.reduce_mean(
            batch.y_pred[:, 0] ** 2 + 0.9 * batch.y_pred[:, 1]
        )

    model.add_constraint(first, ">=", 1.0, name="first", proxy=first_proxy)
    model.add_constraint(second, "<=", 1.0, name="second", proxy=second_proxy)
    model.compile(
        optimizer=keras.optimizers.SGD(5e-2),
        loss=proxy_objective,
        dual_optimizer=keras.optimizers.SGD(1e-2),
        update="simultaneous",
    )

    def multipliers():
        return [model.multipliers[n].numpy() for n in ("first", "second")]

    # Step 1 at z = (0, -1), λ = (0, 0): ∇f = (2x, 4y) = (0, -4), so
    # z ← (0, -1) - 0.05·(0, -4) = (0, -0.8). True violations: 1 - x - y = 2
    # and x² + y - 1 = -2, so λ ← ([0.02]₊, [-0.02]₊) = (0.02, 0).
    run_steps(model, 1)
    np.testing.assert_allclose(point.x.numpy(), [0.0, -0.8], atol=1e-6)
    np.testing.assert_allclose(multipliers(), [0.02, 0.0], atol=1e-6)
    # Step 2 at z = (0, -0.8), λ = (0.02, 0): ∇f = (0, -3.2) and
    # λ₁·∇(1 - 0.9x - y) = 0.02·(-0.9, -1) = (-0.018, -0.02), so
    # z ← (0, -0.8) - 0.05·(-0.018, -3.22) = (0.0009, -0.639).
    # Violations 1.8 and -1.8: λ ← (0.02 + 0.018, [-0.018]₊) = (0.038, 0).
    run_steps(model, 1)
    np.testing.assert_allclose(point.x.numpy(), [0.0009, -0.639], atol=1e-6)
    np.testing.assert_allclose(multipliers(), [0.038, 0.0], atol=1e-6)
    # Step 3 at z = (0.0009, -0.639), λ = (0.038, 0): the true violation
    # 1 - 0.0009 + 0.639 = 1.6381 (the proxy's would be 1.63819) gives
    # λ₁ = 0.038 + 0.016381 = 0.054381; ∇ = (0.0018 - 0.0342,
    # -2.556 - 0.038) = (-0.0324, -2.594), z ← (0.00252, -0.5093).
    run_steps(model, 1)
    np.testing.assert_allclose(point.x.numpy(), [0.00252, -0.5093], atol=1e-6)
    np.testing.assert_allclose(multipliers(), [0.054381, 0.0], atol=1e-6)


@keras.saving.register_keras_serializable(package="tfconstrain_dual_tests")
def square_objective(y_true, y_pred):
    return y_pred[:, 0] ** 2


class CountingPoint(Point):
    """A `Point` that counts its forward passes in a variable."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="calls"
        )

    def call(self, inputs):
        self.calls.assign_add(1.0)
        return super().call(inputs)


# min x² s.t. x >= 1 from x = 0, λ₀ = 0.5, primal SGD 0.1, dual step 0.1.
# The primal gradient is 2x - λ = -λ at x = 0.
#   alternating (dual first): λ₁ = 0.5 + 0.1·(1 - 0) = 0.6, x₁ = 0.1·0.6
#   simultaneous:             λ₁ = 0.6,                   x₁ = 0.1·0.5
#   primal first:             x₁ = 0.05, λ₁ = 0.5 + 0.1·(1 - 0.05) = 0.595
@pytest.mark.parametrize(
    "update, x1, lambda1, forward_passes",
    [
        ("alternating", 0.06, 0.6, 1),
        ("simultaneous", 0.05, 0.6, 1),
        ("alternating_primal_first", 0.05, 0.595, 2),
    ],
)
def test_update_schemes_one_step(update, x1, lambda1, forward_passes):
    inputs = keras.Input((1,))
    point = CountingPoint([0.0], name="point")
    model = tfc.ConstrainedModel(inputs, point(inputs))
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        ">=",
        1.0,
        name="lower",
        multiplier_init=0.5,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=square_objective,
        dual_optimizer=0.1,
        update=update,
    )
    run_steps(model, 1)
    assert point.x.numpy()[0] == pytest.approx(x1, abs=1e-7)
    assert model.multipliers["lower"].numpy() == pytest.approx(
        lambda1, abs=1e-7
    )
    assert point.calls.numpy() == forward_passes


def test_default_update_scheme_is_dual_first():
    model, point = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        ">=",
        1.0,
        name="lower",
        multiplier_init=0.5,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=square_objective,
        dual_optimizer=0.1,
    )
    run_steps(model, 1)
    assert point.x.numpy()[0] == pytest.approx(0.06, abs=1e-7)


# ---------------------------------------------------------------------------
# Rate constraint with a sigmoid proxy (paper Fig. 2).
# ---------------------------------------------------------------------------


def four_gaussians():
    """Class 1 around (0, 1), (-1, 0); class 0 around (0, -1), (1, 0)."""
    rng = np.random.default_rng(0)
    centers = np.array([[0, 1], [-1, 0], [0, -1], [1, 0]], "float32")
    x = np.concatenate(
        [c + math.sqrt(0.05) * rng.standard_normal((100, 2)) for c in centers]
    ).astype("float32")
    y = np.repeat([1.0, 1.0, 0.0, 0.0], 100).astype("float32")[:, None]
    return x, y


def predicted_class_0_rate(batch):
    return tf.reduce_mean(tf.cast(batch.y_pred[:, 0] < 0.0, tf.float32))


def predicted_class_0_proxy(batch):
    return tf.reduce_mean(tf.sigmoid(-batch.y_pred[:, 0]))


def train_rate_model(x, y, **compile_kwargs):
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(1)
    model = tfc.ConstrainedModel(inputs, dense(inputs))
    model.add_constraint(
        predicted_class_0_rate,
        ">=",
        0.7,
        name="class_0_rate",
        proxy=predicted_class_0_proxy,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        steps_per_execution=500,
        **compile_kwargs,
    )
    data = tf.data.Dataset.from_tensors((x, y)).repeat(3000)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    logits = (x @ dense.kernel.numpy() + dense.bias.numpy())[:, 0]
    rate = np.mean(logits < 0.0)
    accuracy = np.mean((logits > 0.0) == (y[:, 0] > 0.5))
    return rate, accuracy


STEP_SIZES = [1e-2, 1e-1, 1.0, 10.0]


def test_rate_constraint_is_met_for_every_dual_step_size():
    # 70 % predicted class 0 means at least 80 of the 200 class-1 points
    # predicted 0: accuracy at most 80 %, reached by a linear boundary.
    x, y = four_gaussians()
    for step_size in STEP_SIZES:
        rate, accuracy = train_rate_model(x, y, dual_optimizer=step_size)
        assert rate >= 0.695, (step_size, rate)
        assert accuracy >= 0.795, (step_size, accuracy)


def test_fixed_penalty_misses_the_rate_at_the_same_values():
    x, y = four_gaussians()
    for coefficient in STEP_SIZES:
        rate, accuracy = train_rate_model(
            x, y, formulation=tfc.Penalty(coefficient)
        )
        assert rate < 0.695 or accuracy < 0.795, (coefficient, rate, accuracy)


# ---------------------------------------------------------------------------
# Safeguards: multiplier cap and the growth monitor.
# ---------------------------------------------------------------------------


def infeasible_model(formulation=None, dual_optimizer=0.1):
    # x >= 2 with x projected onto [0, 1]: the violation stays >= 1.
    model, point = point_model([0.5], lower=[0.0], upper=[1.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        ">=",
        2.0,
        name="unreachable",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=square_objective,
        formulation=formulation,
        dual_optimizer=dual_optimizer,
    )
    return model, point


@pytest.mark.parametrize(
    "formulation",
    [
        tfc.Lagrangian(max_multiplier=0.5),
        tfc.AugmentedLagrangian(1.0, max_multiplier=0.5),
    ],
    ids=["lagrangian", "augmented_lagrangian"],
)
def test_multiplier_cap_holds_on_an_infeasible_problem(formulation):
    model, _ = infeasible_model(formulation, dual_optimizer=None)
    run_steps(model, 50)
    assert model.multipliers["unreachable"].numpy() == pytest.approx(0.5)


def test_growth_monitor_warns_once_naming_the_constraint():
    model, _ = infeasible_model()
    monitor = MultiplierGrowthMonitor(patience=100, min_steps=100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_epochs(model, 150, callbacks=[monitor])
    messages = [
        str(w.message)
        for w in caught
        if "multiplier has grown" in str(w.message)
    ]
    assert len(messages) == 1
    assert "'unreachable'" in messages[0]
    assert monitor.warned == {"unreachable"}


def test_growth_monitor_warns_for_a_vanishing_constraint_gradient():
    # A 0/1 constraint without proxy has no gradient: λ grows in vain.
    model, _ = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(
            tf.cast(batch.y_pred[:, 0] > 1.0, tf.float32)
        ),
        ">=",
        1.0,
        name="step_function",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=square_objective,
        dual_optimizer=0.1,
    )
    monitor = MultiplierGrowthMonitor(patience=100, min_steps=100)
    with pytest.warns(UserWarning, match="'step_function'"):
        run_epochs(model, 150, callbacks=[monitor])


def test_growth_monitor_is_silent_on_a_healthy_run():
    # min (x - 2)² s.t. x <= 1: λ climbs to λ* = 2 while the violation
    # shrinks, then settles.
    model, point = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        "<=",
        1.0,
        name="upper",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=lambda y_true, y_pred: (y_pred[:, 0] - 2.0) ** 2,
        dual_optimizer=0.05,
    )
    # The same thresholds as the infeasible case above.
    monitor = MultiplierGrowthMonitor(patience=100, min_steps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run_epochs(model, 300, callbacks=[monitor])
    assert point.x.numpy()[0] == pytest.approx(1.0, abs=1e-3)
    assert model.multipliers["upper"].numpy() == pytest.approx(2.0, abs=1e-2)
    assert monitor.warned == set()


def test_growth_monitor_criterion_on_synthetic_logs():
    monitor = MultiplierGrowthMonitor(patience=3, min_steps=0)

    def epoch(multiplier, violation):
        monitor.on_epoch_end(
            0,
            {
                "c": 0.0,
                "c_multiplier": multiplier,
                "c_violation": violation,
                "val_c_multiplier": multiplier,
                "val_c_violation": violation,
            },
        )

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        # Growth while the violation halves every epoch: progress.
        for t in range(10):
            epoch(1.0 + t, 2.0**-t)
        # Growth with a violation within tolerance: satisfied.
        for t in range(5):
            epoch(11.0 + t, 1e-5)
        # Stalled violation, but the growth is interrupted before 3 epochs.
        for multiplier in (16.0, 17.0, 17.0, 18.0, 19.0):
            epoch(multiplier, 1.0)
    with pytest.warns(UserWarning, match="Constraint 'c'"):
        epoch(20.0, 1.0)  # third consecutive epoch of growth
    assert monitor.warned == {"c"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for multiplier in range(21, 30):
            epoch(float(multiplier), 1.0)  # warned once only


@pytest.mark.parametrize(
    "kwargs",
    [dict(patience=0), dict(min_steps=-1), dict(min_relative_decrease=1.0)],
)
def test_growth_monitor_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MultiplierGrowthMonitor(**kwargs)


# ---------------------------------------------------------------------------
# Dual state is model state: `.keras` files and checkpoints.
# ---------------------------------------------------------------------------


DUAL_SETUPS = {
    "augmented_lagrangian_growth": dict(
        formulation=tfc.AugmentedLagrangian(
            0.5, penalty_growth=1.5, max_penalty=40.0
        )
    ),
    "nupi": dict(dual_optimizer=tfc.optimizers.NuPI(0.3, kp=4.0, nu=0.5)),
    "augmented_lagrangian_nupi": dict(
        formulation=tfc.AugmentedLagrangian(0.5, penalty_increment=0.25),
        dual_optimizer=tfc.optimizers.NuPI(0.3, kp=4.0, nu=0.5),
    ),
}


def dual_state_model(setup):
    model, _ = example1_model(0.5, **DUAL_SETUPS[setup])
    return model


def all_state(model):
    values = [keras.ops.convert_to_numpy(v) for v in model.weights]
    values += [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    return values


@pytest.mark.parametrize("setup", sorted(DUAL_SETUPS))
def test_dual_state_survives_keras_file_round_trip(setup, tmp_path):
    reference = dual_state_model(setup)
    run_steps(reference, 20)

    model = dual_state_model(setup)
    run_steps(model, 10)
    saved = all_state(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(saved, all_state(loaded)):
        np.testing.assert_array_equal(a, b)
    names = [v.name for v in loaded.weights]
    if "nupi" in setup:
        assert "g_nupi_xi" in names and "g_nupi_started" in names
    if "augmented" in setup:
        assert "g_penalty" in names
        assert loaded.penalties["g"].numpy() != 0.5  # it grew before saving
    run_steps(loaded, 10)
    for a, b in zip(all_state(reference), all_state(loaded)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("setup", sorted(DUAL_SETUPS))
def test_dual_state_survives_checkpoint_restore(setup, tmp_path):
    reference = dual_state_model(setup)
    run_steps(reference, 20)

    model = dual_state_model(setup)
    run_steps(model, 10)
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    restored = dual_state_model(setup)
    run_steps(restored, 3)  # different state, overwritten by the restore
    tf.train.Checkpoint(model=restored).read(path).assert_consumed()
    run_steps(restored, 10)
    for a, b in zip(all_state(reference), all_state(restored)):
        np.testing.assert_allclose(a, b, atol=1e-6)
