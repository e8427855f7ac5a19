"""Per-sample (indexed) multipliers: feasible learning, loss_i <= ε."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import make_moons

import tfconstrain as tfc
from tfconstrain.constraints.per_sample import PerSampleConstraint

EPSILON = 0.05


def per_example_loss(batch):
    return keras.losses.binary_crossentropy(batch.y, batch.y_pred)


def moons_model(num_samples):
    inputs = keras.Input((2,), name="features")
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    hidden = keras.layers.Dense(32, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        PerSampleConstraint(
            per_example_loss, num_samples=num_samples, name="each"
        )
        <= EPSILON
    )
    return model


def test_feasible_learning_on_two_moons():
    """Every per-sample loss ends <= ε; samples never violated keep λ = 0.

    After a warm-up of pure primal steps, the dual steps start; a sample
    whose loss stays within ε from then on (checked every 10 steps) is never
    violated when seen, so its multiplier must stay exactly 0.
    """
    x, y = make_moons(200, noise=0.1, random_state=0)
    x, y = x.astype("float32"), y[:, None].astype("float32")
    ids = np.arange(200)
    data = {"features": x, "sample_id": ids}
    model = moons_model(200)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="binary_crossentropy",
        dual_optimizer=1.0,
    )
    ever_violated = np.zeros(200, bool)

    def record_violations():
        predictions = model.predict(x, verbose=0, batch_size=200)
        losses = keras.ops.convert_to_numpy(
            keras.losses.binary_crossentropy(y, predictions)
        )
        ever_violated[losses > EPSILON] = True

    warmup = 100

    class Track(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch + 1 >= warmup and batch % 10 == 9:
                record_violations()

    # 2 batches per pass over the data, 150 passes: 300 steps in one fit,
    # the first 100 without dual steps (the easy samples get fitted).
    dataset = (
        tf.data.Dataset.from_tensor_slices((data, y)).batch(100).repeat(150)
    )
    model.fit(
        dataset,
        verbose=0,
        shuffle=False,
        callbacks=[tfc.MultiplierCallback(warmup_steps=warmup), Track()],
    )
    predictions = model.predict(data, verbose=0)
    losses = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(y, predictions)
    )
    assert losses.max() <= EPSILON
    multipliers = model.multipliers["each"].numpy()
    assert multipliers.shape == (200,)
    assert np.all(multipliers >= 0)
    assert np.any(multipliers > 0)
    # Easy samples (never seen above ε, checked every 10 steps) keep λ = 0.
    never = ~ever_violated
    assert never.sum() > 0
    assert np.all(multipliers[never] == 0.0)
    report = model.constraint_report((data, y))
    assert report["each"]["satisfied"]


def test_only_seen_entries_move():
    """One SGD-ascent dual step touches exactly the ids of the batch."""
    model = moons_model(10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="binary_crossentropy",
        dual_optimizer=1.0,
    )
    x = np.random.default_rng(0).normal(size=(10, 2)).astype("float32")
    y = np.ones((10, 1), "float32")
    ids = np.array([3, 7, 1])
    model.fit(
        {"features": x[ids], "sample_id": ids}, y[ids], epochs=1, verbose=0
    )
    multipliers = model.multipliers["each"].numpy()
    predictions = model.predict(x[ids], verbose=0)
    losses = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(y[ids], predictions)
    )
    expected = np.zeros(10, np.float32)
    expected[ids] = np.maximum(losses - EPSILON, 0.0)
    np.testing.assert_allclose(multipliers, expected, rtol=1e-5, atol=1e-7)


def test_per_sample_under_mirrored_strategy_matches_single_device(mirrored):
    x, y = make_moons(64, noise=0.1, random_state=1)
    x, y = x.astype("float32"), y[:, None].astype("float32")
    data = {"features": x, "sample_id": np.arange(64)}

    def run(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(4)
            model = moons_model(64)
            model.compile(
                optimizer=keras.optimizers.SGD(0.1),
                loss="binary_crossentropy",
                dual_optimizer=0.5,
            )
        model.fit(data, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return model

    single = run(tf.distribute.get_strategy())
    replicated = run(mirrored)
    np.testing.assert_allclose(
        single.multipliers["each"].numpy(),
        keras.ops.convert_to_numpy(replicated.multipliers["each"]),
        rtol=1e-4,
        atol=1e-5,
    )
    for a, b in zip(single.weights, replicated.weights):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            rtol=1e-4,
            atol=1e-5,
        )


def test_bad_per_sample_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        PerSampleConstraint(
            per_example_loss, num_samples=0, kind="<=", bound=0.1
        )
    with pytest.raises(ValueError, match="one float"):
        PerSampleConstraint(per_example_loss, num_samples=2) <= [0.1, 0.2]  # noqa: B015


def test_nupi_touches_only_the_batch_entries_and_their_state():
    model = moons_model(10)
    model.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss="binary_crossentropy",
        dual_optimizer=tfc.optimizers.NuPI(1.0, kp=2.0, nu=0.5),
    )
    x = np.random.default_rng(0).normal(size=(10, 2)).astype("float32")
    y = np.ones((10, 1), "float32")
    ids = np.array([3, 7, 1])
    model.fit(
        {"features": x[ids], "sample_id": ids}, y[ids], epochs=2, verbose=0
    )
    predictions = model.predict(x[ids], verbose=0)
    violation = (
        keras.ops.convert_to_numpy(
            keras.losses.binary_crossentropy(y[ids], predictions)
        )
        - EPSILON
    )
    # Constant violation e (SGD 0): step 1 is η·e, step 2 adds η·e again
    # (ξ stays e, so the proportional term is 0): λ = [2e]₊ on the ids.
    expected = np.zeros(10, np.float32)
    expected[ids] = np.maximum(2 * violation, 0.0)
    np.testing.assert_allclose(
        model.multipliers["each"].numpy(), expected, rtol=1e-5, atol=1e-7
    )
    state = {v.name: v.numpy() for v in model._tfc.dual_variables}
    started = state["each_nupi_started"]
    assert started[ids].tolist() == [1.0, 1.0, 1.0]
    assert started.sum() == 3.0


def test_evaluate_per_sample_values_under_mirrored_strategy(mirrored):
    """Each example's loss lands in its own entry, from both replicas."""
    x, y = make_moons(16, noise=0.1, random_state=2)
    x, y = x.astype("float32"), y[:, None].astype("float32")
    data = {"features": x, "sample_id": np.arange(16)}
    with mirrored.scope():
        keras.utils.set_random_seed(5)
        model = moons_model(16)
        model.compile(optimizer="sgd", loss="binary_crossentropy")
    logs = model.evaluate(data, y, batch_size=8, verbose=0, return_dict=True)
    losses = keras.ops.convert_to_numpy(
        keras.losses.binary_crossentropy(y, model.predict(data, verbose=0))
    )
    np.testing.assert_allclose(logs["each"], losses.max(), rtol=1e-5)
    report = model.constraint_report((data, y))
    np.testing.assert_allclose(report["each"]["value"], losses, rtol=1e-5)


