"""`ConstraintReport`: a dict that prints as a table and becomes a DataFrame."""

import sys

import keras
import numpy as np
import pytest
from problems import identity_model
from problems import random_scores

import tfconstrain as tfc
from tfconstrain.report import ConstraintReport
from tfconstrain.report import constraint_report

N = 300


def _model_and_data():
    p, y, g, w = random_scores(0, N, 3)
    model = identity_model(
        [
            tfc.constraints.Rate(
                "selection_rate",
                group_key="g",
                group_names=["a", "b", "c"],
                name="selection",
            )
            <= 0.52,
            tfc.constraints.Recall() >= 0.5,
        ]
    )
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), "<=", 0.9, name="mean"
    )
    model.compile(loss="mse")
    return model, ({"score": p, "g": g}, y, w), (p[:, 0], y[:, 0], g, w)


def _expected_selection(p, g, w):
    positive = p > 0.5
    return np.array(
        [w[(g == k) & positive].sum() / w[g == k].sum() for k in range(3)]
    )


def test_report_is_a_dict_of_plain_entries():
    model, data, (p, y, g, w) = _model_and_data()
    report = constraint_report(model, data, batch_size=32)
    assert isinstance(report, dict) and isinstance(report, ConstraintReport)
    assert list(report) == ["selection", "recall", "mean"]
    np.testing.assert_allclose(
        report["selection"]["value"], _expected_selection(p, g, w), atol=1e-6
    )
    # A callable is averaged over batches, weighted by each batch's weight.
    batches = [slice(i, i + 32) for i in range(0, N, 32)]
    means = [p[b].mean() for b in batches]
    totals = [w[b].sum() for b in batches]
    expected = np.average(means, weights=totals)
    assert report["mean"]["value"] == pytest.approx(expected, rel=1e-5)


def test_table_has_one_row_per_scalar_and_per_labelled_entry():
    model, data, (p, y, g, w) = _model_and_data()
    report = constraint_report(model, data, batch_size=32)
    lines = str(report).splitlines()
    assert lines[0] == "Constraint report"
    header = lines[1].split()
    assert header == [
        "constraint",
        "entry",
        "kind",
        "bound",
        "value",
        "violation",
        "satisfied",
        "multiplier",
    ]
    rows = [line.split() for line in lines[3:]]
    assert [row[:2] for row in rows] == [
        ["selection", "g=a"],
        ["selection", "g=b"],
        ["selection", "g=c"],
        ["recall", "-"],
        ["mean", "-"],
    ]
    expected = _expected_selection(p, g, w)
    for row, rate in zip(rows[:3], expected):
        assert float(row[4]) == pytest.approx(rate, abs=5e-4)  # 4 digits
        assert row[6] == ("yes" if rate <= 0.52 + 1e-4 else "no")


def test_entries_without_labels_are_numbered():
    model = identity_model([])
    model.add_constraint(
        lambda batch: keras.ops.stack(
            [keras.ops.mean(batch.y_pred), keras.ops.max(batch.y_pred)]
        ),
        "<=",
        [0.5, 2.0],
        name="pair",
    )
    model.compile(loss="mse")
    scores = np.linspace(0.1, 0.9, 9, dtype="float32")[:, None]
    rows = constraint_report(model, (scores, scores), batch_size=9).rows()
    assert [row["entry"] for row in rows] == [0, 1]
    assert [row["bound"] for row in rows] == [0.5, 2.0]
    assert rows[0]["value"] == pytest.approx(0.5)
    assert rows[0]["satisfied"] and rows[1]["satisfied"]


def test_long_vectors_print_their_worst_entry():
    model = identity_model([])
    size = 30
    bound = np.linspace(1.0, 2.0, size)
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred) * keras.ops.ones((size,)),
        "<=",
        bound,
        name="many",
    )
    model.compile(loss="mse")
    scores = np.full((4, 1), 1.5, "float32")
    report = constraint_report(model, (scores, scores))
    rows = [line.split() for line in str(report).splitlines()[3:]]
    # Entries 0..14 have bounds below 1.5: entry 0 is the most violated.
    assert len(rows) == 1
    assert rows[0][:5] == ["many", "worst", "of", "30:", "0"]
    satisfied = int(np.sum(bound >= 1.5 - 1e-4))
    assert f"{satisfied}/30" in rows[0]
    assert len(report.rows()) == size  # the full table keeps every entry


def test_to_dataframe_has_every_entry():
    pd = pytest.importorskip("pandas")
    model, data, (p, y, g, w) = _model_and_data()
    frame = constraint_report(
        model, data, batch_size=32, confidence=0.95
    ).to_dataframe()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["constraint"]) == ["selection"] * 3 + ["recall", "mean"]
    assert list(frame["entry"][:3]) == ["g=a", "g=b", "g=c"]
    np.testing.assert_allclose(
        frame["value"][:3], _expected_selection(p, g, w), atol=1e-6
    )
    assert frame["worst_case"][4] is None or np.isnan(frame["worst_case"][4])
    assert frame["certified"][4] is None
    recall = np.sum((p > 0.5) * y * w) / np.sum(y * w)
    assert frame["value"][3] == pytest.approx(recall, abs=1e-6)


def test_to_dataframe_without_pandas_says_so(monkeypatch):
    model, data, _ = _model_and_data()
    report = constraint_report(model, data, batch_size=32)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        report.to_dataframe()


def test_an_empty_group_in_the_data_warns_naming_it():
    model, (x, y, w), _ = _model_and_data()
    keep = x["g"] != 1
    data = ({"score": x["score"][keep], "g": x["g"][keep]}, y[keep], w[keep])
    with pytest.warns(UserWarning, match=r"'selection'.*g=b"):
        report = constraint_report(model, data, batch_size=32)
    assert report["selection"]["value"][1] == 0.0


def test_certification_columns_appear_with_confidence():
    model, data, _ = _model_and_data()
    text = str(constraint_report(model, data, batch_size=32, confidence=0.9))
    lines = text.splitlines()
    assert "confidence 0.9" in lines[0]
    assert lines[1].split()[-2:] == ["worst_case", "certified"]
    assert lines[-1].split()[-2:] == ["-", "-"]  # `mean` is not a count
