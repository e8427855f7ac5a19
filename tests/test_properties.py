"""Property-based tests of the contract's conventions (hypothesis)."""

import keras
import numpy as np
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import tfconstrain as tfc
from tfconstrain.dual_step import project as _project

KINDS = st.sampled_from(["<=", ">=", "==", "le", "ge", "eq"])
FLOATS = st.floats(-1e3, 1e3, width=32, allow_subnormal=False)


def vectors(size):
    return st.lists(FLOATS, min_size=size, max_size=size)


@st.composite
def constraint_and_value(draw):
    size = draw(st.integers(0, 4))
    if size == 0:
        bound, value = draw(FLOATS), draw(FLOATS)
    else:
        bound, value = draw(vectors(size)), draw(vectors(size))
    tolerance = draw(st.floats(0, 1, width=32))
    constraint = tfc.FunctionConstraint(
        lambda b: None, draw(KINDS), bound, name="c", tolerance=tolerance
    )
    return constraint, np.asarray(value, np.float32)


@settings(max_examples=200, deadline=None)
@given(constraint_and_value())
def test_violation_sign_conventions(pair):
    constraint, value = pair
    bound = constraint.bound
    violation = constraint.violation(tf.constant(value)).numpy()
    if constraint.kind == ">=":
        np.testing.assert_allclose(violation, bound - value)
    else:
        np.testing.assert_allclose(violation, value - bound)
    positive = constraint.positive_violation(tf.constant(violation)).numpy()
    if constraint.is_equality:
        np.testing.assert_allclose(positive, np.abs(violation))
    else:
        np.testing.assert_allclose(positive, np.maximum(violation, 0))
    assert np.all(positive >= 0)
    # Satisfied (value within the bound up to tolerance) iff v <= tol.
    satisfied = np.all(positive <= constraint.tolerance)
    if constraint.kind == "<=":
        expected = np.all(value <= bound + constraint.tolerance)
    elif constraint.kind == ">=":
        expected = np.all(value >= bound - constraint.tolerance)
    else:
        expected = np.all(np.abs(value - bound) <= constraint.tolerance)
    assert satisfied == expected


@settings(max_examples=100, deadline=None)
@given(
    KINDS,
    st.lists(vectors(3), min_size=1, max_size=12),
    st.sampled_from(["ascent", "nupi"]),
    st.floats(1e-3, 10),
)
def test_inequality_multipliers_stay_non_negative(kind, violations, name, lr):
    constraint = tfc.FunctionConstraint(
        lambda b: None, kind, [0.0, 0.0, 0.0], name="c"
    )
    optimizer = (
        tfc.optimizers.GradientAscent(lr)
        if name == "ascent"
        else tfc.optimizers.NuPI(lr, kp=1.0, nu=0.5)
    )
    multiplier = tf.Variable(tf.zeros(3))
    optimizer.build(
        {"c": multiplier},
        lambda n, shape, init: tf.Variable(tf.fill(shape, init)),
    )
    for violation in violations:
        proposed = optimizer.propose(
            "c", multiplier, tf.constant(violation, tf.float32), None
        )
        multiplier.assign(_project(proposed, constraint, None))
        values = multiplier.numpy()
        assert np.all(np.isfinite(values))
        if not constraint.is_equality:
            assert np.all(values >= 0)


@settings(max_examples=100, deadline=None)
@given(vectors(4), st.floats(0.1, 100), KINDS)
def test_projection_respects_the_cap(values, cap, kind):
    constraint = tfc.FunctionConstraint(
        lambda b: None, kind, [0.0] * 4, name="c"
    )
    projected = _project(tf.constant(values, tf.float32), constraint, cap)
    projected = projected.numpy()
    assert np.all(np.abs(projected) <= cap * (1 + 1e-6))
    if not constraint.is_equality:
        assert np.all(projected >= 0)


@settings(max_examples=8, deadline=None)
@given(
    st.sampled_from(["<=", ">=", "=="]),
    st.floats(0.05, 0.95),
    st.integers(1, 6),
)
def test_report_satisfied_iff_violation_within_tolerance(kind, bound, steps):
    keras.backend.clear_session()
    keras.utils.set_random_seed(steps)
    features = np.random.default_rng(steps).normal(size=(20, 2))
    features = features.astype("float32")
    labels = np.ones((20, 1), "float32")
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda b: keras.ops.mean(b.y_pred), kind, bound, name="rate"
    )
    model.compile(optimizer="sgd", loss="mse", dual_optimizer=1.0)
    model.fit(features, labels, epochs=steps, verbose=0, batch_size=20)
    entry = model.constraint_report((features, labels))["rate"]
    assert entry["satisfied"] == (entry["violation"] <= 1e-4)
    expected_violation = {
        "<=": max(0.0, entry["value"] - bound),
        ">=": max(0.0, bound - entry["value"]),
        "==": abs(entry["value"] - bound),
    }[kind]
    np.testing.assert_allclose(
        entry["violation"], expected_violation, atol=1e-6
    )
    if kind != "==":
        assert entry["multiplier"] >= 0


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["<=", ">="]),
    st.integers(0, 4).flatmap(
        lambda size: FLOATS if size == 0 else vectors(size)
    ),
    st.booleans(),
)
def test_comparison_equals_keyword_kind_and_bound(kind, bound, reflected):
    """`c <= b`, `b >= c` and `C(kind="<=", bound=b)` are one constraint."""

    class MeanPrediction(tfc.Constraint):
        def call(self, batch):
            return keras.ops.mean(batch.y_pred)

    unbound = MeanPrediction()
    if reflected:  # `b >= c` is `c <= b`: numpy defers to the constraint.
        right = np.asarray(bound, np.float32)
        stated = right >= unbound if kind == "<=" else right <= unbound
    else:
        stated = unbound <= bound if kind == "<=" else unbound >= bound
    keywords = MeanPrediction(kind=kind, bound=bound)
    assert type(stated) is MeanPrediction
    assert stated.name == keywords.name == "mean_prediction"
    assert stated.kind == keywords.kind == kind
    np.testing.assert_array_equal(stated.bound, keywords.bound)
    assert not unbound.is_bound
    value = tf.constant(np.zeros_like(keywords.bound))
    np.testing.assert_array_equal(
        stated.violation(value), keywords.violation(value)
    )
