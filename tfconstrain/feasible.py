"""Selecting feasible epochs: `BestFeasibleWeights`, and feasible versions
of Keras' `ModelCheckpoint` and `EarlyStopping`.

The last iterate of a Lagrangian run oscillates around the boundary of the
feasible set: with stochastic primal and dual steps, the final weights of a
run whose epochs are feasible on average can still violate a constraint by
a little. Selecting, among the epochs whose end-of-epoch weights are
feasible, the one with the best objective is the standard remedy (Cotter et
al., 2019, "Two-player games for efficient non-convex constrained
optimization", select a feasible iterate rather than the last one).

Keras' own selectors rank epochs by an objective alone, and on a constrained
problem the objective is usually best exactly where a constraint is slackest:
`EarlyStopping(restore_best_weights=True)` and
`ModelCheckpoint(save_best_only=True)` then pick an infeasible model.
`FeasibleEarlyStopping` and `FeasibleModelCheckpoint` rank only the epochs
whose logs say `feasible` (`val_feasible` for validation monitors), and
`warn_objective_only_callbacks` (called by `ConstrainedModel.fit`) warns
when the objective-only versions are used.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np


class BestFeasibleWeights(keras.callbacks.Callback):
    """Restores the weights of the best feasible epoch at the end of `fit`.

    At the end of every epoch, the epoch is *feasible* when every constraint
    `NAME` of the model has `logs[prefix + "NAME_violation"] <= tolerance +
    slack` (its own tolerance), where `prefix` is `"val_"` when `monitor` is a
    validation key and `""` otherwise. Among feasible epochs, the callback
    keeps a copy of the weights of the one with the best `monitor` value, and
    restores it when training ends. If no epoch was feasible, the final
    weights are kept and a warning is issued.

    Validation logs are computed with the end-of-epoch weights over the whole
    validation set, so with `monitor="val_loss"` both the selection and the
    feasibility check are exact for the weights that are restored. To select
    on the training set itself, pass it as `validation_data` as well. Epoch
    logs of the training set (`monitor="loss"`) are aggregates over an epoch
    whose weights kept changing: cheaper, but approximate.

    The copy is of all the model's weights, multipliers and dual state
    included (what `model.get_weights()` returns), so a restored model is a
    consistent snapshot of that epoch.

    Example:

    ```python
    best = tfc.BestFeasibleWeights(monitor="val_loss")
    model.fit(x, y, epochs=20, validation_data=(x, y), callbacks=[best])
    print(best.best_epoch, best.feasible_epochs)
    ```

    Args:
        monitor: String. The log key that ranks feasible epochs. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (`"max"` when `monitor` names an
            accuracy or AUC, else `"min"`). Defaults to `"auto"`.
        slack: Float >= 0. Extra violation allowed on top of each
            constraint's tolerance. Defaults to `0.0`.
        restore: Bool. Whether to restore the best feasible weights at the
            end of training. Defaults to `True`.
        verbose: Int. 1 prints a line when a new best feasible epoch is
            found. Defaults to `0`.

    Attributes:
        best_epoch: Int or `None`: the selected epoch (0-based).
        best: Float: its `monitor` value (`nan` when none is feasible).
        feasible_epochs: List of the feasible epochs' indices.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        slack: float = 0.0,
        restore: bool = True,
        verbose: int = 0,
    ):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"`mode` must be 'auto', 'min' or 'max', got {mode!r}."
            )
        slack = float(slack)
        if not (np.isfinite(slack) and slack >= 0):
            raise ValueError(f"`slack` must be a float >= 0, got {slack}.")
        if mode == "auto":
            lowered = monitor.lower()
            mode = "max" if ("acc" in lowered or "auc" in lowered) else "min"
        self.monitor = monitor
        self.mode = mode
        self.slack = slack
        self.restore = bool(restore)
        self.verbose = int(verbose)
        self.prefix = "val_" if monitor.startswith("val_") else ""
        self._reset()

    def _reset(self) -> None:
        self.best_epoch = None
        self.best = float("nan")
        self.feasible_epochs = []
        self._best_weights = None

    def on_train_begin(self, logs=None):
        self._reset()

    def is_feasible(self, logs: dict) -> bool:
        """Whether every constraint's logged violation is within tolerance.

        Raises:
            KeyError: if a constraint's violation is not in `logs`.
        """
        for constraint in self.model.constraints:
            key = f"{self.prefix}{constraint.name}_violation"
            if key not in logs:
                raise KeyError(
                    f"BestFeasibleWeights: '{key}' is not in the epoch logs "
                    f"(keys: {sorted(logs)}). With monitor={self.monitor!r}, "
                    "pass `validation_data` to `fit`, or monitor a training "
                    "key such as 'loss'."
                )
            if float(logs[key]) > constraint.tolerance + self.slack:
                return False
        return True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"BestFeasibleWeights: monitor '{self.monitor}' is not in the "
                f"epoch logs (keys: {sorted(logs)})."
            )
        if not self.is_feasible(logs):
            return
        self.feasible_epochs.append(epoch)
        value = float(logs[self.monitor])
        better = self.best_epoch is None or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if better:
            self.best_epoch = epoch
            self.best = value
            self._best_weights = [
                np.array(w, copy=True) for w in self.model.get_weights()
            ]
            if self.verbose:
                print(
                    f"\nBestFeasibleWeights: epoch {epoch + 1} is the best "
                    f"feasible one so far ({self.monitor} = {value:.5g})."
                )

    def on_train_end(self, logs=None):
        if self._best_weights is None:
            warnings.warn(
                "BestFeasibleWeights: no epoch satisfied every constraint; "
                "the final weights are kept.",
                UserWarning,
                stacklevel=2,
            )
            return
        if self.restore:
            self.model.set_weights(self._best_weights)
            if self.verbose:
                print(
                    "BestFeasibleWeights: restored the weights of epoch "
                    f"{self.best_epoch + 1}."
                )


