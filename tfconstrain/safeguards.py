"""Safeguards for the dual dynamics: detecting runaway multipliers.

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
constraint. The cap on multipliers itself is a formulation argument
(`tfc.Lagrangian(max_multiplier=...)`,
`tfc.AugmentedLagrangian(..., max_multiplier=...)`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import keras

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
        return int(keras.ops.convert_to_numpy(optimizer.iterations))


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
