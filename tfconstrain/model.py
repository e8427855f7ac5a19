"""`ConstrainedModel` and `ConstrainedSequential`: the Keras plumbing.

The maths lives elsewhere, one concern per module:

- `evaluation`: constraint statistics → replica reduction → violation → mask;
- `formulations`: the primal objective `f + Σ sg(w)·v` and penalty growth;
- `dual_step`: the dual rule (propose → project → write → penalty);
- `dual_state`: the constraints and all their state (`DualState`);
- `model_config` (saving, loading, cloning), `side_information`, `resume`,
  `_keras_compat` (every private Keras touch).

One training step (all inside the compiled step, no host round trip):

    unpack → split side information → forward → loss f (Keras' own)
      → evaluate constraints (all-reduced across replicas)
      → dual step (alternating: now; simultaneous: after the primal step)
      → f + Σ sg(w)·v → gradients → primal step → metrics
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tfconstrain import _keras_compat
from tfconstrain import distribute
from tfconstrain import evaluation
from tfconstrain import formulations as formulations_module
from tfconstrain import model_config
from tfconstrain import resume
from tfconstrain import side_information
from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import as_constraint
from tfconstrain.dual_state import DualState
from tfconstrain.dual_step import EpochDualStep
from tfconstrain.dual_step import scheduled_dual_step
from tfconstrain.metrics import ConstraintMetric
from tfconstrain.safeguards import _with_default_monitors

_keras_compat.install_clone_model_hook()


@keras.saving.register_keras_serializable(package="tfconstrain")
class ConstrainedModel(_keras_compat.KerasCompatMixin, keras.Model):
    """A `keras.Model` trained under constraints by Lagrangian methods.

    Build it like any Keras model: functional
    (`tfc.ConstrainedModel(inputs, outputs)`) or by subclassing. Attach
    constraints with `add_constraint`, then `compile` and `fit` as usual.
    Each training step minimises the formulation's objective (by default the
    Lagrangian `f + Σ λ·v`) in the weights and moves the multipliers `λ` by
    projected ascent, inside the compiled step.

    Example:

    ```python
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(1, activation="sigmoid")(inputs)
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        lambda batch: keras.ops.mean(batch.y_pred), ">=", 0.3,
        name="positive_rate",
    )
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  dual_optimizer=0.05)
    model.fit(x, y, epochs=5)
    model.constraint_report((x, y))
    ```

    Args:
        side_information: Tuple of strings. Keys of the `x` dict that are not
            model inputs but side information for constraints (exposed as
            `batch.features[key]`). Functional models also treat every key
            that is not an input name as side information.
        *args, **kwargs: Passed to `keras.Model`.
    """

    def __new__(cls, *args, **kwargs):
        if _keras_compat.is_functional_call(args, kwargs):
            cls = _keras_compat.functional_twin(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, side_information=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._tfc = DualState()
        self._tfc.side_information = self._check_side_information(
            side_information
        )

    # ------------------------------------------------------------ public API
    def add_constraint(
        self,
        constraint: Constraint | Callable,
        kind: str | None = None,
        bound: Any = None,
        *,
        name: str | None = None,
        proxy: Callable | None = None,
        multiplier_init: Any = 0.0,
        tolerance: float | None = None,
    ) -> Constraint:
        """Adds the constraint `constraint(batch) <kind> bound`.

        Args:
            constraint: A `tfc.Constraint`, or a callable `fn(batch) ->
                Tensor` returning a scalar or a 1-D float tensor of fixed
                length.
            kind: String. `"<="`, `">="` or `"=="` (aliases `"le"`, `"ge"`,
                `"eq"`). Required for callables; overrides a `Constraint`'s.
            bound: Float or 1-D array; its shape declares the constraint's
                shape. Required for callables; overrides a `Constraint`'s.
            name: String. Unique name; defaults to the function or class
                name.
            proxy: Optional differentiable callable with the same signature,
                used by the primal step instead of `constraint`.
            multiplier_init: Float or array. Initial multiplier (must be
                `>= 0` for inequalities). Defaults to `0.0`.
            tolerance: Optional float >= 0. The constraint counts as
                satisfied when its violation is within it. Defaults to the
                constraint's own (`1e-4` for callables).

        Returns:
            The `tfc.Constraint` added.

        Raises:
            ValueError: for a duplicate or reserved name, an unknown kind, a
                bound of the wrong shape or not finite, a bad
                `multiplier_init`.
            TypeError: for a constraint that is neither callable nor a
                `tfc.Constraint`.
        """
        constraint = as_constraint(
            constraint, kind, bound, name, proxy, tolerance
        )
        return self._register_constraint(constraint, multiplier_init)

    @property
    def constraints(self) -> list[Constraint]:
        """The model's constraints, including those registered by layers."""
        self._collect_layer_constraints()
        return list(self._tfc.constraints)

    @property
    def multipliers(self) -> dict[str, Any]:
        """Dict `name -> multiplier variable` (shape `()` or `(k,)`)."""
        self._collect_layer_constraints()
        return dict(self._tfc.multipliers)

    @property
    def penalties(self) -> dict[str, Any]:
        """Dict `name -> penalty coefficient variable` (penalty methods)."""
        return dict(self._tfc.penalties)

    @property
    def formulation(self):
        """The compiled formulation (`tfc.Lagrangian()` until compiled)."""
        return self._tfc.formulation or formulations_module.Lagrangian()

    @property
    def dual_optimizer(self):
        """The compiled dual optimizer (`None` if the multipliers are fixed)."""
        return self._tfc.dual_optimizer

    def constraint_report(
        self,
        data: Any,
        batch_size: int | None = None,
        confidence: float | None = None,
    ):
        """Evaluates every constraint over a whole dataset.

        Statistics are summed over every batch (and replica) before the
        constraint's value is formed, so rates are exact dataset rates.

        Args:
            data: What `evaluate` takes: `x` alone, a tuple `(x, y)` or
                `(x, y, sample_weight)`, or a `tf.data.Dataset`.
            batch_size: Int. Batch size for array inputs. Defaults to 32.
            confidence: Optional float in `(0, 1)`. When given, each entry
                also has `worst_case` (the one-sided Clopper–Pearson bound
                on the constraint's population value at that confidence, for
                rate constraints; `None` for others) and `certified`
                (whether `worst_case` satisfies the bound); see
                `tfconstrain.certify`.

        Returns:
            A `tfc.ConstraintReport`: a dict `name -> {"value", "bound",
            "kind", "violation", "satisfied", "multiplier", ...}` that
            prints as a table (`str(report)`) and converts with
            `to_dataframe()`. Scalars for scalar constraints, numpy arrays
            (with `labels`) for vector ones; `violation` is `max(0, v)`
            (`|v|` for equalities) per entry and `satisfied` is whether
            every entry is within the constraint's tolerance.
        """
        from tfconstrain.report import constraint_report

        return constraint_report(self, data, batch_size, confidence)

    # --------------------------------------------------------------- compile
    def compile(
        self,
        *args,
        formulation=None,
        dual_optimizer=None,
        update: str = "alternating",
        on_nonfinite: str = "raise",
        **kwargs,
    ):
        """Configures the model for constrained training.

        Args:
            formulation: `tfc.Lagrangian()` (default),
                `tfc.AugmentedLagrangian(...)`, `tfc.QuadraticPenalty(...)` or
                `tfc.Penalty(coefficient)`.
            dual_optimizer: A float (learning rate of projected gradient
                ascent), a `keras.optimizers.Optimizer` (used for ascent) or
                a `tfc.optimizers` dual optimizer such as `NuPI`. Defaults to
                `tfc.optimizers.ScaledAscent(1.0, kp=3.0)`, PI control in
                units of each constraint's own scale, which needs no step
                size tuning across the catalogue of
                `benchmarks/catalogue.py` (for the augmented Lagrangian: the
                classical step `λ ← [λ + c·v]₊`).
            update: `"alternating"` (dual step first, then the primal step
                with the new multipliers; one forward pass),
                `"simultaneous"` (both steps from the same point), or
                `"alternating_primal_first"` (primal step first, then the dual
                step at the updated weights; one extra forward pass, in
                training mode, so layers such as BatchNormalization update
                their moving statistics twice per step).
            on_nonfinite: What a training step does when a constraint value
                is NaN or infinite: `"raise"` (default; an
                `InvalidArgumentError` naming the constraint and the step)
                or `"skip"` (no dual step for that batch, counted in the
                `nonfinite_dual_skips` log). Either way no multiplier is
                ever written with a non-finite value; the same holds when
                the loss is not finite (the dual step is skipped). Under
                `jit_compile=True`, XLA drops the check, so `"raise"`
                behaves as `"skip"` without the count.
            *args, **kwargs: Keras' own `compile` arguments.
        """
        super().compile(*args, **kwargs)
        self._tfc.configure(formulation, dual_optimizer, update, on_nonfinite)
        self._forget_traced_state()
        if on_nonfinite == "skip" and self._tfc.skip_counter is None:
            with _keras_compat.creating_state(self):
                self._tfc.skip_counter = keras.metrics.Sum(
                    name="nonfinite_dual_skips"
                )
                self._tfc_skip_counter = self._tfc.skip_counter  # tracked
        self._collect_layer_constraints()
        self._tfc.build(self)

    def get_compile_config(self):
        return model_config.compile_config(
            self._tfc, super().get_compile_config()
        )

    def compile_from_config(self, config):
        model_config.compile_from_config(self, config)

    # ---------------------------------------------------------------- steps
    def __call__(self, inputs, *args, **kwargs):
        inputs, _ = self._split_side_information(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def train_step(self, data):
        """One constrained step; see the module docstring for the story."""
        counter = resume.pending_skips(self)
        if counter is None:
            logs = self._constrained_train_step(data)
        else:
            # Resuming mid-epoch: the first batches of the epoch were
            # trained before the interruption; consume them without a step.
            def skip():
                counter.assign_sub(1)
                return self._step_logs()

            logs = tf.cond(
                counter > 0, skip, lambda: self._constrained_train_step(data)
            )
        return _keras_compat.multi_worker_step_logs(logs)

    def _constrained_train_step(self, data):
        state = self._tfc
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, features = self._split_side_information(x)
        # The step's index for the dual schedule, read before the primal
        # step increments it (whatever the update order).
        iteration = tf.convert_to_tensor(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._loss(x, y, y_pred, sample_weight, training=True)
            batch = Batch(x, y, y_pred, sample_weight, features, True, self)
            steps = self._evaluate(batch, loss, primal=True, track=True)
            if state.update == "alternating":
                with tape.stop_recording():
                    scheduled_dual_step(state, steps, iteration)
            with tape.stop_recording():
                evaluation.warn_if_independent_of_weights(
                    steps, self.trainable_weights
                )
            objective = state.formulation.primal_objective(
                loss,
                steps,
                state.multipliers,
                state.penalties,
                skip_nonfinite=state.on_nonfinite == "skip",
                vectorize=state.vectorize,
            )
            objective = self.optimizer.scale_loss(objective)
        if self.trainable_weights:
            gradients = tape.gradient(objective, self.trainable_weights)
            self.optimizer.apply(gradients, self.trainable_weights)
        if state.update == "simultaneous":
            scheduled_dual_step(state, steps, iteration)
        elif state.update == "alternating_primal_first":
            y_after = self(x, training=True)
            batch = Batch(x, y, y_after, sample_weight, features, True, self)
            steps = self._evaluate(batch, loss, primal=False, track=True)
            scheduled_dual_step(state, steps, iteration)
        _keras_compat.update_compiled_metrics(self, y, y_pred, sample_weight)
        return self._step_logs()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, features = self._split_side_information(x)
        y_pred = self(x, training=False)
        self._loss(x, y, y_pred, sample_weight, training=False)
        batch = Batch(x, y, y_pred, sample_weight, features, False, self)
        evaluation.accumulate(self._tfc.constraints, batch, self._tfc.metrics)
        _keras_compat.update_compiled_metrics(self, y, y_pred, sample_weight)
        return _keras_compat.multi_worker_step_logs(self._step_logs())

    def _loss(self, x, y, y_pred, sample_weight, training):
        """Keras' loss (public `compute_loss`), tracked as the `loss` log."""
        loss = self.compute_loss(
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        leaf = next(t for t in tf.nest.flatten(x) if t is not None)
        _keras_compat.loss_tracker(self).update_state(
            distribute.unscale_replica_loss(loss),
            sample_weight=tf.shape(leaf)[0],
        )
        return loss

    def _evaluate(self, batch, loss, primal: bool, track: bool):
        state = self._tfc
        return evaluation.evaluate(
            state.constraints,
            batch,
            metrics=state.metrics if track else None,
            primal=primal,
            loss=loss,
            on_nonfinite=state.on_nonfinite,
            iterations=self.optimizer.iterations,
            skip_counter=state.skip_counter,
        )

    def _step_logs(self) -> dict:
        """Plain Keras' step logs: every metric but the constraint ones.

        Constraint keys are left out of per-step logs (each extra key costs
        a host conversion per batch); epoch logs get them, exactly, from
        the metrics (`_keras_compat.KerasCompatMixin`).
        """
        logs = {}
        for metric in self.metrics:
            if (
                isinstance(metric, ConstraintMetric)
                or metric is self._tfc.skip_counter
            ):
                continue
            result = metric.result()
            if isinstance(result, dict):
                logs.update(result)
            else:
                logs[metric.name] = result
        return logs

    def _complete_epoch_logs(self, logs):
        """Adds `feasible` and `lagrangian` (`evaluation.with_feasibility`,
        `evaluation.with_lagrangian`)."""
        logs = evaluation.with_feasibility(self._tfc.constraints, logs)
        return evaluation.with_lagrangian(self._tfc, logs)

    # ------------------------------------------------------- epoch dual step
    def _epoch_violations(self) -> list:
        """`(violation, mask)` per constraint from the epoch aggregates."""
        return evaluation.epoch_violations(
            self._tfc.constraints, self._tfc.metrics
        )

    def _run_epoch_dual_step(self, values: list) -> None:
        """One dual step from dataset-level violations (all replicas)."""
        step = self.__dict__.get("_tfc_epoch_dual_step")
        if step is None:
            step = EpochDualStep(self._tfc, self.distribute_strategy)
            self.__dict__["_tfc_epoch_dual_step"] = step
        step(values)

    # ------------------------------------------------------ constraint setup
    def _register_constraint(self, constraint, multiplier_init):
        started = any(
            getattr(self, attr, None) is not None
            for attr in ("train_function", "test_function")
        )
        self._tfc.register(self, constraint, multiplier_init)
        if self.compiled:
            self._tfc.build(self)
        self._forget_traced_state()
        if started:
            # Rebuilt safely: the compiled step functions are traced again.
            self.train_function = None
            self.test_function = None
            self.predict_function = None
        return constraint

    def _forget_traced_state(self) -> None:
        """Drops functions traced for the previous constraints/compile."""
        self.__dict__.pop("_tfc_epoch_dual_step", None)
        self.__dict__.pop("_tfc_report_step", None)

    def _collect_layer_constraints(self) -> None:
        """Registers constraints that layers declared (see `tfc.layers`).

        Runs eagerly (compile, step-function creation, properties); inside a
        traced function it does nothing, since it may create variables.
        """
        if tf.inside_function() or "_tfc" not in self.__dict__:
            return
        from tfconstrain.layers.registration import layer_constraints

        state = self._tfc
        for constraint, initial in layer_constraints(self):
            if constraint.name in state.layer_constraint_names:
                continue
            self._register_constraint(constraint, initial)
            state.layer_constraint_names.add(constraint.name)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras' `fit`, plus divergence warnings and exact resumption.

        - A `tfc.safeguards.MultiplierGrowthMonitor` is added to the
          callbacks (unless one is given): it warns, once per constraint,
          when a multiplier keeps growing while its violation does not
          shrink.
        - With `keras.callbacks.BackupAndRestore(save_freq=n)` interrupted
          in the middle of an epoch, Keras restarts that epoch from its
          first batch with the weights saved after batch `b`; this `fit`
          instead consumes the first `b + 1` batches of the resumed epoch
          without training on them, so the run continues exactly where
          the backup was taken (same data order required: no shuffling,
          or a seeded one).
        """
        from tfconstrain.feasible import warn_objective_only_callbacks
        from tfconstrain.tensorboard import link_keras_tensorboard

        callbacks = _with_default_monitors(callbacks)
        warn_objective_only_callbacks(callbacks, self)
        link_keras_tensorboard(callbacks)
        args, kwargs = side_information.with_string_arrays_as_objects(
            args, kwargs
        )
        strategy = self.distribute_strategy
        with _keras_compat.chief_only_writes(callbacks, strategy):
            with resume.skipping_done_batches(self, callbacks):
                try:
                    return super().fit(*args, callbacks=callbacks, **kwargs)
                except tf.errors.InvalidArgumentError as error:
                    clear = evaluation.clear_nonfinite_error(error)
                    if clear is None:
                        raise
                    raise clear from None

    def evaluate(self, *args, **kwargs):
        """Keras' `evaluate`; numpy string side information is accepted."""
        args, kwargs = side_information.with_string_arrays_as_objects(
            args, kwargs
        )
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """Keras' `predict`; numpy string side information is accepted."""
        args, kwargs = side_information.with_string_arrays_as_objects(
            args, kwargs
        )
        return super().predict(*args, **kwargs)

    def make_train_function(self, force=False):
        self._collect_layer_constraints()
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._collect_layer_constraints()
        return super().make_test_function(force=force)

    def _checkpoint_variables(self) -> dict:
        state = self.__dict__.get("_tfc")
        return {} if state is None else state.checkpoint_variables()

    def _clone_with(self, keras_clone_model, *args, **kwargs):
        """What `keras.models.clone_model(self, ...)` returns (see
        `model_config.clone`)."""
        return model_config.clone(self, keras_clone_model, *args, **kwargs)

    # ----------------------------------------------------- side information
    def _check_side_information(self, keys) -> tuple:
        return side_information.check_keys(self, keys)

    def _split_side_information(self, x):
        """`(model_input, features)`: side-information keys split off."""
        state = self.__dict__.get("_tfc")
        if state is None:
            return x, {}
        return side_information.split(self, x, state.side_information)

    # --------------------------------------------------------------- saving
    def load_own_variables(self, store):
        """Keras' loader of the model's own variables (multipliers, dual
        state), which also reads files saved by tfconstrain 0.1 with
        `compile()`'s defaults: that dual optimizer (plain ascent) had no
        state, so such a file holds the multipliers only. They are loaded,
        the dual state is reset to its initial values (`ScaledAscent` then
        starts its integral at the loaded multipliers), and a `UserWarning`
        says so. Any other mismatch raises Keras' error."""
        variables = _keras_compat.own_variables(self)
        stateless = self._tfc.without_dual_state(variables)
        saved = len(store.keys())
        if saved != len(variables) and saved == len(stateless):
            warnings.warn(
                f"Model '{self.name}': the file holds {saved} of its "
                f"{len(variables)} own variables, the multipliers without "
                "any dual-optimizer state (a model saved by tfconstrain 0.1 "
                "with compile()'s defaults). Loaded the multipliers; the "
                f"state of {type(self._tfc.dual_optimizer).__name__} starts "
                "afresh.",
                stacklevel=2,
            )
            for index, variable in enumerate(stateless):
                variable.assign(store[str(index)])
            self._tfc.reset_dual_state()
            return
        super().load_own_variables(store)

    # --------------------------------------------------------------- config
    def get_config(self):
        return model_config.model_config(self._tfc, super().get_config())

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return model_config.model_from_config(cls, config, custom_objects)


@keras.saving.register_keras_serializable(package="tfconstrain")
class ConstrainedSequential(ConstrainedModel, keras.Sequential):
    """The `keras.Sequential` counterpart of `ConstrainedModel`.

    Example:

    ```python
    model = tfc.ConstrainedSequential([
        keras.Input((4,)), keras.layers.Dense(1)])
    model.add_constraint(lambda b: keras.ops.mean(b.y_pred), "<=", 0.0)
    ```
    """

    def __init__(self, layers=None, *, side_information=(), **kwargs):
        super().__init__(
            layers=layers, side_information=side_information, **kwargs
        )
