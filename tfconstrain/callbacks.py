"""`MultiplierCallback`: the dual-update schedule and constraint logging."""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import report
from tfconstrain import tensorboard


class MultiplierCallback(keras.callbacks.Callback):
    """Owns when the multipliers move, and writes them to TensorBoard.

    The dual step itself always runs inside the compiled train step (so
    `steps_per_execution`, `jit_compile` and distribution strategies work);
    this callback sets its schedule for the `fit` call it is passed to:

    - `update_every="step"` (default): a dual step at every training step;
    - `update_every=n`: at steps `warmup_steps, warmup_steps + n, ...`;
    - `update_every="epoch"`: once per epoch, at its end, with the
      dataset-level constraint values of that epoch (exact aggregates).

    No dual step happens during the first `warmup_steps` training steps
    (pure primal training). Steps are counted by the primal optimizer's
    `iterations`, so a resumed run keeps its schedule. After `fit`, the
    model returns to its previous schedule.

    With `log_dir`, it writes TensorBoard summaries at every epoch end,
    under Keras' own tags and runs so that each quantity is one series
    whichever callbacks are used (see `tfconstrain.tensorboard`): per
    constraint `epoch_NAME` (value), `epoch_NAME_violation`,
    `epoch_NAME_multiplier`, `epoch_NAME_penalty` (where the formulation has
    one) and `epoch_NAME_bound`, for training (`log_dir/train`) and
    validation (`log_dir/validation`, data quantities only), histograms of
    vector multipliers (`epoch_NAME_multiplier_histogram`) every
    `histogram_freq` epochs, and a custom-scalars layout with one chart per
    constraint (value, bound, multiplier). With a
    `keras.callbacks.TensorBoard` on the same `log_dir` in the same `fit`,
    the logged values are left to it. Only the chief worker writes.
    `batch_log_freq=n` also writes the multipliers every `n` training
    batches (`batch_NAME_multiplier`; a host read each time, so it is off
    by default).

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[
        tfc.MultiplierCallback(update_every=5, warmup_steps=100,
                               log_dir="logs/run1")])
    ```

    Args:
        update_every: `"step"`, a positive int, or `"epoch"`. Defaults to
            `"step"`.
        warmup_steps: Int >= 0. Defaults to `0`.
        log_dir: Optional string. Where TensorBoard event files go.
        histogram_freq: Int >= 0. Epoch frequency of multiplier histograms
            (0: none). Defaults to `1`.
        batch_log_freq: Optional int > 0. Batch frequency of multiplier
            scalars. Defaults to `None` (epoch-level only).
        dual_data: Optional data for the dual steps (anything `evaluate`
            accepts: `(x, y)`, `(x, y, sample_weight)`, a batched
            `tf.data.Dataset`). When given, the dual steps use constraint
            values measured on it instead of the training batch — the whole
            of it for `update_every="epoch"`, its next batch (cycling)
            otherwise — while the primal step keeps the training batch: the
            two-dataset scheme of Cotter et al. (JMLR 2019), for constraints
            that must hold on unseen data. Each such dual step reads its
            batch's statistics on the host (one round trip per dual step).
        dual_batch_size: Batch size for array `dual_data`. Defaults to 32.
    """

    def __init__(
        self,
        update_every="step",
        warmup_steps: int = 0,
        log_dir: str | None = None,
        histogram_freq: int = 1,
        batch_log_freq: int | None = None,
        dual_data=None,
        dual_batch_size: int | None = None,
    ):
        super().__init__()
        if update_every == "step":
            update_every = 1
        if update_every != "epoch" and not (
            isinstance(update_every, (int, np.integer))
            and not isinstance(update_every, bool)
            and update_every >= 1
        ):
            raise ValueError(
                "`update_every` must be 'step', 'epoch' or a positive int, "
                f"got {update_every!r}."
            )
        if not isinstance(warmup_steps, (int, np.integer)) or (
            warmup_steps < 0
        ):
            raise ValueError(
                f"`warmup_steps` must be an int >= 0, got {warmup_steps!r}."
            )
        if not isinstance(histogram_freq, (int, np.integer)) or (
            histogram_freq < 0
        ):
            raise ValueError(
                f"`histogram_freq` must be an int >= 0, got {histogram_freq!r}."
            )
        if batch_log_freq is not None and not (
            isinstance(batch_log_freq, (int, np.integer))
            and batch_log_freq >= 1
        ):
            raise ValueError(
                "`batch_log_freq` must be None or an int >= 1, got "
                f"{batch_log_freq!r}."
            )
        self.update_every = (
            update_every if update_every == "epoch" else int(update_every)
        )
        self.warmup_steps = int(warmup_steps)
        self.log_dir = log_dir
        self.histogram_freq = int(histogram_freq)
        self.batch_log_freq = batch_log_freq
        if dual_data is not None:
            # Fails now, naming the problem, rather than at the first step.
            report.as_dataset(dual_data, dual_batch_size)
        self.dual_data = dual_data
        self.dual_batch_size = dual_batch_size
        self._dual_batches = None
        self._writers = {}
        self._previous_schedule = None
        self._epoch_values = None
        self._in_epoch = False
        self._batches_seen = 0

    # ------------------------------------------------------------ schedule
    def set_model(self, model):
        from tfconstrain.dual_state import DualSchedule as _DualSchedule
        from tfconstrain.model import ConstrainedModel

        if not isinstance(model, ConstrainedModel):
            raise TypeError(
                "MultiplierCallback works with a `tfc.ConstrainedModel`, got "
                f"{type(model).__name__}."
            )
        super().set_model(model)
        # With `dual_data`, the compiled step takes no dual step: this
        # callback runs them from the dual data instead.
        every = "epoch" if self.dual_data is not None else self.update_every
        schedule = _DualSchedule(every, self.warmup_steps)
        if self._previous_schedule is None:
            self._previous_schedule = model._tfc.schedule
        _set_schedule(model, schedule)

    def on_train_end(self, logs=None):
        if self._previous_schedule is not None:
            _set_schedule(self.model, self._previous_schedule)
            self._previous_schedule = None
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_values = None
        self._in_epoch = True

    def on_test_begin(self, logs=None):
        # Validation resets the metrics that hold the epoch's training
        # aggregates: keep them for the per-epoch dual step.
        if self._in_epoch and self.update_every == "epoch":
            self._epoch_values = self.model._epoch_violations()

    def on_train_begin(self, logs=None):
        self._dual_batches = None
        if self.dual_data is not None and self.update_every != "epoch":
            dataset, weights_without_y = report.as_dataset(
                self.dual_data, self.dual_batch_size
            )
            strategy = self.model.distribute_strategy
            batches = strategy.experimental_distribute_dataset(dataset.repeat())
            self._dual_batches = (iter(batches), weights_without_y)

    def on_epoch_end(self, epoch, logs=None):
        self._in_epoch = False
        if self.update_every == "epoch" and self._dual_step_is_due():
            if self.dual_data is not None:
                totals = report.dataset_totals(
                    self.model, self.dual_data, self.dual_batch_size
                )
                values = report.violations(self.model, totals)
            else:
                values = self._epoch_values or self.model._epoch_violations()
            self.model._run_epoch_dual_step(values)
            if logs is not None:
                # The epoch's logs were read before its dual step: callbacks
                # after this one (History last) see the multipliers it set.
                for name, multiplier in self.model.multipliers.items():
                    if f"{name}_multiplier" in logs:
                        logs[f"{name}_multiplier"] = float(
                            np.mean(_numpy(multiplier))
                        )
                for name, penalty in self.model.penalties.items():
                    if f"{name}_penalty" in logs:
                        logs[f"{name}_penalty"] = float(_numpy(penalty))
        if self.log_dir:
            self._write_epoch(epoch, logs or {})

    def _dual_step_on_dual_data(self) -> None:
        # The step just taken has index `iterations - 1`.
        step = int(_numpy(self.model.optimizer.iterations)) - 1
        if step < self.warmup_steps:
            return
        if (step - self.warmup_steps) % self.update_every:
            return
        batches, weights_without_y = self._dual_batches
        totals = report.batch_totals(
            self.model, next(batches), weights_without_y
        )
        self.model._run_epoch_dual_step(report.violations(self.model, totals))

    def _dual_step_is_due(self) -> bool:
        iterations = int(
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        )
        return iterations >= self.warmup_steps

    # ------------------------------------------------------------- logging
    def _writer(self, kind: str):
        """The summary writer of run `kind` (`"train"`, `"validation"`).

        Created on first use in each `fit`; the train run also gets the
        custom-scalars layout then.
        """
        if kind not in self._writers:
            writer = tf.summary.create_file_writer(
                os.path.join(self.log_dir, kind)
            )
            self._writers[kind] = writer
            if kind == "train":
                with writer.as_default():
                    tensorboard.write_layout(self.model.constraints)
        return self._writers[kind]

    def _write_epoch(self, epoch: int, logs: dict) -> None:
        """Epoch scalars and histograms (see `tfconstrain.tensorboard`)."""
        model = self.model
        if not tensorboard.is_chief(model):
            return
        scalars = tensorboard.epoch_scalars(
            model.constraints,
            logs,
            keras_writes_logs=getattr(self, "_keras_tensorboard", False),
        )
        histograms = {}
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            histograms = {
                f"epoch_{name}_multiplier_histogram": _numpy(multiplier)
                for name, multiplier in model.multipliers.items()
                if len(multiplier.shape) == 1
            }
        for kind in ("train", "validation"):
            if not scalars[kind] and not (kind == "train" and histograms):
                continue
            writer = self._writer(kind)
            with writer.as_default(step=epoch):
                for tag, value in scalars[kind].items():
                    tf.summary.scalar(tag, value)
                if kind == "train":
                    for tag, values in histograms.items():
                        tf.summary.histogram(tag, values)
            writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        """With `dual_data` (per-step schedule): the dual step, when due,
        on the next dual batch. Every `batch_log_freq` batches:
        `batch_NAME_multiplier` (mean over entries) and
        `batch_NAME_penalty`, at the optimizer's step."""
        if self._dual_batches is not None:
            self._dual_step_on_dual_data()
        if not (self.log_dir and self.batch_log_freq):
            return
        self._batches_seen += 1
        if self._batches_seen % self.batch_log_freq:
            return
        if not tensorboard.is_chief(self.model):
            return
        step = int(_numpy(self.model.optimizer.iterations))
        with self._writer("train").as_default(step=step):
            for name, multiplier in self.model.multipliers.items():
                tf.summary.scalar(
                    f"batch_{name}_multiplier",
                    float(np.mean(_numpy(multiplier))),
                )
            for name, penalty in self.model.penalties.items():
                tf.summary.scalar(
                    f"batch_{name}_penalty", float(_numpy(penalty))
                )


def _numpy(variable) -> np.ndarray:
    return tf.convert_to_tensor(variable).numpy()


def _set_schedule(model, schedule) -> None:
    if model._tfc.schedule != schedule:
        model._tfc.schedule = schedule
        model.train_function = None
