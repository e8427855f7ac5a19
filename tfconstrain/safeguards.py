"""Safeguards for the dual dynamics: runaway multipliers and diagnostics.

A multiplier that keeps growing while its violation does not shrink is the
signature of two failures that gradient-based dual ascent cannot fix by
itself:

- the problem is infeasible (no weights satisfy the constraint), so the
  violation never reaches 0 and `λ ← [λ + η·v]₊` grows without bound;
- the constraint's gradient vanishes (a 0/1 rate without a differentiable
  `proxy`, saturated activations, a constraint that does not depend on the
  trainable weights), so however large `λ` gets, the primal step cannot move
  the constraint.

`MultiplierGrowthMonitor` watches the epoch logs and warns once per
constraint. `ConstraintDiagnostics` warns, also once per constraint, about
constraints that oscillate around their bound without settling, groups
without data in a whole epoch, and constraints that never bound.
`ConstrainedModel.fit` adds both unless they are given. The cap on
multipliers itself is a formulation argument
(`tfc.Lagrangian(max_multiplier=...)`,
`tfc.AugmentedLagrangian(..., max_multiplier=...)`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

_MULTIPLIER_SUFFIX = "_multiplier"
_VIOLATION_SUFFIX = "_violation"


@dataclass
class _GrowthRun:
    """A run of epochs in which one multiplier grew in magnitude."""

    reference_violation: float  # largest violation seen in the run
    start_step: int = 0  # optimizer iterations before the run's first epoch
    epochs: int = 0  # epochs of growth in the run
    multiplier: float = 0.0  # |λ| at the run's last epoch


class MultiplierGrowthMonitor(keras.callbacks.Callback):
    """Warns when a multiplier grows while its violation does not shrink.

    At every epoch end it reads, for each constraint `NAME`, the epoch logs
    `NAME_multiplier` (`λ`, the mean over entries for vector constraints) and
    `NAME_violation` (`v ≥ 0`, the largest violation over entries). A *growth
    run* is a sequence of consecutive epochs in which `|λ|` strictly
    increased while `v` exceeded the constraint's tolerance. The run restarts
    whenever the violation has fallen below `(1 - min_relative_decrease)`
    times its largest value in the run (healthy progress: a feasible problem
    reaches a peak violation and then shrinks it), and ends when `|λ|` stops
    growing or the constraint is satisfied. When a run lasts at
    least `patience` epochs *and* at least `min_steps` training steps, the
    monitor issues one `UserWarning` naming the constraint, and never warns
    again for that constraint.

    The two thresholds make the criterion hold for both regimes: with
    mini-batches an epoch is many steps and `patience` decides; with
    full-batch problems (one step per epoch) `min_steps` does, so the
    transient in which a multiplier climbs towards its optimal value does not
    trigger a warning.

    Example:

    ```python
    model.fit(x, y, epochs=50,
              callbacks=[tfc.safeguards.MultiplierGrowthMonitor(patience=5)])
    ```

    Args:
        patience: Int >= 1. Minimum number of consecutive epochs of growth.
            Defaults to `10`.
        min_steps: Int >= 0. Minimum number of training steps (primal
            optimizer iterations) spanned by the run. Defaults to `5000`.
        min_relative_decrease: Float in `(0, 1)`. A relative decrease of the
            violation that counts as progress and restarts the run. Defaults
            to `0.1`.
        tolerance: Float >= 0. Violations within it count as satisfied, for
            constraints whose own `tolerance` the model does not expose.
            Defaults to `1e-4`.
    """

    def __init__(
        self,
        patience: int = 10,
        min_steps: int = 5000,
        min_relative_decrease: float = 0.1,
        tolerance: float = 1e-4,
    ):
        super().__init__()
        if isinstance(patience, bool) or not isinstance(patience, int):
            raise TypeError(f"`patience` must be an int, got {patience!r}.")
        if patience < 1:
            raise ValueError(f"`patience` must be >= 1, got {patience}.")
        if isinstance(min_steps, bool) or not isinstance(min_steps, int):
            raise TypeError(f"`min_steps` must be an int, got {min_steps!r}.")
        if min_steps < 0:
            raise ValueError(f"`min_steps` must be >= 0, got {min_steps}.")
        min_relative_decrease = float(min_relative_decrease)
        if not 0.0 < min_relative_decrease < 1.0:
            raise ValueError(
                "`min_relative_decrease` must be in (0, 1), got "
                f"{min_relative_decrease}."
            )
        self.patience = patience
        self.min_steps = min_steps
        self.min_relative_decrease = min_relative_decrease
        tolerance = float(tolerance)
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(
                f"`tolerance` must be a finite number >= 0, got {tolerance}."
            )
        self.tolerance = tolerance
        self._tolerances: dict[str, float] = {}
        self._runs: dict[str, _GrowthRun] = {}
        self._previous: dict[str, float] = {}
        self._previous_step = 0
        self.warned: set[str] = set()

    def set_model(self, model) -> None:
        super().set_model(model)
        self._tolerances = {}

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._previous_step = self._step()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        step = self._step()
        for name in _constraint_names(logs):
            if name in self.warned:
                continue
            multiplier = abs(float(logs[name + _MULTIPLIER_SUFFIX]))
            violation = float(logs[name + _VIOLATION_SUFFIX])
            if not (math.isfinite(multiplier) and math.isfinite(violation)):
                continue
            self._observe(name, multiplier, violation, step)
        self._previous_step = step

    def _observe(
        self, name: str, multiplier: float, violation: float, step: int
    ) -> None:
        previous = self._previous.get(name)
        self._previous[name] = multiplier
        grew = previous is not None and multiplier > previous
        if not grew or violation <= self._tolerance(name):
            self._runs.pop(name, None)
            return
        run = self._runs.get(name)
        if run is None or violation < (
            (1.0 - self.min_relative_decrease) * run.reference_violation
        ):
            # Growth starts, or the violation made progress: a new run.
            run = _GrowthRun(violation, start_step=self._previous_step)
            self._runs[name] = run
        run.reference_violation = max(run.reference_violation, violation)
        run.multiplier = multiplier
        run.epochs += 1
        if run.epochs >= self.patience and step - run.start_step >= (
            self.min_steps
        ):
            self._warn(name, run, violation)

    def _warn(self, name: str, run: _GrowthRun, violation: float) -> None:
        self.warned.add(name)
        warnings.warn(
            f"Constraint '{name}': its multiplier has grown for {run.epochs} "
            f"consecutive epochs (now {run.multiplier:.4g}) while its "
            f"violation did not shrink (peak {run.reference_violation:.4g}, "
            f"now {violation:.4g}). The constraint may be infeasible, or its "
            "gradient may vanish (a 0/1 value without a differentiable "
            "`proxy`, saturated activations, or a value that does not depend "
            "on the trainable weights). Check that the constraint can be "
            "satisfied, give it a proxy, or cap the multipliers with "
            "`max_multiplier=` in the formulation.",
            UserWarning,
            stacklevel=2,
        )

    def _tolerance(self, name: str) -> float:
        """The constraint's own tolerance when the model knows it."""
        if name not in self._tolerances:
            self._tolerances[name] = self.tolerance
            for constraint in getattr(self.model, "constraints", None) or ():
                if getattr(constraint, "name", None) == name:
                    self._tolerances[name] = float(constraint.tolerance)
        return self._tolerances[name]

    def _step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return 0
        return int(_numpy(optimizer.iterations))


