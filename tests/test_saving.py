"""Multipliers and dual state survive `.keras` saving, `save_weights`,
`BackupAndRestore` and `tf.train.Checkpoint`."""

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import mean_prediction

import tfconstrain as tfc

RNG = np.random.default_rng(0)
FEATURES = RNG.normal(size=(32, 3)).astype("float32")
LABELS = (FEATURES[:, :1] > 0).astype("float32")


COMPILES = {
    "lagrangian": dict(dual_optimizer=0.5),
    "augmented": dict(
        formulation=tfc.AugmentedLagrangian(penalty=1.0, penalty_growth=1.5),
    ),
    "nupi": dict(dual_optimizer=tfc.optimizers.NuPI(0.5, kp=1.0, nu=0.5)),
    "adam": dict(dual_optimizer=keras.optimizers.Adam(0.05, beta_1=0.0)),
}


def build(kind):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(mean_prediction, "<=", 0.2, name="rate")
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        **COMPILES[kind],
    )
    return model


def train(model, epochs):
    model.fit(
        FEATURES, LABELS, batch_size=8, epochs=epochs, shuffle=False, verbose=0
    )


def state(model):
    return [keras.ops.convert_to_numpy(v) for v in model.weights] + [
        keras.ops.convert_to_numpy(v) for v in model.optimizer.variables
    ]


@pytest.mark.smoke
@pytest.mark.parametrize("kind", sorted(COMPILES))
def test_keras_file_round_trip_continues_training_exactly(kind, tmp_path):
    reference = build(kind)
    train(reference, 4)

    model = build(kind)
    train(model, 2)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, tfc.ConstrainedModel)
    assert [c.name for c in loaded.constraints] == ["rate"]
    np.testing.assert_array_equal(
        loaded.multipliers["rate"].numpy(), model.multipliers["rate"].numpy()
    )
    train(loaded, 2)
    for a, b in zip(state(reference), state(loaded)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.smoke
def test_save_weights_and_checkpoint_include_multipliers(tmp_path):
    model = build("nupi")
    train(model, 2)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    checkpoint = tf.train.Checkpoint(model=model)
    prefix = checkpoint.save(str(tmp_path / "ckpt"))
    expected = [keras.ops.convert_to_numpy(v) for v in model.weights]

    fresh = build("nupi")
    fresh.load_weights(path)
    for a, b in zip(expected, fresh.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))

    restored = build("nupi")
    tf.train.Checkpoint(model=restored).restore(prefix).expect_partial()
    for a, b in zip(expected, restored.weights):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))


class _PreemptAtEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise RuntimeError("pre-empted")


class _PreemptAtStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.model.optimizer.iterations.numpy() == 7:
            raise RuntimeError("pre-empted")


@pytest.mark.smoke
@pytest.mark.parametrize(
    "kind, preempt, save_freq",
    [
        ("nupi", _PreemptAtEpoch, "epoch"),  # at the start of epoch 3
        ("augmented", _PreemptAtStep, 1),  # after batch 3 of epoch 2
    ],
)
def test_backup_and_restore_resumes_exactly(kind, preempt, save_freq, tmp_path):
    """Pre-empted, then resumed with the same callback: same final state.

    Keras' `BackupAndRestore` restarts an interrupted epoch from its first
    batch; mid-epoch, the resumed `fit` skips the batches already in the
    backup (save_freq=1), so the run continues exactly.
    """
    reference = build(kind)
    train(reference, 3)
    backup = str(tmp_path / "backup")

    def fit(model, callbacks):
        model.fit(
            FEATURES,
            LABELS,
            batch_size=8,
            epochs=3,
            shuffle=False,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(backup, save_freq=save_freq),
                *callbacks,
            ],
        )

    with pytest.raises(RuntimeError, match="pre-empted"):
        fit(build(kind), [preempt()])
    resumed = build(kind)
    fit(resumed, [])
    assert resumed.optimizer.iterations.numpy() == 12
    for a, b in zip(state(reference), state(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unrestorable_callable_error_names_the_constraint(tmp_path):
    inputs = keras.Input((3,))
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(inputs))
    model.add_constraint(
        lambda b: keras.ops.mean(b.y_pred), "<=", 0.2, name="anonymous"
    )
    model.compile(optimizer="sgd", loss="mse")
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ValueError, match="'anonymous'.*register"):
        keras.models.load_model(path)


# ---------------------------------------------------------------------------
# Files saved by tfconstrain 0.1 (commit 33899da): `compile()`'s default was
# plain ascent, without dual state, so they hold the multiplier only. Made
# with: Dense(1, sigmoid) on 3 features, `PositivePredictionRate() <= 0.3`,
# `compile(optimizer="adam", loss="binary_crossentropy")`, one epoch of fit,
# then `model.save(...keras)` and `model.save_weights(...weights.h5)`.
# ---------------------------------------------------------------------------
DATA = Path(__file__).parent / "data"


def _saved_values(path):
    """(multiplier, kernel) as stored in a `.weights.h5` file."""
    with h5py.File(path, "r") as store:
        return store["vars/0"][()], store["layers/dense/vars/0"][()]


def _rate_model():
    inputs = keras.Input((3,))
    model = tfc.ConstrainedModel(
        inputs, keras.layers.Dense(1, activation="sigmoid")(inputs)
    )
    model.add_constraint(tfc.constraints.PositivePredictionRate() <= 0.3)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    return model


def test_weights_saved_by_0_1_load_with_a_fresh_dual_state():
    multiplier, kernel = _saved_values(DATA / "tfconstrain_0_1_rate.weights.h5")
    model = _rate_model()
    with pytest.warns(UserWarning, match="tfconstrain 0.1"):
        model.load_weights(DATA / "tfconstrain_0_1_rate.weights.h5")
    name = "positive_prediction_rate"
    np.testing.assert_array_equal(model.multipliers[name].numpy(), multiplier)
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), kernel)
    dual = model.dual_optimizer
    assert float(dual._scale[name].numpy()) == 0.0
    assert float(dual._started[name].numpy()) == 0.0
    # Training goes on from the loaded multiplier.
    model.fit(FEATURES, LABELS, epochs=1, verbose=0)
    assert float(dual._started[name].numpy()) == 1.0


def test_a_keras_file_saved_by_0_1_loads():
    multiplier, _ = _saved_values(DATA / "tfconstrain_0_1_rate.weights.h5")
    with pytest.warns(UserWarning, match="tfconstrain 0.1"):
        model = keras.saving.load_model(DATA / "tfconstrain_0_1_rate.keras")
    loaded = model.multipliers["positive_prediction_rate"].numpy()
    np.testing.assert_array_equal(loaded, multiplier)


def test_any_other_layout_mismatch_is_keras_error(tmp_path):
    """Two constraints saved, one in the model: not the 0.1 layout."""
    source = _rate_model()
    source.add_constraint(lambda b: keras.ops.mean(b.y_pred), "<=", 0.5)
    source.compile(optimizer="adam", loss="binary_crossentropy")
    source.fit(FEATURES, LABELS, epochs=1, verbose=0)
    source.save_weights(tmp_path / "two.weights.h5")
    with pytest.raises(ValueError, match="variables"):
        _rate_model().load_weights(tmp_path / "two.weights.h5")
