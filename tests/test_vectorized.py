"""Scalar constraints as one vector (issue 12): same values as one by one.

Scalar constraints with summed statistics are stacked per kind class
(inequalities, equalities) in the primal term and the dual rule
(`tfconstrain.evaluation.vector_groups`). The maths is elementwise, so the
vectorized path must reproduce the per-constraint path: weights,
multipliers, penalties and logs, for every formulation and dual optimizer,
per step and per epoch, on one device and on two replicas.
"""

import keras
import numpy as np
import pytest
from problems import mean_prediction

import tfconstrain as tfc
from tfconstrain.evaluation import vector_groups


def second_moment(batch):
    return keras.ops.mean(keras.ops.square(batch.y_pred))


def first_feature_moment(batch):
    prediction = keras.ops.cast(batch.y_pred[:, 0], batch.x.dtype)
    return keras.ops.mean(prediction * batch.x[:, 0])


def third_moment(batch):
    return keras.ops.mean(batch.y_pred**3)


def two_halves(batch):
    half = keras.ops.shape(batch.y_pred)[0] // 2
    return keras.ops.stack(
        [
            keras.ops.mean(batch.y_pred[:half]),
            keras.ops.mean(batch.y_pred[half:]),
        ]
    )


def add_constraints(model):
    # Scalar inequalities of both senses, two scalar equalities, a built-in
    # rate, and a vector constraint (a group of its own).
    model.add_constraint(mean_prediction, "<=", 0.3, name="mean")
    model.add_constraint(second_moment, ">=", 0.2, name="second")
    model.add_constraint(tfc.constraints.Recall() >= 0.8)
    model.add_constraint(first_feature_moment, "==", 0.05, name="feature")
    model.add_constraint(third_moment, "==", 0.04, name="third")
    model.add_constraint(two_halves, "<=", [0.35, 0.4], name="halves")


def build(formulation, dual_optimizer, vectorize, strategy=None):
    def make():
        keras.utils.set_random_seed(3)
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
        add_constraints(model)
        model._tfc.vectorize = vectorize
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss="binary_crossentropy",
            formulation=formulation(),
            dual_optimizer=dual_optimizer(),
        )
        return model

    if strategy is None:
        return make()
    with strategy.scope():
        return make()


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x[:, :1] + 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def state(model):
    numpy = keras.ops.convert_to_numpy
    return (
        [numpy(w) for w in model.get_weights()],
        {k: numpy(v) for k, v in model.multipliers.items()},
        {k: numpy(v) for k, v in model.penalties.items()},
    )


def assert_same(first, second, history_a, history_b):
    weights_a, multipliers_a, penalties_a = first
    weights_b, multipliers_b, penalties_b = second
    # The vector path does the same IEEE operations (elementwise products,
    # sums, maxima) on the same numbers; only the primal term's sum over
    # constraints is one reduction instead of a chain of additions. Its
    # gradient with respect to each violation is that constraint's weight
    # either way, so the weights and multipliers are equal bit for bit.
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_array_equal(a, b)
    assert multipliers_a.keys() == multipliers_b.keys()
    for name in multipliers_a:
        np.testing.assert_array_equal(multipliers_a[name], multipliers_b[name])
    assert penalties_a.keys() == penalties_b.keys()
    for name in penalties_a:
        np.testing.assert_array_equal(penalties_a[name], penalties_b[name])
    assert history_a.keys() == history_b.keys()
    for key in history_a:
        np.testing.assert_array_equal(history_a[key], history_b[key])


SETUPS = {
    "ascent": (tfc.Lagrangian, lambda: 0.2),
    "capped ascent": (lambda: tfc.Lagrangian(max_multiplier=0.3), lambda: 2.0),
    "default": (tfc.Lagrangian, lambda: None),
    "nupi": (tfc.Lagrangian, lambda: tfc.optimizers.NuPI(0.1, kp=0.5)),
    "keras adam": (tfc.Lagrangian, lambda: keras.optimizers.Adam(0.05)),
    "augmented lagrangian": (
        lambda: tfc.AugmentedLagrangian(penalty=0.5, penalty_growth=1.5),
        lambda: None,
    ),
    "quadratic penalty": (
        lambda: tfc.QuadraticPenalty(penalty=0.5, penalty_growth=2.0),
        lambda: None,
    ),
}


