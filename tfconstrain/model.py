"""`ConstrainedModel` and `ConstrainedSequential`: the Keras plumbing.

The maths lives elsewhere (constraint statistics in `constraint.py`, primal
weights and penalty rules in `formulations.py`, multiplier updates in
`optimizers/`, replica reductions in `distribute.py`). This module wires them
into Keras' `train_step` / `test_step`, `compile`, saving and logging.

One training step (all inside the compiled step, no host round trip):

    unpack → split side information → forward → loss f (Keras' own)
      → constraint statistics (true and proxy) → all-reduce across replicas
      → dual step (alternating: now; simultaneous: after the primal step)
      → f + Σ stop_gradient(w) · v → gradients → primal step → metrics
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import _keras_compat
from tfconstrain import distribute
from tfconstrain import formulations as formulations_module
from tfconstrain import optimizers as optimizers_module
from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import FunctionConstraint
from tfconstrain.metrics import ConstraintMetric
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import write_entries

Functional = _keras_compat.functional_class()

UPDATE_SCHEMES = ("alternating", "simultaneous", "alternating_primal_first")
RESERVED_NAMES = ("loss", "lagrangian", "feasible")


class _DualSchedule(NamedTuple):
    """When the dual step runs: every `every` steps after `warmup` steps."""

    every: Any = 1  # int >= 1, or "epoch"
    warmup: int = 0


class _ConstraintStep(NamedTuple):
    """One constraint's quantities in one step (graph tensors)."""

    constraint: Constraint
    violation: tf.Tensor  # true violation of the global batch (constant)
    mask: tf.Tensor  # entries with data and finite values
    proxy_violation: tf.Tensor | None  # differentiable, global value
    # Indexed (per-example) constraints: the entries this step is about.
    indices: tf.Tensor | None = None  # ids of the global batch (dual step)
    local_indices: tf.Tensor | None = None  # ids of this replica (primal)
    # Per-entry factor of the primal term (indexed: w_i / Σ_global w).
    primal_scale: tf.Tensor | None = None


class _Bookkeeping:
    """Plain Python state kept out of Keras' attribute tracking."""

    def __init__(self):
        self.constraints: list[Constraint] = []
        self.multiplier_inits: dict[str, float] = {}
        self.multipliers: dict[str, Any] = {}
        self.metrics: dict[str, ConstraintMetric] = {}
        self.dual_variables: list = []
        self.penalties: dict[str, Any] = {}
        self.side_information: tuple = ()
        self.layer_constraint_names: set = set()
        self.formulation = None
        self.dual_optimizer = None
        self.dual_optimizer_argument = None
        self.update = "alternating"
        self.on_nonfinite = "raise"
        self.skip_counter = None
        self.schedule = _DualSchedule()


_FUNCTIONAL_TWINS: dict[type, type] = {}


def _functional_twin(cls: type) -> type:
    """A subclass of `cls` and Keras' `Functional`, made once per class.

    Keras turns a `Model` subclass called with `(inputs, outputs)` into a
    Functional model by rewriting the class's bases in place, which would
    break later subclassed use of the same class. The twin keeps `cls`
    untouched.
    """
    if issubclass(cls, Functional):
        return cls
    if cls not in _FUNCTIONAL_TWINS:
        twin = type(
            cls.__name__,
            (cls, Functional),
            {"__module__": cls.__module__, "_constrained_base": cls},
        )
        registered = keras.saving.get_registered_name(cls)
        if ">" in registered:
            package, name = registered.split(">", 1)
            keras.saving.register_keras_serializable(package, name)(twin)
        _FUNCTIONAL_TWINS[cls] = twin
    return _FUNCTIONAL_TWINS[cls]


def _is_functional_call(args: tuple, kwargs: dict) -> bool:
    return (
        (len(args) == 2)
        or (len(args) == 1 and "outputs" in kwargs)
        or ("inputs" in kwargs and "outputs" in kwargs)
    )


