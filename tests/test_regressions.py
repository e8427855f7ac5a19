"""Regression tests for defects found in review (issue 8, item 4).

Each runs on one device and on two replicas (logical CPUs) where the defect
was about replicas.
"""

import keras
import numpy as np
import pytest

import tfconstrain as tfc


def mean_prediction(batch):
    return keras.ops.mean(batch.y_pred)


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


def test_float64_models_train():
    keras.backend.set_floatx("float64")
    try:
        x, y = data(32)
        model = linear_model(mean_prediction)
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
