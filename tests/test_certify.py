"""Clopper–Pearson worst cases: beta quantiles, rates, per-group rates, gaps."""

import keras
import numpy as np
import pytest
from problems import identity_model

import tfconstrain as tfc
from tfconstrain import certify
from tfconstrain.report import constraint_report

stats = pytest.importorskip("scipy.stats")

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE


def _counts():
    rng = np.random.default_rng(0)
    n = np.concatenate([rng.integers(1, 60, 40), rng.integers(500, 40000, 20)])
    k = np.floor(rng.uniform(0, 1, n.size) * (n + 1)).clip(0, n)
    return k.astype(float), n.astype(float)


def test_upper_bound_is_the_beta_quantile():
    k, n = _counts()
    inside = k < n
    expected = stats.beta.ppf(CONFIDENCE, k[inside] + 1, n[inside] - k[inside])
    upper = certify.clopper_pearson_upper(k, n, CONFIDENCE)
    np.testing.assert_allclose(upper[inside], expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(upper[~inside], 1.0)


def test_lower_bound_is_the_beta_quantile():
    k, n = _counts()
    inside = k > 0
    expected = stats.beta.ppf(ALPHA, k[inside], n[inside] - k[inside] + 1)
    lower = certify.clopper_pearson_lower(k, n, CONFIDENCE)
    np.testing.assert_allclose(lower[inside], expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(lower[~inside], 0.0)


@pytest.mark.parametrize("n", [1, 7, 250])
def test_edge_cases_have_closed_forms(n):
    # k = 0: P(X = 0) = (1 - p)^n = α  =>  upper = 1 - α^(1/n).
    upper = certify.clopper_pearson_upper(0, n, CONFIDENCE)
    assert upper == pytest.approx(1.0 - ALPHA ** (1.0 / n), abs=1e-12)
    assert certify.clopper_pearson_lower(0, n, CONFIDENCE) == 0.0
    # k = n: P(X = n) = p^n = α  =>  lower = α^(1/n).
    lower = certify.clopper_pearson_lower(n, n, CONFIDENCE)
    assert lower == pytest.approx(ALPHA ** (1.0 / n), abs=1e-12)
    assert certify.clopper_pearson_upper(n, n, CONFIDENCE) == 1.0


def test_no_trial_bounds_nothing():
    assert certify.clopper_pearson_lower(0, 0, CONFIDENCE) == 0.0
    assert certify.clopper_pearson_upper(0, 0, CONFIDENCE) == 1.0


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, "high", None])
def test_bad_confidence_raises(confidence):
    with pytest.raises(ValueError, match="confidence"):
        certify.check_confidence(confidence)


