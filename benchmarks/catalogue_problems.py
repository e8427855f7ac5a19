"""The catalogue of constrained problems used to choose tfconstrain's defaults.

Every problem is a builder that returns a fresh model (constraints added, not
compiled), the primal optimizer and loss, and the data to fit and evaluate
on; plus the budget and tolerances it is judged by:

- `epochs` (`quick_epochs` for `--quick`): the epoch budget;
- `train_slack` / `val_slack`: a run is *feasible* when every constraint's
  dataset-level violation (from `evaluate` of the final weights, i.e. the
  last iterate) is at most this slack on the training data, and on the
  validation data where the problem has some;
- `margin`: a feasible run is *good* when its training objective `f` is at
  most `margin` above the best feasible objective found for that problem
  in the whole study (every method, every step size and penalty).

The problems span the scales a default must cope with: the multipliers at
the solution range from about 0.005 (a constraint in units of 100) to about
1000 (a constraint in units of 0.001). Closed-form solutions are stated
where they exist.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfconstrain as tfc  # noqa: E402


@dataclass
class Setup:
    """One freshly built instance of a problem.

    Builders take the number of epochs (for learning-rate schedules).

    Attributes:
        model: A `tfc.ConstrainedModel` with its constraints, not compiled.
        optimizer: The primal Keras optimizer (fresh).
        loss: The Keras loss (the objective `f`).
        train: `fit` keyword arguments (`x`, `y`, `batch_size`, ...).
        evaluate_train: `evaluate` keyword arguments for the training data.
        evaluate_val: `evaluate` keyword arguments for validation data, or
            `None`.
        steps_per_execution: Passed to `compile`.
    """

    model: Any
    optimizer: Any
    loss: Any
    train: dict
    evaluate_train: dict
    evaluate_val: dict | None = None
    steps_per_execution: int = 1


@dataclass
class Problem:
    """A catalogue entry (see the module docstring for the criteria)."""

    name: str
    description: str
    build: Callable[[int], Setup]
    epochs: int
    quick_epochs: int
    train_slack: float
    val_slack: float | None
    margin: float
    natural_scale: str
    solution: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# Point problems: the weights are the decision vector x (full batch).
# --------------------------------------------------------------------------


class Box(keras.constraints.Constraint):
    """Projection onto `[lower, upper]` after every primal step."""

    def __init__(self, lower, upper):
        self.lower = np.asarray(lower, "float32")
        self.upper = np.asarray(upper, "float32")

    def __call__(self, w):
        return tf.clip_by_value(w, self.lower, self.upper)


class Point(keras.layers.Layer):
    """Holds x; outputs it on every row of the (dummy) batch."""

    def __init__(self, initial, box=None, **kwargs):
        super().__init__(**kwargs)
        initial = np.asarray(initial, "float32")
        self.x = self.add_weight(
            shape=initial.shape,
            initializer=keras.initializers.Constant(initial),
            constraint=box,
            name="x",
        )

    def call(self, inputs):
        return tf.zeros((tf.shape(inputs)[0], 1)) + self.x


def _point_setup(
    initial, objective, constraints, learning_rate, steps, box=None
) -> Setup:
    inputs = keras.Input((1,))
    model = tfc.ConstrainedModel(inputs, Point(initial, box)(inputs))
    for constraint in constraints:
        model.add_constraint(constraint)
    dummy = np.zeros((1, 1), "float32")
    one = tf.data.Dataset.from_tensors((dummy, dummy))
    return Setup(
        model=model,
        optimizer=keras.optimizers.SGD(learning_rate),
        loss=lambda y_true, y_pred: objective(y_pred[0]),
        train={"x": one.repeat(steps), "shuffle": False},
        evaluate_train={"x": one},
        steps_per_execution=steps,
    )


def kkt_active(epochs: int = 1) -> Setup:
    """min (x1-2)² + (x2-1)² s.t. x1 + x2 <= 2, x1 - x2 <= 3.

    The first constraint is active: x* = (1.5, 0.5), λ* = (1, 0), f* = 0.5.
    """
    return _point_setup(
        [0.0, 0.0],
        lambda x: (x[0] - 2.0) ** 2 + (x[1] - 1.0) ** 2,
        [
            tfc.FunctionConstraint(
                lambda b: b.y_pred[0, 0] + b.y_pred[0, 1],
                "<=",
                2.0,
                name="sum",
            ),
            tfc.FunctionConstraint(
                lambda b: b.y_pred[0, 0] - b.y_pred[0, 1],
                "<=",
                3.0,
                name="difference",
            ),
        ],
        learning_rate=0.05,
        steps=100,
    )


def kkt_equality(epochs: int = 1) -> Setup:
    """min x1² + x2² s.t. x1 + 2·x2 == 1 and x1 >= 0.5.

    Without the bound the minimum is (0.2, 0.4); with it, x* = (0.5, 0.25),
    f* = 0.3125; from 2x - μ(1, 2) - λ(1, 0) = 0: μ* = 0.25, λ* = 0.75
    (sign conventions of the Lagrangian `f + μ·h + λ·v`: μ = -0.25).
    """
    return _point_setup(
        [0.0, 0.0],
        lambda x: x[0] ** 2 + x[1] ** 2,
        [
            tfc.FunctionConstraint(
                lambda b: b.y_pred[0, 0] + 2.0 * b.y_pred[0, 1],
                "==",
                1.0,
                name="line",
            ),
            tfc.FunctionConstraint(
                lambda b: b.y_pred[0, 0], ">=", 0.5, name="lower"
            ),
        ],
        learning_rate=0.05,
        steps=100,
    )


EXAMPLE1_EPSILON = 0.5


def paper_example1(epochs: int = 1) -> Setup:
    """min (1+y²)·cos x s.t. (1+y²)·sin x <= ε, x ∈ [0, π/2], ε = 0.5.

    x* = arcsin ε, y* = 0, λ* = ε/√(1-ε²) ≈ 0.577, f* = √(1-ε²) ≈ 0.866.
    The Lagrangian is concave in x: plain ascent oscillates.
    """
    return _point_setup(
        [0.5, 0.5],
        lambda z: (1.0 + z[1] ** 2) * tf.cos(z[0]),
        [
            tfc.FunctionConstraint(
                lambda b: (1.0 + b.y_pred[0, 1] ** 2) * tf.sin(b.y_pred[0, 0]),
                "<=",
                EXAMPLE1_EPSILON,
                name="g",
            )
        ],
        learning_rate=0.01,
        steps=500,
        box=Box([0.0, -1e6], [math.pi / 2, 1e6]),
    )


# --------------------------------------------------------------------------
# Rate constraint on four Gaussians (paper Fig. 2).
# --------------------------------------------------------------------------


def four_gaussians(seed: int, per_cluster: int = 100):
    """Class 1 around (0, 1), (-1, 0); class 0 around (0, -1), (1, 0)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 1], [-1, 0], [0, -1], [1, 0]], "float32")
    x = np.concatenate(
        [
            c + math.sqrt(0.05) * rng.standard_normal((per_cluster, 2))
            for c in centers
        ]
    ).astype("float32")
    y = np.repeat([1.0, 1.0, 0.0, 0.0], per_cluster).astype("float32")
    return x, y[:, None]


