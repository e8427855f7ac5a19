"""`constraint_report`: every constraint evaluated over a whole dataset.

The report is a `ConstraintReport`: a dict `name -> entry` that prints as a
table and converts to a `pandas.DataFrame`. With `confidence=c`, constraints
built on counts also get a Clopper–Pearson worst case (`tfconstrain.certify`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import certify
from tfconstrain import evaluation
from tfconstrain.batch import Batch
from tfconstrain.safeguards import _numpy
from tfconstrain.safeguards import empty_groups


def _array(value) -> np.ndarray:
    """A numpy array; fixed-width strings as `object` (→ `tf.string`)."""
    array = np.asarray(value)
    return array.astype(object) if array.dtype.kind in "US" else array


def as_dataset(data: Any, batch_size: int | None):
    """Turns what `evaluate` accepts into a batched `tf.data.Dataset`.

    Args:
        data: A `tf.data.Dataset` (used as is), a tuple `(x, y)` or
            `(x, y, sample_weight)` (`y` may be `None`), or `x` alone (array
            or dict of arrays).
        batch_size: Batch size for arrays. Defaults to 32.

    Returns:
        `(dataset, has_weights_without_y)`: the second is `True` for
        `(x, None, sample_weight)`, whose dataset yields `(x, sample_weight)`.
    """
    if isinstance(data, tf.data.Dataset):
        if batch_size is not None:
            raise ValueError(
                "`batch_size` must not be given with a `tf.data.Dataset`; "
                "batch the dataset itself."
            )
        return data, False
    if isinstance(data, list):
        data = tuple(data)
    if isinstance(data, tuple) and not 1 <= len(data) <= 3:
        raise ValueError(
            "`data` must be x, (x, y) or (x, y, sample_weight); got a tuple "
            f"of length {len(data)}."
        )
    weights_without_y = (
        isinstance(data, tuple)
        and len(data) == 3
        and data[1] is None
        and data[2] is not None
    )
    data = tf.nest.map_structure(
        lambda a: None if a is None else _array(a), data
    )
    if isinstance(data, tuple):
        data = tuple(d for d in data if d is not None)
        if len(data) == 1:
            data = data[0]
    dataset = tf.data.Dataset.from_tensor_slices(data)
    return dataset.batch(batch_size or 32), weights_without_y


def constraint_report(
    model,
    data: Any,
    batch_size: int | None = None,
    confidence: float | None = None,
) -> ConstraintReport:
    """See `ConstrainedModel.constraint_report`."""
    if confidence is not None:
        confidence = certify.check_confidence(confidence)
    totals = dataset_totals(model, data, batch_size)
    if totals is None:
        raise ValueError("`constraint_report` received an empty dataset.")

    return build_report(model, totals, confidence)


def dataset_totals(model, data: Any, batch_size: int | None = None):
    """Every constraint's statistics summed over a whole dataset.

    Returns:
        One tuple of float64 numpy arrays per constraint (in
        `model.constraints` order), or `None` for an empty dataset.
    """
    model._collect_layer_constraints()
    dataset, weights_without_y = as_dataset(data, batch_size)
    step = _report_step(model, weights_without_y)
    totals = None
    distributed = model.distribute_strategy.experimental_distribute_dataset(
        dataset
    )
    for element in distributed:
        totals = _add(totals, step(element))
    return totals


def batch_totals(model, element, weights_without_y: bool):
    """Every constraint's statistics on one (distributed) batch."""
    return _add(None, _report_step(model, weights_without_y)(element))


def violations(model, totals) -> list:
    """`(violation, mask)` per constraint from summed statistics (see
    `evaluation.violations_from_totals`)."""
    return evaluation.violations_from_totals(model.constraints, totals)


def _add(totals, step_values):
    values = tf.nest.map_structure(
        lambda t: t.numpy().astype(np.float64), step_values
    )
    if totals is None:
        return values
    return tf.nest.map_structure(np.add, totals, values)