def feasibility_key(monitor: str) -> str:
    """`"val_feasible"` for a validation `monitor`, else `"feasible"`."""
    return "val_feasible" if monitor.startswith("val_") else "feasible"


def _epoch_is_feasible(callback, key: str, logs: dict) -> bool:
    """Reads `logs[key]` (1.0 feasible, 0.0 not) and `logs[monitor]`.

    Raises:
        KeyError: naming the missing key, the callback and the fix.
    """
    name = type(callback).__name__
    if key not in logs:
        hint = (
            "pass `validation_data` to `fit`, or monitor a training key such "
            "as 'loss'"
            if key.startswith("val_")
            else "train a `tfc.ConstrainedModel`, which logs it"
        )
        raise KeyError(
            f"{name}: '{key}' is not in the epoch logs (keys: "
            f"{sorted(logs)}). It says whether every constraint holds on "
            f"the data of monitor={callback.monitor!r}; {hint}."
        )
    if callback.monitor not in logs:
        raise KeyError(
            f"{name}: monitor '{callback.monitor}' is not in the epoch logs "
            f"(keys: {sorted(logs)})."
        )
    return float(logs[key]) >= 0.5


class FeasibleModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Saves the model at the best *feasible* epoch.

    `keras.callbacks.ModelCheckpoint(save_best_only=True)` that ranks only
    epochs on which every constraint holds: an epoch is a candidate when
    `logs["val_feasible"] == 1` (`logs["feasible"]` when `monitor` is not a
    validation key), and among candidates the file is overwritten whenever
    `monitor` improves. The file therefore always holds the best feasible
    epoch seen so far; if no epoch is feasible, nothing is written.

    On a constrained problem the objective is usually lowest exactly where a
    constraint is slackest: ranking by `val_loss` alone would save an
    infeasible model.

    Saving happens at epoch ends only (feasibility is an epoch-level
    aggregate), and only on the chief worker under a multi-worker strategy.

    Example:

    ```python
    checkpoint = tfc.FeasibleModelCheckpoint("best.keras")
    model.fit(x, y, validation_data=(x_val, y_val), epochs=30,
              callbacks=[checkpoint])
    best = keras.models.load_model("best.keras")
    print(checkpoint.best_epoch, checkpoint.best)
    ```

    Args:
        filepath: String. Where to save (`.keras`, or `.weights.h5` with
            `save_weights_only=True`); may contain `{epoch}` and log keys,
            as for Keras' `ModelCheckpoint`.
        monitor: String. The log key that ranks feasible epochs. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"` (Keras' inference from the
            monitored metric). Defaults to `"auto"`.
        save_weights_only: Bool. Save weights only. Defaults to `False`.
        verbose: Int. 1 prints a line per decision. Defaults to `0`.
        initial_value_threshold: Optional float. A feasible epoch must beat
            it to be saved. Defaults to `None`.

    Attributes:
        best: The best feasible `monitor` value (`None` before the first).
        best_epoch: The epoch (0-based) last saved, or `None`.

    Raises:
        KeyError: at an epoch end, when `monitor` or the feasibility key is
            not in the logs.
    """

    def __init__(
        self,
        filepath: str,
        monitor: str = "val_loss",
        mode: str = "auto",
        save_weights_only: bool = False,
        verbose: int = 0,
        initial_value_threshold: float | None = None,
    ):
        super().__init__(
            filepath,
            monitor=monitor,
            verbose=verbose,
            save_best_only=True,
            save_weights_only=save_weights_only,
            mode=mode,
            save_freq="epoch",
            initial_value_threshold=initial_value_threshold,
        )
        self.feasibility_key = feasibility_key(monitor)
        self.best_epoch = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not _epoch_is_feasible(self, self.feasibility_key, logs):
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: not feasible "
                    f"({self.feasibility_key} = 0), not a candidate."
                )
            return
        if not _is_chief(self.model):
            return
        previous = self.best
        super().on_epoch_end(epoch, logs)
        if self.best is not previous:
            self.best_epoch = epoch


class FeasibleEarlyStopping(keras.callbacks.EarlyStopping):
    """Early stopping that ranks, and restores, only *feasible* epochs.

    `keras.callbacks.EarlyStopping` where an epoch is a candidate only when
    every constraint holds on it (`logs["val_feasible"] == 1`, or
    `logs["feasible"]` when `monitor` is not a validation key):

    - the best epoch is the best feasible one by `monitor`;
    - `patience` counts the epochs since that best feasible epoch, feasible
      or not, and starts at the first feasible epoch (before it, the
      constraints are still being reached and training goes on);
    - `restore_best_weights=True` restores the best feasible epoch. If no
      epoch was feasible, the final weights are kept and a warning says so.

    Example:

    ```python
    stop = tfc.FeasibleEarlyStopping(patience=5, restore_best_weights=True)
    model.fit(x, y, validation_data=(x_val, y_val), epochs=100,
              callbacks=[stop])
    ```

    Args:
        monitor: String. The log key that ranks feasible epochs. Defaults to
            `"val_loss"`.
        mode: `"min"`, `"max"` or `"auto"`. Defaults to `"auto"`.
        patience: Int. Epochs without a better feasible epoch before
            stopping. Defaults to `0`.
        restore_best_weights: Bool. Restore the best feasible epoch at the
            end of training. Defaults to `False`.
        min_delta: Float. Smallest change of `monitor` that counts as an
            improvement. Defaults to `0`.
        verbose: Int. Defaults to `0`.
        baseline: Optional float. Keras' `baseline`, among feasible epochs.
            Defaults to `None`.
        start_from_epoch: Int. Epochs to wait before monitoring. Defaults
            to `0`.

    Attributes:
        best: The best feasible `monitor` value (`None` before the first).
        best_epoch: The best feasible epoch (0-based), or `None`.

    Raises:
        KeyError: at an epoch end, when `monitor` or the feasibility key is
            not in the logs.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "auto",
        patience: int = 0,
        restore_best_weights: bool = False,
        min_delta: float = 0.0,
        verbose: int = 0,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ):
        super().__init__(
            monitor=monitor,
            min_delta=min_delta,
            patience=patience,
            verbose=verbose,
            mode=mode,
            baseline=baseline,
            restore_best_weights=restore_best_weights,
            start_from_epoch=start_from_epoch,
        )
        self.feasibility_key = feasibility_key(monitor)
        self.best_epoch = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        self.best_epoch = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if _epoch_is_feasible(self, self.feasibility_key, logs):
            super().on_epoch_end(epoch, logs)
            return
        if epoch < self.start_from_epoch or self.best is None:
            return
        # An infeasible epoch after the best feasible one: no improvement.
        self.wait += 1
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self.best_weights is None:
            warnings.warn(
                "FeasibleEarlyStopping: no epoch satisfied every constraint "
                f"('{self.feasibility_key}' was never 1); the final weights "
                "are kept.",
                UserWarning,
                stacklevel=2,
            )
        super().on_train_end(logs)


