"""νPI and Keras optimizers as dual optimizers.

νPI (Sohrabi et al., 2024), with `e_t` the violation at dual step `t`:

    ξ_t     = ν·ξ_{t-1} + (1 - ν)·e_t,       ξ_{-1} = e_0,
    λ_{t+1} = [λ_t + η·(κ_i·e_t + κ_p·(ξ_t - ξ_{t-1}))]₊.

Trajectories below are computed by hand in the comments. The violation
sequence is fed through the data: the constraint's value is the batch's
input, which the weights do not affect, so `e_t = value_t - bound` exactly.
"""

import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc
from tfconstrain.optimizers import NuPI

# Constraints fed by the data (not by the weights) fix the violation
# sequence exactly; the model rightly warns that the primal step cannot move
# them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Constraint 'c' does not depend on any trainable weight"
)


def input_value(batch):
    return tf.reduce_mean(batch.x[:, 0])


def multiplier_trajectory(
    violations, dual_optimizer, kind="<=", multiplier_init=0.0
):
    """Multipliers after each dual step for a given violation sequence."""
    inputs = keras.Input((1,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    bound = 1.0
    model.add_constraint(
        input_value, kind, bound, name="c", multiplier_init=multiplier_init
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="mse",
        dual_optimizer=dual_optimizer,
    )
    sign = -1.0 if kind == ">=" else 1.0
    values = bound + sign * np.asarray(violations, "float32")[:, None]
    trajectory = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            trajectory.append(float(model.multipliers["c"].numpy()))

    model.fit(
        values,
        np.zeros_like(values),
        batch_size=1,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[Record()],
    )
    return trajectory


# e = (1, 0.5, -0.2), η = 0.5, λ₀ = 0, ξ_{-1} = e_0 = 1.
# (κ_p, κ_i, ν) = (1, 1, 0): ξ = e.
#   t=0: ξ₀ = 1,    step = 1 + (1 - 1)          = 1     → λ₁ = 0.5
#   t=1: ξ₁ = 0.5,  step = 0.5 + (0.5 - 1)      = 0     → λ₂ = 0.5
#   t=2: ξ₂ = -0.2, step = -0.2 + (-0.2 - 0.5)  = -0.9  → λ₃ = 0.05
# (κ_p, κ_i, ν) = (1, 1, 0.5):
#   t=0: ξ₀ = 0.5·1 + 0.5·1 = 1,               step = 1     → λ₁ = 0.5
#   t=1: ξ₁ = 0.5·1 + 0.5·0.5 = 0.75,  step = 0.5 + (0.75 - 1) = 0.25
#                                                           → λ₂ = 0.625
#   t=2: ξ₂ = 0.5·0.75 + 0.5·(-0.2) = 0.275,
#        step = -0.2 + (0.275 - 0.75) = -0.675             → λ₃ = 0.2875
@pytest.mark.parametrize(
    "kp, ki, nu, expected",
    [
        (1.0, 1.0, 0.0, [0.5, 0.5, 0.05]),
        (1.0, 1.0, 0.5, [0.5, 0.625, 0.2875]),
    ],
)
def test_nupi_matches_hand_computed_three_step_trajectory(kp, ki, nu, expected):
    trajectory = multiplier_trajectory(
        [1.0, 0.5, -0.2], NuPI(0.5, kp=kp, ki=ki, nu=nu)
    )
    np.testing.assert_allclose(trajectory, expected, atol=1e-6)


def test_nupi_two_step_trajectory_on_a_greater_equal_constraint():
    # Same maths for ">=": e = bound - value. e = (0.4, 0.1), η = 1,
    # (κ_p, κ_i, ν) = (1, 1, 0): λ₁ = 0.4; ξ₁ = 0.1,
    # step = 0.1 + (0.1 - 0.4) = -0.2 → λ₂ = 0.2.
    trajectory = multiplier_trajectory(
        [0.4, 0.1], NuPI(1.0, kp=1.0, ki=1.0), kind=">="
    )
    np.testing.assert_allclose(trajectory, [0.4, 0.2], atol=1e-6)


def test_nupi_state_keeps_evolving_while_the_multiplier_is_projected():
    # (κ_p, κ_i, ν) = (1, 1, 0), η = 0.5, e = (1, -2, 0.5):
    #   λ₁ = 0.5;  step₁ = -2 + (-2 - 1) = -5 → λ₂ = [0.5 - 2.5]₊ = 0;
    #   step₂ = 0.5 + (0.5 + 2) = 3 → λ₃ = 0 + 1.5 = 1.5.
    # The controller's memory is of errors, not of the projected λ.
    trajectory = multiplier_trajectory(
        [1.0, -2.0, 0.5], NuPI(0.5, kp=1.0, ki=1.0)
    )
    np.testing.assert_allclose(trajectory, [0.5, 0.0, 1.5], atol=1e-6)


def test_nupi_equality_multiplier_is_not_projected():
    # Same as above on an equality: λ₂ = 0.5 - 2.5 = -2, λ₃ = -2 + 1.5.
    trajectory = multiplier_trajectory(
        [1.0, -2.0, 0.5], NuPI(0.5, kp=1.0, ki=1.0), kind="=="
    )
    np.testing.assert_allclose(trajectory, [0.5, -2.0, -0.5], atol=1e-6)


@pytest.mark.parametrize("kp, nu", [(1.0, 0.0), (5.0, 0.5), (40.0, 0.9)])
def test_nupi_first_step_is_gradient_ascent(kp, nu):
    # ξ_{-1} = e_0 makes the proportional term vanish at t = 0:
    # λ₁ = λ₀ + η·κ_i·e₀ = 0.2 + 0.1·2·0.7 = 0.34, whatever κ_p and ν.
    trajectory = multiplier_trajectory(
        [0.7], NuPI(0.1, kp=kp, ki=2.0, nu=nu), multiplier_init=0.2
    )
    assert trajectory[0] == pytest.approx(0.34, abs=1e-6)


def test_nupi_with_zero_gains_except_integral_is_gradient_ascent():
    violations = [0.3, -0.1, 0.25, -0.6, 0.05, 1.0, -0.2]
    plain = multiplier_trajectory(violations, 0.2)
    nupi = multiplier_trajectory(violations, NuPI(0.2, kp=0.0, ki=1.0))
    np.testing.assert_array_equal(nupi, plain)
    # Hand check of plain ascent: [0.06, 0.04, 0.09, 0 (projected), 0.01,
    # 0.21, 0.17].
    np.testing.assert_allclose(
        plain, [0.06, 0.04, 0.09, 0.0, 0.01, 0.21, 0.17], atol=1e-6
    )


def test_nupi_masked_entries_keep_their_state():
    # Direct use of the protocol: entry 1 has no data at step 0.
    variables = {}

    def create_state(name, shape, initial_value):
        variables[name] = keras.Variable(
            np.full(shape, initial_value, "float32"), name=name
        )
        return variables[name]

    multiplier = keras.Variable(np.zeros(2, "float32"))
    nupi = NuPI(1.0, kp=1.0)
    nupi.build({"c": multiplier}, create_state)
    proposed = nupi.propose(
        "c",
        multiplier,
        tf.constant([1.0, 5.0]),
        tf.constant([True, False]),
    )
    np.testing.assert_allclose(variables["c_nupi_xi"].numpy(), [1.0, 0.0])
    np.testing.assert_allclose(variables["c_nupi_started"].numpy(), [1, 0])
    assert proposed.numpy()[0] == pytest.approx(1.0)
    # Entry 1's first step with data is again plain ascent.
    multiplier.assign([1.0, 0.0])
    proposed = nupi.propose(
        "c", multiplier, tf.constant([0.5, 2.0]), tf.constant([True, True])
    )
    # Entry 0: 1 + (0.5 + (0.5 - 1)) = 1.0; entry 1: 0 + 2 = 2.
    np.testing.assert_allclose(proposed.numpy(), [1.0, 2.0], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=0.0),
        dict(learning_rate=0.1, kp=-1.0),
        dict(learning_rate=0.1, ki=float("nan")),
        dict(learning_rate=0.1, nu=1.0),
        dict(learning_rate=0.1, nu=-0.1),
    ],
)
def test_nupi_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        NuPI(**kwargs)


