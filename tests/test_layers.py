"""Layer-registered constraints: `add_layer_constraint`, the mixin, records,
and the `ActivityConstraint` layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc
from tfconstrain.constraints.causal import CounterfactualInvariance
from tfconstrain.layers import ActivityConstraint
from tfconstrain.layers import LayerConstraintMixin
from tfconstrain.layers import add_layer_constraint


@keras.saving.register_keras_serializable(package="test_layers")
def mean_activation(activations):
    return keras.ops.mean(activations)


@keras.saving.register_keras_serializable(package="test_layers")
def row_sums(activations):
    return keras.ops.sum(activations, axis=-1)


def _activity_model(fn=mean_activation, bound=0.05, **kwargs):
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu", name="hidden")(inputs)
    hidden = ActivityConstraint(
        fn, kind="<=", bound=bound, name="activity", **kwargs
    )(hidden)
    outputs = keras.layers.Dense(1)(hidden)
    return tfc.ConstrainedModel(inputs, outputs)


def _hidden_activations(model, x):
    probe = keras.Model(model.inputs, model.get_layer("hidden").output)
    return probe.predict(x, verbose=0)


# ------------------------------------------------------- generic registration
class _Scalar(LayerConstraintMixin, keras.layers.Layer):
    """One weight `w`, and the layer constraint `w <= 1`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")
        self.add_constraint(
            lambda batch: tf.convert_to_tensor(self.w), "<=", 1.0, name="cap"
        )

    def call(self, inputs):
        return tf.zeros_like(inputs) + 0.0 * self.w


def test_mixin_constraint_reaches_kkt_point():
    # min (w − 3)² s.t. w <= 1: w* = 1, λ* = 2·(3 − 1) = 4.
    inputs = keras.Input((1,))
    layer = _Scalar()
    model = tfc.ConstrainedModel(inputs, layer(inputs))

    def objective(y_true, y_pred):
        return (layer.w - 3.0) ** 2 + 0.0 * tf.reduce_mean(y_pred)

    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=objective,
        dual_optimizer=0.05,
    )
    assert [c.name for c in model.constraints] == ["cap"]
    assert layer.layer_constraints == model.constraints
    data = tf.data.Dataset.from_tensors((np.zeros((2, 1)), np.zeros((2, 1))))
    model.fit(
        data.repeat(), steps_per_epoch=2000, epochs=1, verbose=0, shuffle=False
    )
    assert float(layer.w.numpy()) == pytest.approx(1.0, abs=1e-3)
    assert float(model.multipliers["cap"].numpy()) == pytest.approx(4.0, 1e-2)


def test_add_layer_constraint_names_callables_after_the_layer():
    layer = keras.layers.Dense(2, name="proj")

    def kernel_norm(batch):
        return tf.reduce_sum(tf.square(layer.kernel))

    constraint = add_layer_constraint(layer, kernel_norm, "<=", 1.0)
    assert constraint.name == "proj_kernel_norm"
    inputs = keras.Input((3,))
    model = tfc.ConstrainedModel(inputs, layer(inputs))
    model.compile(loss="mse")
    assert model.constraints == [constraint]
    assert model.multipliers["proj_kernel_norm"].shape == ()


def test_add_layer_constraint_rejects_bad_input():
    layer = keras.layers.Dense(2, name="proj")
    with pytest.raises(ValueError, match="'proj'.*`kind` is required"):
        add_layer_constraint(layer, lambda batch: 0.0)
    with pytest.raises(TypeError, match="'proj'.*callable"):
        add_layer_constraint(layer, 3.0, "<=", 1.0)
    add_layer_constraint(layer, lambda batch: 0.0, "<=", 1.0, name="same")
    with pytest.raises(ValueError, match="'proj'.*'same'"):
        add_layer_constraint(layer, lambda batch: 0.0, "<=", 1.0, name="same")


# -------------------------------------------------------------- activity
def test_activity_constraint_is_an_identity_layer():
    layer = ActivityConstraint(mean_activation, kind="<=", bound=1.0)
    x = np.random.RandomState(0).randn(4, 3).astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)
    assert layer.compute_output_shape((None, 3)) == (None, 3)


def test_activity_value_in_evaluate_and_report_matches_direct_computation():
    model = _activity_model()
    model.compile(loss="mse")
    x = np.random.RandomState(1).randn(50, 3).astype(np.float32)
    y = np.zeros((50, 1), np.float32)
    expected = float(np.mean(_hidden_activations(model, x)))
    logs = model.evaluate(x, y, batch_size=10, return_dict=True, verbose=0)
    assert logs["activity"] == pytest.approx(expected, rel=1e-5)
    report = model.constraint_report((x, y), batch_size=25)
    assert report["activity"]["value"] == pytest.approx(expected, rel=1e-5)


def test_per_example_activity_is_sample_weighted_and_exact():
    model = _activity_model(row_sums, bound=1.0, per_example=True)
    model.compile(loss="mse")
    rng = np.random.RandomState(2)
    x = rng.randn(23, 3).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, 23).astype(np.float32)
    sums = _hidden_activations(model, x).sum(axis=1)
    expected = float(np.sum(weights * sums) / np.sum(weights))
    report = model.constraint_report(
        (x, np.zeros((23, 1)), weights), batch_size=4
    )
    assert report["activity"]["value"] == pytest.approx(expected, rel=1e-5)