def rate_four_gaussians(epochs: int = 1) -> Setup:
    """Predicted class-0 rate >= 70 % (hard 0/1 rate, sigmoid proxy).

    A linear model; at least 80 of the 200 class-1 points must be predicted
    0, so accuracy is at most 80 %.
    """
    x, y = four_gaussians(0)
    x_val, y_val = four_gaussians(1)
    inputs = keras.Input((2,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    # Predicted class 0 >= 70 %  <=>  positive-prediction rate <= 30 %.
    model.add_constraint(
        tfc.constraints.PositivePredictionRate(from_logits=True) <= 0.3
    )
    full = tf.data.Dataset.from_tensors((x, y))
    return Setup(
        model=model,
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        train={"x": full.repeat(250), "shuffle": False},
        evaluate_train={"x": full},
        evaluate_val={"x": tf.data.Dataset.from_tensors((x_val, y_val))},
        steps_per_execution=250,
    )


# --------------------------------------------------------------------------
# UCI Adult (shipped): demographic parity and recall.
# --------------------------------------------------------------------------

_ADULT = {}


def _adult():
    if not _ADULT:
        _ADULT["data"] = tfc.datasets.load_adult()
    return _ADULT["data"]


def _adult_setup(constraint, epochs: int) -> Setup:
    """A 16-unit MLP, Adam with a cosine decay over the run (batch 512)."""
    data = _adult()
    inputs = keras.Input((data.x_train.shape[1],), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(constraint)
    train = {"features": data.x_train, "sex": data.sex_train}
    test = {"features": data.x_test, "sex": data.sex_test}
    return Setup(
        model=model,
        optimizer=keras.optimizers.Adam(
            keras.optimizers.schedules.CosineDecay(
                2e-3, epochs * -(-len(data.y_train) // 512)
            )
        ),
        loss="binary_crossentropy",
        train={"x": train, "y": data.y_train, "batch_size": 512},
        evaluate_train={"x": train, "y": data.y_train, "batch_size": 8192},
        evaluate_val={"x": test, "y": data.y_test, "batch_size": 8192},
        steps_per_execution=20,
    )


def adult_dp(epochs: int = 8) -> Setup:
    """Demographic parity gap between sexes <= 0.05 (unconstrained ≈ 0.18)."""
    return _adult_setup(
        tfc.constraints.DemographicParity("sex") <= 0.05, epochs
    )


def adult_recall(epochs: int = 8) -> Setup:
    """Recall >= 0.95 (unconstrained ≈ 0.6)."""
    return _adult_setup(tfc.constraints.Recall() >= 0.95, epochs)


# --------------------------------------------------------------------------
# L0 gates on digits: exactly half of the hidden units.
# --------------------------------------------------------------------------

_DIGITS = {}


def _digits():
    if not _DIGITS:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        order = np.random.RandomState(0).permutation(len(x))
        x, y = x[order], digits.target[order]
        _DIGITS["data"] = (x[:1400], y[:1400]), (x[1400:], y[1400:])
    return _DIGITS["data"]


def l0_digits(epochs: int = 1) -> Setup:
    """Hidden-unit density == 0.5 with hard-concrete gates (64 units)."""
    (x, y), (x_val, y_val) = _digits()
    inputs = keras.Input((64,))
    gated = tfc.layers.L0Dense(
        64, activation="relu", target_density=0.5, name="hidden"
    )
    outputs = keras.layers.Dense(10, activation="softmax")(gated(inputs))
    model = tfc.ConstrainedModel(inputs, outputs)
    return Setup(
        model=model,
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        train={"x": x, "y": y, "batch_size": 128},
        evaluate_train={"x": x, "y": y, "batch_size": 2048},
        evaluate_val={"x": x_val, "y": y_val, "batch_size": 2048},
        steps_per_execution=11,
    )


# --------------------------------------------------------------------------
# Feasible learning on two moons: every per-sample loss <= ε.
# --------------------------------------------------------------------------

MOONS_EPSILON = 0.3


def _per_example_bce(batch):
    return keras.losses.binary_crossentropy(batch.y, batch.y_pred)


def moons_feasible(epochs: int = 1) -> Setup:
    """Per-sample BCE <= 0.3 for all 200 training points (200 multipliers)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(200, noise=0.1, random_state=0)
    x, y = x.astype("float32"), y[:, None].astype("float32")
    inputs = keras.Input((2,), name="features")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        tfc.constraints.PerSampleConstraint(
            _per_example_bce, num_samples=200, name="each"
        )
        <= MOONS_EPSILON
    )
    data = {"features": x, "sample_id": np.arange(200)}
    dataset = tf.data.Dataset.from_tensor_slices((data, y)).batch(100)
    return Setup(
        model=model,
        optimizer=keras.optimizers.Adam(0.01),
        loss="binary_crossentropy",
        train={"x": dataset.repeat(10), "shuffle": False},
        evaluate_train={"x": dataset},
        steps_per_execution=20,
    )


# --------------------------------------------------------------------------
# Robustness and two scale extremes on one synthetic regression.
# --------------------------------------------------------------------------

PRICE_MEAN, PRICE_STD = 300.0, 100.0


def _regression(seed: int, n: int = 1000):
    """y = sin(2·x1) + x2·x3 + 0.5·x4 + noise, x ~ N(0, I_8)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype("float32")
    y = (
        np.sin(2.0 * x[:, 0])
        + x[:, 1] * x[:, 2]
        + 0.5 * x[:, 3]
        + 0.1 * rng.standard_normal(n)
    )
    return x, y.astype("float32")[:, None]


def _regression_model():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(32, activation="tanh", name="first")(inputs)
    outputs = keras.layers.Dense(1)(hidden)
    return tfc.ConstrainedModel(inputs, outputs)


def _regression_setup(model, batch_size=100, spe=10) -> Setup:
    x, y = _regression(0)
    x_val, y_val = _regression(1)
    return Setup(
        model=model,
        optimizer=keras.optimizers.Adam(0.01),
        loss="mse",
        train={"x": x, "y": y, "batch_size": batch_size},
        evaluate_train={"x": x, "y": y, "batch_size": 1000},
        evaluate_val={"x": x_val, "y": y_val, "batch_size": 1000},
        steps_per_execution=spe,
    )


def robust_gradient_norm(epochs: int = 1) -> Setup:
    """Mean input-gradient norm of the regressor <= 0.5 (unconstrained ≈ 1.3).

    The function has gradient norm ≈ 1.6 on average, so the constraint binds.
    """
    model = _regression_model()
    model.add_constraint(tfc.constraints.InputGradientNorm() <= 0.5)
    return _regression_setup(model)


def _mean_price(batch):
    return tf.reduce_mean(PRICE_MEAN + PRICE_STD * batch.y_pred[:, 0])


def scale_large(epochs: int = 1) -> Setup:
    """Mean predicted price <= 290 (units of $1000; unconstrained ≈ 300).

    The model predicts standardised prices; the constraint is stated in
    dollars (thousands): its values are ≈ 300 and a violation of 1 % is 3.
    Since Σ ŷ = Σ y for the least-squares fit and `c = 300 + 100·mean(ŷ)`,
    the solution shifts every prediction by -0.1 (plus the data's own mean):
    λ* = 2·0.1/100 ≈ 0.002 for the MSE on standardised targets.
    """
    model = _regression_model()
    model.add_constraint(
        tfc.FunctionConstraint(_mean_price, "<=", 290.0, name="mean_price")
    )
    return _regression_setup(model)


def scale_small(epochs: int = 1) -> Setup:
    """Mean squared kernel weight of the first layer <= 0.005.

    Glorot initialisation starts at ≈ 0.05 and the unconstrained fit goes
    higher; values are of order 0.001-0.01, so λ* is in the hundreds.
    """
    model = _regression_model()
    kernel = model.get_layer("first").kernel
    model.add_constraint(
        tfc.FunctionConstraint(
            lambda batch: tf.reduce_mean(tf.square(kernel)),
            "<=",
            0.005,
            name="weight_budget",
        )
    )
    return _regression_setup(model)


# --------------------------------------------------------------------------

PROBLEMS = [
    Problem(
        "kkt_active",
        kkt_active.__doc__.splitlines()[0],
        kkt_active,
        epochs=30,
        quick_epochs=10,
        train_slack=1e-3,
        val_slack=None,
        margin=0.01,
        natural_scale="1",
        solution={"f": 0.5, "sum": 1.0, "difference": 0.0},
    ),
    Problem(
        "kkt_equality",
        kkt_equality.__doc__.splitlines()[0],
        kkt_equality,
        epochs=30,
        quick_epochs=10,
        train_slack=1e-3,
        val_slack=None,
        margin=0.01,
        natural_scale="1",
        solution={"f": 0.3125, "line": -0.25, "lower": 0.75},
    ),
    Problem(
        "paper_example1",
        paper_example1.__doc__.splitlines()[0],
        paper_example1,
        epochs=20,
        quick_epochs=8,
        train_slack=1e-3,
        val_slack=None,
        margin=0.01,
        natural_scale="1",
        solution={"f": math.sqrt(0.75), "g": 0.5 / math.sqrt(0.75)},
    ),
    Problem(
        "rate_4gaussians",
        rate_four_gaussians.__doc__.splitlines()[0],
        rate_four_gaussians,
        epochs=12,
        quick_epochs=6,
        train_slack=0.005,
        val_slack=0.05,
        margin=0.02,
        natural_scale="0.1-1",
    ),
    Problem(
        "adult_dp",
        adult_dp.__doc__.splitlines()[0],
        adult_dp,
        epochs=8,
        quick_epochs=3,
        train_slack=0.01,
        val_slack=0.02,
        margin=0.01,
        natural_scale="0.05-0.2",
    ),
    Problem(
        "adult_recall",
        adult_recall.__doc__.splitlines()[0],
        adult_recall,
        epochs=8,
        quick_epochs=3,
        train_slack=0.01,
        val_slack=0.02,
        margin=0.01,
        natural_scale="0.1-1",
    ),
    Problem(
        "l0_digits",
        l0_digits.__doc__.splitlines()[0],
        l0_digits,
        epochs=40,
        quick_epochs=15,
        train_slack=0.02,
        val_slack=0.02,
        margin=0.05,
        natural_scale="0.5",
    ),
    Problem(
        "moons_feasible",
        moons_feasible.__doc__.splitlines()[0],
        moons_feasible,
        epochs=30,
        quick_epochs=10,
        train_slack=0.02,
        val_slack=None,
        margin=0.02,
        natural_scale="0.3 (per sample)",
    ),
    Problem(
        "robust_gradnorm",
        robust_gradient_norm.__doc__.splitlines()[0],
        robust_gradient_norm,
        epochs=30,
        quick_epochs=10,
        train_slack=0.02,
        val_slack=0.05,
        margin=0.02,
        natural_scale="1",
    ),
    Problem(
        "scale_large",
        scale_large.__doc__.splitlines()[0],
        scale_large,
        epochs=30,
        quick_epochs=10,
        train_slack=1.0,
        val_slack=3.0,
        margin=0.01,
        natural_scale="300",
    ),
    Problem(
        "scale_small",
        scale_small.__doc__.splitlines()[0],
        scale_small,
        epochs=30,
        quick_epochs=10,
        train_slack=2.5e-4,
        val_slack=2.5e-4,
        margin=0.02,
        natural_scale="0.005",
    ),
]

BY_NAME = {problem.name: problem for problem in PROBLEMS}
