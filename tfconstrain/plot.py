"""Plots of a constrained training run (matplotlib, an optional extra).

`training_dynamics(history)` draws, for every constraint, its value against
its bound and its multiplier over the epochs of a `fit`: the picture that
says whether the constraint was reached, held, or oscillated around its
bound while the multiplier settled, climbed or cycled.

matplotlib is imported only when a plot is drawn: install it with
`pip install "tfconstrain[plot]"` (or `pip install matplotlib`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MULTIPLIER_SUFFIX = "_multiplier"
_VIOLATION_SUFFIX = "_violation"

# Bounds of a vector constraint drawn as separate lines, at most.
_MAX_BOUND_LINES = 5


def training_dynamics(
    history: Any,
    constraints: list[str] | None = None,
    *,
    bounds: dict | None = None,
    save_path: str | None = None,
    figsize: tuple | None = None,
):
    """Each constraint's value against its bound, and its multiplier.

    One row per constraint. Left: the logged value `NAME` (training, and
    `val_NAME` when validation was run) over epochs, the bound as a dashed
    line, and the violating side of the bound shaded (above it for `"<="`,
    below for `">="`). For a vector constraint the value is the logged one,
    its entry with the largest violation. Right: the multiplier
    `NAME_multiplier` (the mean over entries for vectors), and the penalty
    coefficient `NAME_penalty` when the formulation has one.

    Example:

    ```python
    history = model.fit(x, y, validation_data=(x_val, y_val), epochs=30)
    figure = tfc.plot.training_dynamics(history, save_path="dynamics.png")
    ```

    Args:
        history: The `keras.callbacks.History` returned by `fit`, or its
            `history` dict. Bounds and kinds are read from the History's
            model when it has constraints.
        constraints: Optional list of constraint names to draw, in order.
            Defaults to every constraint found in the logs (keys `NAME` with
            `NAME_violation` and `NAME_multiplier`).
        bounds: Optional dict `name -> (kind, bound)` for logs without a
            model (a `history` dict). Defaults to the model's constraints,
            or no bound line.
        save_path: Optional path: the figure is also written there (PNG,
            or any format matplotlib infers from the extension). Defaults to
            `None`.
        figsize: Optional `(width, height)` in inches. Defaults to 10 wide
            and 3 per constraint.

    Returns:
        The `matplotlib.figure.Figure`.

    Raises:
        ImportError: if matplotlib is not installed.
        ValueError: if the logs hold no constraint, or a requested name is
            not in them.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "tfc.plot.training_dynamics needs matplotlib: install it with "
            '`pip install "tfconstrain[plot]"` or `pip install matplotlib`.'
        ) from error
    logs = history.history if hasattr(history, "history") else dict(history)
    names = _constraint_names(logs)
    if constraints is not None:
        missing = [name for name in constraints if name not in names]
        if missing:
            raise ValueError(
                f"training_dynamics: no logs for constraints {missing}; the "
                f"logs have {names}."
            )
        names = list(constraints)
    if not names:
        raise ValueError(
            "training_dynamics: the logs hold no constraint (keys NAME, "
            f"NAME_violation and NAME_multiplier); keys: {sorted(logs)}."
        )
    bounds = {**_model_bounds(history), **(bounds or {})}
    figure = Figure(figsize=figsize or (10.0, 3.0 * len(names)))
    axes = figure.subplots(len(names), 2, squeeze=False)
    for row, name in zip(axes, names):
        _draw_value(row[0], name, logs, bounds.get(name))
        _draw_multiplier(row[1], name, logs)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][1].set_xlabel("epoch")
    figure.tight_layout()
    if save_path is not None:
        figure.savefig(save_path, dpi=100)
    return figure


def _draw_value(axis, name: str, logs: dict, kind_and_bound) -> None:
    epochs = np.arange(1, len(logs[name]) + 1)
    axis.plot(epochs, logs[name], marker=".", label="train")
    if f"val_{name}" in logs:
        values = logs[f"val_{name}"]
        axis.plot(
            np.arange(1, len(values) + 1), values, marker=".", label="val"
        )
    title = name
    if kind_and_bound is not None:
        kind, bound = kind_and_bound
        levels = np.unique(np.asarray(bound, np.float64).reshape(-1))
        if levels.size <= _MAX_BOUND_LINES:
            for level in levels:
                axis.axhline(level, color="black", linestyle="--", lw=1)
            if kind in ("<=", ">="):
                low, high = axis.get_ylim()
                edge = levels.min() if kind == "<=" else levels.max()
                span = (edge, high) if kind == "<=" else (low, edge)
                axis.axhspan(*span, color="red", alpha=0.08, lw=0)
                axis.set_ylim(low, high)
            shown = ", ".join(f"{level:g}" for level in levels)
            title = f"{name} {kind} {shown}"
    axis.set_title(title)
    axis.set_ylabel("value")
    axis.legend(loc="best", fontsize="small")
    axis.grid(alpha=0.3)


def _draw_multiplier(axis, name: str, logs: dict) -> None:
    values = logs[name + _MULTIPLIER_SUFFIX]
    epochs = np.arange(1, len(values) + 1)
    axis.plot(epochs, values, marker=".", color="tab:green", label="multiplier")
    if f"{name}_penalty" in logs:
        axis.plot(
            epochs,
            logs[f"{name}_penalty"],
            marker=".",
            color="tab:purple",
            label="penalty",
        )
    axis.set_title(f"{name}: multiplier")
    axis.legend(loc="best", fontsize="small")
    axis.grid(alpha=0.3)


def _constraint_names(logs: dict) -> list[str]:
    """Names `NAME` logged with `NAME_violation` and `NAME_multiplier`."""
    names = []
    for key in logs:
        if not key.endswith(_MULTIPLIER_SUFFIX) or key.startswith("val_"):
            continue
        name = key[: -len(_MULTIPLIER_SUFFIX)]
        if name in logs and name + _VIOLATION_SUFFIX in logs:
            names.append(name)
    return names


def _model_bounds(history: Any) -> dict:
    model = getattr(history, "model", None)
    return {
        constraint.name: (constraint.kind, constraint.bound)
        for constraint in getattr(model, "constraints", None) or ()
    }
