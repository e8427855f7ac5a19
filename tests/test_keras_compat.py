"""Pins every private Keras touch of tfconstrain (`tfconstrain/_keras_compat.py`
and the hooks `ConstrainedModel` overrides).

Each test fails with a message naming the installed Keras version, so that
an upstream change is diagnosed at once instead of deep in a traceback.
"""

import json
import os

import keras
import numpy as np

from tfconstrain import _keras_compat

VERSION = f"Keras {keras.__version__}"


def test_functional_class_is_keras_functional():
    functional = _keras_compat.functional_class()
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert isinstance(model, functional), (
        f"{VERSION}: keras.src.models.functional.Functional is no longer the "
        "class of functional models; update _keras_compat.functional_class."
    )


def test_input_structure_names_dict_inputs():
    inputs = {
        "a": keras.Input((2,), name="a"),
        "b": keras.Input((1,), name="b"),
    }
    merged = keras.layers.Concatenate()([inputs["a"], inputs["b"]])
    model = keras.Model(inputs, keras.layers.Dense(1)(merged))
    structure = _keras_compat.input_structure(model)
    assert isinstance(structure, dict) and set(structure) == {"a", "b"}, (
        f"{VERSION}: Model._inputs_struct changed; side-information splitting "
        "needs the input names of dict-input models."
    )


def test_trainer_hooks_that_are_overridden_still_exist():
    for name in ("_get_metrics_result_or_logs", "_maybe_symbolic_build"):
        assert callable(getattr(keras.Model, name, None)), (
            f"{VERSION}: keras.Model.{name} is gone; ConstrainedModel "
            "overrides it (see tfconstrain/_keras_compat.py)."
        )


def test_tracker_lock_and_untrack_exist():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    tracker = getattr(model, "_tracker", None)
    assert tracker is not None and hasattr(tracker, "locked"), (
        f"{VERSION}: Layer._tracker (with lock/unlock) changed; "
        "ConstrainedModel creates dual state after the model is built."
    )
    assert callable(getattr(model, "_untrack_variable", None)), (
        f"{VERSION}: Layer._untrack_variable is gone."
    )


def test_backup_metadata_records_the_batch(tmp_path):
    directory = str(tmp_path / "backup")
    backup = keras.callbacks.BackupAndRestore(directory, save_freq=2)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 1), "float32")
    model.fit(x, x, batch_size=2, epochs=1, verbose=0, callbacks=[backup])
    path = _keras_compat.backup_metadata_path(backup)
    # The backup is deleted at the end of a completed fit; a file written
    # mid-epoch is what resuming reads. Check the key layout on a fresh
    # write by interrupting after the save.
    assert path.startswith(directory), (
        f"{VERSION}: BackupAndRestore's metadata path changed ({path})."
    )
    os.makedirs(directory, exist_ok=True)
    backup.set_model(model)
    backup._save_model()
    with open(path) as file:
        metadata = json.load(file)
    assert "epoch" in metadata and "batch" in metadata, (
        f"{VERSION}: BackupAndRestore's metadata has keys {sorted(metadata)}; "
        "exact mid-epoch resume reads 'epoch' and 'batch'."
    )


def _compiled_model():
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=["mae"])
    return model


def test_loss_tracker_is_the_loss_metric():
    model = _compiled_model()
    tracker = _keras_compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss", (
        f"{VERSION}: Trainer._loss_tracker changed; the constrained steps "
        "update Keras' `loss` log through it."
    )


def test_compiled_metrics_update_alone():
    model = _compiled_model()
    y = np.ones((4, 1), "float32")
    _keras_compat.update_compiled_metrics(model, y, 0 * y, None)
    results = model.get_metrics_result()
    assert results.get("mae") == 1.0, (
        f"{VERSION}: Trainer._compile_metrics changed ({results}); the "
        "constrained steps update the compiled metrics through it."
    )


def test_flatten_layers_finds_nested_layers():
    inner = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    outer = keras.Sequential([keras.Input((1,)), inner, keras.layers.Dense(1)])
    layers = list(_keras_compat.flatten_layers(outer))
    assert inner.layers[0] in layers and outer.layers[-1] in layers, (
        f"{VERSION}: Layer._flatten_layers changed; layer-declared "
        "constraints and SpectralNorm look layers up through it."
    )


def test_trackable_children_hook_exists():
    model = _compiled_model()
    assert callable(getattr(model, "_trackable_children", None)), (
        f"{VERSION}: Model._trackable_children is gone; tf.train.Checkpoint "
        "finds the multipliers through it."
    )
