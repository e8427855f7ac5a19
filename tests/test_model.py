"""`ConstrainedModel` inside Keras' machinery: model kinds, side information,
proxies, vector constraints, weights, callbacks, mixed precision, tracing."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import mean_prediction
from problems import objective
from problems import point_model

import tfconstrain as tfc

RNG = np.random.default_rng(0)
FEATURES = RNG.normal(size=(48, 4)).astype("float32")
LABELS = (FEATURES[:, :1] > 0).astype("float32")
GROUPS = (np.arange(48) % 3).astype("int32")


def functional(name="features"):
    inputs = keras.Input((4,), name=name)
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    return tfc.ConstrainedModel(inputs, outputs)


def compile_default(model, **kwargs):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="binary_crossentropy",
        dual_optimizer=kwargs.pop("dual_optimizer", 0.5),
        **kwargs,
    )


@pytest.mark.smoke
def test_import_with_another_backend_raises_clear_import_error():
    environment = dict(os.environ, KERAS_BACKEND="numpy")
    result = subprocess.run(
        [sys.executable, "-c", "import tfconstrain"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "KERAS_BACKEND" in result.stderr


@pytest.mark.smoke
def test_proxy_drives_primal_true_value_drives_dual():
    """One alternating step with a 0/1 constraint and a linear proxy.

    f = (x-2)², true c(x) = 1[x > 0] <= 0.5, proxy p(x) = 3x, x0 = 1,
    η = 1, lr = 0.1. Dual first: λ1 = [0 + 1·(1 - 0.5)]₊ = 0.5 (the proxy's
    value 3 would give 2.5). Primal: x1 = 1 - 0.1·(2(1-2) + 0.5·3) = 1.05.
    """
    model, point = point_model([1.0])
    x = point.x
    model.add_constraint(
        lambda b: tf.cast(x[0] > 0.0, tf.float32),
        "<=",
        0.5,
        name="step",
        proxy=lambda b: 3.0 * x[0],
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=objective(lambda: (x[0] - 2.0) ** 2),
        dual_optimizer=1.0,
    )
    dummy = np.zeros((1, 1), "float32")
    model.fit(dummy, dummy, epochs=1, verbose=0)
    np.testing.assert_allclose(model.multipliers["step"].numpy(), 0.5)
    np.testing.assert_allclose(x.numpy(), [1.05], rtol=1e-6)


@pytest.mark.smoke
def test_side_information_is_removed_and_exposed():
    seen = {}

    def group_zero_rate(batch):
        seen["x"] = batch.x
        seen["keys"] = sorted(batch.features)
        in_group = tf.cast(tf.equal(batch.features["group"], 0), tf.float32)[
            :, None
        ]
        return tf.reduce_sum(batch.y_pred * in_group) / tf.maximum(
            tf.reduce_sum(in_group), 1.0
        )

    model = functional()
    model.add_constraint(group_zero_rate, "<=", 0.4)
    compile_default(model)
    data = {"features": FEATURES, "group": GROUPS}
    model.fit(data, LABELS, batch_size=16, epochs=1, verbose=0)
    assert seen["keys"] == ["group"]
    assert not isinstance(seen["x"], dict)
    dataset = tf.data.Dataset.from_tensor_slices((data, LABELS)).batch(16)
    logs = model.evaluate(dataset, verbose=0, return_dict=True)
    assert "group_zero_rate" in logs
    predictions = model.predict(data, verbose=0)
    np.testing.assert_allclose(
        predictions, model.predict(FEATURES, verbose=0), rtol=1e-6
    )


def test_subclassed_model_declares_side_information():
    class Net(tfc.ConstrainedModel):
        def __init__(self):
            super().__init__(side_information=("group",))
            self.dense = keras.layers.Dense(1, activation="sigmoid")

        def call(self, inputs):
            return self.dense(inputs["features"])

    model = Net()
    model.add_constraint(
        lambda b: (
            keras.ops.mean(tf.cast(b.features["group"], tf.float32)) * 0.0
            + keras.ops.mean(b.y_pred)
        ),
        "<=",
        0.3,
        name="rate",
    )
    compile_default(model)
    history = model.fit(
        {"features": FEATURES, "group": GROUPS},
        LABELS,
        batch_size=16,
        epochs=2,
        verbose=0,
    )
    assert len(history.history["rate"]) == 2


def test_side_information_key_colliding_with_input_raises():
    inputs = keras.Input((4,), name="features")
    outputs = keras.layers.Dense(1)(inputs)
    with pytest.raises(ValueError, match="features"):
        tfc.ConstrainedModel(inputs, outputs, side_information=("features",))


def test_missing_side_information_key_names_the_constraint():
    model = functional()
    model.add_constraint(
        lambda b: keras.ops.mean(tf.cast(b.features["group"], tf.float32)),
        "<=",
        1.0,
        name="needs_group",
    )
    compile_default(model)
    with pytest.raises(KeyError, match="needs_group"):
        model.fit(FEATURES, LABELS, epochs=1, verbose=0)


@pytest.mark.smoke
def test_sequential_model_trains_under_a_constraint():
    model = tfc.ConstrainedSequential(
        [keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.add_constraint(mean_prediction, "<=", 0.2, name="rate")
    compile_default(model, dual_optimizer=1.0)
    history = model.fit(FEATURES, LABELS, epochs=30, verbose=0)
    assert history.history["rate_multiplier"][-1] > 0
    report = model.constraint_report(FEATURES)
    assert report["rate"]["value"] < 0.3


def test_functional_and_subclassed_use_do_not_interfere():
    functional()

    class Net(tfc.ConstrainedModel):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)

        def call(self, inputs):
            return self.dense(inputs)

    model = Net()
    # Keras turns a Model subclass called with (inputs, outputs) into a
    # functional model by rewriting the class; the functional use above must
    # not have rewritten ConstrainedModel, so Net stays a subclassed model.
    functional_class = tfc._keras_compat.functional_class()
    assert type(model) is Net
    assert not isinstance(model, functional_class)
    assert not issubclass(tfc.ConstrainedModel, functional_class)
    assert model(FEATURES).shape == (48, 1)


def test_vector_constraint_logs_worst_entry_and_mean_multiplier():
    """Per-group mean predictions <= (0.9, 0.0, 0.9): entry 1 is violated."""

    def group_means(batch):
        one_hot = tf.one_hot(batch.features["group"], 3)
        totals = tf.reduce_sum(one_hot * batch.y_pred, axis=0)
        return totals / tf.maximum(tf.reduce_sum(one_hot, axis=0), 1.0)

    model = functional()
    model.add_constraint(group_means, "<=", [0.9, 0.0, 0.9], name="groups")
    compile_default(model)
    data = {"features": FEATURES, "group": GROUPS}
    logs = model.evaluate(
        data, LABELS, verbose=0, return_dict=True, batch_size=48
    )
    predictions = model.predict(FEATURES, verbose=0)[:, 0]
    expected = predictions[GROUPS == 1].mean()
    np.testing.assert_allclose(logs["groups"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["groups_violation"], expected, rtol=1e-5)
    model.fit(data, LABELS, batch_size=48, epochs=1, verbose=0)
    multipliers = model.multipliers["groups"].numpy()
    assert multipliers.shape == (3,) and multipliers[1] > 0
    logs = model.evaluate(data, LABELS, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["groups_multiplier"], multipliers.mean())


def test_loss_uses_class_and_sample_weights_like_keras():
    """The constrained model's loss f is Keras' weighted loss."""
    weights = np.linspace(0.5, 1.5, 48).astype("float32")
    keras.utils.set_random_seed(3)
    plain_model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    plain_model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy"
    )
    model = tfc.ConstrainedSequential(
        [keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")]
    )
    model.set_weights(plain_model.get_weights())
    model.add_constraint(mean_prediction, "<=", 1.0, name="inactive")
    compile_default(model)
    expected = plain_model.evaluate(
        FEATURES, LABELS, sample_weight=weights, verbose=0
    )
    got = model.evaluate(
        FEATURES, LABELS, sample_weight=weights, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-6)
    plain_history = plain_model.fit(
        FEATURES,
        LABELS,
        class_weight={0: 1, 1: 3},
        epochs=2,
        verbose=0,
        shuffle=False,
    )
    history = model.fit(
        FEATURES,
        LABELS,
        class_weight={0: 1, 1: 3},
        epochs=2,
        verbose=0,
        shuffle=False,
    )
    np.testing.assert_allclose(
        history.history["loss"], plain_history.history["loss"], rtol=1e-6
    )


def test_sample_weighted_constraint_value_is_weighted_mean():
    weights = np.where(np.arange(48) < 24, 3.0, 1.0).astype("float32")
    model = functional()
    model.add_constraint(
        lambda b: keras.ops.mean(b.y_pred), "<=", 1.0, name="rate"
    )
    compile_default(model)
    logs = model.evaluate(
        FEATURES,
        LABELS,
        sample_weight=weights,
        batch_size=8,
        verbose=0,
        return_dict=True,
    )
    predictions = model.predict(FEATURES, verbose=0)[:, 0]
    batch_means = predictions.reshape(6, 8).mean(axis=1)
    batch_weights = weights.reshape(6, 8).sum(axis=1)
    expected = (batch_means * batch_weights).sum() / batch_weights.sum()
    np.testing.assert_allclose(logs["rate"], expected, rtol=1e-6)


@pytest.mark.smoke
def test_validation_logs_and_early_stopping_on_constraint_key():
    model = functional()
    model.add_constraint(mean_prediction, "<=", 0.05, name="rate")
    compile_default(model, dual_optimizer=0.01)
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_rate_violation", patience=0, mode="min"
    )
    history = model.fit(
        FEATURES,
        LABELS,
        validation_data=(FEATURES, LABELS),
        epochs=20,
        verbose=0,
        callbacks=[stopper],
    )
    for key in ("val_rate", "val_rate_violation", "val_rate_multiplier"):
        assert key in history.history
    assert history.history["val_rate"][-1] == pytest.approx(
        history.history["val_rate_violation"][-1] + 0.05, abs=1e-6
    )


@pytest.mark.smoke
def test_mixed_precision_trains_with_loss_scaling():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    model = functional()
    model.add_constraint(mean_prediction, "<=", 0.2, name="rate")
    compile_default(model, dual_optimizer=1.0)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert model.multipliers["rate"].dtype == "float32"
    before = model.get_weights()[0].copy()
    model.fit(FEATURES, LABELS, epochs=5, batch_size=48, verbose=0)
    keras.mixed_precision.set_dtype_policy("float32")
    after = model.get_weights()[0]
    # Without scale_loss the update would be divided by 2**15 and vanish.
    assert np.max(np.abs(after - before)) > 1e-3
    assert model.multipliers["rate"].numpy() > 0


def test_no_retracing_per_step():
    traces = []

    def counted(batch):
        traces.append(1)
        return keras.ops.mean(batch.y_pred)

    model = functional()
    model.add_constraint(counted, "<=", 0.3, name="rate")
    compile_default(model)
    model.fit(FEATURES, LABELS, batch_size=8, epochs=5, verbose=0)
    # A handful of traces (first call, partial last batch), not one per step.
    assert len(traces) <= 4


@pytest.mark.smoke
def test_constraint_report_keys_and_values():
    model = functional()
    model.add_constraint(mean_prediction, ">=", 0.9, name="rate")
    compile_default(model)
    report = model.constraint_report((FEATURES, LABELS), batch_size=7)
    expected = float(model.predict(FEATURES, verbose=0).mean())
    entry = report["rate"]
    assert set(entry) == {
        "value",
        "bound",
        "kind",
        "violation",
        "satisfied",
        "multiplier",
    }
    np.testing.assert_allclose(entry["value"], expected, rtol=1e-6)
    np.testing.assert_allclose(
        entry["violation"], max(0.0, 0.9 - expected), rtol=1e-5
    )
    assert entry["kind"] == ">=" and entry["bound"] == pytest.approx(0.9)
    assert entry["satisfied"] is (0.9 - expected <= 1e-4)


def test_add_constraint_after_training_rebuilds_the_step():
    model = functional()
    model.add_constraint(mean_prediction, "<=", 0.9, name="first")
    compile_default(model)
    model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    model.add_constraint(mean_prediction, ">=", 0.95, name="second")
    history = model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    assert "second" in history.history
    assert model.multipliers["second"].numpy() > 0


def test_functional_model_supports_multiple_constraints_and_kinds():
    model = functional()
    model.add_constraint(mean_prediction, "le", 0.6, name="upper")
    model.add_constraint(mean_prediction, "ge", 0.4, name="lower")
    model.add_constraint(
        lambda b: keras.ops.mean(b.y_pred) * 2.0, "eq", 1.0, name="equal"
    )
    assert [c.kind for c in model.constraints] == ["<=", ">=", "=="]
    compile_default(model)
    history = model.fit(FEATURES, LABELS, epochs=2, verbose=0)
    assert {"upper", "lower", "equal"} <= set(history.history)


def test_keras_dual_optimizer_survives_adding_a_constraint_after_compile():
    model = functional()
    model.add_constraint(mean_prediction, "<=", 0.1, name="first")
    compile_default(model, dual_optimizer=keras.optimizers.SGD(0.5))
    model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    before = model.multipliers["first"].numpy()
    model.add_constraint(mean_prediction, ">=", 0.95, name="second")
    model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    assert model.multipliers["second"].numpy() > 0
    assert model.multipliers["first"].numpy() != before
    iterations = model.dual_optimizer.optimizer.iterations.numpy()
    assert iterations == 2 * 2  # state kept: 2 steps per epoch, 2 epochs


def test_recompile_resets_the_epoch_dual_step():
    model = functional()
    model.add_constraint(mean_prediction, ">=", 0.99, name="rate")
    for rate in (1.0, 100.0):
        compile_default(model, dual_optimizer=rate)
        before = model.multipliers["rate"].numpy()
        history = model.fit(
            FEATURES,
            LABELS,
            epochs=1,
            verbose=0,
            callbacks=[tfc.MultiplierCallback(update_every="epoch")],
        )
        violation = history.history["rate_violation"][-1]
        np.testing.assert_allclose(
            model.multipliers["rate"].numpy(),
            before + rate * violation,
            rtol=1e-5,
        )


def test_log_key_clash_between_constraints_is_rejected():
    model = functional()
    model.add_constraint(mean_prediction, "<=", 0.9, name="rate")
    with pytest.raises(ValueError, match="'rate_violation'.*clash"):
        model.add_constraint(mean_prediction, "<=", 0.9, name="rate_violation")


def test_schedule_counts_steps_before_the_primal_update():
    """Warm-up 2: no dual step in the first 2 steps, whatever the order."""
    for update in ("alternating", "simultaneous", "alternating_primal_first"):
        model = functional()
        model.add_constraint(mean_prediction, "<=", 0.0, name="rate")
        compile_default(model, update=update)
        model.fit(
            FEATURES,
            LABELS,
            batch_size=24,
            epochs=1,
            verbose=0,
            callbacks=[tfc.MultiplierCallback(warmup_steps=2)],
        )
        assert model.multipliers["rate"].numpy() == 0.0, update


def test_constraint_report_with_sample_weights_and_no_targets():
    weights = np.where(np.arange(48) < 24, 3.0, 1.0).astype("float32")
    model = functional()
    model.add_constraint(mean_prediction, "<=", 1.0, name="rate")
    compile_default(model)
    report = model.constraint_report((FEATURES, None, weights), batch_size=8)
    predictions = model.predict(FEATURES, verbose=0)[:, 0]
    batch_means = predictions.reshape(6, 8).mean(axis=1)
    batch_weights = weights.reshape(6, 8).sum(axis=1)
    expected = (batch_means * batch_weights).sum() / batch_weights.sum()
    np.testing.assert_allclose(report["rate"]["value"], expected, rtol=1e-6)
