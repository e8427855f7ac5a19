"""Feasible selection: BestFeasibleWeights, FeasibleModelCheckpoint,
FeasibleEarlyStopping, and warnings about objective-only callbacks."""

import warnings

import keras
import numpy as np
import pytest
from problems import mean_prediction

import tfconstrain as tfc
from tfconstrain import feasible
from tfconstrain.feasible import BestFeasibleWeights
from tfconstrain.feasible import FeasibleEarlyStopping
from tfconstrain.feasible import FeasibleModelCheckpoint


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


# ------------------------------------------------ FeasibleModelCheckpoint,
# FeasibleEarlyStopping: epochs (weights value, val_loss, val_feasible).
# The lowest val_loss (epoch 3) is infeasible; the best feasible is epoch 2.
SCRIPT = [(1.0, 0.5, 1.0), (2.0, 0.2, 0.0), (3.0, 0.3, 1.0), (4.0, 0.1, 0.0)]
SCRIPT += [(5.0, 0.4, 1.0), (6.0, 0.35, 1.0)]


def _scripted_fit(model, callbacks, script=SCRIPT):
    """A real `fit` whose epoch ends set the weights and logs of `script`.

    The scripting callback runs first and writes into the logs dict that
    every later callback receives, as `ConstrainedModel` does with
    `feasible` / `val_feasible`.
    """

    class Script(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            value, loss, feasible = script[epoch]
            self.model.set_weights(
                [np.full_like(w, value) for w in self.model.get_weights()]
            )
            logs.update(val_loss=loss, val_feasible=feasible)
            logs.update(feasible=feasible)

    x = np.zeros((4, 2), "float32")
    return model.fit(
        x,
        np.zeros((4, 1), "float32"),
        epochs=len(script),
        verbose=0,
        callbacks=[Script(), *callbacks],
    )


def _plain_model():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_checkpoint_saves_the_best_feasible_epoch(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    model = _plain_model()
    checkpoint = FeasibleModelCheckpoint(path, save_weights_only=True)
    _scripted_fit(model, [checkpoint])
    assert checkpoint.best_epoch == 2
    assert checkpoint.best == pytest.approx(0.3)
    model.load_weights(path)
    assert all(np.all(w == 3.0) for w in model.get_weights())


def test_checkpoint_formats_the_path_with_the_feasible_epoch(tmp_path):
    model = _plain_model()
    path = str(tmp_path / "model_{epoch:02d}.keras")
    _scripted_fit(model, [FeasibleModelCheckpoint(path)])
    # Saved at epochs 1 and 3 (1-based): the feasible improvements.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_01.keras",
        "model_03.keras",
    ]


def test_early_stopping_counts_patience_from_the_best_feasible_epoch():
    model = _plain_model()
    stop = FeasibleEarlyStopping(patience=2, restore_best_weights=True)
    history = _scripted_fit(model, [stop])
    # Best feasible: epoch 2. Epochs 3 (infeasible) and 4 (worse) use the
    # patience up: training stops after epoch 4 and restores epoch 2.
    assert len(history.history["loss"]) == 5
    assert stop.stopped_epoch == 4
    assert stop.best_epoch == 2 and stop.best == pytest.approx(0.3)
    assert all(np.all(w == 3.0) for w in model.get_weights())


def test_keras_early_stopping_restores_the_infeasible_epoch():
    # The failure the feasible callbacks exist for, on the same script.
    model = _plain_model()
    stop = keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)
    _scripted_fit(model, [stop])
    assert stop.best_epoch == 3
    assert all(np.all(w == 4.0) for w in model.get_weights())


def test_patience_waits_for_the_first_feasible_epoch():
    model = _plain_model()
    script = [(1.0, 0.1, 0.0), (2.0, 0.1, 0.0), (3.0, 0.1, 0.0)]
    script += [(4.0, 0.5, 1.0)]
    stop = FeasibleEarlyStopping(patience=1, restore_best_weights=True)
    history = _scripted_fit(model, [stop], script)
    assert len(history.history["loss"]) == 4
    assert stop.best_epoch == 3


def test_no_feasible_epoch_keeps_the_final_weights_and_warns(tmp_path):
    model = _plain_model()
    script = [(1.0, 0.1, 0.0), (2.0, 0.2, 0.0)]
    stop = FeasibleEarlyStopping(restore_best_weights=True, patience=5)
    path = str(tmp_path / "never.keras")
    checkpoint = FeasibleModelCheckpoint(path)
    with pytest.warns(UserWarning, match="no epoch satisfied"):
        _scripted_fit(model, [stop, checkpoint], script)
    assert all(np.all(w == 2.0) for w in model.get_weights())
    assert (
        checkpoint.best_epoch is None
        and not (tmp_path / "never.keras").exists()
    )


def test_training_monitor_uses_the_training_feasibility():
    model = _plain_model()
    stop = FeasibleEarlyStopping(monitor="loss", restore_best_weights=True)
    assert stop.feasibility_key == "feasible"
    assert FeasibleEarlyStopping().feasibility_key == "val_feasible"
    stop.set_model(model)
    stop.on_train_begin()
    epochs = [
        {"loss": 0.2, "feasible": 1.0, "val_feasible": 0.0},
        {"loss": 0.1, "feasible": 0.0, "val_feasible": 1.0},
    ]
    for epoch, logs in enumerate(epochs):
        stop.on_epoch_end(epoch, logs)
    assert stop.best_epoch == 0