@keras.saving.register_keras_serializable(package="tfconstrain")
class ConstrainedModel(_keras_compat.MultiWorkerCompatMixin, keras.Model):
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
        if _is_functional_call(args, kwargs):
            cls = _functional_twin(cls)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, *args, side_information=(), **kwargs):
        super().__init__(*args, **kwargs)
        self._tfc = _Bookkeeping()
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
        constraint = self._as_constraint(
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
                gradient ascent with learning rate `1e-2` (for the augmented
                Lagrangian: the classical step `λ ← [λ + c·v]₊`).
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
        formulation = formulations_module.get(formulation)
        if update not in UPDATE_SCHEMES:
            raise ValueError(
                f"`update` must be one of {UPDATE_SCHEMES}, got {update!r}."
            )
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(
                "`on_nonfinite` must be 'raise' or 'skip', got "
                f"{on_nonfinite!r}."
            )
        if dual_optimizer is None:
            dual = formulation.default_dual_optimizer()
        else:
            dual = optimizers_module.get(dual_optimizer)
            if not formulation.updates_multipliers:
                import warnings

                warnings.warn(
                    f"{type(formulation).__name__} keeps the multipliers "
                    "fixed, so `dual_optimizer` is not used.",
                    UserWarning,
                    stacklevel=2,
                )
                dual = None
        super().compile(*args, **kwargs)
        state = self._tfc
        state.formulation = formulation
        state.dual_optimizer = dual
        state.dual_optimizer_argument = dual_optimizer
        state.update = update
        state.on_nonfinite = on_nonfinite
        self._forget_traced_state()
        if on_nonfinite == "skip" and state.skip_counter is None:
            with self._state_creation():
                state.skip_counter = keras.metrics.Sum(
                    name="nonfinite_dual_skips"
                )
                self._tfc_skip_counter = state.skip_counter  # tracked metric
        self._collect_layer_constraints()
        self._build_dual_state()

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        state = self._tfc
        argument = state.dual_optimizer_argument
        if argument is not None and not isinstance(argument, (int, float)):
            argument = keras.saving.serialize_keras_object(argument)
        config["formulation"] = keras.saving.serialize_keras_object(
            state.formulation
        )
        config["dual_optimizer"] = argument
        config["update"] = state.update
        config["on_nonfinite"] = state.on_nonfinite
        return config

    def compile_from_config(self, config):
        config = dict(config)
        formulation = config.pop("formulation", None)
        dual_optimizer = config.pop("dual_optimizer", None)
        update = config.pop("update", "alternating")
        on_nonfinite = config.pop("on_nonfinite", "raise")
        if isinstance(formulation, dict):
            formulation = keras.saving.deserialize_keras_object(formulation)
        if isinstance(dual_optimizer, dict):
            dual_optimizer = keras.saving.deserialize_keras_object(
                dual_optimizer
            )
        config = keras.saving.deserialize_keras_object(config)
        self.compile(
            **config,
            formulation=formulation,
            dual_optimizer=dual_optimizer,
            update=update,
            on_nonfinite=on_nonfinite,
        )
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # ---------------------------------------------------------------- steps
    def __call__(self, inputs, *args, **kwargs):
        inputs, _ = self._split_side_information(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def train_step(self, data):
        counter = self.__dict__.get("_tfc_resume_skip")
        if counter is None:
            return _keras_compat.multi_worker_step_logs(
                self._constrained_train_step(data)
            )
        # Resuming mid-epoch: the first batches of the epoch were trained
        # before the interruption; consume them without a step.

        def skip():
            counter.assign_sub(1)
            return self._step_logs()

        return _keras_compat.multi_worker_step_logs(
            tf.cond(
                counter > 0, skip, lambda: self._constrained_train_step(data)
            )
        )

    def _constrained_train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # The step's index for the dual schedule, read before the primal
        # step increments it (whatever the update order).
        iteration = tf.convert_to_tensor(self.optimizer.iterations)
        x, features = self._split_side_information(x)
        update = self._tfc.update
        with tf.GradientTape() as tape:
            y_pred = self._forward(x, training=True)
            loss = self._compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
            self._loss_tracker.update_state(
                distribute.unscale_replica_loss(loss),
                sample_weight=_batch_size(x),
            )
            batch = Batch(x, y, y_pred, sample_weight, features, True, self)
            steps = self._constraint_steps(
                batch,
                primal=True,
                track=update != "alternating_primal_first",
                loss=loss,
            )
            if update == "alternating":
                with tape.stop_recording():
                    self._scheduled_dual_step(steps, iteration)
            with tape.stop_recording():
                self._check_primal_dependence(steps)
            # Constraint terms are float32; the loss follows `floatx`.
            objective = loss + tf.cast(
                self._constraint_terms(steps), loss.dtype
            )
            if self.optimizer is not None:
                objective = self.optimizer.scale_loss(objective)
        trainable = self.trainable_weights
        if trainable:
            gradients = tape.gradient(objective, trainable)
            self.optimizer.apply(gradients, trainable)
        if update == "simultaneous":
            self._scheduled_dual_step(steps, iteration)
        elif update == "alternating_primal_first":
            y_after = self._forward(x, training=True)
            batch = Batch(x, y, y_after, sample_weight, features, True, self)
            self._scheduled_dual_step(
                self._constraint_steps(
                    batch, primal=False, track=True, loss=loss
                ),
                iteration,
            )
        self._update_compiled_metrics(y, y_pred, sample_weight)
        return self._step_logs()

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, features = self._split_side_information(x)
        y_pred = self._forward(x, training=False)
        loss = self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        self._loss_tracker.update_state(
            distribute.unscale_replica_loss(loss),
            sample_weight=_batch_size(x),
        )
        batch = Batch(x, y, y_pred, sample_weight, features, False, self)
        for constraint in self._tfc.constraints:
            if constraint.indexed:
                # All-gathered sparse accumulation, as in training.
                self._indexed_step(constraint, batch, primal=False, track=True)
                continue
            statistics = self._statistics(constraint, batch, "true")
            self._tfc.metrics[constraint.name].update_state(statistics)
        self._update_compiled_metrics(y, y_pred, sample_weight)
        return _keras_compat.multi_worker_step_logs(self._step_logs())

    def _forward(self, x, training):
        if self._call_has_training_arg:
            return self(x, training=training)
        return self(x)

    def _update_compiled_metrics(self, y, y_pred, sample_weight):
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)

    def _step_logs(self) -> dict:
        """Plain Keras' step logs: every metric but the constraint ones.

        Constraint keys are left out of per-step logs (each extra key costs
        a host conversion per batch); epoch logs get them, exactly, from
        `_get_metrics_result_or_logs`.
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

    def _get_metrics_result_or_logs(self, logs):
        # Keras reads the metrics again (cross-replica, exact) only when the
        # step returned exactly the metric keys. Our steps return all but the
        # constraint keys, which must still reach the epoch logs.
        metric_logs = self.get_metrics_result()
        if isinstance(logs, dict) and set(logs) <= set(metric_logs):
            logs = metric_logs
        return self._with_feasibility(logs)

    def _with_feasibility(self, logs):
        """Adds `feasible`: 1.0 when every constraint is within tolerance.

        Read from the dataset-level `NAME_violation` entries of the logs
        (epoch logs of `fit`, logs of `evaluate`; `val_feasible` follows
        from Keras' `val_` prefix).
        """
        constraints = self._tfc.constraints
        if not isinstance(logs, dict) or not constraints:
            return logs
        keys = [f"{c.name}_violation" for c in constraints]
        if not all(key in logs for key in keys):
            return logs
        feasible = all(
            float(keras.ops.convert_to_numpy(logs[key])) <= c.tolerance
            for key, c in zip(keys, constraints)
        )
        return {**logs, "feasible": 1.0 if feasible else 0.0}

    # ------------------------------------------------------ constraint maths
    def _statistics(self, constraint: Constraint, batch: Batch, which: str):
        """A constraint's statistics for the batch, checked, as float32."""
        try:
            if which == "true":
                statistics = constraint.statistics(batch)
                shapes = constraint.statistics_shapes()
            else:
                statistics = constraint.proxy_statistics(batch)
                shapes = constraint.proxy_statistics_shapes()
        except (KeyError, TypeError, ValueError) as error:
            raise _with_constraint_name(error, constraint, batch) from error
        statistics = tuple(tf.cast(s, tf.float32) for s in statistics)
        if len(statistics) != len(shapes) or any(
            not s.shape.is_compatible_with(shape)
            for s, shape in zip(statistics, shapes)
        ):
            raise ValueError(
                f"Constraint '{constraint.name}': its {which} statistics have "
                f"shapes {[tuple(s.shape) for s in statistics]}, expected "
                f"{[tuple(s) for s in shapes]}."
            )
        return statistics

    def _constraint_steps(self, batch, primal: bool, track: bool, loss):
        """Statistics → replica reduction → violations, for all constraints.

        Args:
            batch: The `Batch`.
            primal: Whether to also compute the differentiable (proxy)
                violations for the primal objective.
            track: Whether to accumulate the true statistics in the epoch
                metrics.
            loss: The step's loss; when it is not finite, no dual step.

        Returns:
            One `_ConstraintStep` per constraint, in order.
        """
        constraints = self._tfc.constraints
        dense = [c for c in constraints if not c.indexed]
        steps = dict(zip(dense, self._dense_steps(dense, batch, primal, track)))
        for constraint in constraints:
            if constraint.indexed:
                steps[constraint] = self._indexed_step(
                    constraint, batch, primal, track
                )
        finite_batch = tf.math.is_finite(loss)
        if distribute.num_replicas() > 1:
            # Every replica must take the same decision, or the multiplier
            # copies would diverge.
            bad = distribute.all_reduce_sum(
                tf.cast(tf.logical_not(finite_batch), tf.float32)
            )
            finite_batch = tf.equal(bad, 0.0)
        finite = {}
        all_finite = []
        for constraint in constraints:
            finite[constraint] = tf.math.is_finite(steps[constraint].violation)
            all_finite.append(tf.reduce_all(finite[constraint]))
        if all_finite:
            all_finite = tf.stack(all_finite)
            self._check_finite(constraints, all_finite)
            finite_batch = tf.logical_and(
                finite_batch, tf.reduce_all(all_finite)
            )
        if self._tfc.skip_counter is not None:
            # Every replica takes the same decision and the metric sums
            # replicas when read: count 1/N per replica, 1 per batch.
            self._tfc.skip_counter.update_state(
                tf.cast(tf.logical_not(finite_batch), tf.float32)
                / distribute.num_replicas()
            )
        return [
            steps[c]._replace(
                mask=tf.logical_and(
                    tf.logical_and(steps[c].mask, finite[c]), finite_batch
                )
            )
            for c in constraints
        ]

    def _dense_steps(self, constraints, batch, primal: bool, track: bool):
        """Steps of constraints aggregated through summed statistics."""
        local = []
        for constraint in constraints:
            proxy = None
            if primal:
                proxy = self._statistics(constraint, batch, "proxy")
            if proxy is None or constraint.has_distinct_true_value:
                true = tuple(
                    tf.stop_gradient(s)
                    for s in self._statistics(constraint, batch, "true")
                )
            else:
                true = proxy
            local.append((constraint, true, proxy))
            if track:
                self._tfc.metrics[constraint.name].update_state(
                    tuple(tf.stop_gradient(s) for s in true)
                )
        replicated = distribute.num_replicas() > 1
        if not replicated:
            return [
                self._local_step(constraint, true, proxy)
                for constraint, true, proxy in local
            ]
        flat = []
        for _, true, proxy in local:
            flat.extend(tf.stop_gradient(s) for s in true)
            if proxy is not None and proxy is not true:
                flat.extend(tf.stop_gradient(s) for s in proxy)
        reduced = iter(distribute.all_reduce_sum(flat))
        steps = []
        for constraint, true, proxy in local:
            true_global = tuple(next(reduced) for _ in true)
            violation = constraint.violation(constraint.result(true_global))
            proxy_violation = None
            if proxy is not None:
                if proxy is true:
                    result_fn, proxy_global = constraint.result, true_global
                else:
                    result_fn = constraint.proxy_result
                    proxy_global = tuple(next(reduced) for _ in proxy)
                proxy_violation = constraint.violation(
                    distribute.global_value_with_local_gradient(
                        result_fn, proxy, proxy_global
                    )
                )
            steps.append(
                _ConstraintStep(
                    constraint,
                    violation,
                    _valid_mask(constraint, true_global, violation),
                    proxy_violation,
                )
            )
        return steps

    def _local_step(self, constraint, true, proxy) -> _ConstraintStep:
        """One replica: the batch's statistics are the global ones.

        Without a separate true value, the dual violation is the primal
        one with its gradient stopped (one evaluation instead of two).
        """
        proxy_violation = None
        if proxy is not None:
            result_fn = (
                constraint.result if proxy is true else constraint.proxy_result
            )
            proxy_violation = constraint.violation(result_fn(proxy))
        if proxy is true:
            violation = tf.stop_gradient(proxy_violation)
        else:
            violation = constraint.violation(constraint.result(true))
        return _ConstraintStep(
            constraint,
            violation,
            _valid_mask(constraint, true, violation),
            proxy_violation,
        )

    def _indexed_step(self, constraint, batch, primal: bool, track: bool):
        """Step of a per-example (indexed) constraint, O(batch) not O(N).

        The dual step needs every replica's examples: ids, values and
        weights are all-gathered, so each replica applies the same sparse
        update to its copy of the multipliers. The primal term of replica r
        is `Σ_{i in r} w_i · λ_i · v_i / Σ_all w`, whose gradients add up to
        the gradient of the global batch mean of `λ_i · v_i`.
        """
        try:
            ids, values, weights = constraint.examples(batch, proxy=False)
            proxy_values = values
            if primal and constraint.has_distinct_true_value:
                _, proxy_values, _ = constraint.examples(batch, proxy=True)
        except (KeyError, TypeError, ValueError) as error:
            raise _with_constraint_name(error, constraint, batch) from error
        true_values = tf.stop_gradient(values)
        gathered = distribute.all_gather((ids, true_values, weights))
        all_ids, all_values, all_weights = gathered
        if track:
            self._tfc.metrics[constraint.name].update_indexed(
                all_ids, all_weights * all_values, all_weights
            )
        proxy_violation = share = None
        if primal:
            share = tf.math.divide_no_nan(weights, tf.reduce_sum(all_weights))
            proxy_violation = constraint.example_violation(proxy_values)
        return _ConstraintStep(
            constraint,
            constraint.example_violation(all_values),
            all_weights > 0,
            proxy_violation,
            indices=all_ids,
            local_indices=ids,
            primal_scale=share,
        )

    def _check_finite(self, constraints, finite) -> None:
        """One assertion for all constraints (`on_nonfinite="raise"`).

        A single `Assert` per step (an assertion costs a conditional in the
        graph); its message lists the constraints with a finite/non-finite
        flag each, and the step.
        """
        if self._tfc.on_nonfinite != "raise":
            return
        names = ", ".join(c.name for c in constraints)
        tf.debugging.Assert(
            tf.reduce_all(finite),
            [
                f"Non-finite (NaN or Inf) constraint value. Constraints "
                f"[{names}] finite:",
                finite,
                "at training step (optimizer iteration)",
                self.optimizer.iterations,
                "; no multiplier was updated. Pass on_nonfinite=skip to "
                "compile() to skip such dual steps instead.",
            ],
        )

    def _check_primal_dependence(self, steps) -> None:
        """At trace time: do primal terms depend on trainable weights?

        A proxy without a gradient is an error (the primal step could not
        follow it); a constraint without one only gets a warning, since its
        multiplier still moves (e.g. a constraint on data statistics).
        Symbolic gradients that are not used are pruned from the graph. It
        runs in every trace (under a strategy, every replica traces the
        same ops).
        """
        if not tf.inside_function():
            return
        variables = [v.value for v in self.trainable_weights]
        for step in steps:
            if step.proxy_violation is None or not variables:
                continue
            gradients = tf.gradients(
                tf.reduce_sum(step.proxy_violation), variables
            )
            if any(g is not None for g in gradients):
                continue
            constraint = step.constraint
            if constraint.proxy is not None:
                raise ValueError(
                    f"Constraint '{constraint.name}': its proxy has no "
                    "gradient with respect to any trainable weight, so the "
                    "primal step cannot follow it. A proxy must be a "
                    "differentiable function of the model's outputs or "
                    "weights."
                )
            import warnings

            warnings.warn(
                f"Constraint '{constraint.name}' does not depend on any "
                "trainable weight: the primal step cannot reduce its "
                "violation (only its multiplier moves). Give a "
                "differentiable `proxy` if its value has no gradient.",
                UserWarning,
                stacklevel=2,
            )

    def _constraint_terms(self, steps) -> tf.Tensor:
        """`Σ stop_gradient(w) · v` over constraints (primal objective).

        For per-example constraints each example's term is weighted by its
        share of the global batch, `w_i / Σ w`, after `w` is formed from the
        example's own violation.
        """
        formulation = self._tfc.formulation
        total = tf.constant(0.0, tf.float32)
        for step in steps:
            name = step.constraint.name
            violation = step.proxy_violation
            penalty = self._tfc.penalties.get(name)
            multiplier = read_entries(
                self._tfc.multipliers[name], step.local_indices
            )
            weight = formulation.primal_weight(
                tf.stop_gradient(violation),
                multiplier,
                None if penalty is None else tf.convert_to_tensor(penalty),
                step.constraint.is_equality,
            )
            if step.primal_scale is not None:
                weight = weight * step.primal_scale
            total += tf.reduce_sum(tf.stop_gradient(weight) * violation)
        if self._tfc.on_nonfinite == "skip" and steps:
            # A skipped batch trains on the loss alone: a NaN constraint
            # term must not reach the weights either.
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(s.violation)) for s in steps]
            )
            total = tf.where(finite, total, tf.zeros_like(total))
        return total

    def _scheduled_dual_step(self, steps, iteration) -> None:
        every, warmup = self._tfc.schedule
        if every == "epoch" or not steps:
            return
        if every == 1 and warmup == 0:
            self._dual_step(steps)
            return
        due = tf.logical_and(
            iteration >= warmup, (iteration - warmup) % every == 0
        )

        def run():
            self._dual_step(steps)
            return tf.constant(True)

        tf.cond(due, run, lambda: tf.constant(False))

    def _dual_step(self, steps) -> None:
        """Moves multipliers (and penalties) given global-batch violations.

        For each constraint: `λ ← Π(propose(λ, v))` on entries with data,
        where `Π` projects inequality multipliers onto `[0, max]` (equality
        ones onto `[-max, max]`); then the penalty coefficient (if any)
        follows the formulation's growth rule.
        """
        state = self._tfc
        formulation = state.formulation
        dual = state.dual_optimizer
        if dual is None and not formulation.has_penalty:
            return
        for step in steps:
            constraint = step.constraint
            name = constraint.name
            penalty = state.penalties.get(name)
            penalty_value = (
                None if penalty is None else tf.convert_to_tensor(penalty)
            )
            violation = step.violation
            if getattr(dual, "stateful", True) or penalty is not None:
                # Masked entries must not reach optimizer state/penalties.
                violation = tf.where(
                    step.mask, violation, tf.zeros_like(violation)
                )
            if dual is not None:
                multiplier = state.multipliers[name]
                indices = step.indices
                old = read_entries(multiplier, indices)
                proposed = _propose(
                    dual,
                    name,
                    multiplier,
                    violation,
                    step.mask,
                    penalty_value,
                    indices,
                )
                new = _project(
                    tf.where(step.mask, proposed, old),
                    constraint,
                    formulation.max_multiplier,
                )
                write_entries(multiplier, new, indices)
            if penalty is not None:
                worst = tf.reduce_max(constraint.positive_violation(violation))
                grown = formulation.next_penalty(penalty_value, worst)
                # A step without any data (e.g. a skipped non-finite batch)
                # leaves the penalty as it is.
                penalty.assign(
                    tf.where(tf.reduce_any(step.mask), grown, penalty_value)
                )
        if dual is not None:
            dual.finish_step()

    def _epoch_violations(self) -> list:
        """`(violation, mask)` per constraint from the epoch aggregates."""
        values = []
        for constraint in self._tfc.constraints:
            metric = self._tfc.metrics[constraint.name]
            totals = tuple(tf.convert_to_tensor(t) for t in metric.totals)
            violation = constraint.violation(constraint.result(totals))
            mask = tf.math.is_finite(violation)
            valid = constraint.valid(totals)
            if valid is not None:
                mask = tf.logical_and(mask, valid)
            values.append((violation.numpy(), mask.numpy()))
        return values

    def _run_epoch_dual_step(self, values: list) -> None:
        """One dual step from dataset-level violations (eager, all replicas).

        The compiled function is cached and rebuilt only when constraints
        are added.
        """
        cached = self.__dict__.get("_tfc_epoch_dual_step")
        if cached is None:
            constraints = list(self._tfc.constraints)
            strategy = self.distribute_strategy

            def replica_step(violations, masks):
                self._dual_step(
                    [
                        _ConstraintStep(c, v, m, None)
                        for c, v, m in zip(constraints, violations, masks)
                    ]
                )
                return tf.constant(0)

            cached = tf.function(
                lambda v, m: strategy.run(replica_step, args=(v, m))
            )
            self.__dict__["_tfc_epoch_dual_step"] = cached
        cached(
            [tf.constant(v, tf.float32) for v, _ in values],
            [tf.constant(m, tf.bool) for _, m in values],
        )

    # ------------------------------------------------------ constraint setup
    def _as_constraint(self, constraint, kind, bound, name, proxy, tolerance):
        if isinstance(constraint, Constraint):
            overrides = {
                "kind": kind,
                "bound": bound,
                "name": name,
                "proxy": proxy,
                "tolerance": tolerance,
            }
            changes = {k: v for k, v in overrides.items() if v is not None}
            if changes:
                constraint = constraint.copy(**changes)
            constraint.require_bound()
            return constraint
        label = name or getattr(constraint, "__name__", "constraint")
        if not callable(constraint):
            raise TypeError(
                f"Constraint '{label}': expected a callable `fn(batch)` or a "
                f"`tfc.Constraint`, got {constraint!r}."
            )
        if kind is None:
            raise ValueError(
                f"Constraint '{label}': `kind` is required for a callable "
                "constraint ('<=', '>=' or '==')."
            )
        return FunctionConstraint(
            constraint,
            kind,
            bound,
            name=name,
            proxy=proxy,
            tolerance=1e-4 if tolerance is None else tolerance,
        )

    def _register_constraint(self, constraint, multiplier_init):
        state = self._tfc
        name = constraint.name
        if name in state.multipliers:
            raise ValueError(
                f"Constraint '{name}': a constraint with this name already "
                "exists in the model. Pass a unique `name=`."
            )
        taken = {key for other in state.multipliers for key in _log_keys(other)}
        if set(_log_keys(name)) & taken:
            raise ValueError(
                f"Constraint '{name}': its log keys {_log_keys(name)} clash "
                "with those of an existing constraint; pass another `name=`."
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"Constraint '{name}': this name is reserved for Keras logs; "
                "pass another `name=`."
            )
        initial = _check_multiplier_init(multiplier_init, constraint)
        started = any(
            getattr(self, attr, None) is not None
            for attr in ("train_function", "test_function")
        )
        with self._state_creation():
            multiplier = self.add_weight(
                name=f"{name}_multiplier",
                shape=constraint.shape,
                initializer=keras.initializers.Constant(initial),
                trainable=False,
                dtype="float32",
                autocast=False,
            )
            state.multipliers[name] = multiplier
            state.multiplier_inits[name] = initial
            state.constraints.append(constraint)
            metric = ConstraintMetric(constraint, lambda: multiplier)
            state.metrics[name] = metric
            # As a model attribute, Keras tracks the metrics: they join
            # `model.metrics` (reset each epoch, read for epoch logs).
            self._tfc_metrics = list(state.metrics.values())
        if self.compiled:
            self._build_dual_state()
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

        callbacks = self._with_safeguards(callbacks)
        warn_objective_only_callbacks(callbacks, self)
        link_keras_tensorboard(callbacks)
        with _keras_compat.chief_only_writes(
            callbacks, self.distribute_strategy
        ):
            return self._fit(args, callbacks, kwargs)

    def _fit(self, args, callbacks, kwargs):
        skip = _batches_done_in_backup(callbacks)
        if not skip:
            return super().fit(*args, callbacks=callbacks, **kwargs)
        with self.distribute_strategy.scope():
            self.__dict__["_tfc_resume_skip"] = tf.Variable(
                skip, dtype=tf.int64, trainable=False
            )
        self.train_function = None
        try:
            return super().fit(*args, callbacks=callbacks, **kwargs)
        finally:
            del self.__dict__["_tfc_resume_skip"]
            self.train_function = None

    def _with_safeguards(self, callbacks):
        from tfconstrain.safeguards import ConstraintDiagnostics
        from tfconstrain.safeguards import MultiplierGrowthMonitor

        if isinstance(callbacks, keras.callbacks.CallbackList):
            return callbacks
        callbacks = list(callbacks or [])
        for monitor in (MultiplierGrowthMonitor, ConstraintDiagnostics):
            if not any(isinstance(c, monitor) for c in callbacks):
                callbacks.append(monitor())
        return callbacks

    def make_train_function(self, force=False):
        self._collect_layer_constraints()
        return super().make_train_function(force=force)

    def make_test_function(self, force=False):
        self._collect_layer_constraints()
        return super().make_test_function(force=force)

    def _build_dual_state(self) -> None:
        """(Re)creates penalty and dual-optimizer state, outside any step.

        Values of state that survives the rebuild (same variable name and
        shape) are kept, so adding a constraint after `compile` or re-running
        `compile` with the same formulation loses nothing.
        """
        state = self._tfc
        if state.formulation is None:
            return
        previous = {
            v.path: keras.ops.convert_to_numpy(v) for v in state.dual_variables
        }
        old_keras = self.__dict__.get("_dual_keras_optimizer")
        previous_slots = {}
        if old_keras is not None and old_keras.built:
            previous_slots = {
                v.name: keras.ops.convert_to_numpy(v)
                for v in old_keras.variables
            }
        dual = state.dual_optimizer
        if isinstance(dual, optimizers_module.KerasDualOptimizer):
            if dual.optimizer.built:
                # A built Keras optimizer cannot take new variables: clone.
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    dual = optimizers_module.KerasDualOptimizer(dual.optimizer)
                state.dual_optimizer = dual
            if any(c.indexed for c in state.constraints) and (
                optimizers_module.keras_adapter.has_momentum(
                    dual.optimizer.get_config()
                )
            ):
                raise ValueError(
                    "Per-example constraints "
                    f"{[c.name for c in state.constraints if c.indexed]} "
                    "update only the entries of each batch, but the dual "
                    f"optimizer {type(dual.optimizer).__name__} has momentum "
                    "and would move every entry. Use gradient ascent (a "
                    "float), `tfc.optimizers.NuPI`, or a Keras optimizer "
                    "without momentum."
                )
        with self._state_creation():
            for variable in state.dual_variables:
                self._untrack_variable(variable)
            state.dual_variables = []
            state.penalties = {}

            def create_state(name, shape, initial_value):
                variable = self.add_weight(
                    name=name,
                    shape=shape,
                    initializer=keras.initializers.Constant(initial_value),
                    trainable=False,
                    dtype="float32",
                    autocast=False,
                )
                state.dual_variables.append(variable)
                return variable

            formulation = state.formulation
            for constraint in state.constraints:
                if formulation.has_penalty:
                    state.penalties[constraint.name] = create_state(
                        f"{constraint.name}_penalty",
                        (),
                        formulation.initial_penalty,
                    )
            if state.dual_optimizer is not None:
                state.dual_optimizer.build(
                    dict(state.multipliers), create_state
                )
            self._dual_keras_optimizer = getattr(
                state.dual_optimizer, "optimizer", None
            )
        for variable in state.dual_variables:
            if variable.path in previous and tuple(variable.shape) == tuple(
                previous[variable.path].shape
            ):
                variable.assign(previous[variable.path])
        new_keras = self.__dict__.get("_dual_keras_optimizer")
        if new_keras is not None and previous_slots:
            for variable in new_keras.variables:
                value = previous_slots.get(variable.name)
                if value is not None and tuple(value.shape) == tuple(
                    variable.shape
                ):
                    variable.assign(value)
        for name, metric in state.metrics.items():
            penalty = state.penalties.get(name)
            metric.set_penalty(
                None if penalty is None else (lambda p=penalty: p)
            )
        if isinstance(state.formulation, formulations_module.Penalty):
            for multiplier in state.multipliers.values():
                multiplier.assign(
                    tf.fill(multiplier.shape, state.formulation.coefficient)
                )

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        # Keras saves multipliers and dual state through the model's own
        # variable list, which TensorFlow's `tf.train.Checkpoint` does not
        # follow (it follows attributes). Name them explicitly.
        children = super()._trackable_children(save_type, **kwargs)
        state = self.__dict__.get("_tfc")
        if state is not None:
            for variable in list(state.multipliers.values()) + list(
                state.dual_variables
            ):
                children[f"tfc/{variable.name}"] = variable
        return children

    @contextlib.contextmanager
    def _state_creation(self):
        """Creates variables in the model's strategy scope, even if built."""
        tracker = self._tracker
        was_locked = tracker.locked
        tracker.unlock()
        try:
            with self.distribute_strategy.scope():
                yield
        finally:
            if was_locked:
                tracker.lock()

    # ----------------------------------------------------- side information
    def _check_side_information(self, keys) -> tuple:
        if isinstance(keys, str):
            keys = (keys,)
        keys = tuple(keys or ())
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(
                    "`side_information` must be a tuple of strings, got "
                    f"{keys!r}."
                )
        inputs = self._input_names()
        clash = sorted(set(keys) & set(inputs))
        if clash:
            raise ValueError(
                f"Side-information key(s) {clash} collide with model input "
                f"name(s) {sorted(inputs)}. Rename the side-information key."
            )
        return keys

    def _input_names(self) -> tuple:
        if not isinstance(self, Functional):
            return ()
        names = [t.name for t in tf.nest.flatten(self.inputs)]
        structure = _keras_compat.input_structure(self)
        if isinstance(structure, dict):
            names.extend(structure)
        return tuple(names)

    def _split_side_information(self, x):
        """Removes side-information keys from a dict `x`.

        Returns:
            `(model_input, features)`.
        """
        state = self.__dict__.get("_tfc")
        if not isinstance(x, dict) or state is None:
            return x, {}
        declared = set(state.side_information)
        inputs = set(self._input_names())
        is_functional = isinstance(self, Functional)
        side = [
            key
            for key in x
            if key in declared or (is_functional and key not in inputs)
        ]
        structure = _keras_compat.input_structure(self)
        single_input = isinstance(self, keras.Sequential) or (
            is_functional and not isinstance(structure, dict)
        )
        if not side:
            if single_input and len(x) == 1:
                return next(iter(x.values())), {}
            return x, {}
        features = {key: x[key] for key in side}
        rest = {key: value for key, value in x.items() if key not in side}
        if not rest:
            raise ValueError(
                f"The input dict has only side-information keys "
                f"{sorted(features)}; the model input is missing."
            )
        # Functional models with one non-dict input and Sequential models
        # take the remaining tensor itself; subclassed models receive the
        # dict without the side-information keys, as their `call` expects.
        if len(rest) == 1 and single_input:
            rest = next(iter(rest.values()))
        return rest, features

    # --------------------------------------------------------------- config
    def get_config(self):
        config = super().get_config()
        state = self._tfc
        config["side_information"] = list(state.side_information)
        config["constraints"] = [
            {
                "constraint": keras.saving.serialize_keras_object(c),
                "multiplier_init": np.asarray(
                    state.multiplier_inits[c.name]
                ).tolist(),
            }
            for c in state.constraints
            if c.name not in state.layer_constraint_names
        ]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        constraints = config.pop("constraints", [])
        side_information = tuple(config.pop("side_information", ()))
        base = cls.__dict__.get("_constrained_base") or cls
        if all(
            key in config
            for key in ("name", "layers", "input_layers", "output_layers")
        ) and not issubclass(base, keras.Sequential):
            twin = _functional_twin(base)
            model = keras.Model.from_config.__func__(
                twin, config, custom_objects=custom_objects
            )
        elif issubclass(base, keras.Sequential):
            model = keras.Sequential.from_config.__func__(
                base, config, custom_objects=custom_objects
            )
        else:
            model = base(**config)
        model._tfc.side_information = model._check_side_information(
            side_information
        )
        for entry in constraints:
            constraint = keras.saving.deserialize_keras_object(
                entry["constraint"], custom_objects=custom_objects
            )
            model.add_constraint(
                constraint, multiplier_init=entry.get("multiplier_init", 0.0)
            )
        return model


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


