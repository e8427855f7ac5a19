"""Regression tests for defects found in review (issue 8, item 4).

Each runs on one device and on two replicas (logical CPUs) where the defect
was about replicas.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import mean_prediction

import tfconstrain as tfc


def nan_on_negative_labels(batch):
    # log(min(y) + 1) is NaN exactly on batches holding a label of -2.
    return keras.ops.mean(batch.y_pred) + 0.0 * keras.ops.log(
        keras.ops.min(batch.y) + 1.0
    )


def linear_model(fn, strategy=None, on_nonfinite="raise"):
    def build():
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(fn, "<=", 0.3, name="rate")
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="mse",
            dual_optimizer=0.1,
            on_nonfinite=on_nonfinite,
        )
        return model

    if strategy is None:
        return build()
    with strategy.scope():
        return build()


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    return x, y


@pytest.mark.parametrize("replicated", [False, True])
def test_mean_constraint_is_finite_when_a_replica_share_is_empty(
    mirrored, replicated
):
    # 17 rows, batch 8: the last global batch has one row, so one of two
    # replicas sees no example. Its mean is 0/0 but carries no weight.
    x, y = data(17)
    model = linear_model(mean_prediction, mirrored if replicated else None)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["rate"][0])
    assert np.isfinite(keras.ops.convert_to_numpy(model.multipliers["rate"]))
    logs = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = float(np.mean(model.predict(x, batch_size=8, verbose=0)))
    assert logs["rate"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("replicated", [False, True])
def test_skipped_batch_counts_once_whatever_the_replicas(mirrored, replicated):
    x, y = data(16)
    y[:8] = -2.0  # the first global batch of 8 has a NaN constraint value
    model = linear_model(
        nan_on_negative_labels,
        mirrored if replicated else None,
        on_nonfinite="skip",
    )
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert history.history["nonfinite_dual_skips"] == [1.0]
    # The second batch was finite: its dual step ran.
    assert keras.ops.convert_to_numpy(model.multipliers["rate"]) > 0


@pytest.mark.parametrize("replicated", [False, True])
def test_float64_models_train(mirrored, replicated):
    keras.backend.set_floatx("float64")
    try:
        x, y = data(32)
        model = linear_model(mean_prediction, mirrored if replicated else None)
        history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    finally:
        keras.backend.set_floatx("float32")
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.isfinite(history.history["rate"][-1])


def test_feasible_key_follows_the_constraint_violations():
    x, y = data(64)
    model = linear_model(mean_prediction)
    history = model.fit(
        x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y)
    )
    for prefix in ("", "val_"):
        for epoch, flag in enumerate(history.history[f"{prefix}feasible"]):
            violation = history.history[f"{prefix}rate_violation"][epoch]
            assert flag == (1.0 if violation <= 1e-4 else 0.0)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["feasible"] == (1.0 if logs["rate_violation"] <= 1e-4 else 0.0)


# ------------------------------------------- Keras optimizers as dual step
def per_sample_model(
    dual_optimizer, num_samples=10, epsilon=0.05, strategy=None
):
    if strategy is not None:
        with strategy.scope():
            return per_sample_model(dual_optimizer, num_samples, epsilon)
    from tfconstrain.constraints.per_sample import PerSampleConstraint

    def per_example_loss(batch):
        return keras.losses.binary_crossentropy(batch.y, batch.y_pred)

    inputs = keras.Input((2,), name="features")
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        PerSampleConstraint(
            per_example_loss, num_samples=num_samples, name="each"
        )
        <= epsilon
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),  # the weights stay put
        loss="binary_crossentropy",
        dual_optimizer=dual_optimizer,
    )
    return model


def _losses(model, x, y):
    predictions = model.predict(x, verbose=0)
    return keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(y, predictions)
    )


@pytest.mark.parametrize("replicated", [False, True])
@pytest.mark.parametrize(
    "dual", ["float", "keras_sgd", "nupi"], ids=lambda d: d
)
def test_an_id_twice_in_a_batch_moves_once(dual, mirrored, replicated):
    # λ_i ← [λ_i + η·v_i]₊ once per dual step, whatever the optimizer and
    # however often i occurs in the batch.
    optimizer = {
        "float": 1.0,
        "keras_sgd": keras.optimizers.SGD(1.0),
        "nupi": tfc.optimizers.NuPI(1.0, kp=0.0),
    }[dual]
    model = per_sample_model(
        optimizer, strategy=mirrored if replicated else None
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2)).astype("float32")
    y = np.ones((10, 1), "float32")
    # Two replicas of a batch of 4: ids 3 and 3 on one, 5 and 3 on the other.
    ids = np.array([3, 3, 5, 3])
    model.fit(
        {"features": x[ids], "sample_id": ids},
        y[ids],
        batch_size=4,
        epochs=1,
        verbose=0,
    )
    expected = np.zeros(10, np.float32)
    expected[ids] = np.maximum(_losses(model, x[ids], y[ids]) - 0.05, 0.0)
    np.testing.assert_allclose(
        model.multipliers["each"].numpy(), expected, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("replicated", [False, True])
def test_keras_dual_optimizer_keeps_the_state_of_masked_entries(
    mirrored, replicated
):
    # A group absent from batch 2: Adam's first moment of its entry stays
    # (1 - β1)·g1 from batch 1; it must not decay to β1·(1 - β1)·g1, and
    # its multiplier must not move.
    import warnings

    def build():
        constraint = tfc.constraints.PositivePredictionRate(
            kind="<=", bound=0.1, group_key="g", num_groups=2
        )
        inputs = keras.Input((1,), name="score")
        outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
        model.add_constraint(constraint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # momentum warning
            model.compile(
                optimizer=keras.optimizers.SGD(0.0),
                loss="mse",
                dual_optimizer=keras.optimizers.Adam(0.1, beta_1=0.9),
            )
        return model

    if replicated:
        with mirrored.scope():
            model = build()
    else:
        model = build()
    p = np.full((4, 1), 3.0, "float32")  # rate 1 > 0.1 in every group
    group = np.array([0, 1, 0, 0], "int32")  # batch 2 (rows 2-3): no g=1
    y = np.ones((4, 1), "float32")
    model.fit(
        {"score": p, "g": group},
        y,
        batch_size=2,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    adam = model.dual_optimizer.optimizer
    momentums = [
        v.numpy() for v in adam.variables if "momentum" in v.path.lower()
    ]
    assert len(momentums) == 1
    violation = 1.0 - 0.1  # the hard rate of group 1 in batch 1, minus b
    np.testing.assert_allclose(
        momentums[0][1], (1 - 0.9) * -violation, rtol=1e-5
    )
    # Group 0 was seen twice: its moment kept moving.
    assert momentums[0][0] < momentums[0][1]


# ------------------------------------------------------------- clone_model
@pytest.mark.parametrize("sequential", [False, True])
def test_clone_model_keeps_the_constraints(sequential):
    if sequential:
        model = tfc.ConstrainedSequential(
            [keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")]
        )
    else:
        inputs = keras.Input((3,))
        outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
        model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        mean_prediction, "<=", 0.3, name="rate", multiplier_init=0.5
    )
    model.compile(optimizer="sgd", loss="mse", dual_optimizer=0.1)
    model.multipliers["rate"].assign(2.0)  # trained state is not cloned
    clone = keras.models.clone_model(model)
    assert isinstance(clone, type(model))
    assert [c.name for c in clone.constraints] == ["rate"]
    assert clone.constraints[0] is not model.constraints[0]
    assert float(clone.multipliers["rate"].numpy()) == 0.5
    assert clone.compiled
    x, y = data(32)
    history = clone.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert "rate_multiplier" in history.history


@pytest.mark.parametrize("replicated", [False, True])
def test_epoch_dual_step_multiplier_is_logged_after_the_step(
    mirrored, replicated
):
    # update_every="epoch": the dual step follows the epoch, so the logged
    # multiplier must be the one it wrote, λ_1 = η·v(epoch 1 weights).
    x, y = data(32)
    model = linear_model(mean_prediction, mirrored if replicated else None)
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[tfc.MultiplierCallback(update_every="epoch")],
    )
    final = float(keras.ops.convert_to_numpy(model.multipliers["rate"]))
    assert history.history["rate_multiplier"][-1] == pytest.approx(final)
    first = history.history["rate_multiplier"][0]
    violation = history.history["rate_violation"][0]
    assert first == pytest.approx(0.1 * violation, rel=1e-5)


def test_numpy_string_group_ids_work_everywhere():
    # Group ids as a numpy unicode array: fit, validation, evaluate, report
    # and predict all take them (the gap of predictions that do not depend
    # on x is exactly 0).
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        tfc.constraints.DemographicParity("sex", group_names=["f", "m"]) <= 0.05
    )
    model.compile(optimizer="sgd", loss="mse")
    x = {"x": np.zeros((8, 2), "float32"), "sex": np.array(["f", "m"] * 4)}
    y = np.zeros((8, 1), "float32")
    history = model.fit(x, y, verbose=0, validation_data=(x, y))
    assert history.history["val_demographic_parity"] == [0.0]
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["demographic_parity"] == 0.0
    report = model.constraint_report((x, y))
    assert report["demographic_parity"]["satisfied"]
    assert model.predict(x, verbose=0).shape == (8, 1)


# ---------------------------------------------------------------- dual_data
def _fixed_weights_model():
    # SGD(0): the weights never move, so every violation has a closed form.
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(mean_prediction, "<=", 0.1, name="rate")
    model.compile(
        optimizer=keras.optimizers.SGD(0.0), loss="mse", dual_optimizer=0.5
    )
    return model


def test_dual_data_epoch_steps_use_the_whole_dual_set():
    x, y = data(32)
    x_dual, y_dual = data(24, seed=7)
    x_dual += 1.0  # a different distribution from the training data
    model = _fixed_weights_model()
    callback = tfc.MultiplierCallback(
        update_every="epoch", dual_data=(x_dual, y_dual), dual_batch_size=5
    )
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    rate = float(np.mean(model.predict(x_dual, verbose=0)))
    expected = 2 * 0.5 * max(rate - 0.1, 0.0)  # two epoch steps, same v
    assert rate > 0.1
    assert float(model.multipliers["rate"].numpy()) == pytest.approx(
        expected, rel=1e-5
    )


def test_dual_data_step_schedule_cycles_through_dual_batches():
    x, y = data(32)
    x_dual, y_dual = data(12, seed=3)
    model = _fixed_weights_model()
    callback = tfc.MultiplierCallback(
        update_every=2, dual_data=(x_dual, y_dual), dual_batch_size=5
    )
    # 4 training steps, dual steps at steps 0 and 2 on dual batches
    # [0:5] and [5:10].
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    predictions = model.predict(x_dual, verbose=0)[:, 0]
    expected = 0.0
    for rows in (slice(0, 5), slice(5, 10)):
        expected = max(expected + 0.5 * (predictions[rows].mean() - 0.1), 0.0)
    assert float(model.multipliers["rate"].numpy()) == pytest.approx(
        expected, rel=1e-5
    )
    # The training data took no dual step: with 4 steps at every step the
    # multiplier would differ.
    assert expected > 0


def test_nonfinite_error_names_the_constraint_and_step_first():
    inputs = keras.Input((2,))
    outputs = keras.layers.Dense(1, kernel_initializer="ones")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(mean_prediction, "<=", 0.3, name="fine")
    model.add_constraint(
        lambda b: keras.ops.mean(keras.ops.log(b.y_pred)),
        "<=",
        0.3,
        name="log_prediction",
    )
    model.compile(optimizer="sgd", loss="mse")
    x = -np.ones((8, 2), "float32")  # predictions -2: log is NaN
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        model.fit(x, np.zeros((8, 1), "float32"), verbose=0)
    first_line = str(info.value).splitlines()[0]
    assert first_line.startswith(
        "Constraint(s) ['log_prediction'] had a non-finite"
    )
    assert "training step 0" in first_line
