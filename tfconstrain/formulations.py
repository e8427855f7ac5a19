"""Formulations: how constraints and multipliers enter the primal objective.

Every formulation adds, for each constraint with violation `v`, a term
`ψ(v; λ, c)` to the loss `f`. The train step only needs the *weight*
`w = ∂ψ/∂v`, evaluated at the global-batch violation and held constant
(stop-gradient): the primal gradient is then `∇f + Σ w · ∇v`, the exact
gradient of the formulation's objective. Formulations also say whether the
multipliers move (dual step) and how penalty coefficients grow.

| formulation         | ψ(v)                         | w = ∂ψ/∂v     |
| ------------------- | ---------------------------- | ------------- |
| Lagrangian          | λ·v                          | λ             |
| AugmentedLagrangian | (1/2c)([λ + c·v]₊² - λ²) (≤) | [λ + c·v]₊    |
|                     | λ·v + (c/2)·v²           (=) | λ + c·v       |
| QuadraticPenalty    | (c/2)·max(0, v)²         (≤) | c·max(0, v)   |
|                     | (c/2)·v²                 (=) | c·v           |
| Penalty             | c·v                          | c             |

(≤) marks inequality constraints (`"<="` and `">="`, whose violation is
already sign-adjusted), (=) equality constraints.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import tensorflow as tf

from tfconstrain.evaluation import vector_groups
from tfconstrain.optimizers.base import DualOptimizer
from tfconstrain.optimizers.base import PenaltyStepAscent
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import stack_values
from tfconstrain.optimizers.scaled import ScaledAscent


class Formulation:
    """Base class: a primal objective and the rules of the dual step.

    Attributes:
        updates_multipliers: Whether the dual step moves the multipliers.
        has_penalty: Whether each constraint has a penalty coefficient `c`
            (model state, logged as `NAME_penalty`).
    """

    updates_multipliers = True
    has_penalty = False

    def primal_weight(
        self,
        violation: tf.Tensor,
        multiplier: tf.Tensor,
        penalty: tf.Tensor | None,
        is_equality: bool,
    ) -> tf.Tensor:
        """`w = ∂ψ/∂v` at the given violation (treated as a constant)."""
        raise NotImplementedError

    def objective_term(
        self,
        violation: tf.Tensor,
        multiplier: tf.Tensor,
        penalty: tf.Tensor | None,
        is_equality: bool,
    ) -> tf.Tensor:
        """`ψ(v)` per entry, elementwise (`primal_weight` is its
        derivative); the epoch logs' `lagrangian` sums it."""
        raise NotImplementedError

    def primal_objective(
        self,
        loss: tf.Tensor,
        steps: list,
        multipliers: dict,
        penalties: dict,
        skip_nonfinite: bool = False,
        vectorize: bool = True,
    ) -> tf.Tensor:
        """The objective the primal step minimises, `f + Σ_j sg(w_j)·v_j`.

        Its gradient is `∇f + Σ_j w_j·∇v_j` with `w = ∂ψ/∂v` held constant
        (`primal_weight`), the gradient of `f + Σ_j ψ(v_j)`. For
        per-example constraints each example's weight is scaled by its
        share of the global batch (`step.primal_scale`, `w_i / Σ w`).

        Args:
            loss: The step's loss `f` (any float dtype; the result has it).
            steps: The `ConstraintStep`s of the batch
                (`tfconstrain.evaluation`), with their proxy violations.
            multipliers: `name -> multiplier variable`.
            penalties: `name -> penalty variable` (penalty formulations).
            skip_nonfinite: When `True`, a batch with a non-finite
                violation trains on `f` alone (`on_nonfinite="skip"`).
            vectorize: Whether scalar constraints of one kind class are
                weighted as one vector (`evaluation.vector_groups`; the
                same values as one by one).

        Returns:
            The scalar objective.
        """
        total = tf.constant(0.0, tf.float32)
        for group in vector_groups(steps, vectorize):
            names = [step.constraint.name for step in group]
            if len(group) == 1:
                violation = group[0].proxy_violation
                multiplier = read_entries(
                    multipliers[names[0]], group[0].local_indices
                )
                penalty = penalties.get(names[0])
                penalty = (
                    None if penalty is None else tf.convert_to_tensor(penalty)
                )
            else:
                # Scalar constraints of one kind class: one vector.
                violation = tf.stack([step.proxy_violation for step in group])
                multiplier = stack_values([multipliers[n] for n in names])
                penalty = (
                    stack_values([penalties[n] for n in names])
                    if names[0] in penalties
                    else None
                )
            weight = self.primal_weight(
                tf.stop_gradient(violation),
                multiplier,
                penalty,
                group[0].constraint.is_equality,
            )
            if group[0].primal_scale is not None:
                weight = weight * group[0].primal_scale
            total += tf.reduce_sum(tf.stop_gradient(weight) * violation)
        if skip_nonfinite and steps:
            finite = tf.reduce_all(
                [tf.reduce_all(tf.math.is_finite(s.violation)) for s in steps]
            )
            total = tf.where(finite, total, tf.zeros_like(total))
        return loss + tf.cast(total, loss.dtype)

    def default_dual_optimizer(self) -> DualOptimizer | None:
        """The dual optimizer used when `compile` gets none: scale-free PI
        control, `tfc.optimizers.ScaledAscent(1.0, kp=3.0)` (chosen by the
        catalogue study, docs/how-to/choosing_dual_method.md)."""
        return ScaledAscent(1.0, kp=3.0)

    @property
    def initial_penalty(self) -> float | None:
        return None

    def next_penalty(
        self, penalty: tf.Tensor, max_violation: tf.Tensor
    ) -> tf.Tensor:
        """The penalty after a dual step whose violation is `max_violation`."""
        return penalty

    @property
    def max_multiplier(self) -> float | None:
        return None

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> Formulation:
        return cls(**config)

    def __repr__(self) -> str:
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"