def _propose(dual, name, multiplier, violation, mask, penalty, indices):
    """`dual.propose` for all entries, or for the entries at `indices`.

    Dual optimizers that declare `supports_indices` read and write only
    those entries (and their state); others see a dense violation that is
    zero, and masked out, everywhere else, and the result is gathered.
    """
    if indices is None:
        return dual.propose(name, multiplier, violation, mask, penalty)
    if getattr(dual, "supports_indices", False):
        return dual.propose(
            name, multiplier, violation, mask, penalty, indices=indices
        )
    shape = tf.shape(multiplier)
    positions = indices[:, None]
    dense_violation = tf.scatter_nd(positions, violation, shape)
    dense_mask = tf.scatter_nd(positions, tf.cast(mask, tf.int32), shape) > 0
    proposed = dual.propose(
        name, multiplier, dense_violation, dense_mask, penalty
    )
    return tf.gather(proposed, indices)


def _valid_mask(constraint: Constraint, statistics, violation):
    """Entries with data (all of them when the constraint cannot tell)."""
    valid = constraint.valid(statistics)
    return tf.ones_like(violation, tf.bool) if valid is None else valid


def _log_keys(name: str) -> tuple:
    """The epoch-log keys a constraint named `name` writes."""
    return (name, f"{name}_violation", f"{name}_multiplier", f"{name}_penalty")


