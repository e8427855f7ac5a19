"""The UCI Adult census income dataset, shipped with the package.

Becker, B. and Kohavi, R. (1996). Adult. UCI Machine Learning Repository.
https://doi.org/10.24432/C5XW20. Licensed under CC BY 4.0.

`adult.npz` beside this module holds the standard train/test split
(`adult.data` / `adult.test`) without the rows that have missing values
(30,162 / 15,060 rows), built by `scripts/build_adult_dataset.py`. See
`README.md` in this folder for the provenance and checksums.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

ADULT_FILE = Path(__file__).resolve().parent / "adult.npz"
ADULT_SHA256 = (
    "68c837da5386b0110c25af14d7d4a8e16030b58b703bd853e8a080c4b42a736a"
)
SENSITIVE_COLUMNS = ("race", "sex")
LOG_COLUMNS = ("capital_gain", "capital_loss")


class AdultData(NamedTuple):
    """The Adult train/test split, ready for a binary classifier.

    Attributes:
        x_train: float32 `(30162, d)`: standardised numeric features, then
            one-hot categorical ones (see `feature_names`).
        y_train: float32 `(30162,)`: 1 when income is `>50K`.
        sex_train: int32 `(30162,)`: group ids, `group_names["sex"]`
            (`0 = Female`, `1 = Male`).
        race_train: int32 `(30162,)`: group ids, `group_names["race"]`
            (5 groups, `White = 4`).
        x_test, y_test, sex_test, race_test: the same for the 15,060 test
            rows (standardised with the training statistics).
        feature_names: Tuple of `d` strings, `"age"` or `"sex=Male"`.
        group_names: Dict `{"sex": (...), "race": (...)}`: the value of each
            group id.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    sex_train: np.ndarray
    race_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sex_test: np.ndarray
    race_test: np.ndarray
    feature_names: tuple
    group_names: dict


def load_adult(include_sensitive: bool = True) -> AdultData:
    """Loads the UCI Adult dataset shipped with tfconstrain (no network).

    Numeric columns (age, education-num, capital gain and loss, hours per
    week) are standardised with the training split's mean and standard
    deviation, after `log1p` for the heavy-tailed capital gain and loss.
    Categorical columns are one-hot encoded over the training split's values.
    The sampling weight `fnlwgt` is not included. Labels are 1 for income
    `>50K` (24.9 % of the training rows); `sex` and `race` come as group-id
    arrays for fairness constraints.

    Example:

    ```python
    data = tfc.datasets.load_adult()
    x = {"features": data.x_train, "sex": data.sex_train}
    model.add_constraint(tfc.constraints.DemographicParity("sex") <= 0.05)
    model.fit(x, data.y_train, batch_size=512, epochs=10)
    ```

    Args:
        include_sensitive: Bool. Whether `sex` and `race` are also model
            features (one-hot columns of `x`). The group arrays are returned
            either way. Defaults to `True`.

    Returns:
        An `AdultData` named tuple.

    Raises:
        OSError: if the shipped file is missing or corrupted.
    """
    arrays = _read_arrays()
    numeric_columns = [str(c) for c in arrays["numeric_columns"]]
    categorical_columns = [str(c) for c in arrays["categorical_columns"]]
    categories = {
        column: [str(v) for v in arrays[f"categories_{column}"]]
        for column in categorical_columns
    }

    numeric = {
        split: arrays[f"{split}_numeric"].astype(np.float64)
        for split in ("train", "test")
    }
    for i, column in enumerate(numeric_columns):
        if column in LOG_COLUMNS:
            for split in numeric:
                numeric[split][:, i] = np.log1p(numeric[split][:, i])
    mean = numeric["train"].mean(axis=0)
    std = numeric["train"].std(axis=0)

    features = list(numeric_columns)
    blocks = {split: [(numeric[split] - mean) / std] for split in numeric}
    for j, column in enumerate(categorical_columns):
        if column in SENSITIVE_COLUMNS and not include_sensitive:
            continue
        values = categories[column]
        features.extend(f"{column}={value}" for value in values)
        for split in blocks:
            codes = arrays[f"{split}_categorical"][:, j]
            blocks[split].append(np.eye(len(values))[codes])

    def group(split: str, column: str) -> np.ndarray:
        j = categorical_columns.index(column)
        return arrays[f"{split}_categorical"][:, j].astype(np.int32)

    x = {
        split: np.concatenate(blocks[split], axis=1).astype(np.float32)
        for split in blocks
    }
    return AdultData(
        x_train=x["train"],
        y_train=arrays["train_label"].astype(np.float32),
        sex_train=group("train", "sex"),
        race_train=group("train", "race"),
        x_test=x["test"],
        y_test=arrays["test_label"].astype(np.float32),
        sex_test=group("test", "sex"),
        race_test=group("test", "race"),
        feature_names=tuple(features),
        group_names={
            column: tuple(categories[column]) for column in SENSITIVE_COLUMNS
        },
    )


def _read_arrays() -> dict:
    try:
        data = ADULT_FILE.read_bytes()
    except FileNotFoundError as error:
        raise OSError(
            f"The shipped Adult data file {ADULT_FILE} is missing; reinstall "
            "tfconstrain, or rebuild it with "
            "`python scripts/build_adult_dataset.py`."
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != ADULT_SHA256:
        raise OSError(
            f"The shipped Adult data file {ADULT_FILE} is corrupted (SHA-256 "
            f"{digest}, expected {ADULT_SHA256}); reinstall tfconstrain."
        )
    with np.load(ADULT_FILE, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
