"""Rate constraints: exact dataset-level values, surrogates, absent groups."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import identity_model as _identity_model
from problems import random_scores

import tfconstrain as tfc
from tfconstrain.batch import Batch
from tfconstrain.constraints import rates as rates_module

N = 203  # not a multiple of the batch size: the last batch is partial
BATCH = 16
GROUPS = 3


def _data(seed=0, n=N, groups=GROUPS):
    return random_scores(seed, n, groups)


def _numpy_rate(rate, predicted, labels, weights):
    """The rate of hard 0/1 predictions, from its definition."""
    yhat, y, w = predicted.astype(float), labels.astype(float), weights
    numerator, denominator = {
        "positive_prediction_rate": (w * yhat, w),
        "true_positive_rate": (w * yhat * y, w * y),
        "false_positive_rate": (w * yhat * (1 - y), w * (1 - y)),
        "true_negative_rate": ((w * (1 - yhat) * (1 - y)), w * (1 - y)),
        "false_negative_rate": (w * (1 - yhat) * y, w * y),
        "precision": (w * yhat * y, w * yhat),
        "error_rate": (w * (yhat != y), w),
    }[rate]
    return numerator.sum() / denominator.sum()


@pytest.mark.parametrize("rate", sorted(rates_module.RATES))
@pytest.mark.parametrize("grouped", [False, True])
def test_dataset_level_rate_equals_numpy_on_full_arrays(rate, grouped):
    p, y, g, w = _data()
    threshold = 0.4
    kwargs = {"group_key": "g", "num_groups": GROUPS} if grouped else {}
    # Bound 0: every entry is violated by its value, so the logged entry
    # (the one with the largest violation) is the largest rate.
    constraint = tfc.constraints.Rate(
        rate, kind="<=", bound=0.0, threshold=threshold, name="r", **kwargs
    )
    model = _identity_model([constraint])
    x = {"score": p, "g": g}
    report = model.constraint_report((x, y, w), batch_size=BATCH)
    predicted = p[:, 0] > threshold
    if grouped:
        expected = [
            _numpy_rate(rate, predicted[g == k], y[g == k, 0], w[g == k])
            for k in range(GROUPS)
        ]
    else:
        expected = _numpy_rate(rate, predicted, y[:, 0], w)
    np.testing.assert_allclose(report["r"]["value"], expected, atol=1e-6)
    logs = model.evaluate(
        x, y, sample_weight=w, batch_size=BATCH, return_dict=True, verbose=0
    )
    assert logs["r"] == pytest.approx(np.max(expected), abs=1e-6)


def test_rates_match_fairlearn_per_group():
    fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
    p, y, g, w = _data(seed=1)
    names = {
        "positive_prediction_rate": fairlearn_metrics.selection_rate,
        "true_positive_rate": fairlearn_metrics.true_positive_rate,
        "false_positive_rate": fairlearn_metrics.false_positive_rate,
        "true_negative_rate": fairlearn_metrics.true_negative_rate,
        "false_negative_rate": fairlearn_metrics.false_negative_rate,
    }
    constraints = [
        tfc.constraints.Rate(
            rate,
            kind="<=",
            bound=1.0,
            group_key="g",
            num_groups=GROUPS,
            name=rate,
        )
        for rate in names
    ]
    model = _identity_model(constraints)
    report = model.constraint_report(
        ({"score": p, "g": g}, y, w), batch_size=BATCH
    )
    predicted = (p[:, 0] > 0.5).astype(int)
    for rate, metric in names.items():
        frame = fairlearn_metrics.MetricFrame(
            metrics=metric,
            y_true=y[:, 0].astype(int),
            y_pred=predicted,
            sensitive_features=g,
            sample_params={"sample_weight": w},
        )
        np.testing.assert_allclose(
            report[rate]["value"],
            frame.by_group.sort_index().to_numpy(),
            atol=1e-6,
            err_msg=rate,
        )


def test_logits_and_probabilities_give_the_same_rates():
    p, y, g, w = _data(seed=2)
    logits = np.log(p) - np.log1p(-p)
    threshold = 0.3
    for from_logits, scores in ((False, p), (True, logits)):
        constraint = tfc.constraints.FalsePositiveRate(
            kind="<=", bound=1.0, threshold=threshold, from_logits=from_logits
        )
        model = _identity_model([constraint])
        value = model.constraint_report(
            ({"score": scores}, y, w), batch_size=BATCH
        )["false_positive_rate"]["value"]
        expected = _numpy_rate(
            "false_positive_rate", p[:, 0] > threshold, y[:, 0], w
        )
        assert value == pytest.approx(expected, abs=1e-6)
        keras.backend.clear_session()


def _batch(scores, labels=None, group=None, weights=None):
    features = {} if group is None else {"g": tf.constant(group)}
    return Batch(
        x=None,
        y=None if labels is None else tf.constant(labels),
        y_pred=tf.constant(scores),
        sample_weight=None if weights is None else tf.constant(weights),
        features=features,
    )


def test_sigmoid_surrogate_is_the_probability_at_default_settings():
    p, y, _, _ = _data(seed=3, n=50)
    constraint = tfc.constraints.PositivePredictionRate(kind=">=", bound=0.5)
    batch = _batch(p, y)
    # Default threshold 0.5 and temperature 1: σ(logit(p)) = p.
    assert float(constraint.call(batch)) == pytest.approx(p.mean(), abs=1e-6)
    # And the true value uses hard predictions.
    assert float(constraint.true_value(batch)) == pytest.approx(
        (p > 0.5).mean(), abs=1e-7
    )


def test_surrogate_temperature_and_threshold_follow_the_formula():
    z = np.array([[-2.0], [-0.3], [0.1], [1.5]], "float32")
    y = np.array([[1.0], [1.0], [0.0], [1.0]], "float32")
    threshold, temperature = 0.6, 0.5
    constraint = tfc.constraints.TruePositiveRate(
        kind=">=",
        bound=0.5,
        from_logits=True,
        threshold=threshold,
        temperature=temperature,
    )
    margin = (z[:, 0] - np.log(threshold / (1 - threshold))) / temperature
    soft = 1 / (1 + np.exp(-margin))
    expected = (soft * y[:, 0]).sum() / y.sum()
    assert float(constraint.call(_batch(z, y))) == pytest.approx(
        expected, rel=1e-6
    )


def test_hinge_surrogate_follows_the_formula():
    z = np.array([[-2.0], [-0.3], [0.1], [1.5]], "float32")
    y = np.array([[0.0], [1.0], [0.0], [1.0]], "float32")
    constraint = tfc.constraints.ErrorRate(
        kind="<=", bound=0.1, from_logits=True, surrogate="hinge"
    )
    positive = np.maximum(0, 1 + z[:, 0])
    negative = np.maximum(0, 1 - z[:, 0])
    expected = (positive * (1 - y[:, 0]) + negative * y[:, 0]).mean()
    assert float(constraint.call(_batch(z, y))) == pytest.approx(
        expected, rel=1e-6
    )


def test_precision_without_positive_predictions_is_zero_and_invalid():
    constraint = tfc.constraints.Precision(kind=">=", bound=0.8)
    statistics = constraint.statistics(
        _batch(np.full((4, 1), 0.2, "float32"), np.ones((4, 1), "float32"))
    )
    assert float(constraint.result(statistics)) == 0.0
    assert not bool(constraint.valid(statistics))


def test_group_membership_matrix_equals_integer_ids():
    p, y, g, w = _data(seed=4, n=40)
    by_id = tfc.constraints.TruePositiveRate(
        kind=">=", bound=0.5, group_key="g", num_groups=GROUPS
    )
    one_hot = np.eye(GROUPS, dtype="float32")[g]
    values = [
        by_id.true_value(_batch(p, y, groups, w))
        for groups in (g, g[:, None], one_hot)
    ]
    for value in values[1:]:
        np.testing.assert_allclose(value, values[0], atol=1e-7)


def test_surrogate_of_absent_group_has_no_gradient_and_no_nan():
    p = np.array([[0.2], [0.7], [0.9]], "float32")
    group = np.array([0, 0, 2], "int32")  # group 1 absent
    constraint = tfc.constraints.PositivePredictionRate(
        kind="<=", bound=0.5, group_key="g", num_groups=GROUPS
    )
    scores = tf.Variable(p)
    with tf.GradientTape() as tape:
        batch = _batch(p, group=group)
        batch.y_pred = tf.convert_to_tensor(scores)
        value = constraint.call(batch)
    jacobian = tape.jacobian(value, scores).numpy()
    assert np.all(np.isfinite(value.numpy()))
    assert value.numpy()[1] == 0.0
    np.testing.assert_array_equal(jacobian[1], 0.0)
    statistics = constraint.statistics(batch)
    np.testing.assert_array_equal(
        constraint.valid(statistics), [True, False, True]
    )


def test_absent_group_gets_no_dual_step():
    # One batch without group 1: its multiplier must not move.
    p = np.array([[0.9], [0.8], [0.7], [0.6]], "float32")
    group = np.array([0, 0, 2, 2], "int32")
    y = np.ones((4, 1), "float32")
    constraint = tfc.constraints.PositivePredictionRate(
        kind="<=", bound=0.1, group_key="g", num_groups=GROUPS
    )
    inputs = keras.Input((1,), name="score")
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(constraint, multiplier_init=0.3)
    model.compile(optimizer="sgd", loss="mse", dual_optimizer=0.5)
    with pytest.warns(UserWarning, match="no data for g=1"):
        history = model.fit(
            {"score": p, "g": group}, y, batch_size=4, verbose=0
        )
    multiplier = model.multipliers[constraint.name].numpy()
    assert multiplier[1] == pytest.approx(0.3)
    assert multiplier[0] > 0.3 and multiplier[2] > 0.3
    assert all(np.isfinite(v[0]) for v in history.history.values())
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_recall_constraint_raises_recall_to_the_bound():
    # Labels from a noisy linear rule; positives are rare (22 %), so the
    # unconstrained classifier has a recall near 0.5.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 2)).astype("float32")
    y = ((x[:, :1] + 0.8 * rng.normal(size=(600, 1))) > 1.0).astype("float32")
    inputs = keras.Input((2,), name="x")
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(tfc.constraints.Recall() >= 0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss="binary_crossentropy",
        dual_optimizer=0.5,
    )
    steps = tf.data.Dataset.from_tensors((x, y)).repeat(300)
    model.fit(steps, epochs=1, verbose=0)
    recall = model.constraint_report((x, y), batch_size=600)["recall"]["value"]
    predicted = model.predict(x, verbose=0)[:, 0] > 0.5
    positives = y[:, 0] == 1
    assert recall == pytest.approx(predicted[positives].mean(), abs=1e-6)
    # The last iterate oscillates around the bound by a few examples.
    assert recall >= 0.9 - 2 / positives.sum()


@pytest.mark.smoke
def test_rate_statistics_are_exact_under_mirrored_strategy(mirrored):
    p, y, g, w = _data(seed=6)
    constraint = tfc.constraints.TruePositiveRate(
        kind=">=", bound=0.5, group_key="g", num_groups=GROUPS, name="tpr"
    )
    model = _identity_model([constraint], strategy=mirrored)
    x = {"score": p, "g": g}
    report = model.constraint_report((x, y, w), batch_size=BATCH)
    predicted = p[:, 0] > 0.5
    expected = [
        _numpy_rate(
            "true_positive_rate", predicted[g == k], y[g == k, 0], w[g == k]
        )
        for k in range(GROUPS)
    ]
    np.testing.assert_allclose(report["tpr"]["value"], expected, atol=1e-6)
    logs = model.evaluate(
        x, y, sample_weight=w, batch_size=BATCH, return_dict=True, verbose=0
    )
    violations = np.maximum(0.0, 0.5 - np.array(expected))
    assert logs["tpr_violation"] == pytest.approx(violations.max(), abs=1e-6)


def test_rate_config_round_trip_and_model_saving(tmp_path):
    constraint = tfc.constraints.Precision(
        kind=">=",
        bound=[0.6, 0.7],
        group_key="sex",
        threshold=0.3,
        from_logits=True,
        surrogate="hinge",
        temperature=0.5,
        name="prec",
    )
    config = constraint.get_config()
    copy = tfc.constraints.Precision.from_config(config)
    assert copy.get_config() == config
    generic = tfc.constraints.Rate("recall", kind=">=", bound=0.9)
    assert (
        tfc.constraints.Rate.from_config(generic.get_config()).rate
        == "true_positive_rate"
    )

    inputs = keras.Input((1,), name="score")
    outputs = keras.layers.Activation("linear")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(constraint)
    model.compile(loss="mse")
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    (restored,) = loaded.constraints
    assert type(restored) is tfc.constraints.Precision
    assert restored.get_config() == config


def test_add_constraint_overrides_a_rate_bound():
    model = _identity_model([])
    added = model.add_constraint(
        tfc.constraints.ErrorRate(kind="<=", bound=0.3, group_key="g"),
        bound=0.2,
    )
    np.testing.assert_allclose(added.bound, [0.2, 0.2])
    assert added.group_key == "g"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.0}, "threshold"),
        ({"surrogate": "relu"}, "surrogate"),
        ({"temperature": 0.0}, "temperature"),
        ({"group_key": "g", "num_groups": 1}, "num_groups"),
        ({"group_key": ""}, "group_key"),
    ],
)
def test_bad_arguments_raise_naming_the_constraint(kwargs, message):
    with pytest.raises(ValueError, match=f"'my_rate'.*{message}"):
        tfc.constraints.TruePositiveRate(
            kind=">=", bound=0.5, name="my_rate", **kwargs
        )


def test_unknown_rate_and_vector_bound_without_groups_raise():
    with pytest.raises(ValueError, match="unknown rate 'auc'"):
        tfc.constraints.Rate("auc", kind="<=", bound=0.5)
    with pytest.raises(ValueError, match="scalar"):
        tfc.constraints.ErrorRate(kind="<=", bound=[0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        tfc.constraints.ErrorRate(
            kind="<=", bound=[0.1, 0.2], group_key="g", num_groups=3
        )


def test_missing_labels_and_multi_output_predictions_raise():
    constraint = tfc.constraints.TruePositiveRate(
        kind=">=", bound=0.5, name="tpr"
    )
    with pytest.raises(ValueError, match="'tpr'.*labels"):
        constraint.true_value(_batch(np.zeros((3, 1), "float32")))
    with pytest.raises(ValueError, match="'tpr'.*one output"):
        constraint.true_value(
            _batch(np.zeros((3, 2), "float32"), np.zeros((3, 1), "float32"))
        )


def test_missing_group_key_error_names_the_constraint():
    p, y, _, _ = _data(n=8)
    model = _identity_model(
        [
            tfc.constraints.ErrorRate(
                kind="<=", bound=0.3, group_key="sex", name="err"
            )
        ]
    )
    with pytest.raises(KeyError, match="'err'.*'sex'"):
        model.evaluate({"score": p}, y, verbose=0)


# ------------------------------------------------- one constraint convention
def test_comparison_states_kind_and_bound_like_the_keywords():
    by_keywords = tfc.constraints.Recall(kind=">=", bound=0.9)
    unbound = tfc.constraints.Recall()
    for stated in (unbound >= 0.9, 0.9 <= unbound, np.float32(0.9) <= unbound):
        assert type(stated) is tfc.constraints.Recall
        assert stated.get_config() == by_keywords.get_config()
    # The comparison returns a copy; the original stays unbound.
    assert not unbound.is_bound and unbound.kind is None
    grouped = tfc.constraints.Rate("fpr", group_key="g", num_groups=3)
    stated = np.array([0.1, 0.2, 0.3]) >= grouped  # i.e. grouped <= [...]
    assert stated.kind == "<="
    np.testing.assert_allclose(stated.bound, [0.1, 0.2, 0.3])
    np.testing.assert_allclose((grouped <= 0.1).bound, [0.1, 0.1, 0.1])
    # `==` keeps Python's meaning.
    assert (unbound == unbound) is True
    assert (unbound == tfc.constraints.Recall()) is False


def test_strict_and_chained_comparisons_raise_naming_the_constraint():
    recall = tfc.constraints.Recall()
    with pytest.raises(TypeError, match="'recall'.*strict"):
        recall < 0.9  # noqa: B015
    with pytest.raises(TypeError, match="'recall'.*strict"):
        recall > 0.9  # noqa: B015
    # Python would reduce `0.1 <= c <= 0.9` to `c <= 0.9`, dropping a bound.
    with pytest.raises(TypeError, match="'recall'.*chained"):
        0.1 <= recall <= 0.9  # noqa: B015
    with pytest.raises(TypeError, match="'recall'.*not with the constraint"):
        recall <= tfc.constraints.Precision()  # noqa: B015


def test_constraints_are_named_after_their_class_or_rate():
    names = {
        tfc.constraints.Recall(): "recall",
        tfc.constraints.TruePositiveRate(): "true_positive_rate",
        tfc.constraints.PositivePredictionRate(): "positive_prediction_rate",
        tfc.constraints.FalsePositiveRate(): "false_positive_rate",
        tfc.constraints.Precision(): "precision",
        tfc.constraints.ErrorRate(): "error_rate",
        tfc.constraints.ErrorRate(group_key="race"): "error_rate_by_race",
        tfc.constraints.Rate("recall"): "recall",
        tfc.constraints.Rate("FPR", group_key="sex"): "fpr_by_sex",
        tfc.constraints.Recall(name="tpr"): "tpr",
    }
    for constraint, name in names.items():
        assert constraint.name == name
        assert (constraint >= 0.5).name == name


def test_unbound_constraint_added_to_a_model_raises_naming_it():
    model = _identity_model([])
    with pytest.raises(ValueError, match="'recall' is unbound.*kind.*bound"):
        model.add_constraint(tfc.constraints.Recall())
    with pytest.raises(ValueError, match="'precision' is unbound.*no bound"):
        model.add_constraint(tfc.constraints.Precision(kind=">="))
    # The same constraint with a kind and a bound from `add_constraint`,
    # logged under its natural name: recall of [1, 0, 1] positives = 2/3.
    model.add_constraint(tfc.constraints.Recall(), ">=", 0.9)
    model.compile(loss="mse")
    p = np.array([[0.9], [0.2], [0.7], [0.8]], "float32")
    y = np.array([[1.0], [1.0], [1.0], [0.0]], "float32")
    logs = model.evaluate({"score": p}, y, return_dict=True, verbose=0)
    assert logs["recall"] == pytest.approx(2 / 3)
    assert logs["recall_violation"] == pytest.approx(0.9 - 2 / 3)


def test_old_positional_kind_and_bound_raise_a_pointed_error():
    with pytest.raises(TypeError, match="TruePositiveRate.*keyword"):
        tfc.constraints.TruePositiveRate(">=", 0.9)
    with pytest.raises(TypeError, match="positional"):
        tfc.constraints.Rate("recall", ">=", 0.9)


def test_per_group_rate_entries_are_labelled_by_group():
    by_id = tfc.constraints.ErrorRate(group_key="race", num_groups=3)
    assert by_id.entry_labels == ["race=0", "race=1", "race=2"]
    named = tfc.constraints.ErrorRate(
        group_key="sex", group_names=["female", "male"]
    )
    assert named.num_groups == 2
    assert named.entry_labels == ["sex=female", "sex=male"]
    assert tfc.constraints.ErrorRate().entry_labels is None


def test_empty_groups_of_a_per_group_rate():
    # Recall per group: group 1 has examples but no positive label, group 2
    # no example at all; only group 0 has a recall.
    p = np.array([[0.9], [0.2], [0.7]], "float32")
    y = np.array([[1.0], [0.0], [0.0]], "float32")
    constraint = tfc.constraints.Recall(group_key="g", num_groups=3) >= 0.5
    statistics = constraint.statistics(
        _batch(p, y, np.array([0, 1, 1], "int32"))
    )
    np.testing.assert_array_equal(
        constraint.empty_groups(statistics), [False, True, True]
    )