def _report_step(model, weights_without_y: bool):
    """The compiled per-batch statistics function, cached on the model."""
    cache = model.__dict__.setdefault("_tfc_report_step", {})
    if weights_without_y in cache:
        return cache[weights_without_y]
    constraints = list(model.constraints)
    strategy = model.distribute_strategy

    def replica_step(element):
        if weights_without_y:
            (x, sample_weight), y = element, None
        else:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(element)
        x, features = model._split_side_information(x)
        y_pred = model(x, training=False)
        batch = Batch(x, y, y_pred, sample_weight, features, False, model)
        return [
            evaluation.batch_statistics(c, batch, "true") for c in constraints
        ]

    @tf.function(reduce_retracing=True)
    def step(element):
        per_replica = strategy.run(replica_step, args=(element,))
        # One reduce per tensor: `Strategy.reduce` takes a single value
        # (a nest fails under multi-worker strategies).
        return tf.nest.map_structure(
            lambda value: strategy.reduce(
                tf.distribute.ReduceOp.SUM, value, axis=None
            ),
            per_replica,
        )

    cache[weights_without_y] = step
    return step


def _scalar_or_array(array):
    array = np.asarray(array)
    if array.ndim == 0:
        return float(array)
    return array.astype(np.float64)


def build_report(
    model, totals: list, confidence: float | None = None
) -> ConstraintReport:
    """The report of `model`'s constraints from their summed statistics.

    Args:
        model: The `ConstrainedModel`.
        totals: One tuple of summed statistics (numpy arrays) per constraint,
            in `model.constraints` order.
        confidence: Optional float in `(0, 1)`: adds `worst_case` and
            `certified` (see `tfconstrain.certify`).

    Returns:
        A `ConstraintReport`.
    """
    report = ConstraintReport(confidence=confidence)
    for constraint, statistics in zip(model.constraints, totals):
        tensors = tuple(tf.constant(s, tf.float32) for s in statistics)
        value = constraint.result(tensors)
        violation = constraint.positive_violation(constraint.violation(value))
        valid = constraint.valid(tensors)
        if valid is not None:
            # Entries without data (e.g. an absent group) are not violated.
            violation = tf.where(valid, violation, tf.zeros_like(violation))
        multiplier = _numpy(model.multipliers[constraint.name])
        value, violation = value.numpy(), violation.numpy()
        entry = {
            "value": _scalar_or_array(value),
            "bound": _scalar_or_array(constraint.bound),
            "kind": constraint.kind,
            "violation": _scalar_or_array(violation),
            "satisfied": bool(np.all(violation <= constraint.tolerance)),
            "multiplier": _scalar_or_array(multiplier),
        }
        certified_entries = None
        if confidence is not None:
            worst = certify.worst_case(constraint, statistics, confidence)
            entry["worst_case"] = None if worst is None else worst.value
            entry["certified"] = None if worst is None else worst.certified
            if worst is not None:
                certified_entries = worst.entry_certified
        report[constraint.name] = entry
        report._entries[constraint.name] = _EntryInfo(
            labels=constraint.entry_labels,
            tolerance=float(constraint.tolerance),
            certified=certified_entries,
        )
        empty = empty_groups(constraint, statistics)
        if empty:
            warnings.warn(
                f"constraint_report: constraint '{constraint.name}' has no "
                f"data for {', '.join(empty)} in the data it was given; its "
                "entries that involve them are not evaluated (reported as "
                "satisfied). Report on data that contains every group.",
                UserWarning,
                stacklevel=4,
            )
    return report


@dataclass
class _EntryInfo:
    labels: list | None
    tolerance: float
    certified: np.ndarray | None


# A vector constraint with more entries than this prints one summary row.
_MAX_PRINTED_ENTRIES = 20

_COLUMNS = (
    "constraint",
    "entry",
    "kind",
    "bound",
    "value",
    "violation",
    "satisfied",
    "multiplier",
)
_CERTIFY_COLUMNS = ("worst_case", "certified")