def test_augmented_lagrangian_weight_uses_each_example_violation():
    """One primal SGD step with the PHR weight [λ_i + c·v_i]₊ per example.

    With λ = 0 and a linear model f(x) = w·x (sigmoid-free, MSE per
    example), the primal gradient of the constraint term is
    (1/B) Σ_i [c·v_i]₊ ∇v_i: compare with the closed form.
    """
    features = np.array([[1.0], [2.0], [3.0], [4.0]], "float32")
    targets = np.zeros((4, 1), "float32")
    inputs = keras.Input((1,), name="features")
    dense = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")
    model = tfc.ConstrainedModel(inputs, dense(inputs))

    def squared_error(batch):
        return tf.reshape((batch.y_pred - batch.y) ** 2, [-1])

    epsilon, penalty, lr = 4.0, 3.0, 0.01
    model.add_constraint(
        PerSampleConstraint(
            squared_error, num_samples=4, kind="<=", bound=epsilon, name="each"
        )
    )
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=lambda y_true, y_pred: 0.0 * tf.reduce_mean(y_pred),
        formulation=tfc.AugmentedLagrangian(penalty=penalty),
        update="simultaneous",
    )
    model.fit(
        {"features": features, "sample_id": np.arange(4)},
        targets,
        batch_size=4,
        epochs=1,
        verbose=0,
    )
    x = features[:, 0]
    violation = x**2 - epsilon  # w = 1: prediction x, error x²
    weight = np.maximum(penalty * violation, 0.0)
    gradient = np.mean(weight * 2.0 * x * x)  # d(x²w²)/dw at w = 1
    np.testing.assert_allclose(
        dense.kernel.numpy()[0, 0], 1.0 - lr * gradient, rtol=1e-5
    )


@keras.saving.register_keras_serializable(package="tfconstrain_tests")
def registered_example_loss(batch):
    return keras.losses.binary_crossentropy(batch.y, batch.y_pred)


def test_config_round_trip():
    constraint = PerSampleConstraint(
        registered_example_loss, num_samples=7, kind=">=", bound=0.2, id_key="i"
    )
    restored = PerSampleConstraint.from_config(constraint.get_config())
    assert restored.fn is registered_example_loss
    assert restored.kind == ">=" and restored.num_samples == 7
    assert restored.id_key == "i" and restored.bound.shape == (7,)
    np.testing.assert_allclose(restored.bound, 0.2)


def test_per_sample_by_comparison_keeps_the_function_and_names_it():
    def margin(batch):
        return tf.reshape(batch.y_pred, [-1])

    anonymous = lambda batch: tf.reshape(batch.y_pred, [-1])  # noqa: E731
    stated = PerSampleConstraint(anonymous, num_samples=3) >= 0.5
    # A lambda cannot be serialized; the copy made by the comparison keeps it.
    assert stated.fn is anonymous
    assert stated.name == "per_sample_constraint"
    assert stated.kind == ">=" and stated.scalar_bound == 0.5
    np.testing.assert_allclose(stated.bound, [0.5, 0.5, 0.5])
    assert (PerSampleConstraint(margin, num_samples=3) <= 1.0).name == "margin"
    with pytest.raises(TypeError, match="positional"):
        PerSampleConstraint(margin, "<=", 0.1, num_samples=3)
