"""TensorBoard output of constraints: one series per quantity, one chart each.

`keras.callbacks.TensorBoard(log_dir)` writes every epoch log value `KEY`
as the scalar `epoch_KEY`, training values in `log_dir/train` and
validation values (without their `val_` prefix) in `log_dir/validation`.
`tfc.MultiplierCallback(log_dir=...)` uses the same tags and directories, so
that each quantity is one series whichever callbacks write it:

    epoch_NAME                 value (worst entry)     train, validation
    epoch_NAME_violation       violation               train, validation
    epoch_NAME_multiplier      multiplier (mean)       train
    epoch_NAME_penalty         penalty coefficient     train
    epoch_feasible             1.0 or 0.0              train, validation
    epoch_NAME_bound           bound (if uniform)      train
    epoch_NAME_multiplier_histogram
                               multipliers of a vector constraint (histogram)
    batch_NAME_multiplier      every `batch_log_freq` batches

When a `keras.callbacks.TensorBoard` with the same `log_dir` is in the same
`fit`, it writes the logged values and `MultiplierCallback` writes only what
Keras does not: the bound, the histograms, the batch-level multipliers and
the layout below. (Multipliers and penalties are properties of the model,
not of the data: they are not written again for validation.)

**Layout.** A custom-scalars layout (TensorBoard's "Custom Scalars"
dashboard) puts, for every constraint, its value (training and validation),
its bound and its multiplier in one chart titled with the constraint's name.

**Distribution.** Under a multi-worker strategy only the chief writes
(`strategy.extended.should_save_summary`).

The `tensorboard` package is needed for the layout (it comes with
TensorFlow's usual installs, and with the `test` extra); without it the
scalars are still written and the layout is skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

# Suffixes of a constraint's epoch log keys: quantities measured on the
# data (training and validation), and properties of the model (training).
_DATA_SUFFIXES = ("", "_violation")
_STATE_SUFFIXES = ("_multiplier", "_penalty")

LAYOUT_CATEGORY = "tfconstrain constraints"


def is_chief(model) -> bool:
    """Whether this worker writes summaries (always, without multi-worker)."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_save_summary", True))


def link_keras_tensorboard(callbacks: Iterable) -> None:
    """Tells each `MultiplierCallback` whether Keras' TensorBoard shares its
    `log_dir` in this `fit` (then it writes only what Keras does not).

    Called by `ConstrainedModel.fit` with its `callbacks`.

    Args:
        callbacks: The callbacks of the `fit` call (a list, a
            `keras.callbacks.CallbackList`, or `None`).
    """
    from tfconstrain.callbacks import MultiplierCallback

    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    callbacks = list(callbacks or [])
    keras_dirs = {
        _normalize(c.log_dir)
        for c in callbacks
        if isinstance(c, keras.callbacks.TensorBoard)
    }
    for callback in callbacks:
        if isinstance(callback, MultiplierCallback) and callback.log_dir:
            callback._keras_tensorboard = (
                _normalize(callback.log_dir) in keras_dirs
            )


def _normalize(path) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(path)))


def epoch_scalars(
    constraints, logs: dict, keras_writes_logs: bool
) -> dict[str, dict[str, float]]:
    """The scalars to write for one epoch: `{run: {tag: value}}`.

    Args:
        constraints: The model's constraints.
        logs: The epoch logs.
        keras_writes_logs: Whether Keras' TensorBoard writes the logged
            values to the same directory (then only bounds are returned).

    Returns:
        Dict with keys `"train"` and `"validation"`.
    """
    scalars = {"train": {}, "validation": {}}
    if not keras_writes_logs:
        for run, prefix in (("train", ""), ("validation", "val_")):
            keys = [("feasible", "epoch_feasible")]
            for constraint in constraints:
                suffixes = _DATA_SUFFIXES
                if run == "train":
                    suffixes += _STATE_SUFFIXES
                keys += [
                    (f"{constraint.name}{s}", f"epoch_{constraint.name}{s}")
                    for s in suffixes
                ]
            for key, tag in keys:
                if prefix + key in logs:
                    scalars[run][tag] = float(logs[prefix + key])
    for constraint in constraints:
        bound = np.asarray(constraint.bound, np.float64).reshape(-1)
        if np.ptp(bound) == 0:
            scalars["train"][f"epoch_{constraint.name}_bound"] = float(bound[0])
    return scalars


def layout(constraints):
    """The custom-scalars layout: one chart per constraint.

    Each chart (titled with the constraint's name) shows the tags
    `epoch_NAME` (training and validation runs), `epoch_NAME_bound`,
    `epoch_NAME_multiplier` and `epoch_NAME_penalty`.

    Returns:
        A `tensorboard.plugins.custom_scalar.layout_pb2.Layout`, or `None`
        when the `tensorboard` package is not installed.
    """
    try:
        from tensorboard.plugins.custom_scalar import layout_pb2
    except ImportError:
        return None
    charts = []
    for constraint in constraints:
        name = re.escape(constraint.name)
        tags = [
            rf"^epoch_{name}$",
            rf"^epoch_{name}_bound$",
            rf"^epoch_{name}_multiplier$",
            rf"^epoch_{name}_penalty$",
        ]
        charts.append(
            layout_pb2.Chart(
                title=constraint.name,
                multiline=layout_pb2.MultilineChartContent(tag=tags),
            )
        )
    return layout_pb2.Layout(
        category=[layout_pb2.Category(title=LAYOUT_CATEGORY, chart=charts)]
    )


def write_layout(constraints) -> None:
    """Writes the layout with the default summary writer (if available)."""
    proto = layout(constraints)
    if proto is None:
        return
    from tensorboard.plugins.custom_scalar import summary

    tf.summary.experimental.write_raw_pb(
        summary.pb(proto).SerializeToString(), step=0
    )
