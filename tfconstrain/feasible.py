"""`BestFeasibleWeights`: return the best epoch that satisfies every constraint.

The last iterate of a Lagrangian run oscillates around the boundary of the
feasible set: with stochastic primal and dual steps, the final weights of a
run whose epochs are feasible on average can still violate a constraint by
a little. Selecting, among the epochs whose end-of-epoch weights are
feasible, the one with the best objective is the standard remedy (Cotter et
al., 2019, "Two-player games for efficient non-convex constrained
optimization", select a feasible iterate rather than the last one).
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
