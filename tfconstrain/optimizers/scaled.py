"""Scale-free dual ascent: steps measured in units of the constraint's scale."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfconstrain.optimizers.base import DualOptimizer
from tfconstrain.optimizers.base import check_learning_rate
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import write_entries


@keras.saving.register_keras_serializable(package="tfconstrain")
class ScaledAscent(DualOptimizer):
    """PI control of each multiplier in units of its constraint's own scale.

    With `v_t` the violation at dual step `t` and `s_t` the constraint's
    scale, the largest violation magnitude seen so far (one number per
    constraint, over all its entries),

        s_t     = max(s_{t-1}, max_i |v_{t,i}|)
        u_t     = v_t / s_t                                 (|u_t| <= 1)
        λ_{t+1} = [λ_t + (η · u_t + κ_p · (u_t − u_{t−1})) / s_t]₊

    In terms of the rescaled constraint `c / s` and its multiplier
    `λ̃ = s·λ`, this is `λ̃ ← [λ̃ + η·u_t + κ_p·(u_t − u_{t−1})]₊`: an
    integral term with gain `η` (gradient ascent) and a proportional term
    with gain `κ_p` (as in νPI, but not multiplied by `η`), which makes `λ̃`
    react at once to a change of the violation and damps the oscillation of
    plain ascent. Rescaling a constraint by `a` (stating it in other units)
    rescales `s` and `v` by `a` and the optimal multiplier by `1/a`; the
    update rescales `λ` by exactly `1/a` too, so the iterates are the same
    in every unit: a constraint of scale 300 and one of scale 0.005 take the
    same `η`, where plain ascent needs step sizes about 10⁹ apart.

    Until the first non-zero violation, `s = 0` and the step is 0 (nothing
    to correct). State (saved with the model): `s` per constraint, and
    `u_{t−1}` per entry when `κ_p > 0`; masked entries keep their state.
    The first step is `η · sign(v_0) / |v_0|`.

    Args:
        learning_rate: Float > 0. `η`, the integral gain in units of the
            normalised multiplier `λ̃`. Defaults to `1.0`.
        kp: Float >= 0. `κ_p`, the proportional gain. Defaults to `1.0`.
    """

    supports_indices = True

    def __init__(self, learning_rate: float = 1.0, kp: float = 1.0):
        self.learning_rate = check_learning_rate(learning_rate, "ScaledAscent")
        kp = float(kp)
        if not kp >= 0 or kp == float("inf"):
            raise ValueError(
                f"ScaledAscent: `kp` must be a finite number >= 0, got {kp}."
            )
        self.kp = kp
        self._scale = {}
        self._previous = {}
        self._started = {}

    def build(self, multipliers, create_state) -> None:
        for name, multiplier in multipliers.items():
            shape = tuple(multiplier.shape)
            self._scale[name] = create_state(f"{name}_scale", (), 0.0)
            if self.kp > 0:
                self._previous[name] = create_state(
                    f"{name}_scaled_previous", shape, 0.0
                )
                self._started[name] = create_state(
                    f"{name}_scaled_started", shape, 0.0
                )

    def propose(
        self, name, multiplier, violation, mask, penalty=None, indices=None
    ):
        magnitude = tf.abs(violation)
        if mask is not None:
            magnitude = tf.where(mask, magnitude, tf.zeros_like(magnitude))
        scale_variable = self._scale[name]
        scale = tf.maximum(
            tf.convert_to_tensor(scale_variable), tf.reduce_max(magnitude)
        )
        scale_variable.assign(scale)
        safe = tf.where(scale > 0.0, scale, tf.ones_like(scale))
        normalised = violation / safe
        step = self.learning_rate * normalised
        if self.kp > 0:
            previous_state = read_entries(self._previous[name], indices)
            started = read_entries(self._started[name], indices)
            previous = tf.where(started > 0, previous_state, normalised)
            step += self.kp * (normalised - previous)
            if mask is not None:
                kept = tf.where(mask, normalised, previous_state)
                now_started = tf.where(mask, tf.ones_like(started), started)
            else:
                kept = normalised
                now_started = tf.ones_like(started)
            write_entries(self._previous[name], kept, indices)
            write_entries(self._started[name], now_started, indices)
        return read_entries(multiplier, indices) + step / safe

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "kp": self.kp,
        }
