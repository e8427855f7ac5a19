"""Faults: a NaN at a chosen step never reaches a multiplier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc

FEATURES = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
LABELS = np.ones((8, 1), "float32")
NAN_STEP = 3


def build(on_nonfinite, nan_in="constraint"):
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)

    def poisoned(value):
        step = model.optimizer.iterations
        return tf.where(
            tf.equal(step, NAN_STEP), tf.constant(np.nan, value.dtype), value
        )

    def rate(batch):
        value = keras.ops.mean(batch.y_pred)
        return poisoned(value) if nan_in == "constraint" else value

    def loss(y_true, y_pred):
        value = keras.ops.mean(keras.ops.square(y_true - y_pred))
        return poisoned(value) if nan_in == "loss" else value

    model.add_constraint(rate, "<=", 0.1, name="rate")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=loss,
        dual_optimizer=0.5,
        on_nonfinite=on_nonfinite,
    )
    return model


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(self.model.multipliers["rate"].numpy()))


@pytest.mark.smoke
def test_skip_leaves_the_multiplier_unchanged_at_the_nan_step():
    model = build("skip")
    record = Record()
    history = model.fit(
        FEATURES,
        LABELS,
        batch_size=8,
        epochs=6,
        verbose=0,
        callbacks=[record],
    )
    values = np.array(record.values)
    assert np.all(np.isfinite(values))
    assert values[NAN_STEP] == values[NAN_STEP - 1]  # skipped
    assert np.all(np.diff(values)[np.arange(5) != NAN_STEP - 1] > 0)
    assert sum(history.history["nonfinite_dual_skips"]) == 1


def test_raise_names_the_constraint_and_leaves_multipliers_finite():
    model = build("raise")
    record = Record()
    with pytest.raises(tf.errors.InvalidArgumentError, match="rate"):
        model.fit(
            FEATURES,
            LABELS,
            batch_size=8,
            epochs=6,
            verbose=0,
            callbacks=[record],
        )
    assert len(record.values) == NAN_STEP
    assert model.multipliers["rate"].numpy() == record.values[-1]


def test_nan_loss_skips_the_dual_step_and_terminate_on_nan_still_works():
    model = build("raise", nan_in="loss")
    record = Record()
    model.fit(
        FEATURES,
        LABELS,
        batch_size=8,
        epochs=6,
        verbose=0,
        callbacks=[record, keras.callbacks.TerminateOnNaN()],
    )
    assert len(record.values) == NAN_STEP + 1  # stopped after the NaN step
    assert np.all(np.isfinite(record.values))
    assert record.values[NAN_STEP] == record.values[NAN_STEP - 1]