# ------------------------------------------------------------- in reports
def _scores(n, positives, predicted_positives, seed=0):
    """Scores whose hard predictions and labels have exact known counts."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, "float32")
    labels[:positives] = 1.0
    scores = np.full(n, 0.2, "float32")
    scores[:predicted_positives] = 0.8  # predicted positive (> 0.5)
    order = rng.permutation(n)
    return scores[order, None], labels[order, None]


def test_recall_worst_case_is_the_lower_bound_on_the_positives():
    # 200 positives, 190 of them caught: recall 0.95, lower bound < 0.95.
    scores, labels = _scores(1000, positives=200, predicted_positives=190)
    model = identity_model([tfc.constraints.Recall() >= 0.9])
    entry = constraint_report(
        model, (scores, labels), batch_size=64, confidence=CONFIDENCE
    )["recall"]
    assert entry["value"] == pytest.approx(0.95, abs=1e-7)
    expected = stats.beta.ppf(ALPHA, 190, 200 - 190 + 1)
    assert entry["worst_case"] == pytest.approx(expected, abs=1e-6)
    assert entry["certified"] is bool(expected >= 0.9 - 1e-4)


def test_certified_follows_the_worst_case_not_the_value():
    # 160 / 200 = 0.8 <= 0.83 is satisfied, but the upper bound is above it.
    scores, labels = _scores(200, positives=0, predicted_positives=160)
    rate = tfc.constraints.Rate("selection_rate", name="rate") <= 0.83
    model = identity_model([rate])
    entry = constraint_report(model, (scores, labels), confidence=CONFIDENCE)[
        "rate"
    ]
    upper = stats.beta.ppf(CONFIDENCE, 161, 40)
    assert upper > 0.83 > entry["value"]
    assert entry["satisfied"] is True
    assert entry["worst_case"] == pytest.approx(upper, abs=1e-6)
    assert entry["certified"] is False
    # With a bound above the worst case, it is certified.
    model = identity_model([tfc.constraints.Rate("selection_rate") <= 0.9])
    entry = constraint_report(model, (scores, labels), confidence=CONFIDENCE)[
        "selection_rate"
    ]
    assert entry["certified"] is True


def test_per_group_rates_split_the_level_across_groups():
    rng = np.random.default_rng(1)
    n, groups = 900, 3
    scores = rng.uniform(size=(n, 1)).astype("float32")
    group = rng.integers(0, groups, n).astype("int32")
    weights = rng.integers(1, 4, n).astype("float32")  # frequency weights
    rate = tfc.constraints.Rate(
        "selection_rate", group_key="g", num_groups=groups, name="r"
    )
    model = identity_model([rate <= 0.55])
    entry = constraint_report(
        model,
        ({"score": scores, "g": group}, None, weights),
        batch_size=50,
        confidence=CONFIDENCE,
    )["r"]
    positive = scores[:, 0] > 0.5
    k = np.array([weights[(group == g) & positive].sum() for g in range(3)])
    m = np.array([weights[group == g].sum() for g in range(3)])
    level = 1.0 - ALPHA / groups
    expected = stats.beta.ppf(level, k + 1, m - k)
    np.testing.assert_allclose(entry["worst_case"], expected, atol=1e-6)
    assert entry["certified"] is bool(np.all(expected <= 0.55 + 1e-4))


def test_equality_gives_both_bounds():
    scores, labels = _scores(400, positives=0, predicted_positives=100)
    rate = tfc.constraints.Rate("selection_rate", kind="==", bound=0.25)
    model = identity_model([rate])
    entry = constraint_report(model, (scores, labels), confidence=CONFIDENCE)[
        "selection_rate"
    ]
    lower, upper = entry["worst_case"]
    level = 1.0 - ALPHA / 2
    assert lower == pytest.approx(stats.beta.ppf(1 - level, 100, 301), abs=1e-6)
    assert upper == pytest.approx(stats.beta.ppf(level, 101, 300), abs=1e-6)
    assert entry["certified"] is False  # an interval is never a point


def test_gap_worst_case_is_upper_minus_lower_of_the_groups():
    rng = np.random.default_rng(2)
    n = 4000
    group = rng.integers(0, 2, n).astype("int32")
    scores = np.where(
        group == 0, rng.uniform(0.0, 1.0, n), rng.uniform(0.05, 1.05, n)
    )
    scores = scores.clip(0, 1).astype("float32")[:, None]
    dp = tfc.constraints.DemographicParity("g") <= 0.1
    model = identity_model([dp])
    entry = constraint_report(
        model,
        ({"score": scores, "g": group}, np.zeros_like(scores)),
        batch_size=256,
        confidence=CONFIDENCE,
    )["demographic_parity"]
    positive = scores[:, 0] > 0.5
    k = np.array([positive[group == g].sum() for g in (0, 1)], float)
    m = np.array([(group == g).sum() for g in (0, 1)], float)
    level = 1.0 - ALPHA / 4  # an upper and a lower bound for each group
    upper = stats.beta.ppf(level, k + 1, m - k)
    lower = stats.beta.ppf(1.0 - level, k, m - k + 1)
    # Entries: r_0 - r_1, r_1 - r_0.
    expected = [upper[0] - lower[1], upper[1] - lower[0]]
    np.testing.assert_allclose(entry["worst_case"], expected, atol=1e-6)
    assert entry["certified"] is bool(max(expected) <= 0.1 + 1e-4)
    assert np.max(entry["value"]) < max(expected)


def test_constraints_not_built_on_counts_have_no_worst_case():
    scores, labels = _scores(50, positives=10, predicted_positives=10)
    model = identity_model([])
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), "<=", 0.9, name="mean"
    )
    model.compile(loss="mse")
    entry = constraint_report(model, (scores, labels), confidence=CONFIDENCE)[
        "mean"
    ]
    assert entry["worst_case"] is None and entry["certified"] is None


def test_without_confidence_the_keys_are_absent():
    scores, labels = _scores(50, positives=10, predicted_positives=10)
    model = identity_model([tfc.constraints.Recall() >= 0.9])
    entry = constraint_report(model, (scores, labels))["recall"]
    assert "worst_case" not in entry and "certified" not in entry


def test_the_model_method_passes_confidence_on():
    scores, labels = _scores(100, positives=20, predicted_positives=19)
    model = identity_model([tfc.constraints.Recall() >= 0.9])
    report = model.constraint_report((scores, labels), confidence=0.9)
    assert report.confidence == 0.9
    assert report["recall"]["worst_case"] == pytest.approx(
        stats.beta.ppf(0.1, 19, 2), abs=1e-6
    )


def test_equalized_odds_splits_the_level_over_rates_and_groups():
    rng = np.random.default_rng(3)
    n = 3000
    group = rng.integers(0, 2, n).astype("int32")
    labels = rng.integers(0, 2, n).astype("float32")[:, None]
    scores = rng.uniform(size=(n, 1)).astype("float32")
    eodds = tfc.constraints.EqualizedOdds("g", form="vs_overall") <= 0.05
    model = identity_model([eodds])
    entry = constraint_report(
        model,
        ({"score": scores, "g": group}, labels),
        batch_size=500,
        confidence=CONFIDENCE,
    )["equalized_odds"]
    positive, y = scores[:, 0] > 0.5, labels[:, 0] == 1
    # Cells: (rate, column) for rates (tpr, fpr), columns (g=0, g=1, all).
    members = [group == 0, group == 1, np.ones(n, bool)]
    k, m = [], []
    for condition in (y, ~y):  # true-positive rate, false-positive rate
        for member in members:
            k.append(np.sum(positive & condition & member))
            m.append(np.sum(condition & member))
    k, m = np.array(k, float), np.array(m, float)
    level = 1.0 - ALPHA / 12  # 6 cells, an upper and a lower bound each
    upper = stats.beta.ppf(level, k + 1, m - k)
    lower = stats.beta.ppf(1.0 - level, k, m - k + 1)
    # vs_overall entries per rate: r_g - r_all (g = 0, 1), r_all - r_g.
    expected = []
    for base in (0, 3):
        expected += [upper[base + g] - lower[base + 2] for g in (0, 1)]
        expected += [upper[base + 2] - lower[base + g] for g in (0, 1)]
    np.testing.assert_allclose(entry["worst_case"], expected, atol=1e-6)
