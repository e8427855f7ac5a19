"""νPI: a proportional-integral controller for the multipliers."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfconstrain.optimizers.base import DualOptimizer
from tfconstrain.optimizers.base import check_learning_rate
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import stack_values
from tfconstrain.optimizers.base import write_entries


@keras.saving.register_keras_serializable(package="tfconstrain")
class NuPI(DualOptimizer):
    """The νPI multiplier controller (Sohrabi et al., 2024).

    With `e_t` the violation at dual step `t`:

        ξ_t     = ν · ξ_{t-1} + (1 - ν) · e_t
        λ_{t+1} = [λ_t + η · (κ_i · e_t + κ_p · (ξ_t - ξ_{t-1}))]₊

    initialised with `ξ_{-1} = e_0`, so the first step is plain gradient
    ascent `η · κ_i · e_0` whatever `κ_p` and `ν` (no proportional kick from
    an arbitrary zero initial state). With `kp=0, ki=1, nu=0` every step is
    exactly gradient ascent `λ ← [λ + η · e_t]₊`. Equality multipliers are
    not projected.

    Why it helps: the integral term `κ_i·e_t` is gradient ascent, which
    oscillates around saddle points where the Lagrangian is not convex in the
    weights. The proportional term reacts to the *change* of the violation,
    `κ_p·(ξ_t − ξ_{t−1}) ≈ κ_p·(e_t − e_{t−1})`: it raises `λ` while the
    violation is rising and lowers it while the violation is falling, which
    damps the oscillation. `ν` low-pass filters the error (useful with noisy
    mini-batch violations).

    State (saved with the model and in checkpoints): `ξ` per constraint entry
    and a flag telling whether the entry has seen its first step. The state
    is of errors, not of `λ`: the projection `[·]₊` does not reset it.
    Entries without data in a batch (masked) keep their state, and their
    first step with data is again plain ascent.

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss="mse",
        dual_optimizer=tfc.optimizers.NuPI(0.3, kp=40.0),
    )
    ```

    Args:
        learning_rate: Float > 0. `η`; it multiplies both gains.
        kp: Float >= 0. Proportional gain `κ_p`. Defaults to `0.0`.
        ki: Float >= 0. Integral gain `κ_i`. Defaults to `1.0`.
        nu: Float in `[0, 1)`. Smoothing `ν` of the error. Defaults to `0.0`.
    """

    def __init__(
        self,
        learning_rate: float,
        kp: float = 0.0,
        ki: float = 1.0,
        nu: float = 0.0,
    ):
        self.learning_rate = check_learning_rate(learning_rate, "NuPI")
        self.kp = _non_negative(kp, "kp")
        self.ki = _non_negative(ki, "ki")
        nu = float(nu)
        if not 0.0 <= nu < 1.0:
            raise ValueError(f"NuPI: `nu` must be in [0, 1), got {nu}.")
        self.nu = nu
        self._xi = {}
        self._started = {}

    def build(self, multipliers, create_state) -> None:
        for name, multiplier in multipliers.items():
            shape = tuple(multiplier.shape)
            self._xi[name] = create_state(f"{name}_nupi_xi", shape, 0.0)
            self._started[name] = create_state(
                f"{name}_nupi_started", shape, 0.0
            )

    supports_indices = True

    def propose(
        self, name, multiplier, violation, mask, penalty=None, indices=None
    ):
        xi, started, step = self._rule(
            read_entries(self._xi[name], indices),
            read_entries(self._started[name], indices),
            violation,
            mask,
        )
        write_entries(self._xi[name], xi, indices)
        write_entries(self._started[name], started, indices)
        return read_entries(multiplier, indices) + self.learning_rate * step

    def propose_group(self, names, multipliers, violation, mask, penalty=None):
        xi_variables = [self._xi[name] for name in names]
        started_variables = [self._started[name] for name in names]
        xi, started, step = self._rule(
            stack_values(xi_variables),
            stack_values(started_variables),
            violation,
            mask,
        )
        for variable, value in zip(xi_variables, tf.unstack(xi)):
            variable.assign(value)
        for variable, value in zip(started_variables, tf.unstack(started)):
            variable.assign(value)
        return stack_values(multipliers) + self.learning_rate * step

    def _rule(self, xi_state, started, violation, mask):
        """`(ξ, started, step)` after a violation (elementwise); masked
        entries keep their state."""
        previous = tf.where(started > 0, xi_state, violation)
        xi = self.nu * previous + (1.0 - self.nu) * violation
        step = self.ki * violation + self.kp * (xi - previous)
        if mask is not None:
            xi = tf.where(mask, xi, xi_state)
            now_started = tf.where(mask, tf.ones_like(started), started)
        else:
            now_started = tf.ones_like(started)
        return xi, now_started, step

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "kp": self.kp,
            "ki": self.ki,
            "nu": self.nu,
        }


def _non_negative(value: float, name: str) -> float:
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise ValueError(
            f"NuPI: `{name}` must be a finite number >= 0, got {value}."
        )
    return value
