"""Bad input raises an error that names the constraint (API.md §2)."""

import keras
import numpy as np
import pytest
from problems import mean_prediction

import tfconstrain as tfc

FEATURES = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
LABELS = np.ones((16, 1), "float32")


def model():
    inputs = keras.Input((3,))
    return tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))


def compile_and_fit(m, **kwargs):
    m.compile(optimizer="sgd", loss="mse", **kwargs)
    m.fit(FEATURES, LABELS, epochs=1, verbose=0)


def test_unknown_kind():
    with pytest.raises(ValueError, match="'rate'.*unknown kind"):
        model().add_constraint(mean_prediction, "<", 1.0, name="rate")


@pytest.mark.parametrize("bound", [np.nan, np.inf, [1.0, np.nan]])
def test_non_finite_bound(bound):
    with pytest.raises(ValueError, match="'rate'.*finite"):
        model().add_constraint(mean_prediction, "<=", bound, name="rate")


def test_bound_of_rank_two():
    with pytest.raises(ValueError, match="'rate'"):
        model().add_constraint(
            mean_prediction, "<=", np.zeros((2, 2)), name="rate"
        )


def test_bound_shape_differs_from_value_shape():
    m = model()
    m.add_constraint(mean_prediction, "<=", [1.0, 2.0], name="rate")
    with pytest.raises(ValueError, match="'rate'.*shape"):
        compile_and_fit(m)


def test_value_of_rank_two():
    m = model()
    m.add_constraint(lambda b: b.y_pred, "<=", 1.0, name="rate")
    with pytest.raises(ValueError, match="'rate'"):
        compile_and_fit(m)


def test_non_callable():
    with pytest.raises(TypeError, match="'rate'"):
        model().add_constraint(3.0, "<=", 1.0, name="rate")


def test_missing_kind_for_callable():
    with pytest.raises(ValueError, match="'rate'.*kind"):
        model().add_constraint(mean_prediction, bound=1.0, name="rate")


def test_missing_bound_for_callable():
    with pytest.raises(ValueError, match="'rate'.*bound"):
        model().add_constraint(mean_prediction, "<=", name="rate")


def test_duplicate_names():
    m = model()
    m.add_constraint(mean_prediction, "<=", 1.0, name="rate")
    with pytest.raises(ValueError, match="'rate'.*already"):
        m.add_constraint(mean_prediction, ">=", 0.0, name="rate")


def test_default_name_duplicates_are_rejected_too():
    m = model()
    m.add_constraint(mean_prediction, "<=", 1.0)
    with pytest.raises(ValueError, match="'mean_prediction'"):
        m.add_constraint(mean_prediction, ">=", 0.0)


def test_non_finite_value_raises_naming_the_constraint():
    import tensorflow as tf

    m = model()
    m.add_constraint(
        lambda b: keras.ops.mean(b.y_pred) * np.float32(np.nan),
        "<=",
        1.0,
        name="broken",
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken"):
        compile_and_fit(m)
    assert np.isfinite(m.multipliers["broken"].numpy())


def test_non_finite_value_skipped_on_request():
    m = model()
    m.add_constraint(
        lambda b: keras.ops.mean(b.y_pred) * np.float32(np.nan),
        "<=",
        1.0,
        name="broken",
    )
    m.compile(optimizer="sgd", loss="mse", on_nonfinite="skip")
    history = m.fit(FEATURES, LABELS, batch_size=4, epochs=1, verbose=0)
    assert history.history["nonfinite_dual_skips"][-1] == 4
    assert m.multipliers["broken"].numpy() == 0.0


def test_integer_value():
    import tensorflow as tf

    m = model()
    m.add_constraint(
        lambda b: tf.cast(keras.ops.mean(b.y_pred) > 0, tf.int32),
        "<=",
        1.0,
        name="count",
    )
    with pytest.raises(TypeError, match="'count'.*dtype"):
        compile_and_fit(m)


def test_function_with_wrong_signature():
    with pytest.raises(TypeError, match="'two'"):
        model().add_constraint(lambda a, b: a, "<=", 1.0, name="two")


def test_negative_multiplier_init_for_inequality():
    with pytest.raises(ValueError, match="'rate'.*multiplier_init"):
        model().add_constraint(
            mean_prediction, "<=", 1.0, name="rate", multiplier_init=-1.0
        )


def test_reserved_name():
    with pytest.raises(ValueError, match="'loss'.*reserved"):
        model().add_constraint(mean_prediction, "<=", 1.0, name="loss")


@pytest.mark.parametrize("rate", [0.0, -0.1, float("nan")])
def test_non_positive_dual_learning_rate(rate):
    m = model()
    m.add_constraint(mean_prediction, "<=", 1.0, name="rate")
    with pytest.raises(ValueError, match="learning_rate"):
        m.compile(optimizer="sgd", loss="mse", dual_optimizer=rate)


@pytest.mark.parametrize("penalty", [0.0, -1.0])
def test_non_positive_penalty(penalty):
    with pytest.raises(ValueError, match="penalty"):
        tfc.AugmentedLagrangian(penalty=penalty)


def test_unknown_update_scheme():
    m = model()
    with pytest.raises(ValueError, match="update"):
        m.compile(optimizer="sgd", loss="mse", update="sometimes")


def test_unknown_formulation_and_dual_optimizer():
    m = model()
    with pytest.raises(TypeError, match="formulation"):
        m.compile(optimizer="sgd", loss="mse", formulation="magic")
    with pytest.raises(TypeError, match="dual_optimizer"):
        m.compile(optimizer="sgd", loss="mse", dual_optimizer="fast")


def test_proxy_without_gradient_raises():
    import tensorflow as tf

    m = model()
    m.add_constraint(
        mean_prediction,
        "<=",
        1.0,
        name="flat_proxy",
        proxy=lambda b: tf.stop_gradient(keras.ops.mean(b.y_pred)),
    )
    with pytest.raises(ValueError, match="'flat_proxy'.*gradient"):
        compile_and_fit(m)


def test_constraint_independent_of_weights_warns():
    m = model()
    m.add_constraint(lambda b: keras.ops.mean(b.y), "<=", 2.0, name="data_only")
    with pytest.warns(UserWarning, match="'data_only'.*trainable"):
        compile_and_fit(m)


def test_value_length_changing_between_batches_raises():
    import tensorflow as tf

    m = model()

    def first_quarter(batch):
        flat = tf.reshape(batch.y_pred, [-1])
        return flat[: tf.shape(flat)[0] // 4]  # length 3, then 1

    m.add_constraint(first_quarter, "<=", [1.0, 1.0, 1.0], name="ragged")
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match="ragged"):
        m.fit(FEATURES, LABELS, batch_size=12, epochs=1, verbose=0)


def test_string_value():
    import tensorflow as tf

    m = model()
    m.add_constraint(
        lambda b: tf.strings.as_string(keras.ops.mean(b.y_pred)),
        "<=",
        1.0,
        name="text",
    )
    with pytest.raises(TypeError, match="'text'.*string"):
        compile_and_fit(m)
