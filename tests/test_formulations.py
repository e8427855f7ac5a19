"""Formulations: Lagrangian, augmented Lagrangian, quadratic and fixed penalty.

Each formulation adds `ψ(v; λ, c)` per constraint to the loss; the train step
uses `w = ∂ψ/∂v`. Tests check `w` against automatic differentiation of `ψ`,
the penalty schedules, single hand-computed steps through a model, and
Nocedal & Wright's Example 17.3.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import mean_prediction

import tfconstrain as tfc
from tfconstrain import formulations

DUMMY = np.zeros((1, 1), "float32")

# Constraints fed by the data (not by the weights) fix the violation
# sequence exactly; the model rightly warns that the primal step cannot move
# them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Constraint 'c' does not depend on any trainable weight"
)


class Point(keras.layers.Layer):
    """Holds the decision vector; outputs it for every row of the batch."""

    def __init__(self, initial, **kwargs):
        super().__init__(**kwargs)
        self.x = self.add_weight(
            shape=(len(initial),),
            initializer=keras.initializers.Constant(initial),
            name="x",
        )

    def call(self, inputs):
        return tf.zeros((tf.shape(inputs)[0], 1)) + self.x


def point_model(initial):
    inputs = keras.Input((1,))
    point = Point(initial, name="point")
    return tfc.ConstrainedModel(inputs, point(inputs)), point


def run_steps(model, steps):
    data = tf.data.Dataset.from_tensors((DUMMY, DUMMY)).repeat(steps)
    return model.fit(data, epochs=1, verbose=0, shuffle=False)


# ---------------------------------------------------------------------------
# Arguments.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [tfc.AugmentedLagrangian, tfc.QuadraticPenalty])
@pytest.mark.parametrize("penalty", [0.0, -1.0])
def test_non_positive_penalty_is_rejected_with_a_clear_error(cls, penalty):
    with pytest.raises(ValueError, match=r"`penalty` must be > 0"):
        cls(penalty)


@pytest.mark.parametrize("cls", [tfc.AugmentedLagrangian, tfc.QuadraticPenalty])
def test_non_finite_penalty_is_rejected(cls):
    with pytest.raises(ValueError, match="finite"):
        cls(float("nan"))
    with pytest.raises(ValueError, match="finite"):
        cls(float("inf"))
    with pytest.raises(TypeError, match="number"):
        cls("large")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(penalty_growth=1.0), "penalty_growth"),
        (dict(penalty_growth=0.5), "penalty_growth"),
        (dict(penalty_increment=0.0), "penalty_increment"),
        (dict(max_penalty=0.5), "max_penalty"),
        (dict(tolerance=-1e-3), "tolerance"),
        (dict(max_multiplier=0.0), "max_multiplier"),
    ],
)
def test_bad_schedule_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfc.AugmentedLagrangian(1.0, **kwargs)


def test_negative_fixed_penalty_is_rejected():
    with pytest.raises(ValueError, match="coefficient"):
        tfc.Penalty(-0.1)


# ---------------------------------------------------------------------------
# Primal weights are the derivatives of the objective terms.
# ---------------------------------------------------------------------------

POINTS = [
    # (violation, multiplier, penalty)
    (0.7, 0.0, 2.0),
    (-0.3, 0.4, 2.0),  # λ + c·v = -0.2 < 0: the PHR term is flat
    (-0.1, 0.4, 2.0),
    (1.5, 3.0, 0.5),
]


@pytest.mark.parametrize(
    "formulation",
    [
        tfc.Lagrangian(),
        tfc.AugmentedLagrangian(1.0),
        tfc.QuadraticPenalty(1.0),
        tfc.Penalty(0.7),
    ],
    ids=lambda f: type(f).__name__,
)
@pytest.mark.parametrize("is_equality", [False, True])
def test_primal_weight_is_the_derivative_of_the_objective_term(
    formulation, is_equality
):
    for v, multiplier, penalty in POINTS:
        if isinstance(formulation, tfc.Penalty):
            multiplier = formulation.coefficient
        violation = tf.Variable([v])
        with tf.GradientTape() as tape:
            term = formulation.objective_term(
                violation,
                tf.constant([multiplier]),
                tf.constant(penalty),
                is_equality,
            )
        derivative = tape.gradient(term, violation).numpy()
        weight = formulation.primal_weight(
            tf.constant([v]),
            tf.constant([multiplier]),
            tf.constant(penalty),
            is_equality,
        ).numpy()
        np.testing.assert_allclose(weight, derivative, atol=1e-6)


def test_augmented_lagrangian_terms_match_their_closed_forms():
    al = tfc.AugmentedLagrangian(2.0)
    c, lam = tf.constant(2.0), tf.constant([0.4])
    # Inequality, λ + c·v > 0: (1/2c)((λ + c v)² - λ²) = λ v + (c/2) v².
    v = tf.constant([0.3])
    assert al.objective_term(v, lam, c, False).numpy() == pytest.approx(
        0.4 * 0.3 + 1.0 * 0.09
    )
    # Inequality, λ + c·v <= 0: -λ²/(2c), independent of v.
    v = tf.constant([-0.5])
    assert al.objective_term(v, lam, c, False).numpy() == pytest.approx(
        -(0.4**2) / 4.0
    )
    # Equality: μ h + (c/2) h².
    assert al.objective_term(v, lam, c, True).numpy() == pytest.approx(
        0.4 * -0.5 + 1.0 * 0.25
    )


# ---------------------------------------------------------------------------
# Penalty schedules.
# ---------------------------------------------------------------------------


def schedule(formulation, violations):
    penalty = tf.constant(formulation.initial_penalty)
    values = []
    for violation in violations:
        penalty = formulation.next_penalty(penalty, tf.constant(violation))
        values.append(float(penalty))
    return values


@pytest.mark.parametrize("cls", [tfc.AugmentedLagrangian, tfc.QuadraticPenalty])
def test_multiplicative_growth_is_capped(cls):
    formulation = cls(1.0, penalty_growth=2.0, max_penalty=5.0)
    assert schedule(formulation, [1.0] * 4) == [2.0, 4.0, 5.0, 5.0]


def test_additive_growth():
    formulation = tfc.AugmentedLagrangian(1.0, penalty_increment=0.5)
    assert schedule(formulation, [1.0] * 3) == [1.5, 2.0, 2.5]


def test_multiplicative_and_additive_growth_combine():
    # c ← c·growth + increment: 1·2 + 1 = 3, 3·2 + 1 = 7.
    formulation = tfc.AugmentedLagrangian(
        1.0, penalty_growth=2.0, penalty_increment=1.0
    )
    assert schedule(formulation, [1.0, 1.0]) == [3.0, 7.0]


def test_penalty_grows_only_above_tolerance():
    formulation = tfc.AugmentedLagrangian(
        1.0, penalty_growth=2.0, tolerance=0.1
    )
    assert schedule(formulation, [0.05, 0.1, 0.2, 0.0]) == [1.0, 1.0, 2.0, 2.0]


def test_penalty_resets_on_feasibility():
    formulation = tfc.AugmentedLagrangian(
        1.0, penalty_growth=2.0, reset_on_feasible=True
    )
    assert schedule(formulation, [1.0, 1.0, 0.0, 1.0]) == [2.0, 4.0, 1.0, 2.0]


def test_penalty_is_constant_without_a_schedule():
    assert schedule(tfc.AugmentedLagrangian(3.0), [1.0, 5.0]) == [3.0, 3.0]


# ---------------------------------------------------------------------------
# The dual step of the augmented Lagrangian, through a model.
# ---------------------------------------------------------------------------


def input_value(batch):
    return tf.reduce_mean(batch.x[:, 0])


def constant_violation_model(formulation, dual_optimizer=None, value=2.0):
    """`c(batch) = mean(x) <= 1` with x = value: the violation is fixed."""
    inputs = keras.Input((1,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    model.add_constraint(input_value, "<=", 1.0, name="c")
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="mse",
        formulation=formulation,
        dual_optimizer=dual_optimizer,
    )
    x = np.full((3, 1), value, "float32")
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trajectory.append(
                (
                    float(model.multipliers["c"].numpy()),
                    float(model.penalties["c"].numpy()),
                )
            )

    history = model.fit(
        x,
        np.zeros_like(x),
        batch_size=1,
        shuffle=False,
        verbose=0,
        callbacks=[Record()],
    )
    return trajectory, history


def test_classical_dual_step_uses_the_current_penalty_then_grows_it():
    # v = 1 at every step; λ ← [λ + c·v]₊ with the current c, then
    # c ← min(2c, 5): λ = 1 (c → 2), 3 (c → 4), 7 (c → 5).
    trajectory, history = constant_violation_model(
        tfc.AugmentedLagrangian(1.0, penalty_growth=2.0, max_penalty=5.0)
    )
    assert trajectory == [(1.0, 2.0), (3.0, 4.0), (7.0, 5.0)]
    assert history.history["c_penalty"] == [5.0]
    assert history.history["c_multiplier"] == [7.0]


def test_explicit_dual_optimizer_replaces_the_classical_step():
    # Ascent with η = 0.1 whatever c: λ = 0.1, 0.2, 0.3; c still grows.
    trajectory, _ = constant_violation_model(
        tfc.AugmentedLagrangian(1.0, penalty_increment=1.0),
        dual_optimizer=0.1,
    )
    np.testing.assert_allclose(
        trajectory, [(0.1, 2.0), (0.2, 3.0), (0.3, 4.0)], atol=1e-6
    )


def test_classical_dual_step_projects_inequality_multipliers():
    # v = -1: λ = [0 - 1]₊ = 0 at every step; c does not grow.
    trajectory, _ = constant_violation_model(
        tfc.AugmentedLagrangian(1.0, penalty_growth=2.0), value=0.0
    )
    assert trajectory == [(0.0, 1.0)] * 3


def test_quadratic_penalty_grows_without_moving_multipliers():
    trajectory, history = constant_violation_model(
        tfc.QuadraticPenalty(1.0, penalty_growth=3.0)
    )
    assert trajectory == [(0.0, 3.0), (0.0, 9.0), (0.0, 27.0)]
    assert history.history["c_penalty"] == [27.0]


# One primal step on min x² s.t. x >= 1 (v = 1 - x, ∂v/∂x = -1) from x = 0,
# λ₀ = 0, SGD 0.1, c = 2. The gradient is 2x - w = -w, so x₁ = 0.1·w.
#   simultaneous AL:   w = [λ₀ + c·v]₊ = 2                → x₁ = 0.2
#   alternating AL:    λ₁ = [0 + 2·1]₊ = 2, w = [2 + 2] = 4 → x₁ = 0.4
#   quadratic penalty: w = c·max(0, v) = 2                → x₁ = 0.2
#   fixed penalty 0.5: w = 0.5                            → x₁ = 0.05
@pytest.mark.parametrize(
    "formulation, update, x1, lambda1",
    [
        (tfc.AugmentedLagrangian(2.0), "simultaneous", 0.2, 2.0),
        (tfc.AugmentedLagrangian(2.0), "alternating", 0.4, 2.0),
        (tfc.QuadraticPenalty(2.0), "alternating", 0.2, 0.0),
        (tfc.Penalty(0.5), "alternating", 0.05, 0.5),
    ],
    ids=["al_simultaneous", "al_alternating", "quadratic", "fixed"],
)
def test_one_primal_step_uses_the_formulations_weight(
    formulation, update, x1, lambda1
):
    model, point = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        ">=",
        1.0,
        name="lower",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=lambda y_true, y_pred: y_pred[:, 0] ** 2,
        formulation=formulation,
        update=update,
    )
    run_steps(model, 1)
    assert point.x.numpy()[0] == pytest.approx(x1, abs=1e-6)
    assert model.multipliers["lower"].numpy() == pytest.approx(
        lambda1, abs=1e-6
    )


def test_equality_multiplier_of_augmented_lagrangian_takes_either_sign():
    # x == 1 from x = 0: h = -1, μ₁ = 0 + 2·(-1) = -2 (no projection);
    # simultaneous primal weight μ₀ + c·h = -2: x₁ = 0 - 0.1·(-2·1) = 0.2.
    model, point = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        "==",
        1.0,
        name="level",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=lambda y_true, y_pred: y_pred[:, 0] ** 2,
        formulation=tfc.AugmentedLagrangian(2.0),
        update="simultaneous",
    )
    run_steps(model, 1)
    assert point.x.numpy()[0] == pytest.approx(0.2, abs=1e-6)
    assert model.multipliers["level"].numpy() == pytest.approx(-2.0)


def test_fixed_penalty_multipliers_never_move():
    model, _ = point_model([0.0])
    model.add_constraint(
        lambda batch: tf.reduce_mean(batch.y_pred[:, 0]),
        ">=",
        1.0,
        name="lower",
    )
    with pytest.warns(UserWarning, match="not used"):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss=lambda y_true, y_pred: y_pred[:, 0] ** 2,
            formulation=tfc.Penalty(0.25),
            dual_optimizer=1.0,
        )
    history = run_steps(model, 20)
    assert model.multipliers["lower"].numpy() == 0.25
    assert history.history["lower_multiplier"] == [0.25]


# ---------------------------------------------------------------------------
# Nocedal & Wright, Example 17.3 (and 17.1):
#   min x₁ + x₂  s.t.  x₁² + x₂² = 2   →  x* = (-1, -1), μ* = 1/2
# (∇f + μ∇h = (1, 1) + 2μ(-1, -1) = 0). The quadratic penalty's minimiser
# lies on the diagonal x₁ = x₂ = t with 1 + c·h·2t = 0, h = 2t² - 2, i.e.
# 4c·t(t² - 1) = -1: its residual is h = -1/(2ct) ≈ 1/(2c), never 0.
# ---------------------------------------------------------------------------


def circle(batch):
    return tf.reduce_mean(tf.reduce_sum(batch.y_pred**2, axis=-1))


def nocedal_wright_model(formulation, learning_rate, **kwargs):
    model, point = point_model([-1.5, -0.5])
    model.add_constraint(circle, "==", 2.0, name="circle")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=lambda y_true, y_pred: tf.reduce_sum(y_pred, axis=-1),
        formulation=formulation,
        steps_per_execution=500,
        **kwargs,
    )
    return model, point


def quadratic_penalty_minimiser(c):
    roots = np.roots([4.0 * c, 0.0, -4.0 * c, 1.0])  # 4c t³ - 4c t + 1
    real = roots[np.abs(roots.imag) < 1e-12].real
    return real[np.argmin(np.abs(real + 1.0))]  # the one near t = -1


def test_augmented_lagrangian_solves_nocedal_wright_with_a_finite_penalty():
    model, point = nocedal_wright_model(
        tfc.AugmentedLagrangian(1.0), learning_rate=0.02
    )
    run_steps(model, 2000)
    np.testing.assert_allclose(point.x.numpy(), [-1.0, -1.0], atol=1e-4)
    assert model.multipliers["circle"].numpy() == pytest.approx(0.5, abs=1e-4)
    assert model.penalties["circle"].numpy() == 1.0  # no growth needed


@pytest.mark.parametrize("c", [5.0, 10.0])
def test_quadratic_penalty_leaves_a_residual_of_one_over_2c(c):
    model, point = nocedal_wright_model(
        tfc.QuadraticPenalty(c), learning_rate=0.1 / c
    )
    run_steps(model, 3000)
    t = quadratic_penalty_minimiser(c)
    np.testing.assert_allclose(point.x.numpy(), [t, t], atol=1e-4)
    residual = float(np.sum(point.x.numpy() ** 2) - 2.0)
    assert residual == pytest.approx(-1.0 / (2.0 * c * t), rel=1e-2)
    assert residual == pytest.approx(1.0 / (2.0 * c), rel=0.05)
    assert model.multipliers["circle"].numpy() == 0.0


@pytest.mark.parametrize(
    "formulation, expected",
    [
        # Gradient descent-ascent on the Lagrangian (convex in x near x*);
        # the augmented Lagrangian has its own test above.
        (tfc.Lagrangian(), (-1.0, -1.0)),
        # Fixed weight 1: min x₁ + x₂ + (x₁² + x₂² - 2), x = -1/(2·1).
        (tfc.Penalty(1.0), (-0.5, -0.5)),
    ],
    ids=lambda value: getattr(type(value), "__name__", ""),
)
def test_one_argument_switches_the_formulation(formulation, expected):
    model, point = nocedal_wright_model(formulation, learning_rate=0.02)
    run_steps(model, 2000)
    np.testing.assert_allclose(point.x.numpy(), expected, atol=1e-4)


# ---------------------------------------------------------------------------
# Serialization.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "formulation",
    [
        tfc.Lagrangian(max_multiplier=10.0),
        tfc.AugmentedLagrangian(
            2.0,
            penalty_growth=1.5,
            max_penalty=100.0,
            tolerance=1e-3,
            penalty_increment=0.5,
            reset_on_feasible=True,
            max_multiplier=50.0,
        ),
        tfc.QuadraticPenalty(3.0, penalty_growth=2.0),
        tfc.Penalty(0.25),
    ],
    ids=lambda f: type(f).__name__,
)
def test_formulation_config_round_trip(formulation):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(formulation)
    )
    assert type(restored) is type(formulation)
    assert restored.get_config() == formulation.get_config()
    assert repr(restored) == repr(formulation)


def test_formulation_identifiers():
    assert isinstance(formulations.get(None), tfc.Lagrangian)
    assert isinstance(
        formulations.get("augmented_lagrangian"), tfc.AugmentedLagrangian
    )
    with pytest.raises(TypeError, match="formulation"):
        formulations.get(3.0)


def test_default_dual_steps():
    assert isinstance(
        tfc.AugmentedLagrangian().default_dual_optimizer(),
        tfc.optimizers.PenaltyStepAscent,
    )
    assert tfc.QuadraticPenalty().default_dual_optimizer() is None
    assert tfc.Penalty(1.0).default_dual_optimizer() is None
    default = tfc.Lagrangian().default_dual_optimizer()
    assert isinstance(default, tfc.optimizers.ScaledAscent)
    assert default.get_config() == {"learning_rate": 1.0, "kp": 3.0}


# ---------------------------------------------------------------------------
# The `lagrangian` log: f + Σ ψ(v) at dataset-level values.
# ---------------------------------------------------------------------------
def rate_problem(n, seed):
    """`n` points in 2-D, labels from the first feature, a logistic model
    without constraints yet."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    inputs = keras.Input((2,))
    model = tfc.ConstrainedModel(
        inputs, keras.layers.Dense(1, activation="sigmoid")(inputs)
    )
    return x, y, model