def test_nupi_config_round_trip():
    nupi = NuPI(0.3, kp=40.0, ki=0.5, nu=0.2)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(nupi)
    )
    assert isinstance(restored, NuPI)
    assert restored.get_config() == nupi.get_config()


# ---------------------------------------------------------------------------
# Keras optimizers as dual optimizers: ascent, then projection.
# ---------------------------------------------------------------------------


def test_keras_sgd_is_projected_gradient_ascent():
    violations = [0.3, -0.1, 0.25, -0.6, 0.05, 1.0, -0.2]
    plain = multiplier_trajectory(violations, 0.2)
    sgd = multiplier_trajectory(violations, keras.optimizers.SGD(0.2))
    np.testing.assert_allclose(sgd, plain, atol=1e-7)


def test_keras_optimizer_learning_rate_schedule_advances_per_dual_step():
    # Constant violation 1 and learning rates 0.1, 0.05, 0.025:
    # λ = 0.1, 0.15, 0.175.
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.1, decay_steps=1, decay_rate=0.5
    )
    trajectory = multiplier_trajectory(
        [1.0, 1.0, 1.0], keras.optimizers.SGD(schedule)
    )
    np.testing.assert_allclose(trajectory, [0.1, 0.15, 0.175], atol=1e-6)


def test_keras_adam_multiplier_is_projected_onto_nonnegatives():
    # Adam's first step is ≈ ±η whatever the violation's size; a negative
    # violation from λ = 0 must stay projected at 0.
    with pytest.warns(UserWarning, match="momentum"):
        trajectory = multiplier_trajectory(
            [1.0, -5.0, -5.0, -5.0], keras.optimizers.Adam(0.1)
        )
    assert trajectory[0] == pytest.approx(0.1, abs=1e-4)
    assert min(trajectory) >= 0.0
    assert trajectory[-1] == 0.0


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.Adam(0.1),
        lambda: keras.optimizers.RMSprop(0.1, momentum=0.5),
    ],
    ids=["sgd_momentum", "adam", "rmsprop_momentum"],
)
def test_momentum_in_the_dual_optimizer_warns(optimizer):
    inputs = keras.Input((1,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    model.add_constraint(input_value, "<=", 1.0, name="c")
    with pytest.warns(UserWarning, match="momentum"):
        model.compile(optimizer="sgd", loss="mse", dual_optimizer=optimizer())


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.1),
        lambda: keras.optimizers.Adam(0.1, beta_1=0.0),
        lambda: keras.optimizers.Adagrad(0.1),
    ],
    ids=["sgd", "adam_no_momentum", "adagrad"],
)
def test_no_momentum_no_warning(optimizer):
    inputs = keras.Input((1,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    model.add_constraint(input_value, "<=", 1.0, name="c")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.compile(optimizer="sgd", loss="mse", dual_optimizer=optimizer())


def test_keras_optimizer_with_clipping_is_rejected():
    with pytest.raises(ValueError, match="clipnorm"):
        tfc.optimizers.get(keras.optimizers.SGD(0.1, clipnorm=1.0))


# ---------------------------------------------------------------------------
# Maximum-entropy die with νPI.
# ---------------------------------------------------------------------------


class Logits(keras.layers.Layer):
    def __init__(self, n, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=(n,), initializer="zeros", name="w")

    def call(self, inputs):
        return tf.zeros((tf.shape(inputs)[0], 1)) + self.w


def negative_entropy(y_true, y_pred):
    p = tf.nn.softmax(y_pred, axis=-1)
    return tf.reduce_sum(p * tf.math.log(p), axis=-1)


def die_distribution(mean):
    """Max-entropy p on {1..6} with the given mean: p_i ∝ exp(β·i)."""
    faces = np.arange(1, 7)

    def mean_of(beta):
        weights = np.exp(beta * faces)
        return (faces * weights).sum() / weights.sum()

    low, high = -10.0, 10.0
    for _ in range(200):  # bisection; mean_of is increasing in β
        middle = 0.5 * (low + high)
        low, high = (middle, high) if mean_of(middle) < mean else (low, middle)
    beta = 0.5 * (low + high)
    weights = np.exp(beta * faces)
    return weights / weights.sum(), beta


def test_max_entropy_die_with_nupi():
    # max -Σ p log p  s.t.  Σ p = 1,  Σ i·p_i = 4.5,  p = softmax(w).
    # KKT: log p_i + 1 + μ₁ + μ₂·i = 0 ⇒ p_i ∝ exp(-μ₂·i): μ₂* = -β.
    p_star, beta = die_distribution(4.5)
    np.testing.assert_allclose(
        p_star,
        [0.05435, 0.07877, 0.11416, 0.16545, 0.23977, 0.34749],
        atol=1e-5,
    )
    inputs = keras.Input((1,))
    logits = Logits(6)
    model = tfc.ConstrainedModel(inputs, logits(inputs))
    faces = tf.range(1, 7, dtype=tf.float32)
    model.add_constraint(
        lambda b: tf.reduce_sum(tf.nn.softmax(b.y_pred[0])),
        "==",
        1.0,
        name="total",
    )
    model.add_constraint(
        lambda b: tf.reduce_sum(faces * tf.nn.softmax(b.y_pred[0])),
        "==",
        4.5,
        name="mean",
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1.0),
        loss=negative_entropy,
        dual_optimizer=NuPI(0.1, kp=1.0, nu=0.5),
        steps_per_execution=500,
    )
    dummy = np.zeros((1, 1), "float32")
    data = tf.data.Dataset.from_tensors((dummy, dummy)).repeat(2000)
    model.fit(data, epochs=1, verbose=0, shuffle=False)
    p = tf.nn.softmax(logits.w).numpy()
    np.testing.assert_allclose(p, p_star, atol=1e-3)
    assert model.multipliers["mean"].numpy() == pytest.approx(-beta, abs=1e-2)
    assert math.isclose(p.sum(), 1.0, abs_tol=1e-5)
