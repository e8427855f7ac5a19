"""`tfc.plot.training_dynamics`: value, bound and multiplier, headless."""

import sys

import keras
import numpy as np
import pytest

import tfconstrain as tfc
from tfconstrain import plot

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def _history(epochs=6):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), "<=", 0.3, name="rate"
    )
    model.add_constraint(tfc.constraints.Recall() >= 0.6)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model.fit(
        x, y, epochs=epochs, batch_size=16, validation_data=(x, y), verbose=0
    )


def test_writes_a_png_with_one_row_per_constraint(tmp_path):
    history = _history()
    path = tmp_path / "dynamics.png"
    figure = plot.training_dynamics(history, save_path=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = figure.get_size_inches() * figure.dpi
    assert (width, height) == pytest.approx((1000, 600))
    (value, multiplier), (recall, _) = np.asarray(figure.axes).reshape(2, 2)
    assert value.get_title() == "rate <= 0.3"
    assert recall.get_title() == "recall >= 0.6"
    train, validation = value.lines[:2]
    np.testing.assert_allclose(train.get_ydata(), history.history["rate"])
    np.testing.assert_allclose(
        validation.get_ydata(), history.history["val_rate"]
    )
    np.testing.assert_allclose(train.get_xdata(), np.arange(1, 7))
    bound = value.lines[2]
    assert list(bound.get_ydata()) == [pytest.approx(0.3)] * 2
    np.testing.assert_allclose(
        multiplier.lines[0].get_ydata(), history.history["rate_multiplier"]
    )


def test_a_history_dict_with_explicit_bounds_and_selection():
    logs = {
        "c": [0.5, 0.2, 0.1],
        "c_violation": [0.3, 0.0, 0.0],
        "c_multiplier": [0.3, 0.3, 0.25],
        "d": [1.0, 1.0, 1.0],
        "d_violation": [0.0, 0.0, 0.0],
        "d_multiplier": [0.0, 0.0, 0.0],
        "loss": [1.0, 0.9, 0.8],
    }
    figure = plot.training_dynamics(logs, ["c"], bounds={"c": ("<=", 0.2)})
    assert len(figure.axes) == 2
    assert figure.axes[0].get_title() == "c <= 0.2"
    figure = plot.training_dynamics(logs)
    assert [a.get_title() for a in figure.axes[::2]] == ["c", "d"]


def test_bad_requests_raise():
    with pytest.raises(ValueError, match="no constraint"):
        plot.training_dynamics({"loss": [1.0]})
    logs = {"c": [1.0], "c_violation": [0.0], "c_multiplier": [0.0]}
    with pytest.raises(ValueError, match=r"\['e'\]"):
        plot.training_dynamics(logs, ["e"])


def test_without_matplotlib_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    logs = {"c": [1.0], "c_violation": [0.0], "c_multiplier": [0.0]}
    with pytest.raises(ImportError, match=r"tfconstrain\[plot\]"):
        plot.training_dynamics(logs)