@pytest.mark.parametrize("kind", ["<=", "=="])
@pytest.mark.parametrize(
    "formulation", ["lagrangian", "augmented", "quadratic"]
)
def test_lagrangian_log_is_the_loss_plus_psi_at_dataset_values(
    formulation, kind
):
    x, y, model = rate_problem(40, seed=0)
    model.add_constraint(
        mean_prediction, kind, 0.2, name="rate", multiplier_init=0.7
    )
    lam, c = 0.7, 2.0
    formulations = {
        "lagrangian": tfc.Lagrangian(),
        "augmented": tfc.AugmentedLagrangian(penalty=c),
        "quadratic": tfc.QuadraticPenalty(penalty=c),
    }
    model.compile(
        optimizer="sgd", loss="mse", formulation=formulations[formulation]
    )
    logs = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    v = float(np.mean(model.predict(x, verbose=0))) - 0.2
    if formulation == "lagrangian":
        psi = lam * v
    elif formulation == "augmented" and kind == "==":
        psi = lam * v + c / 2 * v**2
    elif formulation == "augmented":
        psi = (max(lam + c * v, 0.0) ** 2 - lam**2) / (2 * c)
    else:
        psi = c / 2 * (v if kind == "==" else max(v, 0.0)) ** 2
    assert logs["lagrangian"] == pytest.approx(logs["loss"] + psi, abs=1e-5)


def test_lagrangian_is_logged_per_epoch_for_training_and_validation():
    x, y, model = rate_problem(32, seed=1)
    model.add_constraint(mean_prediction, "<=", 0.2, name="rate")
    model.compile(optimizer="sgd", loss="mse", dual_optimizer=0.5)
    history = model.fit(
        x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0
    )
    assert len(history.history["lagrangian"]) == 2
    assert len(history.history["val_lagrangian"]) == 2
    # After training, λ > 0 and the rate is violated: L > f.
    last = {key: values[-1] for key, values in history.history.items()}
    assert last["rate_multiplier"] > 0 and last["rate_violation"] > 0
    assert last["lagrangian"] > last["loss"]