def _check_max_multiplier(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not value > 0 or math.isnan(value):
        raise ValueError(
            f"`max_multiplier` must be a number > 0 or None, got {value}."
        )
    return value


@keras.saving.register_keras_serializable(package="tfconstrain")
class Lagrangian(Formulation):
    """The Lagrangian `L(θ, λ) = f(θ) + Σ λ · v(θ)`.

    Primal step: descent on `L` in `θ`, i.e. on `f + Σ λ·v` with `λ` held
    constant. Dual step: ascent in `λ` with the `dual_optimizer` given to
    `compile`; for plain gradient ascent (the default, `η = 1e-2`)

        λ ← [λ + η · v]₊     (inequality: projected onto λ >= 0)
        μ ← μ + η · h        (equality: free sign)

    Gradient descent-ascent converges when `L` is locally convex in `θ` at
    the solution; where it is not (e.g. `L` concave in `θ`), the iterates
    oscillate around the saddle point: use `tfc.optimizers.NuPI` with
    `kp > 0`, or `tfc.AugmentedLagrangian`.

    Example:

    ```python
    model.compile(optimizer="adam", loss="mse",
                  formulation=tfc.Lagrangian(max_multiplier=100.0),
                  dual_optimizer=0.05)
    ```

    Args:
        max_multiplier: Optional float > 0. Multipliers are clipped to
            `[0, max_multiplier]` (inequalities) or
            `[-max_multiplier, max_multiplier]` (equalities) after every dual
            step, a safeguard against runaway growth on infeasible problems.
            Defaults to `None` (no cap).
    """

    def __init__(self, max_multiplier: float | None = None):
        self._max_multiplier = _check_max_multiplier(max_multiplier)

    @property
    def max_multiplier(self):
        return self._max_multiplier

    def primal_weight(self, violation, multiplier, penalty, is_equality):
        return multiplier

    def objective_term(self, violation, multiplier, penalty, is_equality):
        return multiplier * violation

    def get_config(self):
        return {"max_multiplier": self._max_multiplier}


class _PenaltySchedule(Formulation):
    """Shared penalty-coefficient state and growth rule."""

    has_penalty = True

    def __init__(
        self,
        penalty: float = 1.0,
        penalty_growth: float | None = None,
        max_penalty: float | None = None,
        tolerance: float = 1e-4,
        penalty_increment: float | None = None,
        reset_on_feasible: bool = False,
    ):
        name = type(self).__name__
        penalty = _finite(penalty, "penalty", name)
        if not penalty > 0:
            raise ValueError(
                f"{name}: `penalty` must be > 0, got {penalty}. (A zero "
                "penalty makes the (1/2c) term undefined; use "
                "`tfc.Lagrangian()` for no penalty.)"
            )
        if penalty_growth is not None:
            penalty_growth = _finite(penalty_growth, "penalty_growth", name)
            if not penalty_growth > 1:
                raise ValueError(
                    f"{name}: `penalty_growth` must be a factor > 1, got "
                    f"{penalty_growth}."
                )
        if penalty_increment is not None:
            penalty_increment = _finite(
                penalty_increment, "penalty_increment", name
            )
            if not penalty_increment > 0:
                raise ValueError(
                    f"{name}: `penalty_increment` must be > 0, got "
                    f"{penalty_increment}."
                )
        if max_penalty is not None:
            max_penalty = float(max_penalty)
            if not max_penalty >= penalty:
                raise ValueError(
                    f"{name}: `max_penalty` ({max_penalty}) must be >= "
                    f"`penalty` ({penalty})."
                )
        tolerance = _finite(tolerance, "tolerance", name)
        if tolerance < 0:
            raise ValueError(f"{name}: `tolerance` must be >= 0.")
        self.penalty = penalty
        self.penalty_growth = penalty_growth
        self.max_penalty = max_penalty
        self.tolerance = tolerance
        self.penalty_increment = penalty_increment
        self.reset_on_feasible = bool(reset_on_feasible)

    @property
    def initial_penalty(self):
        return self.penalty

    def next_penalty(self, penalty, max_violation):
        """Grows `c` when the violation exceeds `tolerance`.

        `c ← min(c · growth + increment, max_penalty)` if the violation is
        above `tolerance`; otherwise `c` is kept, or reset to its initial
        value when `reset_on_feasible` is set.

        Args:
            penalty: The current `c` (scalar tensor).
            max_violation: The step's violation, max over entries of
                `max(0, v)` (`|v|` for equalities).

        Returns:
            The next `c`.
        """
        if self.penalty_growth is None and self.penalty_increment is None:
            if not self.reset_on_feasible:
                return penalty
        grown = penalty
        if self.penalty_growth is not None:
            grown = grown * self.penalty_growth
        if self.penalty_increment is not None:
            grown = grown + self.penalty_increment
        if self.max_penalty is not None:
            grown = tf.minimum(grown, self.max_penalty)
        feasible_value = (
            tf.constant(self.penalty, penalty.dtype)
            if self.reset_on_feasible
            else penalty
        )
        return tf.where(max_violation > self.tolerance, grown, feasible_value)

    def get_config(self):
        return {
            "penalty": self.penalty,
            "penalty_growth": self.penalty_growth,
            "max_penalty": self.max_penalty,
            "tolerance": self.tolerance,
            "penalty_increment": self.penalty_increment,
            "reset_on_feasible": self.reset_on_feasible,
        }


@keras.saving.register_keras_serializable(package="tfconstrain")
class AugmentedLagrangian(_PenaltySchedule):
    """The augmented Lagrangian (Powell-Hestenes-Rockafellar form).

    Primal objective, with penalty coefficient `c > 0`:

        f + Σ (1/2c) · ([λ + c·v]₊² - λ²)     for inequalities,
        f + Σ (μ·h + (c/2)·h²)                for equalities.

    Its primal weight is `w = [λ + c·v]₊` (`μ + c·h`): the multiplier
    estimate that the classical method of multipliers would move to. The
    quadratic part makes the objective locally convex in the weights at a
    solution when `c` is large enough, even where the plain Lagrangian is not
    (then gradient descent-ascent on `L` oscillates).

    Dual step, with the penalty `c` of the current step:

    - no `dual_optimizer` in `compile`: the classical step
      `λ ← [λ + c·v]₊` (`μ ← μ + c·h`), ascent with step size `c`. It assumes
      the primal has (nearly) minimised the objective between dual steps:
      with one primal step per dual step, choose the primal learning rate so
      that the weights can follow (`c` times the primal learning rate of
      order 0.1 to 1), or run the dual step every `n` steps with
      `tfc.MultiplierCallback(update_every=n)`;
    - otherwise the given dual optimizer (e.g. `dual_optimizer=0.1` for
      `λ ← [λ + 0.1·v]₊`, or `tfc.optimizers.NuPI(...)`).

    Penalty schedule, after each dual step: if the violation (max over
    entries of `max(0, v)`, or `|v|` for equalities) exceeds `tolerance`,

        c ← min(c · penalty_growth + penalty_increment, max_penalty)

    (a missing growth factor counts as 1, a missing increment as 0, a
    missing cap as ∞); otherwise `c` is kept, or reset to `penalty` with
    `reset_on_feasible=True`. The coefficients are model state
    (`model.penalties`), saved with the model and logged as `NAME_penalty`.

    Example:

    ```python
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="mse",
        formulation=tfc.AugmentedLagrangian(
            penalty=1.0, penalty_growth=2.0, max_penalty=100.0
        ),
    )
    ```

    Args:
        penalty: Float > 0. Initial `c`. Defaults to `1.0`.
        penalty_growth: Optional float > 1. Multiplicative growth factor.
            Defaults to `None` (no multiplicative growth).
        max_penalty: Optional float >= `penalty`. Cap on `c`. Defaults to
            `None` (no cap).
        tolerance: Float >= 0. Violation above which `c` grows. Defaults to
            `1e-4`.
        penalty_increment: Optional float > 0. Additive growth. Defaults to
            `None`.
        reset_on_feasible: Bool. Whether `c` returns to `penalty` after a
            dual step within `tolerance`. Defaults to `False`.
        max_multiplier: Optional float > 0. Cap on `λ` (on `|μ|` for
            equalities) after every dual step. Defaults to `None`.

    Raises:
        ValueError: for `penalty <= 0` (the `1/2c` term is undefined; use
            `tfc.Lagrangian()` for no penalty), a non-finite value, a
            growth factor <= 1, or `max_penalty < penalty`.
    """

    def __init__(
        self,
        penalty: float = 1.0,
        penalty_growth: float | None = None,
        max_penalty: float | None = None,
        tolerance: float = 1e-4,
        penalty_increment: float | None = None,
        reset_on_feasible: bool = False,
        max_multiplier: float | None = None,
    ):
        super().__init__(
            penalty,
            penalty_growth,
            max_penalty,
            tolerance,
            penalty_increment,
            reset_on_feasible,
        )
        self._max_multiplier = _check_max_multiplier(max_multiplier)

    @property
    def max_multiplier(self):
        return self._max_multiplier

    def default_dual_optimizer(self):
        return PenaltyStepAscent()

    def primal_weight(self, violation, multiplier, penalty, is_equality):
        shifted = multiplier + penalty * violation
        if is_equality:
            return shifted
        return tf.maximum(shifted, 0.0)

    def objective_term(self, violation, multiplier, penalty, is_equality):
        if is_equality:
            return multiplier * violation + 0.5 * penalty * violation**2
        shifted = tf.maximum(multiplier + penalty * violation, 0.0)
        return (shifted**2 - multiplier**2) / (2.0 * penalty)

    def get_config(self):
        config = super().get_config()
        config["max_multiplier"] = self._max_multiplier
        return config


@keras.saving.register_keras_serializable(package="tfconstrain")
class QuadraticPenalty(_PenaltySchedule):
    """The quadratic penalty method; multipliers do not move.

    Primal objective: `f + Σ (c/2) · max(0, v)²` for inequalities and
    `f + Σ (c/2) · v²` for equalities. Its minimiser violates an active
    constraint by about `λ*/c` (with `λ*` the optimal multiplier): only
    `c → ∞` makes it feasible, and a large `c` makes the problem
    ill-conditioned. `penalty_growth` / `penalty_increment` drive `c` up
    while the violation exceeds `tolerance`, with the same schedule as
    `tfc.AugmentedLagrangian`.

    Example:

    ```python
    model.compile(optimizer="sgd", loss="mse",
                  formulation=tfc.QuadraticPenalty(10.0))
    ```

    Args:
        penalty: Float > 0. Initial `c`. Defaults to `1.0`.
        penalty_growth: Optional float > 1. Multiplicative growth. Defaults
            to `None`.
        max_penalty: Optional float >= `penalty`. Cap on `c`. Defaults to
            `None`.
        tolerance: Float >= 0. Violation above which `c` grows. Defaults to
            `1e-4`.
        penalty_increment: Optional float > 0. Additive growth. Defaults to
            `None`.
        reset_on_feasible: Bool. Whether `c` returns to `penalty` when the
            violation is within `tolerance`. Defaults to `False`.
    """

    updates_multipliers = False

    def default_dual_optimizer(self):
        return None

    def primal_weight(self, violation, multiplier, penalty, is_equality):
        if is_equality:
            return penalty * violation
        return penalty * tf.maximum(violation, 0.0)

    def objective_term(self, violation, multiplier, penalty, is_equality):
        if not is_equality:
            violation = tf.maximum(violation, 0.0)
        return 0.5 * penalty * violation**2


@keras.saving.register_keras_serializable(package="tfconstrain")
class Penalty(Formulation):
    """The fixed-weight baseline `f + Σ c · v` (linear, no `max`).

    This is the hand-tuned penalty that constrained optimisation replaces:
    the multipliers are frozen at `coefficient` (`model.multipliers[NAME]`
    reads `c` and never changes). It solves the constrained problem only if
    `c` happens to equal the optimal multiplier and the problem is convex in
    the weights; otherwise no `c` may work at all (see
    `docs/concepts/formulations.md`). Useful to reproduce the baseline with
    the same model and data by switching one argument.

    Example:

    ```python
    model.compile(optimizer="adam", loss="mse",
                  formulation=tfc.Penalty(0.5))
    ```

    Args:
        coefficient: Float >= 0. The fixed weight `c` of every constraint.
    """

    updates_multipliers = False

    def __init__(self, coefficient: float):
        coefficient = _finite(coefficient, "coefficient", "Penalty")
        if coefficient < 0:
            raise ValueError(
                f"Penalty: `coefficient` must be >= 0, got {coefficient}."
            )
        self.coefficient = coefficient

    def default_dual_optimizer(self):
        return None

    def primal_weight(self, violation, multiplier, penalty, is_equality):
        return multiplier

    def objective_term(self, violation, multiplier, penalty, is_equality):
        return multiplier * violation

    def get_config(self):
        return {"coefficient": self.coefficient}


def _finite(value: Any, argument: str, owner: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{owner}: `{argument}` must be a number, got {value!r}."
        ) from error
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{argument}` must be finite, got {value}.")
    return value


def get(identifier: Any) -> Formulation:
    """Resolves the `formulation` argument of `compile` (None: Lagrangian)."""
    if identifier is None:
        return Lagrangian()
    if isinstance(identifier, Formulation):
        return identifier
    if isinstance(identifier, str):
        names = {
            "lagrangian": Lagrangian,
            "augmented_lagrangian": AugmentedLagrangian,
            "quadratic_penalty": QuadraticPenalty,
        }
        if identifier.lower() in names:
            return names[identifier.lower()]()
    raise TypeError(
        "`formulation` must be a `tfc.Lagrangian()`, "
        "`tfc.AugmentedLagrangian(...)`, `tfc.QuadraticPenalty(...)` or "
        f"`tfc.Penalty(coefficient)`; got {identifier!r}."
    )
