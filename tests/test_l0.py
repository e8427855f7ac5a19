"""L0 hard-concrete gates (`L0Dense`, `L0Conv2D`) and their density constraint.

Closed forms, with stretch (γ, ζ) and temperature β:
- inference gate `ẑ = clip(sigmoid(log α)·(ζ − γ) + γ, 0, 1)`;
- `P(z ≠ 0) = sigmoid(log α − β·log(−γ/ζ))`;
- `P(z = 1) = sigmoid(log α − β·logit((1 − γ)/(ζ − γ)))`.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import tfconstrain as tfc
from tfconstrain.layers import L0Conv2D
from tfconstrain.layers import L0Dense

GAMMA, ZETA, BETA = -0.1, 1.1, 2.0 / 3.0


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _logit(p):
    return np.log(p / (1.0 - p))


def _dense_with_log_alpha(log_alpha, **kwargs):
    layer = L0Dense(len(log_alpha), **kwargs)
    layer.build((None, 3))
    layer.log_alpha.assign(np.asarray(log_alpha, np.float32))
    return layer


def test_inference_gates_probabilities_and_densities_match_closed_form():
    log_alpha = np.array([-6.0, -2.5, -2.3, 0.0, 1.0, 6.0], np.float32)
    layer = _dense_with_log_alpha(log_alpha)
    gates = np.clip(_sigmoid(log_alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    nonzero = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
    np.testing.assert_allclose(layer.gate_values().numpy(), gates, rtol=1e-5)
    np.testing.assert_allclose(
        layer.nonzero_probabilities().numpy(), nonzero, rtol=1e-5
    )
    assert float(layer.expected_density()) == pytest.approx(nonzero.mean())
    # ẑ ≠ 0 ⟺ log α > log(−γ/ζ) ≈ −2.398: the last four gates.
    assert float(layer.density()) == pytest.approx(4.0 / 6.0)


def test_training_gates_are_hard_concrete_samples():
    log_alpha = np.array([-1.0, 0.5, 2.0], np.float32)
    layer = _dense_with_log_alpha(log_alpha, seed=3)
    ones = np.ones((20000, 3), np.float32)
    layer.kernel.assign(np.eye(3, dtype=np.float32))
    layer.bias.assign(np.zeros(3, np.float32))
    samples = keras.ops.convert_to_numpy(layer(ones, training=True))
    exact_zero = 1.0 - _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
    exact_one = _sigmoid(
        log_alpha - BETA * _logit((1.0 - GAMMA) / (ZETA - GAMMA))
    )
    np.testing.assert_allclose(
        (samples == 0.0).mean(axis=0), exact_zero, atol=0.015
    )
    np.testing.assert_allclose(
        (samples == 1.0).mean(axis=0), exact_one, atol=0.015
    )
    inference = keras.ops.convert_to_numpy(layer(ones[:2], training=False))
    np.testing.assert_allclose(
        inference, np.tile(layer.gate_values().numpy(), (2, 1)), rtol=1e-6
    )


def test_density_constraint_value_is_inference_density_with_expected_gradient():
    log_alpha = np.array([-4.0, -1.0, 0.5, 3.0], np.float32)
    layer = _dense_with_log_alpha(log_alpha, target_density=0.5)
    constraint = layer.density_constraint
    assert constraint.name == f"{layer.name}_density"
    with tf.GradientTape() as tape:
        value = constraint.call(tfc.Batch(x=np.zeros((1, 3))))
    gradient = tape.gradient(value, layer.log_alpha).numpy()
    probability = _sigmoid(log_alpha - BETA * np.log(-GAMMA / ZETA))
    assert float(value) == pytest.approx(0.75)
    np.testing.assert_allclose(
        gradient, probability * (1 - probability) / 4, rtol=1e-5
    )

    expected = _dense_with_log_alpha(
        log_alpha, target_density=0.5, density_measure="expected"
    )
    value = expected.density_constraint.call(tfc.Batch(x=np.zeros((1, 3))))
    assert float(value) == pytest.approx(probability.mean(), rel=1e-6)


def test_units_with_zero_gates_output_zero_at_inference():
    layer = _dense_with_log_alpha([-5.0, 5.0, -5.0], activation="sigmoid")
    outputs = layer(np.random.RandomState(0).randn(4, 3).astype(np.float32))
    outputs = keras.ops.convert_to_numpy(outputs)
    np.testing.assert_array_equal(outputs[:, [0, 2]], 0.0)
    assert np.all(outputs[:, 1] > 0.0)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "data_format",
    [
        "channels_last",
        pytest.param("channels_first", marks=pytest.mark.requires_nchw_conv),
    ],
)
def test_conv_gates_scale_whole_filters(data_format):
    layer = L0Conv2D(3, 2, data_format=data_format, use_bias=False)
    shape = (2, 5, 5, 2) if data_format == "channels_last" else (2, 2, 5, 5)
    x = np.random.RandomState(1).randn(*shape).astype(np.float32)
    layer.build(shape)
    ungated = keras.ops.convert_to_numpy(layer.convolution_op(x, layer.kernel))
    layer.log_alpha.assign(np.array([-5.0, 0.0, 5.0], np.float32))
    gates = layer.gate_values().numpy()
    gated = keras.ops.convert_to_numpy(layer(x))
    axis_shape = (
        (1, 1, 1, 3) if data_format == "channels_last" else (1, 3, 1, 1)
    )
    np.testing.assert_allclose(
        gated, ungated * gates.reshape(axis_shape), rtol=1e-5, atol=1e-6
    )
    assert gates[0] == 0.0 and gates[2] == 1.0


def _digits():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    order = np.random.RandomState(0).permutation(len(x))
    return x[order], digits.target[order]


def test_l0_dense_reaches_target_density_on_digits():
    # Acceptance: target density 50 % reached within ±2 % in one run. The
    # density is that of the inference gates (units the pruned layer
    # keeps). The augmented Lagrangian's penalty term on the exact density
    # damps the multiplier's overshoot (see docs/layers.md).
    x, y = _digits()
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    inputs = keras.Input((64,))
    gated = L0Dense(64, activation="relu", target_density=0.5, name="gated")
    outputs = keras.layers.Dense(10, activation="softmax")(gated(inputs))
    model = tfc.ConstrainedModel(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.01),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        formulation=tfc.AugmentedLagrangian(penalty=10.0),
        dual_optimizer=0.0005,
    )
    model.fit(x_train, y_train, batch_size=128, epochs=60, verbose=0)
    density = float(np.mean(gated.gate_values().numpy() > 0))
    assert density == pytest.approx(0.5, abs=0.02)
    report = model.constraint_report((x_test, y_test))
    assert report["gated_density"]["value"] == pytest.approx(density)
    assert model.evaluate(x_test, y_test, verbose=0)[1] > 0.9


@pytest.mark.slow
def test_l0_conv2d_reaches_target_density_on_digits():
    x, y = _digits()
    images = x.reshape(-1, 8, 8, 1)
    inputs = keras.Input((8, 8, 1))
    gated = L0Conv2D(32, 3, activation="relu", target_density=0.5, name="gated")
    hidden = keras.layers.GlobalAveragePooling2D()(gated(inputs))
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(0.01),
        "sparse_categorical_crossentropy",
        formulation=tfc.AugmentedLagrangian(penalty=10.0),
        dual_optimizer=0.0005,
    )
    model.fit(images[:1400], y[:1400], batch_size=128, epochs=100, verbose=0)
    density = float(np.mean(gated.gate_values().numpy() > 0))
    assert density == pytest.approx(0.5, abs=2.0 / 32)


def test_l0_layers_round_trip_through_config():
    dense = L0Dense(
        5,
        activation="relu",
        target_density=0.3,
        density_kind="<=",
        density_measure="expected",
        temperature=0.5,
        stretch=(-0.2, 1.2),
        seed=7,
        multiplier_init=0.5,
        name="d",
    )
    conv = L0Conv2D(4, 3, padding="same", target_density=0.5, name="c")
    for layer in (dense, conv):
        restored = type(layer).from_config(layer.get_config())
        assert restored.get_config() == layer.get_config()
        constraint = restored.density_constraint
        assert (constraint.name, constraint.kind) == (
            layer.density_constraint.name,
            layer.density_constraint.kind,
        )


@pytest.mark.smoke
def test_model_with_l0_layers_saves_and_loads(tmp_path):
    inputs = keras.Input((6, 6, 1))
    hidden = L0Conv2D(4, 3, target_density=0.5, name="conv")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = L0Dense(2, target_density=0.5, name="dense")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.compile(keras.optimizers.SGD(0.1), "mse", dual_optimizer=1.0)
    x = np.random.RandomState(2).randn(8, 6, 6, 1).astype(np.float32)
    model.fit(x, np.zeros((8, 2)), epochs=2, verbose=0)
    path = str(tmp_path / "l0.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert sorted(c.name for c in loaded.constraints) == [
        "conv_density",
        "dense_density",
    ]
    for name, multiplier in model.multipliers.items():
        np.testing.assert_allclose(
            loaded.multipliers[name].numpy(), multiplier.numpy()
        )
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5
    )


def test_l0_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="'g'.*stretch"):
        L0Dense(2, stretch=(0.1, 1.1), name="g")
    with pytest.raises(ValueError, match="'g'.*temperature"):
        L0Dense(2, temperature=0.0, name="g")
    with pytest.raises(ValueError, match="'g'.*density_measure"):
        L0Dense(2, density_measure="sampled", name="g")
    with pytest.raises(ValueError, match="'g_density'.*\\[0, 1\\]"):
        L0Dense(2, target_density=1.5, name="g")
    with pytest.raises(ValueError, match="'g_density'.*unknown kind"):
        L0Dense(2, target_density=0.5, density_kind="<", name="g")
