"""Robustness constraints: input-gradient norm, spectral norm, monotonicity.

Expected values come from closed forms (linear models, whose input gradient
is the kernel; projections onto norm balls) or from an independent
computation (per-example Jacobians, finite differences in numpy).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc
from tfconstrain.constraints.robustness import InputGradientNorm
from tfconstrain.constraints.robustness import Monotonicity
from tfconstrain.constraints.robustness import SpectralNorm


def _linear_model(kernel, bias=None):
    kernel = np.asarray(kernel, np.float32)
    inputs = keras.Input((kernel.shape[0],))
    dense = keras.layers.Dense(kernel.shape[1], use_bias=bias is not None)
    model = tfc.ConstrainedModel(inputs, dense(inputs))
    weights = [kernel] if bias is None else [kernel, np.asarray(bias)]
    dense.set_weights(weights)
    return model, dense


def _orthonormal_design(n, d, seed=0):
    """`X` with `XᵀX / n = I`, so that the MSE is `‖W − A‖_F² / outputs`."""
    q, _ = np.linalg.qr(np.random.RandomState(seed).randn(n, d))
    return (q * np.sqrt(n)).astype(np.float32)


def _full_batch(x, y):
    return tf.data.Dataset.from_tensors((x, y)).repeat()


# --------------------------------------------------------- input gradients
@pytest.mark.parametrize(
    "order, expected",
    [(2, np.sqrt(9 + 4 + 1)), (1, 3 + 2 + 1), ("inf", 3.0)],
)
def test_input_gradient_norm_of_linear_model_is_kernel_norm(order, expected):
    model, _ = _linear_model([[3.0], [-2.0], [1.0]], bias=[0.5])
    model.add_constraint(InputGradientNorm(bound=1.0, ord=order))
    model.compile(loss="mse")
    x = np.random.RandomState(0).randn(37, 3).astype(np.float32)
    report = model.constraint_report((x, np.zeros((37, 1))), batch_size=8)
    assert report["input_gradient_norm"]["value"] == pytest.approx(
        expected, rel=1e-5
    )


def test_input_gradient_norm_of_several_outputs_is_frobenius_norm():
    kernel = np.array([[1.0, 2.0], [0.0, -2.0], [4.0, 1.0]])
    model, _ = _linear_model(kernel)
    model.add_constraint(InputGradientNorm(bound=1.0, name="all"))
    model.add_constraint(
        InputGradientNorm(bound=1.0, output_index=1, name="one")
    )
    model.compile(loss="mse")
    x = np.ones((5, 3), np.float32)
    report = model.constraint_report((x, np.zeros((5, 2))))
    assert report["all"]["value"] == pytest.approx(np.sqrt(26.0), rel=1e-5)
    assert report["one"]["value"] == pytest.approx(3.0, rel=1e-5)


def test_input_gradient_power_mean_matches_per_example_jacobians():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(hidden))
    model.add_constraint(InputGradientNorm(bound=1.0, power=2.0))
    model.compile(loss="mse")
    rng = np.random.RandomState(1)
    x = rng.randn(50, 4).astype(np.float32)
    weights = rng.uniform(0.0, 2.0, 50).astype(np.float32)
    norms = []
    for row in x:
        point = tf.constant(row[None])
        with tf.GradientTape() as tape:
            tape.watch(point)
            output = model(point)
        norms.append(np.linalg.norm(tape.gradient(output, point).numpy()))
    expected = np.sqrt(np.sum(weights * np.square(norms)) / np.sum(weights))
    report = model.constraint_report(
        (x, np.zeros((50, 1)), weights), batch_size=16
    )
    assert report["input_gradient_norm"]["value"] == pytest.approx(
        expected, rel=1e-4
    )


def test_input_gradient_bound_gives_projection_onto_ball_and_kkt_multiplier():
    # min ‖w − a‖² s.t. ‖w‖ <= B (the MSE of y = x·a under XᵀX/n = I):
    # w* = B·a/‖a‖ and λ* = 2·(‖a‖ − B).
    a = np.array([[2.0], [-2.0], [1.0]], np.float32)
    bound = 1.0
    x = _orthonormal_design(64, 3)
    model, dense = _linear_model(np.zeros((3, 1)))
    model.add_constraint(InputGradientNorm() <= bound)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05), loss="mse", dual_optimizer=0.5
    )
    model.fit(
        _full_batch(x, x @ a),
        steps_per_epoch=1500,
        epochs=1,
        verbose=0,
        shuffle=False,
    )
    np.testing.assert_allclose(
        dense.kernel.numpy(), bound * a / np.linalg.norm(a), atol=2e-3
    )
    multiplier = float(model.multipliers["input_gradient_norm"].numpy())
    assert multiplier == pytest.approx(2 * (np.linalg.norm(a) - bound), 1e-2)


def test_input_gradient_norm_of_dict_inputs_selects_named_inputs():
    first, second = keras.Input((2,), name="a"), keras.Input((1,), name="b")
    merged = keras.layers.Concatenate()([first, second])
    dense = keras.layers.Dense(1, use_bias=False)
    model = tfc.ConstrainedModel({"a": first, "b": second}, dense(merged))
    dense.set_weights([np.array([[3.0], [4.0], [12.0]], np.float32)])
    model.add_constraint(InputGradientNorm(bound=1.0, name="both"))
    model.add_constraint(InputGradientNorm("a", bound=1.0, name="only_a"))
    model.compile(loss="mse")
    x = {"a": np.ones((6, 2), np.float32), "b": np.ones((6, 1), np.float32)}
    report = model.constraint_report((x, np.zeros((6, 1))))
    assert report["both"]["value"] == pytest.approx(13.0, rel=1e-5)
    assert report["only_a"]["value"] == pytest.approx(5.0, rel=1e-5)


# ------------------------------------------------------------ spectral norm
def test_spectral_norm_value_and_gradient_are_leading_singular_pair():
    kernel = np.random.RandomState(2).randn(5, 3).astype(np.float32)
    model, dense = _linear_model(kernel)
    constraint = SpectralNorm(dense) <= 1.0
    batch = tfc.Batch(x=np.zeros((1, 5), np.float32), model=model)
    with tf.GradientTape() as tape:
        value = constraint.call(batch)
    gradient = tape.gradient(value, dense.kernel)
    u, s, vt = np.linalg.svd(kernel)
    assert float(value) == pytest.approx(s[0], rel=1e-5)
    np.testing.assert_allclose(
        np.abs(gradient.numpy()), np.abs(np.outer(u[:, 0], vt[0])), atol=1e-5
    )


def test_spectral_norm_bound_clips_top_singular_value():
    # min ‖K − A‖_F² / 3 s.t. σ_max(K) <= B: K* clips A's singular values
    # at B, and λ* = (2/3)·(σ₁(A) − B) when only σ₁(A) exceeds B.
    rng = np.random.RandomState(3)
    u, _ = np.linalg.qr(rng.randn(4, 3))
    v, _ = np.linalg.qr(rng.randn(3, 3))
    singular = np.array([3.0, 1.0, 0.5])
    target = (u * singular) @ v.T
    bound = 2.0
    x = _orthonormal_design(64, 4, seed=4)
    model, dense = _linear_model(np.zeros((4, 3)))
    model.add_constraint(SpectralNorm(dense, bound=bound, name="sn"))
    model.compile(
        optimizer=keras.optimizers.SGD(0.3), loss="mse", dual_optimizer=0.3
    )
    data = _full_batch(x, (x @ target).astype(np.float32))
    model.fit(data, steps_per_epoch=1500, epochs=1, verbose=0, shuffle=False)
    expected = (u * np.minimum(singular, bound)) @ v.T
    np.testing.assert_allclose(dense.kernel.numpy(), expected, atol=5e-3)
    multiplier = float(model.multipliers["sn"].numpy())
    assert multiplier == pytest.approx(2.0 / 3.0 * (3.0 - bound), rel=2e-2)


def test_spectral_norm_of_conv_kernel_uses_reshaped_matrix():
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, name="conv")
    model = tfc.ConstrainedModel(inputs, conv(inputs))
    model.add_constraint(SpectralNorm("conv") <= 1.0)
    model.compile(loss="mse")
    x = np.zeros((2, 6, 6, 2), np.float32)
    report = model.constraint_report((x, np.zeros((2, 4, 4, 3))))
    matrix = conv.kernel.numpy().reshape(-1, 3)
    assert report["conv_spectral_norm"]["value"] == pytest.approx(
        np.linalg.svd(matrix, compute_uv=False)[0], rel=1e-5
    )


# -------------------------------------------------------------- monotonicity
def test_monotonicity_value_is_mean_negative_part_of_partial_derivatives():
    # Linear model: ∂f/∂x = kernel; feature 0 increasing (derivative 2: no
    # violation), feature 1 increasing (derivative −3: violation 3), feature
    # 2 decreasing (derivative 0.5: violation 0.5).
    model, _ = _linear_model([[2.0], [-3.0], [0.5]], bias=[1.0])
    model.add_constraint(
        Monotonicity([0, 1, 2], ["increasing", "increasing", "decreasing"])
    )
    model.compile(loss="mse")
    x = np.random.RandomState(5).randn(20, 3).astype(np.float32)
    report = model.constraint_report((x, np.zeros((20, 1))))
    np.testing.assert_allclose(
        report["monotonicity"]["value"], [0.0, 3.0, 0.5], rtol=1e-6
    )


def test_monotonicity_on_named_dict_inputs():
    size, rest = keras.Input((1,), name="size"), keras.Input((2,), name="rest")
    merged = keras.layers.Concatenate()([size, rest])
    dense = keras.layers.Dense(1, use_bias=False)
    model = tfc.ConstrainedModel({"size": size, "rest": rest}, dense(merged))
    dense.set_weights([np.array([[-1.5], [0.5], [-2.0]], np.float32)])
    model.add_constraint(Monotonicity("size", bound=0.0, name="by_name"))
    model.add_constraint(
        Monotonicity(1, bound=0.0, input_name="rest", name="by_column")
    )
    model.compile(loss="mse")
    x = {"size": np.ones((4, 1), np.float32), "rest": np.ones((4, 2))}
    report = model.constraint_report((x, np.zeros((4, 1))))
    assert report["by_name"]["value"] == pytest.approx(1.5)
    assert report["by_column"]["value"] == pytest.approx(2.0)


def _monotone_data(n, rng):
    x = rng.uniform(-1.0, 1.0, (n, 2)).astype(np.float32)
    y = np.sin(3.0 * x[:, 0]) + 0.5 * x[:, 1] + 0.05 * rng.randn(n)
    return x, y.astype(np.float32)[:, None]


def _finite_difference_violation(model, x, feature=0, step=1e-3):
    """Mean negative part of ∂f/∂x_feature, by central differences."""
    forward, backward = x.copy(), x.copy()
    forward[:, feature] += step
    backward[:, feature] -= step
    derivative = (
        model.predict(forward, batch_size=4096, verbose=0)
        - model.predict(backward, batch_size=4096, verbose=0)
    )[:, 0] / (2 * step)
    return float(np.mean(np.maximum(0.0, -derivative)))


def _train_regressor(x, y, constraint, dual_optimizer=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(32, activation="tanh")(inputs)
    model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(hidden))
    if constraint is not None:
        model.add_constraint(constraint)
    model.compile(
        keras.optimizers.Adam(0.02), "mse", dual_optimizer=dual_optimizer
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(128)
        .repeat()
    )
    model.fit(data, steps_per_epoch=100, epochs=4, verbose=0, shuffle=False)
    return model


def test_monotonicity_holds_on_held_out_data_where_unconstrained_fit_violates():
    # Ground truth sin(3·x0) is not monotone in x0. The bound is enforced on
    # the training set with a margin (bound / 2), so that the held-out
    # violation, measured independently by finite differences, stays below
    # the bound.
    bound = 0.01
    rng = np.random.RandomState(0)
    x_train, y_train = _monotone_data(512, rng)
    x_test, _ = _monotone_data(2000, rng)
    free = _train_regressor(x_train, y_train, None)
    assert _finite_difference_violation(free, x_test) > 30 * bound
    constrained = _train_regressor(
        x_train,
        y_train,
        Monotonicity(0, "increasing") <= bound / 2,
        dual_optimizer=1.0,
    )
    measured = _finite_difference_violation(constrained, x_test)
    assert measured <= bound
    report = constrained.constraint_report((x_test, np.zeros((2000, 1))))
    assert report["monotonicity"]["value"] == pytest.approx(measured, abs=1e-3)


# -------------------------------------------------------------- serialization
@pytest.mark.parametrize(
    "constraint",
    [
        InputGradientNorm(
            bound=2.0, ord="inf", power=3.0, output_index=0, name="grad"
        ),
        SpectralNorm("dense", bound=1.5, weight="kernel", name="spectral"),
        Monotonicity([0, 1], ["increasing", -1], bound=[0.0, 0.1], name="mono"),
    ],
    ids=["input_gradient", "spectral", "monotonicity"],
)
def test_robustness_constraints_round_trip_through_config(constraint):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(constraint)
    )
    assert type(restored) is type(constraint)
    assert restored.get_config() == constraint.get_config()


def test_model_with_robustness_constraints_saves_and_loads(tmp_path):
    model, _ = _linear_model([[1.0], [2.0]], bias=[0.0])
    model.add_constraint(InputGradientNorm() <= 1.0)
    model.add_constraint(Monotonicity(1, "decreasing"))
    model.compile(loss="mse", dual_optimizer=0.1)
    x = np.ones((8, 2), np.float32)
    model.fit(x, np.zeros((8, 1)), epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [c.name for c in loaded.constraints] == [
        "input_gradient_norm",
        "monotonicity",
    ]
    for name, multiplier in model.multipliers.items():
        np.testing.assert_allclose(
            loaded.multipliers[name].numpy(), multiplier.numpy()
        )
    report = loaded.constraint_report((x, np.zeros((8, 1))))
    assert report["monotonicity"]["value"] == pytest.approx(
        max(0.0, float(loaded.layers[-1].kernel.numpy()[1, 0]))
    )


def test_input_gradient_norm_is_the_same_on_two_replicas(mirrored):
    rng = np.random.RandomState(6)
    x = rng.randn(32, 3).astype(np.float32)
    values = []
    for strategy in (tf.distribute.get_strategy(), mirrored):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((3,))
            hidden = keras.layers.Dense(4, activation="tanh")(inputs)
            model = tfc.ConstrainedModel(inputs, keras.layers.Dense(1)(hidden))
            model.add_constraint(InputGradientNorm(bound=0.1))
            model.compile(keras.optimizers.SGD(0.1), "mse", dual_optimizer=1.0)
        model.fit(x, x[:, :1], batch_size=16, epochs=2, verbose=0)
        values.append(model.evaluate(x, x[:, :1], return_dict=True, verbose=0))
    assert values[1]["input_gradient_norm"] == pytest.approx(
        values[0]["input_gradient_norm"], rel=1e-4
    )
    assert values[1]["input_gradient_norm_multiplier"] == pytest.approx(
        values[0]["input_gradient_norm_multiplier"], rel=1e-4
    )


# ------------------------------------------------- one constraint convention
def test_robustness_constraints_by_comparison_and_keywords():
    dense = keras.layers.Dense(2, name="dense_1")
    stated = SpectralNorm(dense) <= 1.0
    assert stated.name == "dense_1_spectral_norm" and stated.kind == "<="
    assert stated._layer is dense  # the copy keeps the layer itself
    assert (SpectralNorm("dense_1") <= 1.0).get_config() == SpectralNorm(
        "dense_1", bound=1.0
    ).get_config()
    assert (InputGradientNorm() <= 2.0).get_config() == InputGradientNorm(
        bound=2.0
    ).get_config()
    exact = Monotonicity(0)  # bound 0 by default: exactly monotone
    assert exact.is_bound and float(exact.bound) == 0.0
    assert exact.name == "monotonicity" and exact.entry_labels is None
    assert Monotonicity([0, 3], ["increasing", "decreasing"]).entry_labels == [
        "0 (increasing)",
        "3 (decreasing)",
    ]


def test_robustness_constraints_reject_old_positional_bounds_and_kinds():
    with pytest.raises(TypeError, match="'input_gradient_norm'.*bound"):
        InputGradientNorm(1.0)
    with pytest.raises(TypeError, match="positional"):
        SpectralNorm("dense", 1.0)
    with pytest.raises(TypeError, match="positional"):
        Monotonicity(0, "increasing", 0.0)
    with pytest.raises(ValueError, match="'monotonicity'.*'<='"):
        Monotonicity(0) >= 0.1  # noqa: B015
    model, _ = _linear_model([[1.0]])
    with pytest.raises(ValueError, match="'input_gradient_norm' is unbound"):
        model.add_constraint(InputGradientNorm())