class ConstraintReport(dict):
    """The result of `constraint_report`: a dict, printable as a table.

    `report[NAME]` is the dict of constraint `NAME` (keys `value`, `bound`,
    `kind`, `violation`, `satisfied`, `multiplier`, and `worst_case`,
    `certified` with `confidence`), exactly as a plain dict would hold it.
    On top of that, `str(report)` is a table with one row per constraint, or
    per entry for vector constraints (labelled by the constraint's
    `entry_labels`, e.g. `"sex=1"`, else by index), and `to_dataframe()`
    returns the same rows as a `pandas.DataFrame`.

    Example:

    ```python
    report = model.constraint_report((x_test, y_test), confidence=0.95)
    print(report)
    report["recall"]["certified"]
    frame = report.to_dataframe()
    ```

    Attributes:
        confidence: The confidence of `worst_case`, or `None`.
    """

    def __init__(self, *args, confidence: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.confidence = confidence
        self._entries: dict[str, _EntryInfo] = {}

    def rows(self, summarize: bool = False) -> list[dict]:
        """One dict per constraint entry, with the columns of the table.

        Columns: `constraint`, `entry` (label, index or `None` for scalar
        constraints), `kind`, `bound`, `value`, `violation`, `satisfied`,
        `multiplier` (the entry's own, or the mean for a constraint with one
        shared multiplier), and with `confidence` also `worst_case` (for
        `"=="`, the end of the interval farther from the bound) and
        `certified`, both `None` for constraints not built on counts.

        Args:
            summarize: Bool. Whether vector constraints with more than 20
                entries are summarized by their worst entry. Defaults to
                `False`.
        """
        rows = []
        for name, entry in self.items():
            info = self._entries.get(name) or _EntryInfo(None, 1e-4, None)
            rows.extend(_constraint_rows(name, entry, info, summarize))
        columns = _COLUMNS + (
            _CERTIFY_COLUMNS if self.confidence is not None else ()
        )
        return [{c: row.get(c) for c in columns} for row in rows]

    def to_dataframe(self):
        """The table as a `pandas.DataFrame`, one row per entry.

        Raises:
            ImportError: if pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "ConstraintReport.to_dataframe() needs pandas; install it "
                "with `pip install pandas`, or read the report as a dict."
            ) from error
        return pd.DataFrame(self.rows())

    def __str__(self) -> str:
        rows = self.rows(summarize=True)
        title = "Constraint report"
        if self.confidence is not None:
            title += (
                f" (worst case: Clopper-Pearson, confidence "
                f"{self.confidence:g})"
            )
        if not rows:
            return title + ": no constraints."
        header = list(rows[0])
        cells = [[_format(row[c]) for c in header] for row in rows]
        widths = [
            max(len(h), *(len(r[i]) for r in cells))
            for i, h in enumerate(header)
        ]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths))]
        lines.append("  ".join("-" * w for w in widths))
        for row in cells:
            lines.append(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths))
            )
        return "\n".join(line.rstrip() for line in lines)


def _constraint_rows(name, entry, info, summarize) -> list[dict]:
    value = np.asarray(entry["value"], np.float64)
    if value.ndim == 0:
        row = dict(entry, constraint=name, entry=None)
        if "worst_case" in entry:
            row["worst_case"] = _worst_of(entry["worst_case"], entry["bound"])
        return [row]
    size = value.shape[0]
    bound = np.broadcast_to(np.asarray(entry["bound"], np.float64), (size,))
    violation = np.asarray(entry["violation"], np.float64)
    multiplier = np.asarray(entry["multiplier"], np.float64)
    if multiplier.shape != (size,):
        multiplier = np.full((size,), float(np.mean(multiplier)))
    labels = info.labels if info.labels is not None else list(range(size))
    worst = None
    if entry.get("worst_case") is not None:
        worst = _worst_of(entry["worst_case"], bound)
        worst = np.broadcast_to(np.asarray(worst, np.float64), (size,))
    rows = []
    for i in range(size):
        row = {
            "constraint": name,
            "entry": labels[i],
            "kind": entry["kind"],
            "bound": float(bound[i]),
            "value": float(value[i]),
            "violation": float(violation[i]),
            "satisfied": bool(violation[i] <= info.tolerance),
            "multiplier": float(multiplier[i]),
        }
        if "certified" in entry:
            row["worst_case"] = None if worst is None else float(worst[i])
            row["certified"] = (
                None if info.certified is None else bool(info.certified[i])
            )
        rows.append(row)
    if summarize and size > _MAX_PRINTED_ENTRIES:
        worst_row = dict(rows[int(np.argmax(violation))])
        satisfied = sum(row["satisfied"] for row in rows)
        worst_row["entry"] = f"worst of {size}: {worst_row['entry']}"
        worst_row["satisfied"] = f"{satisfied}/{size}"
        return [worst_row]
    return rows


def _worst_of(worst_case, bound):
    """One number per entry: for `"=="`, the end farther from the bound."""
    if not isinstance(worst_case, tuple):
        return worst_case
    lower, upper = (np.asarray(w, np.float64) for w in worst_case)
    bound = np.asarray(bound, np.float64)
    worst = np.where(upper - bound >= bound - lower, upper, lower)
    return float(worst) if worst.ndim == 0 else worst


def _format(cell) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, (bool, np.bool_)):
        return "yes" if cell else "no"
    if isinstance(cell, (float, np.floating)):
        return f"{cell:.4g}"
    return str(cell)