def _constraint_names(logs: dict) -> list[str]:
    """Names `NAME` with both `NAME_multiplier` and `NAME_violation` logged."""
    names = []
    for key in logs:
        if not key.endswith(_MULTIPLIER_SUFFIX):
            continue
        name = key[: -len(_MULTIPLIER_SUFFIX)]
        is_validation_copy = name.startswith("val_") and (
            name[len("val_") :] + _MULTIPLIER_SUFFIX in logs
        )
        if name + _VIOLATION_SUFFIX in logs and not is_validation_copy:
            names.append(name)
    return names


class InactiveConstraintWarning(Warning):
    """Information: a constraint never bound during `fit`.

    Not a `UserWarning`: a constraint that holds anyway is not an error.
    To silence it:

    ```python
    warnings.filterwarnings(
        "ignore", category=tfc.safeguards.InactiveConstraintWarning)
    ```
    """


@dataclass
class _History:
    """What `ConstraintDiagnostics` remembers of one constraint."""

    signs: list  # +1 violated, -1 satisfied (equalities: sign of v), per epoch
    magnitudes: list  # violation magnitude per epoch
    multipliers: list  # logged multiplier per epoch
    slack: float = math.nan  # last epoch's distance to the bound


class ConstraintDiagnostics(keras.callbacks.Callback):
    """Warns, once per constraint, about constraints that silently misbehave.

    Three checks on the epoch logs and the epoch's summed statistics of a
    `ConstrainedModel` (`ConstrainedModel.fit` adds one instance unless one
    is given):

    1. **Oscillation without settling** (`UserWarning`). Over the last
       `window` epochs, the constraint's violation changed sign at least
       `min_sign_changes` times (violated ↔ satisfied for inequalities, the
       sign of `v = c - bound` for equalities), its peak violation in the
       second half of the window is at least `1 - min_relative_decrease`
       times the peak of the first half, and that peak exceeds
       `tolerance + min_amplitude · max(1, |bound|)`. The dual step then
       overshoots: the last epoch is feasible or not by chance.
    2. **A group with no data in a whole epoch** (`UserWarning`), training
       or validation: a group constraint (per-group rate, rate gap, group
       loss) whose summed statistics have a zero total for a group (no
       example of it, or, for a rate conditioned on the label, no example of
       the conditioning class). Its entries about that group are then
       vacuous: value 0, no dual step. Other constraints warn when an entry
       has no data at all (say a recall without positive examples).
    3. **Never active** (`InactiveConstraintWarning`, informational, at the
       end of `fit`): over at least `min_epochs` epochs the constraint was
       satisfied at every epoch, its multiplier never moved, and at the end
       it has slack at least `min_slack · max(1, |bound|)`. It did not shape
       the model; if it was meant to bind, what it measures (bound, sign,
       threshold, group ids) deserves a look. Skipped for formulations
       whose multipliers do not move (`tfc.Penalty`, `tfc.QuadraticPenalty`).

    A constraint that diverges (a multiplier that keeps growing) is the
    business of `MultiplierGrowthMonitor`.

    Example:

    ```python
    model.fit(x, y, epochs=50, callbacks=[
        tfc.safeguards.ConstraintDiagnostics(window=8, min_sign_changes=3)])
    ```

    Args:
        window: Int >= 2. Epochs examined for oscillation. Defaults to `10`.
        min_sign_changes: Int >= 1. Sign changes within the window that
            count as oscillation. Defaults to `4`.
        min_relative_decrease: Float in `(0, 1)`. A decrease of the peak
            violation from the first to the second half of the window by
            this fraction counts as settling. Defaults to `0.5`.
        min_amplitude: Float >= 0. Peak violations below `tolerance +
            min_amplitude · max(1, |bound|)` are noise, not oscillation.
            Defaults to `0.01`.
        min_epochs: Int >= 1. Shortest `fit` for the never-active check.
            Defaults to `3`.
        min_slack: Float >= 0. Final slack, relative to `max(1, |bound|)`,
            above which a never-active constraint is reported. Defaults to
            `0.1`.

    Attributes:
        warned: Dict `check -> set of constraint names` warned about
            (`"oscillation"`, `"empty_groups"`, `"inactive"`).
    """

    def __init__(
        self,
        window: int = 10,
        min_sign_changes: int = 4,
        min_relative_decrease: float = 0.5,
        min_amplitude: float = 0.01,
        min_epochs: int = 3,
        min_slack: float = 0.1,
    ):
        super().__init__()
        self.window = _check_int(window, "window", 2)
        self.min_sign_changes = _check_int(
            min_sign_changes, "min_sign_changes", 1
        )
        self.min_epochs = _check_int(min_epochs, "min_epochs", 1)
        min_relative_decrease = float(min_relative_decrease)
        if not 0.0 < min_relative_decrease < 1.0:
            raise ValueError(
                "`min_relative_decrease` must be in (0, 1), got "
                f"{min_relative_decrease}."
            )
        self.min_relative_decrease = min_relative_decrease
        self.min_amplitude = _check_non_negative(min_amplitude, "min_amplitude")
        self.min_slack = _check_non_negative(min_slack, "min_slack")
        self.warned = {
            "oscillation": set(),
            "empty_groups": set(),
            "inactive": set(),
        }
        self._histories: dict[str, _History] = {}
        self._training_checked = False
        self._in_epoch = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._histories = {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._in_epoch = True
        self._training_checked = False

    def on_test_begin(self, logs: dict | None = None) -> None:
        # Validation resets the metrics that hold the training epoch's sums.
        if self._in_epoch and not self._training_checked:
            self._check_empty_groups("training")
            self._training_checked = True

    def on_test_end(self, logs: dict | None = None) -> None:
        if self._in_epoch:
            self._check_empty_groups("validation")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._in_epoch = False
        if not self._training_checked:
            self._check_empty_groups("training")
        logs = logs or {}
        for constraint in _model_constraints(self.model):
            name = constraint.name
            keys = (name, name + _VIOLATION_SUFFIX, name + _MULTIPLIER_SUFFIX)
            if not all(key in logs for key in keys):
                continue
            value, violation, multiplier = (float(logs[k]) for k in keys)
            if not all(map(math.isfinite, (value, violation, multiplier))):
                continue
            self._observe(constraint, value, violation, multiplier)

    def on_train_end(self, logs: dict | None = None) -> None:
        formulation = getattr(self.model, "formulation", None)
        if not getattr(formulation, "updates_multipliers", True):
            return
        for constraint in _model_constraints(self.model):
            history = self._histories.get(constraint.name)
            if history is not None and self._never_active(constraint, history):
                self._warn_inactive(constraint, history)

    # ---------------------------------------------------------- oscillation
    def _observe(self, constraint, value, violation, multiplier) -> None:
        history = self._histories.setdefault(
            constraint.name, _History([], [], [])
        )
        tolerance = float(constraint.tolerance)
        signed = _signed_violation(constraint, value)
        if constraint.is_equality:
            if signed is None:
                return
            sign = 0 if abs(signed) <= tolerance else int(np.sign(signed))
        else:
            sign = 1 if violation > tolerance else -1
        history.signs.append(sign)
        history.magnitudes.append(violation)
        history.multipliers.append(multiplier)
        history.slack = math.nan if signed is None else -signed
        if constraint.name not in self.warned["oscillation"]:
            self._check_oscillation(constraint, history)

    def _check_oscillation(self, constraint, history: _History) -> None:
        if len(history.signs) < self.window:
            return
        signs = [s for s in history.signs[-self.window :] if s != 0]
        changes = sum(a != b for a, b in zip(signs, signs[1:]))
        magnitudes = history.magnitudes[-self.window :]
        half = self.window // 2
        first, last = max(magnitudes[:half]), max(magnitudes[half:])
        floor = float(constraint.tolerance) + self.min_amplitude * max(
            1.0, float(np.max(np.abs(constraint.bound)))
        )
        if (
            changes >= self.min_sign_changes
            and last >= (1.0 - self.min_relative_decrease) * first
            and last > floor
        ):
            self.warned["oscillation"].add(constraint.name)
            warnings.warn(
                f"Constraint '{constraint.name}' oscillates around its bound "
                f"without settling: over the last {self.window} epochs its "
                f"violation changed sign {changes} times, and its peak "
                f"violation did not shrink ({first:.4g} in the first half, "
                f"{last:.4g} in the second). Whether the last epoch is "
                "feasible is then a matter of chance. Make the dual step "
                "smaller (a lower dual learning rate), damp it "
                "(`tfc.optimizers.NuPI(..., kp=...)`), or update once per "
                "epoch (`tfc.MultiplierCallback(update_every='epoch')`); to "
                "keep a feasible model whatever the last epoch does, select "
                "one with `tfc.FeasibleModelCheckpoint` or "
                "`tfc.BestFeasibleWeights`.",
                UserWarning,
                stacklevel=2,
            )

    # ---------------------------------------------------------- inactivity
    def _never_active(self, constraint, history: _History) -> bool:
        if constraint.name in self.warned["inactive"]:
            return False
        if len(history.multipliers) < self.min_epochs:
            return False
        if any(v > constraint.tolerance for v in history.magnitudes):
            return False
        if max(history.multipliers) != min(history.multipliers):
            return False
        scale = max(1.0, float(np.max(np.abs(constraint.bound))))
        return history.slack >= self.min_slack * scale

    def _warn_inactive(self, constraint, history: _History) -> None:
        self.warned["inactive"].add(constraint.name)
        warnings.warn(
            f"Constraint '{constraint.name}' never bound: it was satisfied at "
            f"every one of {len(history.multipliers)} epochs, its multiplier "
            f"stayed at {history.multipliers[-1]:.4g}, and it ends with "
            f"slack {history.slack:.4g} (kind '{constraint.kind}', bound "
            f"{_format_bound(constraint.bound)}). It did not change the "
            "model. If that is expected, nothing to do; if it was meant to "
            "bind, check what it measures (the bound and its sign, the "
            "threshold, the group ids, the data it sees).",
            InactiveConstraintWarning,
            stacklevel=2,
        )

    # --------------------------------------------------------- empty groups
    def _check_empty_groups(self, data: str) -> None:
        constraints = [
            c
            for c in _model_constraints(self.model)
            if c.name not in self.warned["empty_groups"]
            and not getattr(c, "indexed", False)
        ]
        if not constraints:
            return
        totals = epoch_statistics(self.model)
        if totals is None:
            return
        for constraint, statistics in zip(
            _model_constraints(self.model), totals
        ):
            if constraint not in constraints:
                continue
            empty = empty_groups(constraint, statistics)
            if not empty:
                continue
            self.warned["empty_groups"].add(constraint.name)
            warnings.warn(
                f"Constraint '{constraint.name}': no data for "
                f"{', '.join(empty)} in a whole epoch of the {data} data, so "
                "its entries about them were vacuous (value 0, no dual "
                "step). Check the group ids (`num_groups`, how groups are "
                "coded) and that every group, and the class a rate is "
                "conditioned on, is present; or drop the empty groups from "
                "the constraint.",
                UserWarning,
                stacklevel=2,
            )


def epoch_statistics(model) -> list | None:
    """The summed statistics of the running epoch, per constraint.

    Read from the model's constraint metrics (training sums during an epoch,
    validation sums after an evaluation): one tuple of numpy arrays per
    constraint, in `model.constraints` order; `None` when the model has no
    such metrics (not a `ConstrainedModel`, or not built yet).
    """
    state = getattr(model, "_tfc", None)
    metrics = getattr(state, "metrics", None)
    if not metrics:
        return None
    totals = []
    for constraint in model.constraints:
        metric = metrics.get(constraint.name)
        if metric is None:
            return None
        totals.append(tuple(_numpy(t) for t in metric.totals))
    return totals


def empty_groups(constraint, statistics) -> list[str]:
    """Labels of what has no data in `statistics` for `constraint`.

    Group constraints name their empty groups (`group_labels`, from
    `empty_groups(statistics)`); other constraints name the entries that
    have no data (`valid(statistics)` false), by `entry_labels` or index,
    or `"the whole data"` for a scalar constraint.

    Args:
        constraint: A `tfc.Constraint`.
        statistics: Its summed statistics (numpy arrays or tensors).

    Returns:
        A list of labels, empty when everything has data.
    """
    tensors = tuple(tf.convert_to_tensor(s, tf.float32) for s in statistics)
    labels = getattr(constraint, "group_labels", None)
    method = getattr(constraint, "empty_groups", None)
    if labels is not None and method is not None:
        empty = np.asarray(method(tensors)).reshape(-1)
        return [label for label, flag in zip(labels, empty) if flag]
    valid = constraint.valid(tensors)
    if valid is None:
        return []
    missing = np.logical_not(np.asarray(valid)).reshape(-1)
    if not missing.any():
        return []
    if not constraint.shape:
        return ["the whole data"]
    labels = constraint.entry_labels or [
        f"entry {i}" for i in range(missing.size)
    ]
    return [label for label, flag in zip(labels, missing) if flag]


def _signed_violation(constraint, value: float) -> float | None:
    """`v` of the logged value; `None` when entries have different bounds."""
    bound = np.asarray(constraint.bound, np.float64).reshape(-1)
    if np.ptp(bound) > 0:
        return None
    if constraint.kind == ">=":
        return float(bound[0] - value)
    return float(value - bound[0])


def _model_constraints(model) -> list:
    return list(getattr(model, "constraints", None) or ())


def _format_bound(bound) -> str:
    array = np.asarray(bound, np.float64)
    if array.ndim == 0 or np.ptp(array) == 0:
        return f"{float(array.reshape(-1)[0]):.4g}"
    return np.array2string(array, precision=4)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_non_negative(value, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value}.")
    return value


def _numpy(variable) -> np.ndarray:
    """A variable's value as numpy.

    Converted to a tensor first: `keras.ops.convert_to_numpy` on a
    `keras.Variable` calls `__array__(copy=False)`, which the variable does
    not accept (a NumPy 2 `DeprecationWarning`).
    """
    return tf.convert_to_tensor(variable).numpy()


def _with_default_monitors(callbacks):
    """`fit`'s callbacks plus a `MultiplierGrowthMonitor` and a
    `ConstraintDiagnostics`, unless given (a `CallbackList` is left as
    it is)."""
    if isinstance(callbacks, keras.callbacks.CallbackList):
        return callbacks
    callbacks = list(callbacks or [])
    for monitor in (MultiplierGrowthMonitor, ConstraintDiagnostics):
        if not any(isinstance(c, monitor) for c in callbacks):
            callbacks.append(monitor())
    return callbacks
