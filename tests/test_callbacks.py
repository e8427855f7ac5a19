"""`MultiplierCallback`: dual-update schedule and TensorBoard output."""

import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from problems import objective
from problems import point_model
from tensorboard.backend.event_processing import event_accumulator

import tfconstrain as tfc


def lower_bound_model():
    """min x² s.t. x >= 1 from x0 = 0: the violation is 1 - x."""
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda b: x[0], ">=", 1.0, name="lower")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=objective(lambda: x[0] ** 2),
        dual_optimizer=1.0,
    )
    return model, x


def record_multipliers(model, steps, callback):
    values = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            values.append(float(model.multipliers["lower"].numpy()))

    dummy = np.zeros((1, 1), "float32")
    model.fit(
        tf.data.Dataset.from_tensors((dummy, dummy)).repeat(steps),
        verbose=0,
        shuffle=False,
        callbacks=[callback, Record()],
    )
    return np.array(values)


def test_update_every_n_steps_after_warmup():
    model, _ = lower_bound_model()
    values = record_multipliers(
        model, 12, tfc.MultiplierCallback(update_every=3, warmup_steps=2)
    )
    changed = np.flatnonzero(np.diff(np.concatenate([[0.0], values])))
    # Dual steps at iterations 2, 5, 8, 11 (0-based), i.e. batches 2, 5, ...
    assert changed.tolist() == [2, 5, 8, 11]


def test_schedule_reverts_after_fit():
    model, _ = lower_bound_model()
    record_multipliers(model, 4, tfc.MultiplierCallback(update_every=4))
    values = record_multipliers(model, 3, keras.callbacks.Callback())
    assert np.all(np.diff(values) > 0)  # every step again


def test_epoch_schedule_uses_dataset_level_value():
    """Per-epoch dual step with the epoch's aggregate violation.

    The constraint mean(y_pred) over the whole dataset is evaluated with
    weights that change during the epoch; the dual step must use the
    epoch aggregate that the logs report, once per epoch.
    """
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 3)).astype("float32")
    labels = np.ones((40, 1), "float32")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda b: keras.ops.mean(b.y_pred), "<=", 0.2, name="rate"
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss="binary_crossentropy",
        dual_optimizer=0.5,
    )
    history = model.fit(
        features,
        labels,
        batch_size=10,
        epochs=3,
        shuffle=False,
        verbose=0,
        validation_data=(features[:10], labels[:10]),
        callbacks=[tfc.MultiplierCallback(update_every="epoch")],
    )
    violations = np.array(history.history["rate_violation"])
    multipliers = np.array(history.history["rate_multiplier"])
    # The logged multiplier of epoch e is the one that epoch's dual step
    # wrote (issue 8: it used to be read before the step).
    expected = np.cumsum(0.5 * violations)
    np.testing.assert_allclose(multipliers, expected, rtol=1e-5)
    np.testing.assert_allclose(
        model.multipliers["rate"].numpy(), 0.5 * violations.sum(), rtol=1e-5
    )


def read_events(directory):
    """Reads a run with TensorBoard's own event reader.

    Orphaned data is kept, so that two writers of one tag at one step show
    as two events. Returns `{tag: [(step, value), ...]}` for scalars (and
    histograms, as bucket arrays).
    """
    reader = event_accumulator.EventAccumulator(
        directory,
        size_guidance={event_accumulator.TENSORS: 0},
        purge_orphaned_data=False,
    )
    reader.Reload()
    values = {}
    for tag in reader.Tags()["tensors"]:
        values[tag] = [
            (event.step, tf.make_ndarray(event.tensor_proto))
            for event in reader.Tensors(tag)
        ]
    return values