def _batches_done_in_backup(callbacks) -> int:
    """Batches of the interrupted epoch already in a BackupAndRestore backup.

    Keras' metadata holds the epoch and the index of the last batch at which
    it saved (with `save_freq=n`); `0` when there is nothing to skip.
    """
    import json
    import os

    for callback in callbacks or ():
        if not isinstance(callback, keras.callbacks.BackupAndRestore):
            continue
        if callback.save_freq == "epoch":
            return 0
        path = _keras_compat.backup_metadata_path(callback)
        if not os.path.exists(path):
            return 0
        with open(path) as file:
            metadata = json.load(file)
        return int(metadata.get("batch", -1)) + 1
    return 0


def _project(value, constraint: Constraint, cap: float | None):
    if constraint.is_equality:
        if cap is None:
            return value
        return tf.clip_by_value(value, -cap, cap)
    value = tf.maximum(value, 0.0)
    if cap is not None:
        value = tf.minimum(value, cap)
    return value


def _check_multiplier_init(value, constraint: Constraint) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"Constraint '{constraint.name}': `multiplier_init` must be a "
            f"number or an array, got {value!r}."
        ) from error
    try:
        array = np.broadcast_to(array, constraint.shape).copy()
    except ValueError as error:
        raise ValueError(
            f"Constraint '{constraint.name}': `multiplier_init` of shape "
            f"{array.shape} does not fit the constraint's shape "
            f"{constraint.shape}."
        ) from error
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"Constraint '{constraint.name}': `multiplier_init` must be "
            f"finite, got {value!r}."
        )
    if not constraint.is_equality and np.any(array < 0):
        raise ValueError(
            f"Constraint '{constraint.name}': `multiplier_init` must be >= 0 "
            f"for an inequality constraint, got {value!r}."
        )
    return array


def _batch_size(x):
    leaf = next(leaf for leaf in tf.nest.flatten(x) if leaf is not None)
    return tf.shape(leaf)[0]


def _with_constraint_name(error: Exception, constraint: Constraint, batch):
    message = str(error.args[0]) if error.args else str(error)
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else "?"
        return KeyError(
            f"Constraint '{constraint.name}': key {key!r} is not in the "
            f"batch's side information (available: "
            f"{sorted(batch.features)}). Put it in the `x` dict (and, for "
            "subclassed models, declare it in `side_information=`)."
        )
    if constraint.name in message:
        return error
    return type(error)(f"Constraint '{constraint.name}': {message}")