def warn_objective_only_callbacks(callbacks, model) -> None:
    """Warns about callbacks that may select an infeasible epoch.

    Called by `ConstrainedModel.fit` before training. For a model with
    constraints, one `UserWarning` lists:

    - each `keras.callbacks.EarlyStopping(restore_best_weights=True)` and
      `keras.callbacks.ModelCheckpoint(save_best_only=True)`: they rank
      epochs by their `monitor` alone, which is often best exactly where a
      constraint is slackest or violated; the message names
      `tfc.FeasibleEarlyStopping` / `tfc.FeasibleModelCheckpoint`;
    - two or more callbacks that restore weights at the end of `fit` with
      different selections (say `tfc.BestFeasibleWeights` and a Keras
      `EarlyStopping(restore_best_weights=True)`): they restore in list
      order, so the last one decides.

    Args:
        callbacks: The `callbacks` given to `fit`: a list, a
            `keras.callbacks.CallbackList`, or `None`.
        model: The model being trained.
    """
    if not getattr(model, "constraints", None):
        return
    if isinstance(callbacks, keras.callbacks.CallbackList):
        callbacks = callbacks.callbacks
    callbacks = list(callbacks or [])
    problems = []
    for callback in callbacks:
        counterpart = _feasible_counterpart(callback)
        if counterpart is not None:
            problems.append(
                f"{_describe(callback)} ranks epochs by '{callback.monitor}' "
                "alone and may select an epoch that violates the "
                f"constraints; use {counterpart} (same arguments), which "
                "ranks only feasible epochs."
            )
    restorers = [c for c in callbacks if _selection(c) is not None]
    if len({_selection(c) for c in restorers}) > 1:
        problems.append(
            f"{', '.join(_describe(c) for c in restorers)} all restore "
            "weights at the end of `fit`, in list order: the last one, "
            f"{_describe(restorers[-1])}, decides which weights the model "
            "ends with. Keep one of them."
        )
    if problems:
        warnings.warn(
            "Training a constrained model: " + " ".join(problems),
            UserWarning,
            stacklevel=3,
        )


