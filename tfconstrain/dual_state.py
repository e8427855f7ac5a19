"""`DualState`: everything the dual side of a `ConstrainedModel` holds.

One object per model owns the constraints and all their state: multipliers
(dense, and per-example for indexed constraints), penalty coefficients,
dual-optimizer slots, the per-constraint epoch metrics, the compile choices
(formulation, dual optimizer, update order, non-finite policy) and the dual
schedule. Variables are created with the model's `add_weight`, so Keras
saves them with the model (`save`, `save_weights`) and TensorFlow's
`tf.train.Checkpoint` finds them through `checkpoint_variables()`.
"""

from __future__ import annotations

import warnings
from typing import Any
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import _keras_compat
from tfconstrain import formulations as formulations_module
from tfconstrain import optimizers as optimizers_module
from tfconstrain.constraint import Constraint
from tfconstrain.metrics import ConstraintMetric
from tfconstrain.metrics import StatisticsAccumulator

RESERVED_NAMES = ("loss", "lagrangian", "feasible")
UPDATE_SCHEMES = ("alternating", "simultaneous", "alternating_primal_first")


class DualSchedule(NamedTuple):
    """When the dual step runs: every `every` steps after `warmup` steps.

    Set by `tfc.MultiplierCallback`; `every="epoch"` runs it once per
    epoch from dataset-level violations instead.
    """

    every: Any = 1  # int >= 1, or "epoch"
    warmup: int = 0


