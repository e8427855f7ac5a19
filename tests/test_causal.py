"""Counterfactual invariance under interventions on a named input feature.

Expected values come from linear models (the change under `do(A = a')` is
`|w_A| · |a' − a|`) or are measured independently, by predicting on the
intervened inputs with numpy.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfconstrain as tfc
from tfconstrain.constraints.causal import CounterfactualInvariance


def _linear_model(kernel, bias):
    kernel = np.asarray(kernel, np.float32)
    inputs = keras.Input((kernel.shape[0],))
    dense = keras.layers.Dense(kernel.shape[1])
    model = tfc.ConstrainedModel(inputs, dense(inputs))
    dense.set_weights([kernel, np.asarray(bias, np.float32)])
    return model


def test_flipping_a_binary_feature_changes_linear_model_by_its_weight():
    model = _linear_model([[0.5], [-1.5], [2.0]], [0.3])
    model.add_constraint(CounterfactualInvariance(1, bound=0.1))
    model.compile(loss="mse")
    rng = np.random.RandomState(0)
    x = rng.randn(30, 3).astype(np.float32)
    x[:, 1] = rng.randint(0, 2, 30)
    report = model.constraint_report((x, np.zeros((30, 1))), batch_size=7)
    assert report["counterfactual_invariance"]["value"] == pytest.approx(1.5)
    assert report["counterfactual_invariance"]["violation"] == pytest.approx(
        1.4
    )


def test_setting_a_feature_to_several_values_averages_the_changes():
    # do(x2 = v) for v in {−1, 2}: change |w2|·|v − x2| for each, averaged
    # over the two interventions, the two output columns and the examples
    # (sample-weighted).
    kernel = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -4.0]])
    model = _linear_model(kernel, [0.0, 0.0])
    model.add_constraint(
        CounterfactualInvariance(2, bound=0.1, intervention=[-1.0, 2.0])
    )
    model.compile(loss="mse")
    rng = np.random.RandomState(1)
    x = rng.randn(25, 3).astype(np.float32)
    weights = rng.uniform(0.5, 1.5, 25).astype(np.float32)
    per_example = np.mean(
        [
            np.mean(np.abs(kernel[2])) * np.abs(value - x[:, 2])
            for value in (-1.0, 2.0)
        ],
        axis=0,
    )
    expected = np.sum(weights * per_example) / np.sum(weights)
    report = model.constraint_report(
        (x, np.zeros((25, 2)), weights), batch_size=10
    )
    assert report["counterfactual_invariance"]["value"] == pytest.approx(
        expected, rel=1e-5
    )


def test_named_dict_input_and_whole_input_intervention():
    group, rest = keras.Input((1,), name="group"), keras.Input((2,), name="z")
    merged = keras.layers.Concatenate()([group, rest])
    dense = keras.layers.Dense(1, use_bias=False)
    model = tfc.ConstrainedModel({"group": group, "z": rest}, dense(merged))
    dense.set_weights([np.array([[0.7], [1.0], [-1.0]], np.float32)])
    model.add_constraint(
        CounterfactualInvariance("group", bound=0.1, name="flip_group")
    )

    @keras.saving.register_keras_serializable(package="test_causal")
    def swap_z(x):
        return {"group": x["group"], "z": tf.reverse(x["z"], axis=[1])}

    model.add_constraint(
        CounterfactualInvariance(
            None, bound=0.1, intervention=swap_z, name="swap_z"
        )
    )
    model.compile(loss="mse")
    rng = np.random.RandomState(2)
    x = {
        "group": rng.randint(0, 2, (12, 1)).astype(np.float32),
        "z": rng.randn(12, 2).astype(np.float32),
    }
    report = model.constraint_report((x, np.zeros((12, 1))))
    assert report["flip_group"]["value"] == pytest.approx(0.7, rel=1e-5)
    swapped = np.mean(np.abs(2.0 * (x["z"][:, 0] - x["z"][:, 1])))
    assert report["swap_z"]["value"] == pytest.approx(swapped, rel=1e-5)


def _biased_data(n, rng):
    """Labels depend on a binary sensitive column 2 and on z (columns 0, 1)."""
    sensitive = (rng.rand(n) < 0.5).astype(np.float32)
    z = rng.randn(n, 2).astype(np.float32)
    logit = 2.0 * z[:, 0] - 1.0 * z[:, 1] + 2.5 * sensitive - 1.25
    y = (rng.rand(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return np.column_stack([z, sensitive]).astype(np.float32), y[:, None]


def _measured_change(model, x):
    """Held-out mean |f(x) − f(x with column 2 flipped)|, in numpy."""
    flipped = x.copy()
    flipped[:, 2] = 1.0 - flipped[:, 2]
    factual = model.predict(x, batch_size=4096, verbose=0)
    counterfactual = model.predict(flipped, batch_size=4096, verbose=0)
    return float(np.mean(np.abs(factual - counterfactual)))


def _train_classifier(x, y, constraint=None, **compile_args):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    model = tfc.ConstrainedModel(inputs, outputs)
    if constraint is not None:
        model.add_constraint(constraint)
    model.compile(
        keras.optimizers.Adam(0.01),
        "binary_crossentropy",
        metrics=["accuracy"],
        **compile_args,
    )
    data = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x), seed=0)
        .batch(128)
        .repeat()
    )
    model.fit(data, steps_per_epoch=100, epochs=4, verbose=0, shuffle=False)
    return model


def test_counterfactual_invariance_holds_on_held_out_data():
    # The unconstrained classifier uses the sensitive column heavily. The
    # constrained one is trained with a margin (bound / 2) and its held-out
    # change, measured in numpy, stays below the bound while it still uses
    # the legitimate features.
    bound = 0.02
    rng = np.random.RandomState(0)
    x_train, y_train = _biased_data(1024, rng)
    x_test, y_test = _biased_data(4000, rng)
    free = _train_classifier(x_train, y_train)
    assert _measured_change(free, x_test) > 10 * bound
    constrained = _train_classifier(
        x_train,
        y_train,
        CounterfactualInvariance(2) <= bound / 2,
        formulation=tfc.AugmentedLagrangian(penalty=20.0),
        dual_optimizer=1.0,
    )
    measured = _measured_change(constrained, x_test)
    assert measured <= bound
    report = constrained.constraint_report((x_test, y_test))
    assert report["counterfactual_invariance"]["value"] == pytest.approx(
        measured, rel=1e-4
    )
    accuracy = constrained.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.7


def test_counterfactual_invariance_round_trips_through_config():
    for constraint in (
        CounterfactualInvariance(3, bound=0.05, name="flip"),
        CounterfactualInvariance(
            "group", bound=0.05, intervention=[0.0, 1.0], output_index=1
        ),
        CounterfactualInvariance(
            0, bound=0.05, intervention=2.5, input_name="x"
        ),
    ):
        restored = keras.saving.deserialize_keras_object(
            keras.saving.serialize_keras_object(constraint)
        )
        assert type(restored) is CounterfactualInvariance
        assert restored.get_config() == constraint.get_config()


def test_counterfactual_invariance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'cf'.*intervention"):
        CounterfactualInvariance(0, bound=0.1, intervention="swap", name="cf")
    with pytest.raises(ValueError, match="'cf'.*callable"):
        CounterfactualInvariance(None, bound=0.1, name="cf")
    with pytest.raises(ValueError, match="'cf'.*>= 0"):
        CounterfactualInvariance(0, bound=-0.1, name="cf")
    with pytest.raises(TypeError, match="'cf'.*feature"):
        CounterfactualInvariance(1.5, bound=0.1, name="cf")


def test_counterfactual_invariance_by_comparison_and_no_positional_bound():
    stated = CounterfactualInvariance(2, intervention=[0.0, 1.0]) <= 0.1
    assert (
        stated.get_config()
        == (
            CounterfactualInvariance(2, intervention=[0.0, 1.0], bound=0.1)
        ).get_config()
    )
    assert stated.name == "counterfactual_invariance"
    # The old form `CounterfactualInvariance(1, 0.1)` must not silently read
    # 0.1 as the intervention value.
    with pytest.raises(TypeError, match="positional"):
        CounterfactualInvariance(1, 0.1)
    with pytest.raises(ValueError, match="'cf'.*'<='"):
        CounterfactualInvariance(1, name="cf") >= 0.1  # noqa: B015
