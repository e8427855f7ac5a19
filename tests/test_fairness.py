"""Fairness constraints: exact gaps, both forms, absent groups, group loss."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import identity_model as _identity_model
from problems import random_scores

import tfconstrain as tfc
from tfconstrain.batch import Batch

N = 211
BATCH = 16
GROUPS = 3


def _data(seed=0, n=N, groups=GROUPS):
    return random_scores(seed, n, groups)


def _group_rates(rate, predicted, labels, group, weights, groups=GROUPS):
    """Per-group rates then the overall rate, from the definitions."""
    condition = {
        "positive_prediction_rate": np.ones_like(labels),
        "true_positive_rate": labels,
        "false_positive_rate": 1 - labels,
    }[rate]
    rates = []
    for members in [group == k for k in range(groups)] + [
        np.ones_like(group, bool)
    ]:
        w = weights * condition * members
        rates.append((w * predicted).sum() / w.sum())
    return np.array(rates)


def _expected_gaps(rates_per_rate, form, groups=GROUPS):
    gaps = []
    for rates in rates_per_rate:
        if form == "max_gap":
            gaps.extend(
                rates[g] - rates[h]
                for g, h in itertools.permutations(range(groups), 2)
            )
        else:
            gaps.extend(rates[g] - rates[groups] for g in range(groups))
            gaps.extend(rates[groups] - rates[g] for g in range(groups))
    return np.array(gaps)


CASES = {
    "demographic_parity": (
        tfc.constraints.DemographicParity,
        ("positive_prediction_rate",),
    ),
    "equal_opportunity": (
        tfc.constraints.EqualOpportunity,
        ("true_positive_rate",),
    ),
    "equalized_odds": (
        tfc.constraints.EqualizedOdds,
        ("true_positive_rate", "false_positive_rate"),
    ),
}


@pytest.mark.parametrize("form", ["max_gap", "vs_overall"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_dataset_level_gaps_equal_numpy_on_full_arrays(case, form):
    cls, rates = CASES[case]
    p, y, g, w = _data()
    threshold = 0.45
    constraint = cls(
        "g", bound=0.0, num_groups=GROUPS, form=form, threshold=threshold
    )
    model = _identity_model([constraint])
    x = {"score": p, "g": g}
    report = model.constraint_report((x, y, w), batch_size=BATCH)[case]
    predicted = (p[:, 0] > threshold).astype(float)
    expected = _expected_gaps(
        [_group_rates(r, predicted, y[:, 0], g, w) for r in rates], form
    )
    np.testing.assert_allclose(report["value"], expected, atol=1e-6)
    logs = model.evaluate(
        x, y, sample_weight=w, batch_size=BATCH, return_dict=True, verbose=0
    )
    # With bound 0 the largest gap is the most violated entry.
    assert logs[case] == pytest.approx(expected.max(), abs=1e-6)
    assert logs[f"{case}_violation"] == pytest.approx(expected.max(), abs=1e-6)


@pytest.mark.smoke
@pytest.mark.parametrize(
    "form, method",
    [
        ("max_gap", "between_groups"),
        ("vs_overall", "to_overall"),
    ],
)
def test_gaps_match_fairlearn(form, method):
    fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
    p, y, g, w = _data(seed=1)
    constraints = [
        cls("g", bound=0.0, num_groups=GROUPS, form=form, name=case)
        for case, (cls, _) in CASES.items()
    ]
    model = _identity_model(constraints)
    report = model.constraint_report(
        ({"score": p, "g": g}, y, w), batch_size=BATCH
    )
    predicted = (p[:, 0] > 0.5).astype(int)
    reference = {
        "demographic_parity": fairlearn_metrics.demographic_parity_difference,
        "equal_opportunity": fairlearn_metrics.equal_opportunity_difference,
        "equalized_odds": fairlearn_metrics.equalized_odds_difference,
    }
    for case, metric in reference.items():
        expected = metric(
            y[:, 0].astype(int),
            predicted,
            sensitive_features=g,
            method=method,
            sample_weight=w,
        )
        assert np.max(report[case]["value"]) == pytest.approx(
            expected, abs=1e-6
        ), case


def test_rate_gap_for_any_rate_and_entry_labels():
    p, y, g, w = _data(seed=2)
    constraint = tfc.constraints.RateGap(
        "g", "error_rate", bound=0.05, num_groups=GROUPS, name="eq_error"
    )
    model = _identity_model([constraint])
    value = model.constraint_report(
        ({"score": p, "g": g}, y, w), batch_size=BATCH
    )["eq_error"]["value"]
    errors = (p[:, 0] > 0.5) != (y[:, 0] == 1)
    per_group = [
        np.sum(w * errors * (g == k)) / np.sum(w * (g == k)) for k in range(3)
    ]
    pairs = list(itertools.permutations(range(GROUPS), 2))
    np.testing.assert_allclose(
        value, [per_group[a] - per_group[b] for a, b in pairs], atol=1e-6
    )
    assert constraint.entry_labels[0] == "error_rate: g=0 - g=1"
    labels = tfc.constraints.EqualizedOdds(
        "sex", form="vs_overall"
    ).entry_labels
    assert labels == [
        "true_positive_rate: sex=0 - all",
        "true_positive_rate: sex=1 - all",
        "true_positive_rate: all - sex=0",
        "true_positive_rate: all - sex=1",
        "false_positive_rate: sex=0 - all",
        "false_positive_rate: sex=1 - all",
        "false_positive_rate: all - sex=0",
        "false_positive_rate: all - sex=1",
    ]


def test_number_of_entries_of_each_form():
    for groups in (2, 5):
        pairwise = tfc.constraints.EqualizedOdds("g", num_groups=groups)
        overall = tfc.constraints.EqualizedOdds(
            "g", num_groups=groups, form="vs_overall"
        )
        assert len(pairwise.entry_labels) == 2 * groups * (groups - 1)
        assert len(overall.entry_labels) == 2 * 2 * groups
        assert (pairwise <= 0.1).shape == (2 * groups * (groups - 1),)
        assert (overall <= 0.1).shape == (2 * 2 * groups,)


def _batch(scores, labels, group):
    return Batch(
        x=None,
        y=tf.constant(labels),
        y_pred=scores,
        features={"g": tf.constant(group)},
    )


@pytest.mark.parametrize("form", ["max_gap", "vs_overall"])
def test_absent_group_entries_have_no_value_no_gradient_no_nan(form):
    p = np.array([[0.2], [0.7], [0.9], [0.4]], "float32")
    y = np.array([[1.0], [0.0], [1.0], [1.0]], "float32")
    group = np.array([0, 0, 2, 2], "int32")  # group 1 absent
    constraint = tfc.constraints.EqualOpportunity(
        "g", bound=0.05, num_groups=GROUPS, form=form
    )
    scores = tf.Variable(p)
    with tf.GradientTape() as tape:
        value = constraint.call(_batch(tf.convert_to_tensor(scores), y, group))
    jacobian = tape.jacobian(value, scores).numpy()
    statistics = constraint.statistics(_batch(p, y, group))
    valid = constraint.valid(statistics).numpy()
    labels = np.array(constraint.entry_labels)
    involves_absent = np.array(["g=1" in label for label in labels])
    np.testing.assert_array_equal(valid, ~involves_absent)
    assert np.all(np.isfinite(value.numpy()))
    np.testing.assert_array_equal(value.numpy()[involves_absent], 0.0)
    np.testing.assert_array_equal(constraint.result(statistics)[~valid], 0.0)
    np.testing.assert_array_equal(jacobian[involves_absent], 0.0)
    assert np.any(jacobian[~involves_absent] != 0.0)


def test_absent_group_gets_no_dual_step_during_fit():
    p = np.array([[0.9], [0.8], [0.1], [0.2]], "float32")
    group = np.array([0, 0, 2, 2], "int32")  # group 1 absent
    y = np.ones((4, 1), "float32")
    constraint = (
        tfc.constraints.DemographicParity("g", num_groups=GROUPS) <= 0.05
    )
    model = _identity_model([])
    model.add_constraint(constraint, multiplier_init=0.3)
    model.compile(optimizer="sgd", loss="mse", dual_optimizer=0.5)
    with pytest.warns(UserWarning, match="no data for g=1"):
        history = model.fit(
            {"score": p, "g": group}, y, batch_size=4, verbose=0
        )
    multiplier = model.multipliers["demographic_parity"].numpy()
    labels = constraint.entry_labels
    involves_absent = np.array(["g=1" in label for label in labels])
    np.testing.assert_allclose(multiplier[involves_absent], 0.3)
    # Selection rates: 1 in group 0, 0 in group 2. One step of projected
    # ascent λ ← [λ + 0.5 · (gap - 0.05)]₊ from λ = 0.3:
    up = labels.index("positive_prediction_rate: g=0 - g=2")
    down = labels.index("positive_prediction_rate: g=2 - g=0")
    assert multiplier[up] == pytest.approx(0.3 + 0.5 * 0.95, abs=1e-6)
    assert multiplier[down] == 0.0
    assert all(np.isfinite(v[0]) for v in history.history.values())


def test_group_loss_equals_numpy_per_group_cross_entropy():
    p, y, g, w = _data(seed=3)
    constraint = tfc.constraints.GroupLoss("g", num_groups=GROUPS) <= 0.6
    model = _identity_model([constraint])
    x = {"score": p, "g": g}
    report = model.constraint_report((x, y, w), batch_size=BATCH)
    q = np.clip(p[:, 0].astype(np.float64), 1e-7, 1 - 1e-7)
    losses = -(y[:, 0] * np.log(q) + (1 - y[:, 0]) * np.log(1 - q))
    expected = [
        np.sum(w * losses * (g == k)) / np.sum(w * (g == k))
        for k in range(GROUPS)
    ]
    np.testing.assert_allclose(
        report["group_loss"]["value"], expected, rtol=1e-5
    )
    assert not constraint.has_distinct_true_value


def test_group_loss_accepts_loss_objects_and_callables():
    p, y, g, _ = _data(seed=4, n=30)
    batch = _batch(tf.constant(p), y, g)
    by_name = tfc.constraints.GroupLoss("g", "mse", bound=1.0, num_groups=3)
    by_object = tfc.constraints.GroupLoss(
        "g", keras.losses.MeanSquaredError(), bound=1.0, num_groups=3
    )
    squared = (p[:, 0] - y[:, 0]) ** 2
    expected = [squared[g == k].mean() for k in range(3)]
    for constraint in (by_name, by_object):
        np.testing.assert_allclose(constraint.call(batch), expected, rtol=1e-6)
    config = by_object.get_config()
    restored = tfc.constraints.GroupLoss.from_config(config)
    np.testing.assert_allclose(restored.call(batch), expected, rtol=1e-6)


def test_gap_values_are_exact_under_mirrored_strategy(mirrored):
    p, y, g, w = _data(seed=5)
    constraint = tfc.constraints.EqualizedOdds(
        "g", bound=0.0, num_groups=GROUPS, name="eodds"
    )
    model = _identity_model([constraint], strategy=mirrored)
    x = {"score": p, "g": g}
    report = model.constraint_report((x, y, w), batch_size=BATCH)
    predicted = (p[:, 0] > 0.5).astype(float)
    expected = _expected_gaps(
        [
            _group_rates(rate, predicted, y[:, 0], g, w)
            for rate in ("true_positive_rate", "false_positive_rate")
        ],
        "max_gap",
    )
    np.testing.assert_allclose(report["eodds"]["value"], expected, atol=1e-6)
    logs = model.evaluate(
        x, y, sample_weight=w, batch_size=BATCH, return_dict=True, verbose=0
    )
    assert logs["eodds"] == pytest.approx(expected.max(), abs=1e-6)


def test_fairness_config_round_trip_and_model_saving(tmp_path):
    constraints = [
        tfc.constraints.DemographicParity(
            "sex", bound=0.05, form="vs_overall", threshold=0.4, temperature=0.5
        ),
        tfc.constraints.EqualizedOdds("race", bound=0.1, num_groups=5),
        tfc.constraints.RateGap("sex", ("error_rate",), bound=0.02),
        tfc.constraints.GroupLoss("sex", bound=[0.4, 0.5]),
        tfc.constraints.DemographicParity(
            "sex", group_names=["female", "male"], name="named"
        )
        <= 0.1,
    ]
    for constraint in constraints:
        config = constraint.get_config()
        copy = type(constraint).from_config(config)
        assert copy.get_config() == config
    inputs = keras.Input((1,), name="score")
    outputs = keras.layers.Activation("sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    for constraint in constraints:
        model.add_constraint(constraint)
    model.compile(loss="binary_crossentropy")
    path = tmp_path / "fair.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for original, restored in zip(constraints, loaded.constraints):
        assert type(restored) is type(original)
        assert restored.get_config() == original.get_config()


def test_add_constraint_overrides_a_gap_bound():
    model = _identity_model([])
    added = model.add_constraint(
        tfc.constraints.DemographicParity("g", bound=0.1), bound=0.02
    )
    np.testing.assert_allclose(added.bound, [0.02, 0.02])


def test_bad_fairness_arguments_raise_naming_the_constraint():
    with pytest.raises(ValueError, match="'demographic_parity'.*form"):
        tfc.constraints.DemographicParity("sex", form="pairwise")
    with pytest.raises(ValueError, match="'demographic_parity'.*'<='"):
        tfc.constraints.DemographicParity("sex", kind=">=")
    with pytest.raises(ValueError, match="'dp'.*>= 0"):
        tfc.constraints.DemographicParity("sex", bound=-0.1, name="dp")
    with pytest.raises(ValueError, match="'dp'.*shape"):
        tfc.constraints.DemographicParity("sex", bound=[0.1] * 3, name="dp")
    with pytest.raises(ValueError, match="group_key"):
        tfc.constraints.EqualOpportunity(None)
    with pytest.raises(ValueError, match="EqualizedOdds constrains"):
        tfc.constraints.EqualizedOdds("sex", rates=("error_rate",))


def test_log_of_a_satisfied_gap_constraint_is_the_largest_gap():
    """Rates 1.0 (group 0) and 0.5 (group 1): the logged gap is 0.5.

    Every entry satisfies the 0.9 bound, so the log reports the entry
    closest to it (the largest gap), not entry 0 (which is -0.5).
    """
    p = np.array([[0.9], [0.8], [0.7], [0.2]], "float32")
    model = _identity_model([tfc.constraints.DemographicParity("g") <= 0.9])
    logs = model.evaluate(
        {"score": p, "g": np.array([0, 0, 1, 1])},
        np.ones((4, 1), "float32"),
        return_dict=True,
        verbose=0,
    )
    assert logs["demographic_parity"] == pytest.approx(0.5)
    assert logs["demographic_parity_violation"] == 0.0


# ------------------------------------------------- group ids, labels, names
def test_gap_stated_by_comparison_equals_the_keyword_form():
    stated = tfc.constraints.DemographicParity("sex", num_groups=3) <= 0.05
    keywords = tfc.constraints.DemographicParity(
        "sex", num_groups=3, kind="<=", bound=0.05
    )
    assert stated.get_config() == keywords.get_config()
    assert stated.name == "demographic_parity"
    assert tfc.constraints.RateGap("g").name == "rate_gap"
    assert tfc.constraints.GroupLoss("g").name == "group_loss"
    with pytest.raises(ValueError, match="'demographic_parity' is unbound"):
        _identity_model([tfc.constraints.DemographicParity("g")])
    with pytest.raises(TypeError, match="DemographicParity.*keyword"):
        tfc.constraints.DemographicParity("sex", 0.05)
    with pytest.raises(TypeError, match="'rate_gap'.*rate names"):
        tfc.constraints.RateGap("sex", 0.05)


def test_string_group_ids_with_group_names_equal_integer_ids():
    p, y, g, w = _data(seed=6, n=40)
    names = np.array(["a", "b", "c"], dtype=object)
    by_int = tfc.constraints.EqualizedOdds("g", num_groups=GROUPS) <= 0.1
    by_str = (
        tfc.constraints.EqualizedOdds("g", group_names=["a", "b", "c"]) <= 0.1
    )
    np.testing.assert_array_equal(
        by_str.true_value(_batch(p, y, names[g])),
        by_int.true_value(_batch(p, y, g)),
    )
    loss_int = tfc.constraints.GroupLoss("g", num_groups=GROUPS) <= 1.0
    loss_str = tfc.constraints.GroupLoss("g", group_names=names) <= 1.0
    np.testing.assert_allclose(
        loss_str.call(_batch(p, y, names[g])), loss_int.call(_batch(p, y, g))
    )
    # Through a model: the report's gap is the same as with integer ids.
    x = {"score": p, "g": names[g]}
    report = _identity_model([by_str]).constraint_report((x, y), batch_size=8)
    expected = _identity_model([by_int]).constraint_report(
        ({"score": p, "g": g}, y), batch_size=8
    )
    np.testing.assert_allclose(
        report["equalized_odds"]["value"], expected["equalized_odds"]["value"]
    )


def test_string_group_ids_without_names_raise_naming_the_constraint():
    p, y, _, _ = _data(n=4)
    constraint = tfc.constraints.DemographicParity("sex", name="dp") <= 0.1
    batch = Batch(
        x=None,
        y=tf.constant(y),
        y_pred=tf.constant(p),
        features={"sex": tf.constant(["f", "m", "f", "m"])},
    )
    with pytest.raises(ValueError, match="'dp'.*strings.*group_names"):
        constraint.statistics(batch)


@pytest.mark.parametrize(
    "constraint",
    [
        tfc.constraints.DemographicParity("g", name="dp") <= 0.1,
        tfc.constraints.GroupLoss("g", name="dp") <= 1.0,
        tfc.constraints.ErrorRate(group_key="g", name="dp") <= 0.3,
    ],
    ids=["gap", "group_loss", "per_group_rate"],
)
def test_group_ids_outside_the_groups_fail_naming_constraint_and_ids(
    constraint,
):
    # Groups coded 1/2 where 0/1 is expected: without the check, every
    # example of group 2 would be in no group and the constraint vacuous.
    p = np.array([[0.9], [0.2], [0.7], [0.6]], "float32")
    y = np.ones((4, 1), "float32")
    model = _identity_model([constraint])
    x = {"score": p, "g": np.array([1, 2, 1, 2], "int32")}
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="(?s)Constraint dp:.*0..1.*\\[2 2\\]",
    ):
        model.evaluate(x, y, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Constraint dp:"):
        model.fit(x, y, verbose=0)


def test_unknown_string_group_id_fails_naming_it():
    constraint = (
        tfc.constraints.DemographicParity("g", group_names=["f", "m"]) <= 0.1
    )
    batch = Batch(
        x=None,
        y=None,
        y_pred=tf.constant([[0.3], [0.6]]),
        features={"g": tf.constant(["f", "x"])},
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="(?s)Constraint demographic_parity:.*\\[f, m\\].*x",
    ):
        constraint.statistics(batch)


def test_entry_labels_use_group_names():
    gap = tfc.constraints.EqualOpportunity("sex", group_names=["f", "m"])
    assert gap.entry_labels == [
        "true_positive_rate: sex=f - sex=m",
        "true_positive_rate: sex=m - sex=f",
    ]
    loss = tfc.constraints.GroupLoss("race", num_groups=3)
    assert loss.entry_labels == ["race=0", "race=1", "race=2"]
    with pytest.raises(ValueError, match="'dp'.*3 `group_names`.*2"):
        tfc.constraints.DemographicParity(
            "sex", num_groups=2, group_names=["a", "b", "c"], name="dp"
        )


def test_empty_groups_over_summed_statistics():
    # Three groups; group 2 never appears, group 1 has no positive label.
    p = np.array([[0.9], [0.2], [0.7], [0.6]], "float32")
    y = np.array([[1.0], [1.0], [0.0], [0.0]], "float32")
    g = np.array([0, 0, 1, 1], "int32")
    batches = [_batch(p[:2], y[:2], g[:2]), _batch(p[2:], y[2:], g[2:])]

    def epoch_totals(constraint):
        sums = [constraint.statistics(batch) for batch in batches]
        return [tf.add_n(list(parts)) for parts in zip(*sums)]

    parity = tfc.constraints.DemographicParity("g", num_groups=3) <= 0.1
    opportunity = tfc.constraints.EqualOpportunity("g", num_groups=3) <= 0.1
    loss = tfc.constraints.GroupLoss("g", num_groups=3) <= 1.0
    np.testing.assert_array_equal(
        parity.empty_groups(epoch_totals(parity)), [False, False, True]
    )
    # Group 1 has examples, but no positive example: no true-positive rate.
    np.testing.assert_array_equal(
        opportunity.empty_groups(epoch_totals(opportunity)), [False, True, True]
    )
    np.testing.assert_array_equal(
        loss.empty_groups(epoch_totals(loss)), [False, False, True]
    )