class DualState:
    """The constraints of a model and all their state.

    Attributes:
        constraints: The constraints, in registration order.
        multipliers: `name -> multiplier variable` (shape `()` or `(k,)`).
        multiplier_inits: `name -> initial multiplier` (numpy array).
        metrics: `name -> ConstraintMetric` (epoch accumulation).
        penalties: `name -> penalty variable` (penalty formulations).
        dual_variables: Penalties and dual-optimizer state variables.
        side_information: Declared side-information keys.
        layer_constraint_names: Names of constraints that layers declared.
        formulation, dual_optimizer, dual_optimizer_argument, update,
        on_nonfinite: What `compile` received (resolved).
        skip_counter: `keras.metrics.Sum` of skipped batches, or `None`.
        schedule: The `DualSchedule`.
    """

    def __init__(self, side_information: tuple = ()):
        self.constraints: list[Constraint] = []
        self.multipliers: dict[str, Any] = {}
        self.multiplier_inits: dict[str, np.ndarray] = {}
        self.metrics: dict[str, ConstraintMetric] = {}
        self.penalties: dict[str, Any] = {}
        self.dual_variables: list = []
        self.initial_values: dict = {}
        self.side_information = tuple(side_information)
        self.layer_constraint_names: set = set()
        self.formulation = None
        self.dual_optimizer = None
        self.dual_optimizer_argument = None
        self.update = "alternating"
        self.on_nonfinite = "raise"
        self.skip_counter = None
        self.schedule = DualSchedule()
        self.keras_dual_optimizer = None
        # Scalar constraints of one kind class share one vector in the
        # primal term and the dual rule (`evaluation.vector_groups`);
        # `False` takes them one by one (same values; for tests).
        self.vectorize = True

    def checkpoint_variables(self) -> dict[str, Any]:
        """`key -> variable` for TensorFlow's object-based checkpoints."""
        return {
            f"tfc/{variable.name}": variable
            for variable in list(self.multipliers.values())
            + self.dual_variables
        }

    # ------------------------------------------------------------ register
    def register(self, model, constraint: Constraint, multiplier_init) -> None:
        """Adds `constraint` with its multiplier and metric to `model`.

        Raises:
            ValueError: for a duplicate, clashing or reserved name, or a bad
                `multiplier_init`.
        """
        name = constraint.name
        if name in self.multipliers:
            raise ValueError(
                f"Constraint '{name}': a constraint with this name already "
                "exists in the model. Pass a unique `name=`."
            )
        taken = {key for other in self.multipliers for key in log_keys(other)}
        if set(log_keys(name)) & taken:
            raise ValueError(
                f"Constraint '{name}': its log keys {log_keys(name)} clash "
                "with those of an existing constraint; pass another `name=`."
            )
        if name in RESERVED_NAMES:
            raise ValueError(
                f"Constraint '{name}': this name is reserved for Keras logs; "
                "pass another `name=`."
            )
        initial = check_multiplier_init(multiplier_init, constraint)
        with _keras_compat.creating_state(model):
            multiplier = model.add_weight(
                name=f"{name}_multiplier",
                shape=constraint.shape,
                initializer=keras.initializers.Constant(initial),
                trainable=False,
                dtype="float32",
                autocast=False,
            )
            self.multipliers[name] = multiplier
            self.multiplier_inits[name] = initial
            self.constraints.append(constraint)
            self.metrics[name] = ConstraintMetric(
                constraint, lambda: multiplier
            )
            dense = [c for c in self.constraints if not c.indexed]
            accumulator = StatisticsAccumulator(dense) if dense else None
            for constraint in dense:
                self.metrics[constraint.name].accumulator = accumulator
            # As a model attribute, Keras tracks the metrics: they join
            # `model.metrics` (reset each epoch, read for epoch logs).
            model._tfc_metrics = [accumulator] * bool(dense) + list(
                self.metrics.values()
            )

    # -------------------------------------------------------------- compile
    def configure(self, formulation, dual_optimizer, update, on_nonfinite):
        """Validates and resolves `compile`'s constrained arguments.

        Raises:
            ValueError: for an unknown `update` or `on_nonfinite`.
            TypeError: for a `formulation` or `dual_optimizer` of the wrong
                type.
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
                warnings.warn(
                    f"{type(formulation).__name__} keeps the multipliers "
                    "fixed, so `dual_optimizer` is not used.",
                    UserWarning,
                    stacklevel=3,
                )
                dual = None
        self.formulation = formulation
        self.dual_optimizer = dual
        self.dual_optimizer_argument = dual_optimizer
        self.update = update
        self.on_nonfinite = on_nonfinite

    def build(self, model) -> None:
        """Creates penalty and dual-optimizer state, outside any step.

        State is created once: a later `build` (a constraint added after
        `compile`, `compile` called again) reuses every variable that the
        new formulation and dual optimizer ask for under the same name and
        shape, with its value, and drops the others. Only the slots of a
        Keras dual optimizer are copied into a fresh optimizer, because a
        built Keras optimizer cannot take new variables.
        """
        if self.formulation is None:
            return
        old_keras = self.keras_dual_optimizer
        previous_slots = {}
        if old_keras is not None and old_keras.built:
            previous_slots = {
                v.name: keras.ops.convert_to_numpy(v)
                for v in old_keras.variables
            }
        self._check_keras_dual_optimizer()
        unused = {variable.name: variable for variable in self.dual_variables}
        self.dual_variables = []
        self.initial_values = {}
        self.penalties = {}
        with _keras_compat.creating_state(model):

            def create_state(name, shape, initial_value):
                variable = unused.pop(name, None)
                if variable is None or tuple(variable.shape) != tuple(shape):
                    if variable is not None:
                        unused[f"{name} (old shape)"] = variable
                    variable = model.add_weight(
                        name=name,
                        shape=shape,
                        initializer=keras.initializers.Constant(initial_value),
                        trainable=False,
                        dtype="float32",
                        autocast=False,
                    )
                self.dual_variables.append(variable)
                self.initial_values[id(variable)] = initial_value
                return variable

            if self.formulation.has_penalty:
                for constraint in self.constraints:
                    self.penalties[constraint.name] = create_state(
                        f"{constraint.name}_penalty",
                        (),
                        self.formulation.initial_penalty,
                    )
            if self.dual_optimizer is not None:
                set_constraints = getattr(
                    self.dual_optimizer, "set_constraints", None
                )
                if set_constraints is not None:
                    set_constraints({c.name: c for c in self.constraints})
                self.dual_optimizer.build(dict(self.multipliers), create_state)
            for variable in unused.values():
                _keras_compat.untrack_variable(model, variable)
            self.keras_dual_optimizer = getattr(
                self.dual_optimizer, "optimizer", None
            )
            # Tracked as a model attribute: saved with the model.
            model._dual_keras_optimizer = self.keras_dual_optimizer
        if self.keras_dual_optimizer is not None and previous_slots:
            for variable in self.keras_dual_optimizer.variables:
                value = previous_slots.get(variable.name)
                if value is not None and value.shape == tuple(variable.shape):
                    variable.assign(value)
        for name, metric in self.metrics.items():
            penalty = self.penalties.get(name)
            metric.set_penalty(
                None if penalty is None else (lambda p=penalty: p)
            )
        if isinstance(self.formulation, formulations_module.Penalty):
            for multiplier in self.multipliers.values():
                multiplier.assign(
                    tf.fill(multiplier.shape, self.formulation.coefficient)
                )

    def reset_dual_state(self) -> None:
        """Every penalty and dual-optimizer state variable back to the value
        it was created with."""
        for variable in self.dual_variables:
            initial = self.initial_values[id(variable)]
            variable.assign(tf.fill(variable.shape, initial))

    def without_dual_state(self, variables: list) -> list:
        """`variables` without penalties and dual-optimizer state (in their
        order): the layout of a model saved when its dual optimizer had no
        state, such as tfconstrain 0.1's default, plain ascent."""
        state = {id(variable) for variable in self.dual_variables}
        return [v for v in variables if id(v) not in state]

    def _check_keras_dual_optimizer(self) -> None:
        dual = self.dual_optimizer
        if not isinstance(dual, optimizers_module.KerasDualOptimizer):
            return
        if dual.optimizer.built:
            # A built Keras optimizer cannot take new variables: clone.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dual = optimizers_module.KerasDualOptimizer(dual.optimizer)
            self.dual_optimizer = dual
        indexed = [c.name for c in self.constraints if c.indexed]
        if indexed and optimizers_module.keras_adapter.has_momentum(
            dual.optimizer.get_config()
        ):
            raise ValueError(
                f"Per-example constraints {indexed} update only the entries "
                "of each batch, but the dual optimizer "
                f"{type(dual.optimizer).__name__} has momentum and would "
                "move every entry. Use gradient ascent (a float), "
                "`tfc.optimizers.NuPI`, or a Keras optimizer without momentum."
            )


def log_keys(name: str) -> tuple:
    """The epoch-log keys a constraint named `name` writes."""
    return (name, f"{name}_violation", f"{name}_multiplier", f"{name}_penalty")


def check_multiplier_init(value, constraint: Constraint) -> np.ndarray:
    """`multiplier_init` as a float32 array of the constraint's shape.

    Raises:
        TypeError: if it is not a number or an array.
        ValueError: if its shape does not fit, it is not finite, or it is
            negative for an inequality constraint.
    """
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
