"""BestFeasibleWeights: selection among feasible epochs and restoration."""

import keras
import numpy as np
import pytest

import tfconstrain as tfc
from tfconstrain.feasible import BestFeasibleWeights


def _model():
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1)(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), "<=", 0.0, name="c"
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def _replay(callback, model, epochs):
    """Runs the callback over epochs `(weights_value, logs)`."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, (value, logs) in enumerate(epochs):
        model.set_weights([np.full_like(w, value) for w in model.get_weights()])
        callback.on_epoch_end(epoch, logs)
    callback.on_train_end()


def test_restores_the_best_feasible_epoch():
    model = _model()
    callback = BestFeasibleWeights(monitor="val_loss")
    _replay(
        callback,
        model,
        [
            (1.0, {"val_loss": 0.1, "val_c_violation": 0.2}),
            (2.0, {"val_loss": 0.5, "val_c_violation": 0.0}),
            (3.0, {"val_loss": 0.3, "val_c_violation": 5e-5}),
            (4.0, {"val_loss": 0.05, "val_c_violation": 0.01}),
        ],
    )
    assert callback.feasible_epochs == [1, 2]
    assert callback.best_epoch == 2
    assert callback.best == pytest.approx(0.3)
    assert all(np.all(w == 3.0) for w in model.get_weights())


def test_max_mode_slack_and_training_keys():
    model = _model()
    callback = BestFeasibleWeights(monitor="accuracy", slack=0.02)
    assert callback.mode == "max"
    _replay(
        callback,
        model,
        [
            (1.0, {"accuracy": 0.9, "c_violation": 0.015}),
            (2.0, {"accuracy": 0.8, "c_violation": 0.0}),
            (3.0, {"accuracy": 0.95, "c_violation": 0.03}),
        ],
    )
    assert callback.feasible_epochs == [0, 1]
    assert callback.best_epoch == 0
    assert all(np.all(w == 1.0) for w in model.get_weights())


def test_no_feasible_epoch_keeps_final_weights_and_warns():
    model = _model()
    callback = BestFeasibleWeights(monitor="loss")
    with pytest.warns(UserWarning, match="no epoch satisfied"):
        _replay(
            callback,
            model,
            [
                (1.0, {"loss": 0.1, "c_violation": 0.2}),
                (2.0, {"loss": 0.2, "c_violation": 0.3}),
            ],
        )
    assert callback.best_epoch is None
    assert all(np.all(w == 2.0) for w in model.get_weights())


def test_missing_validation_logs_raise_a_clear_error():
    model = _model()
    callback = BestFeasibleWeights(monitor="val_loss")
    callback.set_model(model)
    with pytest.raises(KeyError, match="val_c_violation.*validation_data"):
        callback.on_epoch_end(0, {"val_loss": 0.1, "c_violation": 0.0})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode"):
        BestFeasibleWeights(mode="lowest")
    with pytest.raises(ValueError, match="slack"):
        BestFeasibleWeights(slack=-1.0)


def test_restored_weights_reproduce_the_selected_validation_logs():
    # The constraint mean(y_pred) <= 0.5 is active (targets have mean ~1):
    # the run crosses the bound, so some epochs are infeasible.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = x @ np.array([[1.0], [-2.0]], "float32") + 1.0
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1)(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), "<=", 0.5, name="c"
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="mse", dual_optimizer=0.5
    )
    callback = BestFeasibleWeights(monitor="val_loss")
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=8,
        validation_data=(x, y),
        callbacks=[callback],
        verbose=0,
    )
    violations = np.array(history.history["val_c_violation"])
    losses = np.array(history.history["val_loss"])
    feasible = np.flatnonzero(violations <= 1e-4)
    assert 0 < feasible.size < len(violations)
    assert callback.feasible_epochs == feasible.tolist()
    best = feasible[np.argmin(losses[feasible])]
    assert callback.best_epoch == best
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(losses[best], rel=1e-5)
    assert logs["c_violation"] <= 1e-4