def fit_both(setup, strategy=None, callbacks=()):
    formulation, dual = SETUPS[setup]
    x, y = data()
    results = []
    for vectorize in (True, False):
        model = build(formulation, dual, vectorize, strategy)
        history = model.fit(
            x,
            y,
            batch_size=16,
            epochs=3,
            verbose=0,
            shuffle=False,
            callbacks=list(callbacks),
        )
        results.append((state(model), history.history))
    return results


@pytest.mark.parametrize("setup", list(SETUPS))
def test_vector_and_per_constraint_paths_agree(setup):
    (first, history_a), (second, history_b) = fit_both(setup)
    assert_same(first, second, history_a, history_b)
    # The multipliers moved: the comparison is not between two idle runs.
    if setup != "quadratic penalty":
        assert any(np.any(value != 0) for value in first[1].values())
    else:
        assert any(value > 0.5 for value in first[2].values())


def test_vector_path_agrees_with_an_epoch_dual_step():
    callback = tfc.MultiplierCallback(update_every="epoch")
    (first, history_a), (second, history_b) = fit_both(
        "ascent", callbacks=[callback]
    )
    assert_same(first, second, history_a, history_b)


@pytest.mark.parametrize("setup", ["ascent", "augmented lagrangian"])
def test_vector_path_agrees_on_two_replicas(mirrored, setup):
    (first, history_a), (second, history_b) = fit_both(setup, mirrored)
    assert_same(first, second, history_a, history_b)


@pytest.mark.parametrize(
    "dual",
    [
        lambda: 0.2,
        lambda: tfc.optimizers.NuPI(0.1, kp=0.5),
        lambda: tfc.optimizers.ScaledAscent(1.0, kp=1.0),
    ],
    ids=["ascent", "nupi", "scaled (the default)"],
)
def test_scalar_constraints_are_grouped_by_kind_class(monkeypatch, dual):
    calls = []
    cls = type(tfc.optimizers.get(dual()))
    original = cls.propose_group

    def spy(self, names, *args, **kwargs):
        calls.append(tuple(names))
        return original(self, names, *args, **kwargs)

    monkeypatch.setattr(cls, "propose_group", spy)
    x, y = data(32)
    for vectorize in (True, False):
        calls.clear()
        model = build(tfc.Lagrangian, dual, vectorize)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        expected = [("mean", "second", "recall"), ("feature", "third")]
        assert calls == (expected if vectorize else [])


def test_groups_keep_order_and_leave_vectors_alone():
    x, y = data(32)
    model = build(tfc.Lagrangian, lambda: 0.2, True)
    from tfconstrain.evaluation import ConstraintStep

    steps = [ConstraintStep(c, None, None, None) for c in model.constraints]
    groups = vector_groups(steps)
    assert [[s.constraint.name for s in g] for g in groups] == [
        ["mean", "second", "recall"],
        ["feature", "third"],
        ["halves"],
    ]
    assert [len(g) for g in vector_groups(steps, vectorize=False)] == [1] * 6


@pytest.mark.parametrize(
    "precision", ["mixed_float16", "mixed_bfloat16", "float64"]
)
def test_vector_path_agrees_under_mixed_precision_and_float64(precision):
    if precision == "float64":
        keras.backend.set_floatx("float64")
    else:
        keras.mixed_precision.set_dtype_policy(precision)
    try:
        (first, history_a), (second, history_b) = fit_both(
            "augmented lagrangian"
        )
    finally:
        keras.backend.set_floatx("float32")
        keras.mixed_precision.set_dtype_policy("float32")
    assert_same(first, second, history_a, history_b)
    # Multipliers keep their dtype contract (float32) whatever the policy.
    assert all(value.dtype == np.float32 for value in first[1].values())