def _repeated(x, y):
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def test_activity_constraint_on_outputs_reaches_kkt_point():
    # Linear regression on centred features with the constraint
    # mean(prediction) <= 1: only the intercept moves, b* = 1, w* is the
    # least-squares slope, and λ* = 2·(mean(y) − 1).
    rng = np.random.RandomState(3)
    x = rng.randn(64, 2).astype(np.float32)
    x -= x.mean(axis=0)
    y = (x @ np.array([[1.0], [-2.0]]) + 3.0).astype(np.float32)
    inputs = keras.Input((2,))
    dense = keras.layers.Dense(1)
    outputs = ActivityConstraint(
        mean_activation, kind="<=", bound=1.0, name="mean"
    )(dense(inputs))
    model = tfc.ConstrainedModel(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), "mse", dual_optimizer=0.5)
    model.fit(
        _repeated(x, y), steps_per_epoch=600, epochs=1, verbose=0, shuffle=False
    )
    slope = np.linalg.lstsq(x, y - y.mean(), rcond=None)[0]
    np.testing.assert_allclose(dense.kernel.numpy(), slope, atol=1e-3)
    assert float(dense.bias.numpy()[0]) == pytest.approx(1.0, abs=1e-3)
    multiplier = float(model.multipliers["mean"].numpy())
    assert multiplier == pytest.approx(2.0 * (y.mean() - 1.0), rel=1e-2)


def test_activity_proxy_drives_primal_step_and_fn_the_dual_step():
    # fn: fraction of active units (no gradient); proxy: mean activation.
    model = _activity_model(
        lambda a: keras.ops.mean(keras.ops.cast(a > 0, "float32")),
        bound=0.25,
        proxy=lambda a: keras.ops.mean(a),
    )
    model.compile(keras.optimizers.Adam(0.02), "mse", dual_optimizer=1.0)
    rng = np.random.RandomState(4)
    x = rng.randn(128, 3).astype(np.float32)
    y = x[:, :1] * 3.0
    before = float(np.mean(_hidden_activations(model, x) > 0))
    model.fit(
        _repeated(x, y), steps_per_epoch=200, epochs=1, verbose=0, shuffle=False
    )
    fraction = float(np.mean(_hidden_activations(model, x) > 0))
    report = model.constraint_report((x, y))
    assert report["activity"]["value"] == pytest.approx(fraction)
    assert before > 0.4
    assert fraction <= 0.25


def test_activity_records_survive_extra_forward_passes_of_other_constraints():
    # The counterfactual constraint calls the model on intervened inputs;
    # the activity constraint must still see the batch's own activations.
    model = _activity_model()
    model.add_constraint(
        CounterfactualInvariance(0, bound=1.0, intervention=10.0)
    )
    model.compile(loss="mse")
    x = np.random.RandomState(5).randn(40, 3).astype(np.float32)
    expected = float(np.mean(_hidden_activations(model, x)))
    logs = model.evaluate(
        x, np.zeros((40, 1)), batch_size=40, return_dict=True, verbose=0
    )
    assert logs["activity"] == pytest.approx(expected, rel=1e-5)


def test_activity_constraint_on_two_replicas_matches_direct_computation(
    mirrored,
):
    with mirrored.scope():
        model = _activity_model()
        model.compile(keras.optimizers.SGD(0.01), "mse", dual_optimizer=0.1)
    x = np.random.RandomState(6).randn(64, 3).astype(np.float32)
    y = np.zeros((64, 1), np.float32)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    expected = float(np.mean(_hidden_activations(model, x)))
    logs = model.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert logs["activity"] == pytest.approx(expected, rel=1e-5)


def test_recorded_value_of_a_layer_outside_the_model_raises():
    stray = ActivityConstraint(
        mean_activation, kind="<=", bound=1.0, name="stray"
    )
    inputs = keras.Input((3,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    model.add_constraint(stray.constraint)
    model.compile(loss="mse")
    with pytest.raises(RuntimeError, match="'stray'.*not been called"):
        model.evaluate(np.ones((2, 3)), np.ones((2, 1)), verbose=0)


def test_activity_constraint_round_trips_through_config_and_saving(tmp_path):
    layer = ActivityConstraint(
        row_sums,
        kind=">=",
        bound=0.5,
        per_example=True,
        multiplier_init=0.25,
        tolerance=1e-3,
        name="act",
    )
    restored = ActivityConstraint.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    assert restored.constraint.kind == ">="

    model = _activity_model()
    model.compile(keras.optimizers.SGD(0.01), "mse", dual_optimizer=1.0)
    x = np.random.RandomState(7).randn(16, 3).astype(np.float32)
    model.fit(x, np.zeros((16, 1)), epochs=2, verbose=0)
    path = str(tmp_path / "activity.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [c.name for c in loaded.constraints] == ["activity"]
    np.testing.assert_allclose(
        loaded.multipliers["activity"].numpy(),
        model.multipliers["activity"].numpy(),
    )
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )


def test_layer_constraints_need_a_kind_and_a_bound():
    layer = keras.layers.Dense(2, name="proj")
    with pytest.raises(ValueError, match="'recall' is unbound"):
        add_layer_constraint(layer, tfc.constraints.Recall())
    added = add_layer_constraint(layer, tfc.constraints.Recall(), ">=", 0.9)
    assert added.name == "recall" and added.kind == ">="
    stated = add_layer_constraint(layer, tfc.constraints.Precision() >= 0.5)
    assert stated.name == "precision" and float(stated.bound) == 0.5
    with pytest.raises(TypeError, match="kind"):
        ActivityConstraint(mean_activation, bound=1.0)
    with pytest.raises(TypeError, match="positional"):
        ActivityConstraint(mean_activation, "<=", 1.0)
