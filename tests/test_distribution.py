"""One device and N replicas give the same training for the same global batch.

Also: `steps_per_execution` and `jit_compile` on the default strategy match
the plain run, multiplier copies stay identical on all replicas, the logged
`loss` is plain Keras' loss (not scaled per replica), and epoch-level
constraint logs are dataset aggregates.
"""

import keras
import numpy as np
import pytest
from problems import mean_prediction

import tfconstrain as tfc

RNG = np.random.default_rng(0)
FEATURES = RNG.normal(size=(64, 5)).astype("float32")
LABELS = (FEATURES[:, :1] + 0.3 * FEATURES[:, 1:2] > 0).astype("float32")


def build(dual_optimizer, constrained=True, bound=0.3, **compile_kwargs):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    if not constrained:
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="binary_crossentropy",
            **compile_kwargs,
        )
        return model
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(mean_prediction, "<=", bound, name="rate")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="binary_crossentropy",
        dual_optimizer=dual_optimizer,
        **compile_kwargs,
    )
    return model


def train(model, epochs=3):
    return model.fit(
        FEATURES, LABELS, batch_size=16, epochs=epochs, shuffle=False, verbose=0
    )


def numpy_weights(model):
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


@pytest.mark.smoke
@pytest.mark.parametrize("dual", ["ascent", "adam"])
def test_mirrored_matches_single_device(mirrored, dual):
    def build_model():
        if dual == "adam":
            with pytest.warns(UserWarning, match="momentum"):
                return build(keras.optimizers.Adam(0.05))
        return build(0.5)

    single = build_model()
    single_history = train(single).history
    with mirrored.scope():
        replicated = build_model()
    replicated_history = train(replicated).history

    for a, b in zip(numpy_weights(single), numpy_weights(replicated)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    copies = [v.numpy() for v in replicated.multipliers["rate"].value.values]
    assert len(copies) == 2 and copies[0] == copies[1]
    assert single.multipliers["rate"].numpy() > 0
    for key in ("loss", "rate", "rate_violation", "rate_multiplier"):
        np.testing.assert_allclose(
            single_history[key], replicated_history[key], rtol=1e-5
        )


@pytest.mark.smoke
@pytest.mark.parametrize(
    "kwargs", [{"steps_per_execution": 4}, {"jit_compile": True}]
)
def test_steps_per_execution_and_xla_match_plain_run(kwargs):
    plain = build(0.5)
    train(plain)
    other = build(0.5, **kwargs)
    train(other)
    for a, b in zip(numpy_weights(plain), numpy_weights(other)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_logged_loss_is_plain_keras_loss(mirrored):
    """An inactive constraint (λ stays 0) leaves training exactly Keras'.

    The bound 1.0 on a sigmoid's mean is never violated, so the constrained
    run must log the same `loss` as plain Keras, under 1 and 2 replicas.
    """

    def build_inactive():
        return build(0.5, bound=1.0)

    plain_history = train(build(0.5, constrained=False)).history
    constrained_history = train(build_inactive()).history
    with mirrored.scope():
        replicated = build_inactive()
    replicated_history = train(replicated).history
    np.testing.assert_allclose(
        constrained_history["loss"], plain_history["loss"], rtol=1e-6
    )
    np.testing.assert_allclose(
        replicated_history["loss"], plain_history["loss"], rtol=1e-5
    )


@pytest.mark.smoke
def test_epoch_logs_are_dataset_aggregates(mirrored):
    """`evaluate` reports the constraint over the whole dataset, exactly.

    With 64 rows, batch 24 (uneven last batch) and 2 replicas, the mean
    prediction must equal numpy's mean over all predictions.
    """
    model = build(0.5)
    train(model, epochs=1)
    predictions = model.predict(FEATURES, verbose=0)
    expected = float(np.mean(predictions))
    logs = model.evaluate(
        FEATURES, LABELS, batch_size=24, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(logs["rate"], expected, rtol=1e-6)
    np.testing.assert_allclose(
        logs["rate_violation"], max(0.0, expected - 0.3), rtol=1e-5
    )
    np.testing.assert_allclose(
        logs["rate_multiplier"], model.multipliers["rate"].numpy()
    )
    with mirrored.scope():
        replicated = build(0.5)
    replicated.set_weights(model.get_weights())
    replicated_logs = replicated.evaluate(
        FEATURES, LABELS, batch_size=24, verbose=0, return_dict=True
    )
    np.testing.assert_allclose(replicated_logs["rate"], expected, rtol=1e-6)
    np.testing.assert_allclose(replicated_logs["loss"], logs["loss"], rtol=1e-6)


def test_training_epoch_logs_match_across_replicas(mirrored):
    history = train(build(0.5), epochs=2).history
    with mirrored.scope():
        replicated = build(0.5)
    replicated_history = train(replicated, epochs=2).history
    for key in ("rate", "rate_violation"):
        assert len(history[key]) == 2
        np.testing.assert_allclose(
            history[key], replicated_history[key], rtol=1e-5
        )