def _feasible_counterpart(callback) -> str | None:
    """The feasible callback to use instead, for objective-only ones."""
    if (
        isinstance(callback, keras.callbacks.EarlyStopping)
        and not isinstance(callback, FeasibleEarlyStopping)
        and callback.restore_best_weights
    ):
        return "`tfc.FeasibleEarlyStopping(..., restore_best_weights=True)`"
    if (
        isinstance(callback, keras.callbacks.ModelCheckpoint)
        and not isinstance(callback, FeasibleModelCheckpoint)
        and callback.save_best_only
    ):
        return "`tfc.FeasibleModelCheckpoint(...)`"
    return None


def _selection(callback) -> tuple | None:
    """`(feasible only, monitor)` of a callback that restores weights."""
    if isinstance(callback, BestFeasibleWeights) and callback.restore:
        return (True, callback.monitor)
    if (
        isinstance(callback, keras.callbacks.EarlyStopping)
        and callback.restore_best_weights
    ):
        return (isinstance(callback, FeasibleEarlyStopping), callback.monitor)
    return None


def _describe(callback) -> str:
    module = type(callback).__module__
    prefix = (
        "keras.callbacks."
        if module.startswith("keras")
        else "tfc."
        if module.startswith("tfconstrain")
        else ""
    )
    name = f"{prefix}{type(callback).__name__}(monitor={callback.monitor!r}"
    if isinstance(callback, keras.callbacks.ModelCheckpoint):
        return f"`{name}, save_best_only=True)`"
    if isinstance(callback, keras.callbacks.EarlyStopping):
        return f"`{name}, restore_best_weights=True)`"
    return f"`{name})`"


def _is_chief(model) -> bool:
    """Whether this worker writes files (always, without multi-worker)."""
    strategy = getattr(model, "distribute_strategy", None)
    extended = getattr(strategy, "extended", None)
    return bool(getattr(extended, "should_checkpoint", True))
