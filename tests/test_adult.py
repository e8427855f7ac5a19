"""The shipped UCI Adult dataset, its build script, and fair training on it."""

import hashlib
import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

import tfconstrain as tfc
from tfconstrain.datasets import adult as adult_module
from tfconstrain.feasible import BestFeasibleWeights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return tfc.datasets.load_adult()


def _build_script():
    path = ROOT / "scripts" / "build_adult_dataset.py"
    spec = importlib.util.spec_from_file_location("build_adult", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ loader
def test_split_sizes_and_label_rate_match_the_uci_documentation(data):
    # adult.names: "45222 if instances with unknown values are removed
    # (train=30162, test=15060)"; "Probability for the label '>50K':
    # 24.78% (without unknowns)".
    assert data.x_train.shape[0] == data.y_train.shape[0] == 30162
    assert data.x_test.shape[0] == data.y_test.shape[0] == 15060
    positives = data.y_train.sum() + data.y_test.sum()
    assert positives / 45222 == pytest.approx(0.2478, abs=5e-5)
    for array in (data.y_train, data.y_test):
        assert set(np.unique(array)) == {0.0, 1.0}


def test_features_are_standardised_numeric_then_one_hot(data):
    assert data.x_train.dtype == np.float32
    names = data.feature_names
    assert len(names) == data.x_train.shape[1] == data.x_test.shape[1]
    numeric = [i for i, name in enumerate(names) if "=" not in name]
    assert [names[i] for i in numeric] == [
        "age",
        "education_num",
        "capital_gain",
        "capital_loss",
        "hours_per_week",
    ]
    columns = data.x_train[:, numeric].astype(np.float64)
    np.testing.assert_allclose(columns.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(columns.std(axis=0), 1.0, atol=1e-4)
    for prefix in ("workclass=", "education=", "sex=", "native_country="):
        block = [i for i, n in enumerate(names) if n.startswith(prefix)]
        for x in (data.x_train, data.x_test):
            np.testing.assert_array_equal(x[:, block].sum(axis=1), 1.0)


def test_group_arrays_agree_with_the_one_hot_columns(data):
    assert data.group_names["sex"] == ("Female", "Male")
    assert len(data.group_names["race"]) == 5
    names = list(data.feature_names)
    for split in ("train", "test"):
        x = getattr(data, f"x_{split}")
        for group in ("sex", "race"):
            ids = getattr(data, f"{group}_{split}")
            assert ids.dtype == np.int32
            for k, value in enumerate(data.group_names[group]):
                column = x[:, names.index(f"{group}={value}")]
                np.testing.assert_array_equal(column == 1.0, ids == k)


def test_sensitive_columns_can_be_left_out(data):
    without = tfc.datasets.load_adult(include_sensitive=False)
    removed = [n for n in data.feature_names if n.startswith(("sex=", "race="))]
    assert len(removed) == 7
    assert without.x_train.shape[1] == data.x_train.shape[1] - 7
    assert not set(removed) & set(without.feature_names)
    np.testing.assert_array_equal(without.sex_test, data.sex_test)


def test_shipped_file_is_small_and_matches_its_checksum():
    payload = adult_module.ADULT_FILE.read_bytes()
    assert len(payload) < 2_000_000
    assert hashlib.sha256(payload).hexdigest() == adult_module.ADULT_SHA256


def test_corrupted_file_is_detected(tmp_path, monkeypatch):
    broken = tmp_path / "adult.npz"
    broken.write_bytes(adult_module.ADULT_FILE.read_bytes()[:-10])
    monkeypatch.setattr(adult_module, "ADULT_FILE", broken)
    with pytest.raises(OSError, match="corrupted"):
        tfc.datasets.load_adult()
    monkeypatch.setattr(adult_module, "ADULT_FILE", tmp_path / "missing")
    with pytest.raises(OSError, match="missing"):
        tfc.datasets.load_adult()


# ------------------------------------------------------------ build script
TRAIN_TEXT = """\
39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, \
Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K
50, ?, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, \
White, Male, 0, 0, 13, United-States, <=50K
31, Private, 45781, Masters, 14, Never-married, Prof-specialty, \
Not-in-family, Black, Female, 14084, 0, 50, Cuba, >50K

"""
TEST_TEXT = """\
|1x3 Cross validator
25, Private, 226802, Bachelors, 13, Never-married, Prof-specialty, \
Not-in-family, Black, Male, 0, 0, 40, United-States, >50K.
"""


def test_build_script_parses_drops_missing_rows_and_encodes():
    build = _build_script()
    rows, raw_count = build.parse_rows(TRAIN_TEXT)
    assert raw_count == 3 and len(rows) == 2
    arrays = build.build_arrays(TRAIN_TEXT, TEST_TEXT, check_counts=False)
    np.testing.assert_array_equal(
        arrays["train_numeric"], [[39, 13, 2174, 0, 40], [31, 14, 14084, 0, 50]]
    )
    np.testing.assert_array_equal(arrays["train_label"], [0, 1])
    np.testing.assert_array_equal(arrays["test_label"], [1])
    assert arrays["categories_sex"].tolist() == ["Female", "Male"]
    assert arrays["categories_race"].tolist() == ["Black", "White"]
    sex = list(build.CATEGORICAL).index("sex")
    np.testing.assert_array_equal(arrays["train_categorical"][:, sex], [1, 0])
    np.testing.assert_array_equal(arrays["test_categorical"][:, sex], [1])


def test_build_script_rejects_unseen_test_categories():
    build = _build_script()
    unseen = TEST_TEXT.replace("Prof-specialty", "Astronaut")
    with pytest.raises(ValueError, match="Astronaut"):
        build.build_arrays(TRAIN_TEXT, unseen, check_counts=False)


def test_build_script_writes_identical_bytes_twice(tmp_path):
    build = _build_script()
    arrays = build.build_arrays(TRAIN_TEXT, TEST_TEXT, check_counts=False)
    first = build.write_npz(tmp_path / "a.npz", arrays)
    second = build.write_npz(tmp_path / "b.npz", arrays)
    assert first == second
    with np.load(tmp_path / "a.npz", allow_pickle=False) as loaded:
        for name, array in arrays.items():
            np.testing.assert_array_equal(loaded[name], array)


# ---------------------------------------------------- fair training on Adult
EPOCHS = 10
BATCH_SIZE = 512
BOUND = 0.05


def _mlp(data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((data.x_train.shape[1],), name="features")
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    return tfc.ConstrainedModel(inputs, outputs)


def _optimizer(data):
    steps = EPOCHS * -(-len(data.y_train) // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    return keras.optimizers.Adam(schedule)


def _metrics(model, x, y, sex):
    """Accuracy, DP gap and EO gap of hard predictions, in numpy."""
    predicted = model.predict(x, batch_size=4096, verbose=0)[:, 0] > 0.5
    selection = [predicted[sex == k].mean() for k in (0, 1)]
    recall = [predicted[(sex == k) & (y == 1)].mean() for k in (0, 1)]
    return {
        "accuracy": float((predicted == (y == 1)).mean()),
        "demographic_parity": abs(selection[0] - selection[1]),
        "equal_opportunity": abs(recall[0] - recall[1]),
    }


@pytest.fixture(scope="module")
def unconstrained(data):
    model = _mlp(data)
    model.compile(optimizer=_optimizer(data), loss="binary_crossentropy")
    model.fit(
        data.x_train,
        data.y_train,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        verbose=0,
    )
    return {
        "train": _metrics(model, data.x_train, data.y_train, data.sex_train),
        "test": _metrics(model, data.x_test, data.y_test, data.sex_test),
    }


@pytest.mark.parametrize(
    "name, constraint_class, unconstrained_gap",
    [
        ("demographic_parity", tfc.constraints.DemographicParity, 0.15),
        ("equal_opportunity", tfc.constraints.EqualOpportunity, 0.10),
    ],
)
def test_constrained_mlp_meets_the_gap_at_a_small_accuracy_cost(
    data, unconstrained, name, constraint_class, unconstrained_gap
):
    assert unconstrained["train"][name] > unconstrained_gap
    assert unconstrained["test"][name] > unconstrained_gap

    model = _mlp(data)
    model.add_constraint(constraint_class("sex") <= BOUND)
    model.compile(
        optimizer=_optimizer(data),
        loss="binary_crossentropy",
        dual_optimizer=0.05,
    )
    x_train = {"features": data.x_train, "sex": data.sex_train}
    best = BestFeasibleWeights(monitor="val_loss")
    model.fit(
        x_train,
        data.y_train,
        batch_size=BATCH_SIZE,
        epochs=EPOCHS,
        validation_data=(x_train, data.y_train),
        validation_batch_size=4096,
        callbacks=[best],
        verbose=0,
    )
    assert best.best_epoch is not None

    train = _metrics(model, data.x_train, data.y_train, data.sex_train)
    test = _metrics(model, data.x_test, data.y_test, data.sex_test)
    assert train[name] <= BOUND + 1e-4
    assert test[name] <= BOUND + 0.01
    assert test["accuracy"] >= unconstrained["test"]["accuracy"] - 0.015

    # The report's exact dataset-level value is the numpy gap.
    report = model.constraint_report((x_train, data.y_train), batch_size=1000)[
        name
    ]
    assert np.max(report["value"]) == pytest.approx(train[name], abs=1e-6)
    assert report["satisfied"]
