"""Use any `keras.optimizers.Optimizer` for dual ascent."""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from tfconstrain.optimizers.base import DualOptimizer

_UNSUPPORTED_OPTIONS = (
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "weight_decay",
    "use_ema",
    "gradient_accumulation_steps",
)


class KerasDualOptimizer(DualOptimizer):
    """Projected ascent with a Keras optimizer.

    The Keras optimizer minimises, so it receives the negated violation as
    gradient: for SGD without momentum, `λ ← λ - η · (-v) = λ + η · v`, then
    the model projects onto `λ >= 0`. The optimizer's per-variable update
    (`update_step`) is called directly on each replica with the global-batch
    violation, so there is no all-reduce (Keras' `apply` would SUM the
    identical dual "gradients" of all replicas, multiplying them by the
    replica count).

    The optimizer is cloned from its config, so the instance given to
    `compile` stays unbuilt and can be reused. Its state (iterations, slots)
    is saved with the model. Its `iterations` count dual steps, so a
    learning-rate schedule advances once per dual step. Options that would
    change the update outside `update_step` (clipping, weight decay, EMA,
    gradient accumulation) are rejected. Momentum makes the dual dynamics
    overshoot; a warning says so.

    Args:
        optimizer: A `keras.optimizers.Optimizer` instance.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer):
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                "`dual_optimizer` cannot be a LossScaleOptimizer; the dual "
                "step runs in float32 and needs no loss scaling."
            )
        config = optimizer.get_config()
        for option in _UNSUPPORTED_OPTIONS:
            value = config.get(option)
            if value not in (None, False, 0):
                raise ValueError(
                    f"`dual_optimizer`: option `{option}={value!r}` of "
                    f"{type(optimizer).__name__} is not supported for the "
                    "dual step. Remove it."
                )
        if has_momentum(config):
            warnings.warn(
                f"The dual optimizer {type(optimizer).__name__} has "
                "momentum. Momentum on multipliers tends to overshoot and "
                "oscillate around the feasible set; consider plain gradient "
                "ascent (a float `dual_optimizer`) or "
                "`tfc.optimizers.NuPI`.",
                UserWarning,
                stacklevel=3,
            )
        self.optimizer = type(optimizer).from_config(config)
        self._variables = {}
        self._slots = {}

    def build(self, multipliers, create_state) -> None:
        self._variables = dict(multipliers)
        self.optimizer.build(list(multipliers.values()))
        # Candidate slots of each multiplier: optimizer variables of its
        # shape (restored where masked; a no-op on any other variable, which
        # `update_step` does not touch).
        self._slots = {
            name: [
                v
                for v in self.optimizer.variables
                if tuple(v.shape) == tuple(multiplier.shape)
            ]
            for name, multiplier in multipliers.items()
        }

    def propose(self, name, multiplier, violation, mask, penalty=None):
        """Runs the Keras optimizer's `update_step` on the multiplier.

        Stateful: writes the multiplier and the optimizer's slots. Entries
        outside `mask` get a zero gradient and their slots are restored
        afterwards, so they do not move (Adam's moments would otherwise
        decay towards 0 on them).
        """
        gradient = -violation
        slots = self._slots.get(name, []) if mask is not None else []
        before = [tf.identity(tf.convert_to_tensor(v)) for v in slots]
        if mask is not None:
            gradient = tf.where(mask, gradient, tf.zeros_like(gradient))
        self.optimizer.update_step(
            tf.cast(gradient, multiplier.dtype),
            multiplier,
            self.optimizer.learning_rate,
        )
        for variable, old in zip(slots, before):
            variable.assign(tf.where(mask, tf.convert_to_tensor(variable), old))
        return tf.convert_to_tensor(multiplier)

    def finish_step(self) -> None:
        self.optimizer.iterations.assign_add(1)

    def get_config(self) -> dict:
        return {"optimizer": keras.optimizers.serialize(self.optimizer)}

    @classmethod
    def from_config(cls, config: dict) -> KerasDualOptimizer:
        return cls(keras.optimizers.deserialize(config["optimizer"]))


def has_momentum(config: dict) -> bool:
    """Whether the optimizer keeps a momentum (first-moment) average.

    `momentum` (SGD, RMSprop, Muon), `beta_1` (Adam and its variants, Lion,
    Lamb, schedule-free AdamW) and `adam_beta_1` (Muon's Adam path, which
    1-D variables such as multipliers take).
    """
    return any(
        float(config.get(key) or 0.0) > 0.0
        for key in ("momentum", "beta_1", "adam_beta_1")
    )
