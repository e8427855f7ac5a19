"""Scale-free dual ascent: steps measured in units of the constraint's scale."""

from __future__ import annotations

import keras
import tensorflow as tf

from tfconstrain.optimizers.base import DualOptimizer
from tfconstrain.optimizers.base import check_learning_rate
from tfconstrain.optimizers.base import read_entries
from tfconstrain.optimizers.base import stack_values
from tfconstrain.optimizers.base import write_entries


@keras.saving.register_keras_serializable(package="tfconstrain")
class ScaledAscent(DualOptimizer):
    """PI control of each multiplier in units of its constraint's own scale.

    With `v_t` the violation at dual step `t` and `s_t` the constraint's
    scale, the largest violation magnitude seen so far (one number per
    constraint, over all its entries):

        s_t     = max(s_{t-1}, max_i |v_{t,i}|)
        u_t     = v_t / s_t                                  (|u_t| <= 1)
        I_{t+1} = Π(I_t + o_t · (η / n) · u_t / s_t)         (integral)
        λ_{t+1} = Π(I_{t+1} + κ_p · u_t / s_t)               (+ proportional)

    `Π` is the projection of the constraint's multiplier (`[·]₊` for
    inequalities, none for equalities; the model applies it to `λ`, the
    optimizer to `I`, which is its anti-windup). In terms of
    the rescaled constraint `c / s` and its multiplier `λ̃ = s·λ`, this is
    PI control of `λ̃` with integral gain `η / n` and proportional gain
    `κ_p`: the proportional term makes `λ` react at once to the violation
    and damps the oscillation of plain ascent (e.g. on the paper's
    Example 1). Rescaling a constraint by `a` (stating it in other units)
    rescales `s` and `v` by `a` and the optimal multiplier by `1/a`; the
    update rescales `λ` by exactly `1/a` too, so the iterates are the same
    in every unit: a constraint of scale 300 and one of scale 0.005 take
    the same `η`, where plain ascent needs step sizes about 10⁹ apart.

    **Dead time.** `o_t` is 0 until the constraint first responds, that is
    until the first step whose violation (per constraint, the sum over its
    entries with data) differs from the one of the step before, and 1 from
    that step on; `n` is the number of steps (with data) the constraint
    took to respond. Until then, `λ` is the proportional term alone.
    Anything differentiable and any mini-batch estimate responds on its
    second step (`n = 1`: plain PI from the second step on). A constraint
    whose value is piecewise constant in the weights (the inference density
    of L0 gates, a hard count) can keep exactly the same violation for
    hundreds of steps while the weights travel towards a threshold, and
    then changes fast: integrating the constant violation during that time
    would wind `λ` up far beyond the value that moves the weights, and
    every gate would then cross at once. The slower a constraint responds,
    the slower its integral may act without oscillating (the integral time
    of a PI loop grows with its dead time), hence the gain `η / n`.

    The integral is kept apart from the proportional term (positional PI),
    so noise in `u` around a multiplier near 0 does not ratchet `λ` upwards
    (in the incremental form `λ ← Π(λ + κ_p·Δu/s)`, the projection keeps
    the upward kicks and cuts the downward ones). With `κ_p = 0` the
    rule is projected gradient ascent on `λ̃`, and its first step is
    integrated (`o_0 = 1`, `n = 1`): with neither term, a constraint that
    only moves when its multiplier does (a model that starts at the
    unconstrained minimum) would never respond; the integral then keeps
    that first value until the constraint responds.

    Until the first non-zero violation, `s = 0` and the step is 0 (nothing
    to correct). The first step is `κ_p·sign(v_0)/|v_0|`: large when the
    first violation is tiny (a model that starts just outside its bound);
    the next violations, if larger, raise `s` and shrink the steps. (Taking
    the bound's magnitude as the initial scale avoids that, but made 2 of
    the 11 catalogue problems infeasible: constraints whose bound is far
    from their violations, such as a mean price `<= 290`.) The integral
    starts at the multiplier's value when an entry is first seen. State
    (saved with the model): `s`, the last violation sum, `o` and `n` per
    constraint; `I` and a started flag per entry; masked entries keep their
    state.

    The defaults (`η = 1`, `κ_p = 3`) are `compile()`'s: chosen on the
    11-problem catalogue of `benchmarks/catalogue.py` (see the guide
    "Choosing a dual method and step size").

    Args:
        learning_rate: Float > 0. `η`, the integral gain in units of the
            normalised multiplier `λ̃`. Defaults to `1.0`.
        kp: Float >= 0. `κ_p`, the proportional gain. Defaults to `3.0`.
    """

    supports_indices = True

    def __init__(self, learning_rate: float = 1.0, kp: float = 3.0):
        self.learning_rate = check_learning_rate(learning_rate, "ScaledAscent")
        kp = float(kp)
        if not kp >= 0 or kp == float("inf"):
            raise ValueError(
                f"ScaledAscent: `kp` must be a finite number >= 0, got {kp}."
            )
        self.kp = kp
        self._scale = {}
        self._last = {}
        self._open = {}
        self._delay = {}
        self._integral = {}
        self._started = {}
        self._lower = {}

    def build(self, multipliers, create_state) -> None:
        for name, multiplier in multipliers.items():
            shape = tuple(multiplier.shape)
            self._scale[name] = create_state(f"{name}_scale", (), 0.0)
            self._last[name] = create_state(f"{name}_last", (), 0.0)
            self._open[name] = create_state(f"{name}_open", (), 0.0)
            self._delay[name] = create_state(f"{name}_delay", (), 0.0)
            self._integral[name] = create_state(f"{name}_integral", shape, 0.0)
            self._started[name] = create_state(f"{name}_started", shape, 0.0)

    def set_constraints(self, constraints) -> None:
        self._lower = {
            name: None if c.is_equality else 0.0
            for name, c in constraints.items()
        }

    def _integral_gate(self, name, violation, mask, old_scale):
        """`o_t / n` (float): 0 until the violation first changes, then one
        over the number of steps that took; updates the last violation
        sum, `o` and `n`."""
        if mask is None:
            has_data = tf.constant(True)
            total = tf.reduce_sum(violation)
        else:
            has_data = tf.reduce_any(mask)
            total = tf.reduce_sum(
                tf.where(mask, violation, tf.zeros_like(violation))
            )
        last = tf.convert_to_tensor(self._last[name])
        is_open, delay, gate = _dead_time(
            has_data,
            total,
            last,
            tf.convert_to_tensor(self._open[name]),
            tf.convert_to_tensor(self._delay[name]),
            old_scale <= 0.0,
            self.kp,
        )
        self._open[name].assign(tf.cast(is_open, tf.float32))
        self._last[name].assign(tf.where(has_data, total, last))
        self._delay[name].assign(delay)
        return gate

    def propose(
        self, name, multiplier, violation, mask, penalty=None, indices=None
    ):
        """The proposed multipliers (stateful: updates `s`, the latch, and
        `I` and the started flags on entries in `mask`)."""
        magnitude = tf.abs(violation)
        if mask is not None:
            magnitude = tf.where(mask, magnitude, tf.zeros_like(magnitude))
        scale_variable = self._scale[name]
        old_scale = tf.convert_to_tensor(scale_variable)
        scale = tf.maximum(old_scale, tf.reduce_max(magnitude))
        scale_variable.assign(scale)
        gate = self._integral_gate(name, violation, mask, old_scale)
        safe = tf.where(scale > 0.0, scale, tf.ones_like(scale))
        normalised = violation / safe
        current = read_entries(multiplier, indices)
        started = read_entries(self._started[name], indices) > 0
        integral = tf.where(
            started, read_entries(self._integral[name], indices), current
        )
        integral = integral + gate * self.learning_rate * normalised / safe
        lower = self._lower.get(name)
        if lower is not None:
            integral = tf.maximum(integral, lower)
        proportional = self.kp * normalised / safe
        keep = tf.ones_like(started) if mask is None else mask
        for variable, new in (
            (self._integral[name], integral),
            (self._started[name], tf.ones_like(integral)),
        ):
            old = read_entries(variable, indices)
            write_entries(variable, tf.where(keep, new, old), indices)
        return integral + proportional

    def propose_group(self, names, multipliers, violation, mask, penalty=None):
        """`propose` for scalar constraints stacked as one vector: the same
        elementwise rule (for a scalar, the max and sum over entries are
        the entry), one read and one write per state variable."""
        state = {
            key: [getattr(self, f"_{key}")[name] for name in names]
            for key in ("scale", "last", "open", "delay", "integral", "started")
        }
        old = {key: stack_values(values) for key, values in state.items()}
        zeros = tf.zeros_like(violation)
        scale = tf.maximum(
            old["scale"], tf.where(mask, tf.abs(violation), zeros)
        )
        total = tf.where(mask, violation, zeros)
        is_open, delay, gate = _dead_time(
            mask,
            total,
            old["last"],
            old["open"],
            old["delay"],
            old["scale"] <= 0.0,
            self.kp,
        )
        safe = tf.where(scale > 0.0, scale, tf.ones_like(scale))
        normalised = violation / safe
        started = old["started"] > 0
        integral = tf.where(started, old["integral"], stack_values(multipliers))
        integral = integral + gate * self.learning_rate * normalised / safe
        lower = self._lower.get(names[0])
        if lower is not None:
            integral = tf.maximum(integral, lower)
        new = {
            "scale": scale,
            "last": tf.where(mask, total, old["last"]),
            "open": tf.cast(is_open, tf.float32),
            "delay": delay,
            "integral": tf.where(mask, integral, old["integral"]),
            "started": tf.where(mask, tf.ones_like(integral), old["started"]),
        }
        for key, variables in state.items():
            for variable, value in zip(variables, tf.unstack(new[key])):
                variable.assign(value)
        return integral + self.kp * normalised / safe

    def get_config(self) -> dict:
        return {
            "learning_rate": self.learning_rate,
            "kp": self.kp,
        }


def _dead_time(has_data, total, last, was_open, delay, first, kp):
    """The dead-time rule, elementwise over constraints: `(o, n, o / n)`.

    The constraint has responded (`o`) once a step with data has a violation
    sum other than the last one (the very first step has nothing to compare
    with); `n` counts the steps with data until then. The integral's share
    is 0 before that (1 on the very first step when `κ_p = 0`: nothing else
    could move `λ`) and `1 / n` after.
    """
    changed = tf.logical_and(
        has_data, tf.logical_and(tf.logical_not(first), total != last)
    )
    is_open = tf.logical_or(was_open > 0.0, changed)
    waiting = tf.logical_and(has_data, tf.logical_not(is_open))
    delay = tf.where(waiting, delay + 1.0, delay)
    before = tf.cast(first, delay.dtype) if kp == 0 else tf.zeros_like(delay)
    gate = tf.where(is_open, 1.0 / tf.maximum(delay, 1.0), before)
    return is_open, delay, gate