def test_public_names():
    assert tfc.FeasibleEarlyStopping is FeasibleEarlyStopping
    assert tfc.FeasibleModelCheckpoint is FeasibleModelCheckpoint


def test_a_missing_feasibility_key_raises_a_clear_error():
    model = _plain_model()
    stop = FeasibleEarlyStopping()
    stop.set_model(model)
    stop.on_train_begin()
    with pytest.raises(KeyError, match="'val_feasible'.*validation_data"):
        stop.on_epoch_end(0, {"loss": 0.1, "val_loss": 0.1})
    checkpoint = FeasibleModelCheckpoint("m.keras", monitor="loss")
    checkpoint.set_model(model)
    with pytest.raises(KeyError, match="'feasible'.*ConstrainedModel"):
        checkpoint.on_epoch_end(0, {"loss": 0.1})


# ------------------------------------------- warnings about objective-only
def test_objective_only_callbacks_warn_naming_the_feasible_counterpart():
    model = _model()
    callbacks = [
        keras.callbacks.EarlyStopping(restore_best_weights=True),
        keras.callbacks.ModelCheckpoint("m.keras", save_best_only=True),
    ]
    with pytest.warns(UserWarning) as record:
        feasible.warn_objective_only_callbacks(callbacks, model)
    assert len(record) == 1  # one warning per fit
    message = str(record[0].message)
    assert "tfc.FeasibleEarlyStopping" in message
    assert "tfc.FeasibleModelCheckpoint" in message


@pytest.mark.parametrize(
    "callback",
    [
        keras.callbacks.EarlyStopping(),  # does not restore
        keras.callbacks.ModelCheckpoint("m.keras"),  # saves every epoch
        FeasibleEarlyStopping(restore_best_weights=True),
        FeasibleModelCheckpoint("m.keras"),
        BestFeasibleWeights(),
    ],
)
def test_feasible_or_non_selecting_callbacks_do_not_warn(callback):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feasible.warn_objective_only_callbacks([callback], _model())


def test_unconstrained_models_do_not_warn():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feasible.warn_objective_only_callbacks(
            [keras.callbacks.EarlyStopping(restore_best_weights=True)], model
        )


def test_two_restoring_callbacks_warn_that_the_last_one_wins():
    model = _model()
    callbacks = [
        BestFeasibleWeights(monitor="val_loss"),
        keras.callbacks.EarlyStopping(restore_best_weights=True),
    ]
    with pytest.warns(UserWarning, match=r"the last one, `keras.callbacks.Ea"):
        feasible.warn_objective_only_callbacks(callbacks, model)
    # Two feasible selectors on the same monitor agree: no ordering warning.
    agreeing = [
        BestFeasibleWeights(monitor="val_loss"),
        FeasibleEarlyStopping(restore_best_weights=True),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feasible.warn_objective_only_callbacks(agreeing, model)


# --------------------------------------------------------------- end to end
def _infeasible_optimum_run(callbacks, epochs=8):
    """mean(y_pred) <= 0.5 while targets have mean ~1 (see above)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype("float32")
    y = x @ np.array([[1.0], [-2.0]], "float32") + 1.0
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1)(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(mean_prediction, "<=", 0.5, name="c")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss="mse", dual_optimizer=0.5
    )
    history = model.fit(
        x,
        y,
        batch_size=16,
        epochs=epochs,
        validation_data=(x, y),
        callbacks=callbacks,
        verbose=0,
    )
    return model, history.history, (x, y)


def test_feasible_callbacks_select_the_best_feasible_epoch_end_to_end(
    tmp_path,
):
    path = str(tmp_path / "best.keras")
    checkpoint = FeasibleModelCheckpoint(path)
    stop = FeasibleEarlyStopping(patience=100, restore_best_weights=True)
    keras_stop = keras.callbacks.EarlyStopping(
        patience=100, restore_best_weights=True
    )
    with pytest.warns(UserWarning, match="tfc.FeasibleEarlyStopping"):
        model, logs, (x, y) = _infeasible_optimum_run(
            [checkpoint, keras_stop, stop]
        )
    losses = np.array(logs["val_loss"])
    is_feasible = np.array(logs["val_feasible"]) == 1.0
    np.testing.assert_array_equal(
        is_feasible, np.array(logs["val_c_violation"]) <= 1e-4
    )
    # The run is built so that the lowest validation loss is infeasible.
    assert not is_feasible[np.argmin(losses)]
    best = np.flatnonzero(is_feasible)[np.argmin(losses[is_feasible])]
    assert keras_stop.best_epoch == np.argmin(losses)
    assert stop.best_epoch == best and checkpoint.best_epoch == best
    # `stop` is listed last: its restoration is the one that stays.
    restored = model.evaluate(x, y, return_dict=True, verbose=0)
    assert restored["loss"] == pytest.approx(losses[best], rel=1e-5)
    assert restored["feasible"] == 1.0
    saved = keras.models.load_model(path)
    reloaded = saved.evaluate(x, y, return_dict=True, verbose=0)
    assert reloaded["loss"] == pytest.approx(losses[best], rel=1e-5)