def read_layout(directory):
    """The custom-scalars layout written to a run, as a `Layout` proto."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.plugins.custom_scalar import metadata

    events = read_events(directory)[metadata.CONFIG_SUMMARY_TAG]
    return layout_pb2.Layout.FromString(events[-1][1].item())


@pytest.mark.smoke
def test_tensorboard_scalars_per_constraint(tmp_path):
    model, _ = lower_bound_model()
    dummy = np.zeros((1, 1), "float32")
    model.fit(
        dummy,
        dummy,
        epochs=3,
        verbose=0,
        validation_data=(dummy, dummy),
        callbacks=[tfc.MultiplierCallback(log_dir=str(tmp_path))],
    )
    train = read_events(str(tmp_path / "train"))
    validation = read_events(str(tmp_path / "validation"))
    for tag in ("epoch_lower", "epoch_lower_violation"):
        assert [step for step, _ in train[tag]] == [0, 1, 2]
        assert [step for step, _ in validation[tag]] == [0, 1, 2]
    # Properties of the model are written once, for training.
    assert len(train["epoch_lower_multiplier"]) == 3
    assert "epoch_lower_multiplier" not in validation
    assert [float(v) for _, v in train["epoch_lower_bound"]] == [1.0] * 3
    last = train["epoch_lower_multiplier"][-1][1]
    np.testing.assert_allclose(
        last, model.multipliers["lower"].numpy(), rtol=1e-6
    )


def test_tensorboard_histogram_for_vector_multipliers(tmp_path):
    model, point = point_model([0.0, 0.0])
    x = point.x
    model.add_constraint(lambda b: x, ">=", [1.0, 2.0], name="both")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=objective(lambda: tf.reduce_sum(x**2)),
        dual_optimizer=1.0,
    )
    dummy = np.zeros((1, 1), "float32")
    model.fit(
        dummy,
        dummy,
        epochs=2,
        verbose=0,
        callbacks=[tfc.MultiplierCallback(log_dir=str(tmp_path))],
    )
    tags = read_events(str(tmp_path / "train"))
    assert len(tags["epoch_both_multiplier"]) == 2
    assert "epoch_both_bound" not in tags  # entries have different bounds
    histograms = tags["epoch_both_multiplier_histogram"]
    assert len(histograms) == 2
    # A histogram of the final multipliers covers [min, max] of the entries.
    buckets = histograms[-1][1]
    final = model.multipliers["both"].numpy()
    np.testing.assert_allclose(buckets[:, 0].min(), final.min(), rtol=1e-6)
    np.testing.assert_allclose(buckets[:, 1].max(), final.max(), rtol=1e-6)


def _fit_with(callbacks, epochs=3):
    model, _ = lower_bound_model()
    dummy = np.zeros((1, 1), "float32")
    model.fit(
        dummy,
        dummy,
        epochs=epochs,
        verbose=0,
        validation_data=(dummy, dummy),
        callbacks=callbacks,
    )
    return model


@pytest.mark.parametrize("keras_first", [True, False])
def test_one_series_per_quantity_with_keras_tensorboard(tmp_path, keras_first):
    log_dir = str(tmp_path)
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=log_dir),
        tfc.MultiplierCallback(log_dir=log_dir),
    ]
    if not keras_first:
        callbacks.reverse()
    _fit_with(callbacks, epochs=3)
    for run in ("train", "validation"):
        events = read_events(str(tmp_path / run))
        for tag, values in events.items():
            steps = [step for step, _ in values]
            assert len(steps) == len(set(steps)), (run, tag, steps)
        # Each constraint quantity under exactly one tag.
        constraint_tags = {t for t in events if "lower" in t}
        expected = {"epoch_lower", "epoch_lower_violation"}
        if run == "train":
            expected |= {"epoch_lower_multiplier", "epoch_lower_bound"}
        assert expected <= constraint_tags
        assert not {t for t in constraint_tags if "constraints/" in t}
    train = read_events(str(tmp_path / "train"))
    assert [step for step, _ in train["epoch_lower"]] == [0, 1, 2]


def test_custom_scalars_layout_has_one_chart_per_constraint(tmp_path):
    model, point = point_model([0.0])
    x = point.x
    model.add_constraint(lambda b: x[0], ">=", 1.0, name="lower")
    model.add_constraint(lambda b: x[0], "<=", 3.0, name="upper.bound")
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=objective(lambda: x[0] ** 2),
        dual_optimizer=1.0,
    )
    dummy = np.zeros((1, 1), "float32")
    model.fit(
        dummy,
        dummy,
        epochs=2,
        verbose=0,
        callbacks=[tfc.MultiplierCallback(log_dir=str(tmp_path))],
    )
    layout = read_layout(str(tmp_path / "train"))
    (category,) = layout.category
    assert [chart.title for chart in category.chart] == ["lower", "upper.bound"]
    tags = read_events(str(tmp_path / "train"))
    for chart in category.chart:
        patterns = list(chart.multiline.tag)
        matched = {
            pattern: [t for t in tags if re.search(pattern, t)]
            for pattern in patterns
        }
        name = chart.title
        # Value, bound and multiplier of this constraint, and nothing else.
        assert matched[patterns[0]] == [f"epoch_{name}"]
        assert matched[patterns[1]] == [f"epoch_{name}_bound"]
        assert matched[patterns[2]] == [f"epoch_{name}_multiplier"]


def test_only_the_chief_writes(tmp_path, monkeypatch):
    from tfconstrain import tensorboard

    chief = types.SimpleNamespace(
        distribute_strategy=types.SimpleNamespace(
            extended=types.SimpleNamespace(should_save_summary=True)
        )
    )
    worker = types.SimpleNamespace(
        distribute_strategy=types.SimpleNamespace(
            extended=types.SimpleNamespace(should_save_summary=False)
        )
    )
    assert tensorboard.is_chief(chief) and not tensorboard.is_chief(worker)
    monkeypatch.setattr(tensorboard, "is_chief", lambda model: False)
    _fit_with([tfc.MultiplierCallback(log_dir=str(tmp_path), batch_log_freq=1)])
    assert not list(tmp_path.rglob("events.*"))


def test_batch_level_multipliers(tmp_path):
    model, _ = lower_bound_model()
    dummy = np.zeros((1, 1), "float32")
    model.fit(
        tf.data.Dataset.from_tensors((dummy, dummy)).repeat(4),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[
            tfc.MultiplierCallback(log_dir=str(tmp_path), batch_log_freq=2)
        ],
    )
    tags = read_events(str(tmp_path / "train"))
    assert [step for step, _ in tags["batch_lower_multiplier"]] == [2, 4]
    np.testing.assert_allclose(
        tags["batch_lower_multiplier"][-1][1],
        model.multipliers["lower"].numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"update_every": 0},
        {"update_every": "sometimes"},
        {"warmup_steps": -1},
        {"histogram_freq": -2},
    ],
)
def test_bad_schedule_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        tfc.MultiplierCallback(**kwargs)
