"""Rate constraints for binary classifiers: ratios of summed counts.

A rate is a ratio of two sample-weighted counts over the examples of a
dataset (or of one group of it). With `ŷ_i ∈ {0, 1}` the prediction at the
threshold, `y_i ∈ {0, 1}` the label and `w_i` the sample weight:

    positive_prediction_rate  Σ w·ŷ           / Σ w
    true_positive_rate        Σ w·ŷ·y         / Σ w·y          (recall)
    false_positive_rate       Σ w·ŷ·(1-y)     / Σ w·(1-y)
    true_negative_rate        Σ w·(1-ŷ)·(1-y) / Σ w·(1-y)
    false_negative_rate       Σ w·(1-ŷ)·y     / Σ w·y
    precision                 Σ w·ŷ·y         / Σ w·ŷ
    error_rate                Σ w·(ŷ·(1-y) + (1-ŷ)·y) / Σ w

The statistics of a rate are its numerator and denominator, so adding them
over batches (and replicas) and dividing only at the end gives the exact
dataset-level rate, whatever the batch size. An entry whose denominator is
zero (say, a group absent from the batch) has value 0 and is not *valid*: it
gets no dual step.

The hard indicator `ŷ = [s > t]` has no useful gradient, so the primal step
uses a *surrogate* of the same ratio, with `ŷ` replaced by a smooth function
of the logit margin `m = logit(p) - logit(t)` (or `m = z - logit(t)` for
logits `z`) at temperature `T`:

    sigmoid:  ŷ ≈ σ(m / T),             1 - ŷ ≈ σ(-m / T)
    hinge:    ŷ ≈ max(0, 1 + m / T),    1 - ŷ ≈ max(0, 1 - m / T)

With the default threshold 0.5 and `T = 1`, the sigmoid surrogate of `ŷ` is
the predicted probability itself. The hinge is an upper bound of the
indicator; it suits rates that enter a `"<="` constraint with a positive
sign.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Statistics
from tfconstrain.constraint import snake_case
from tfconstrain.constraints.counts import CountConstraint
from tfconstrain.constraints.groups import GroupedConstraintMixin

SURROGATES = ("sigmoid", "hinge")

_PROBABILITY_EPSILON = 1e-7


def _positive_prediction_rate(pos, neg, y):
    del neg, y
    return pos, tf.ones_like(pos)


def _true_positive_rate(pos, neg, y):
    del neg
    return pos * y, y


def _false_positive_rate(pos, neg, y):
    del neg
    return pos * (1.0 - y), 1.0 - y


def _true_negative_rate(pos, neg, y):
    del pos
    return neg * (1.0 - y), 1.0 - y


def _false_negative_rate(pos, neg, y):
    del pos
    return neg * y, y


def _precision(pos, neg, y):
    del neg
    return pos * y, pos


def _error_rate(pos, neg, y):
    return pos * (1.0 - y) + neg * y, tf.ones_like(pos)


# name -> (terms(pos, neg, y) -> (numerator, denominator), needs labels)
RATES = {
    "positive_prediction_rate": (_positive_prediction_rate, False),
    "true_positive_rate": (_true_positive_rate, True),
    "false_positive_rate": (_false_positive_rate, True),
    "true_negative_rate": (_true_negative_rate, True),
    "false_negative_rate": (_false_negative_rate, True),
    "precision": (_precision, True),
    "error_rate": (_error_rate, True),
}

RATE_ALIASES = {
    "selection_rate": "positive_prediction_rate",
    "recall": "true_positive_rate",
    "tpr": "true_positive_rate",
    "fpr": "false_positive_rate",
    "tnr": "true_negative_rate",
    "fnr": "false_negative_rate",
}


def canonical_rate(rate: str, name: str) -> str:
    """Returns the canonical name of `rate` (resolving aliases).

    Raises:
        ValueError: for an unknown rate.
    """
    if isinstance(rate, str):
        key = rate.strip().lower()
        key = RATE_ALIASES.get(key, key)
        if key in RATES:
            return key
    raise ValueError(
        f"Constraint '{name}': unknown rate {rate!r}. Expected one of "
        f"{sorted(RATES)} or an alias in {sorted(RATE_ALIASES)}."
    )


class PredictionSettings:
    """How a binary classifier's output becomes (soft) 0/1 predictions.

    Args:
        threshold: Float in `(0, 1)`. A probability `p` (or logit `z`)
            predicts the positive class when `p > threshold` (`z >
            logit(threshold)`). Defaults to `0.5`.
        from_logits: Bool. Whether `y_pred` holds logits rather than
            probabilities. Defaults to `False`.
        surrogate: `"sigmoid"` or `"hinge"`: the smooth indicator used by
            the primal step. Defaults to `"sigmoid"`.
        temperature: Float > 0. Scale `T` of the logit margin in the
            surrogate (smaller is closer to the hard indicator). Defaults to
            `1.0`.
        name: String. The constraint's name, for error messages.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        from_logits: bool = False,
        surrogate: str = "sigmoid",
        temperature: float = 1.0,
        name: str = "constraint",
    ):
        threshold = float(threshold)
        if not 0.0 < threshold < 1.0:
            raise ValueError(
                f"Constraint '{name}': `threshold` must be in (0, 1), got "
                f"{threshold}."
            )
        if surrogate not in SURROGATES:
            raise ValueError(
                f"Constraint '{name}': `surrogate` must be one of "
                f"{SURROGATES}, got {surrogate!r}."
            )
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0.0):
            raise ValueError(
                f"Constraint '{name}': `temperature` must be a finite "
                f"number > 0, got {temperature}."
            )
        self.threshold = threshold
        self.from_logits = bool(from_logits)
        self.surrogate = surrogate
        self.temperature = temperature
        self.logit_threshold = math.log(threshold / (1.0 - threshold))

    def get_config(self) -> dict:
        return {
            "threshold": self.threshold,
            "from_logits": self.from_logits,
            "surrogate": self.surrogate,
            "temperature": self.temperature,
        }

    def indicators(self, scores: tf.Tensor, hard: bool):
        """`(ŷ, 1 - ŷ)` per example: exact 0/1 or the smooth surrogate."""
        if hard:
            cut = self.logit_threshold if self.from_logits else self.threshold
            positive = tf.cast(scores > cut, tf.float32)
            return positive, 1.0 - positive
        if self.from_logits:
            logits = scores
        else:
            p = tf.clip_by_value(
                scores, _PROBABILITY_EPSILON, 1.0 - _PROBABILITY_EPSILON
            )
            logits = tf.math.log(p) - tf.math.log1p(-p)
        margin = (logits - self.logit_threshold) / self.temperature
        if self.surrogate == "sigmoid":
            return tf.sigmoid(margin), tf.sigmoid(-margin)
        return tf.nn.relu(1.0 + margin), tf.nn.relu(1.0 - margin)


def binary_scores(batch: Batch, name: str) -> tf.Tensor:
    """The classifier's output as a float32 vector of shape `(B,)`.

    Raises:
        ValueError: if `y_pred` is not of shape `(B,)` or `(B, 1)`.
    """
    scores = tf.convert_to_tensor(batch.y_pred)
    shape = scores.shape
    if shape.rank not in (1, 2) or (shape.rank == 2 and shape[-1] != 1):
        raise ValueError(
            f"Constraint '{name}': rate constraints need a binary "
            "classifier with one output, `y_pred` of shape (batch,) or "
            f"(batch, 1); got shape {shape}."
        )
    return tf.cast(tf.reshape(scores, [-1]), tf.float32)


def binary_labels(batch: Batch, name: str) -> tf.Tensor:
    """The 0/1 labels as a float32 vector of shape `(B,)`.

    Raises:
        ValueError: if the batch has no labels.
    """
    if batch.y is None:
        raise ValueError(
            f"Constraint '{name}': this rate needs labels, but the batch has "
            "none. Pass `(x, y)` to `fit`, `evaluate` or `constraint_report`."
        )
    return tf.cast(tf.reshape(batch.y, [-1]), tf.float32)


def example_weights(batch: Batch, size: tf.Tensor) -> tf.Tensor:
    """Sample weights as a float32 vector `(B,)` (ones when absent)."""
    if batch.sample_weight is None:
        return tf.ones([size], tf.float32)
    return tf.cast(tf.reshape(batch.sample_weight, [-1]), tf.float32)


def rate_terms(
    batch: Batch,
    rates: tuple,
    settings: PredictionSettings,
    hard: bool,
    name: str,
):
    """Per-example numerator and denominator terms of several rates.

    Returns:
        `(numerators, denominators, weights)`: two float32 matrices of shape
        `(B, len(rates))` and the sample weights `(B,)`.
    """
    scores = binary_scores(batch, name)
    positive, negative = settings.indicators(scores, hard)
    labels = None
    if any(RATES[rate][1] for rate in rates):
        labels = binary_labels(batch, name)
    numerators, denominators = [], []
    for rate in rates:
        numerator, denominator = RATES[rate][0](positive, negative, labels)
        numerators.append(numerator)
        denominators.append(denominator)
    weights = example_weights(batch, tf.shape(scores)[0])
    return tf.stack(numerators, 1), tf.stack(denominators, 1), weights


def safe_divide(numerator: tf.Tensor, denominator: tf.Tensor) -> tf.Tensor:
    """`numerator / denominator`, and 0 (with zero gradient) where it is 0."""
    return tf.math.divide_no_nan(numerator, denominator)


@keras.saving.register_keras_serializable(package="tfconstrain")
class Rate(GroupedConstraintMixin, CountConstraint):
    """A rate of a binary classifier, overall or per group: `rate <kind> b`.

    The value is the exact ratio of sample-weighted counts (hard 0/1
    predictions at `threshold`), accumulated over a batch, an epoch or a
    whole dataset; the primal step uses the same ratio with a smooth
    surrogate of the predictions (see the module docstring for the
    formulas). Statistics are the numerator and denominator; an entry with a
    zero denominator is invalid (no dual step) and has value 0.

    With `group_key`, the constraint is a vector with one rate per group
    (`batch.features[group_key]` holds group ids or a membership matrix,
    see `tfc.constraints.RateGap`); a scalar `bound` then applies to every
    group, and `entry_labels` names the groups (`"sex=0"`, or
    `"sex=female"` with `group_names`).

    Example:

    ```python
    model.add_constraint(tfc.constraints.Rate("recall") >= 0.9)
    model.add_constraint(tfc.constraints.Rate(
        "selection_rate", group_key="sex", kind=">=", bound=0.2,
        name="min_selection_per_sex"))
    ```

    Args:
        rate: String. One of `"positive_prediction_rate"`,
            `"true_positive_rate"`, `"false_positive_rate"`,
            `"true_negative_rate"`, `"false_negative_rate"`, `"precision"`,
            `"error_rate"` (aliases: `"selection_rate"`, `"recall"`, `"tpr"`,
            `"fpr"`, `"tnr"`, `"fnr"`).
        kind: Optional string. `"<="`, `">="` or `"=="`. Defaults to `None`
            (unbound: state it by comparison, `Rate("recall") >= 0.9`).
        bound: Optional float, or 1-D array of length `num_groups` with
            `group_key`. Defaults to `None` (unbound).
        group_key: Optional string. Side-information key holding the groups;
            `None` constrains the overall rate. Defaults to `None`.
        num_groups: Int >= 2. Number of groups (ids `0 .. num_groups - 1`).
            Defaults to `len(group_names)`, else `2`.
        group_names: Optional list of strings, one per group: the labels of
            groups `0 .. G-1`, and the ids themselves when the group ids are
            strings. Defaults to `None`.
        threshold: Float in `(0, 1)`. Probability threshold of a positive
            prediction (`y_pred > threshold`; for logits, `y_pred >
            logit(threshold)`). Defaults to `0.5`.
        from_logits: Bool. Whether `y_pred` holds logits. Defaults to
            `False`.
        surrogate: `"sigmoid"` or `"hinge"`. Defaults to `"sigmoid"`.
        temperature: Float > 0. Temperature of the surrogate. Defaults to
            `1.0`.
        name: String. Defaults to the rate as spelled (`"recall"` for
            `Rate("recall")`), with `_by_<group_key>` for per-group rates.
        proxy: Optional callable `fn(batch) -> Tensor`, a differentiable
            replacement of the smooth ratio in the primal step. Defaults to
            `None`.
        tolerance: Float. Defaults to `1e-4`.
    """

    def __init__(
        self,
        rate: str,
        *,
        kind: str | None = None,
        bound: Any = None,
        group_key: str | None = None,
        num_groups: int | None = None,
        group_names: Any = None,
        threshold: float = 0.5,
        from_logits: bool = False,
        surrogate: str = "sigmoid",
        temperature: float = 1.0,
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        label = name or str(rate)
        canonical = canonical_rate(rate, label)
        if name is None:
            name = self._natural_name(rate)
            if group_key is not None:
                name = f"{name}_by_{group_key}"
        self._init_groups(
            group_key, num_groups, group_names, name, required=False
        )
        if group_key is not None:
            bound = _broadcast_bound(bound, (self.num_groups,), name)
        self.rate = canonical
        self.settings = PredictionSettings(
            threshold, from_logits, surrogate, temperature, name
        )
        super().__init__(
            kind=kind, bound=bound, name=name, proxy=proxy, tolerance=tolerance
        )
        if group_key is None and self.bound is not None and self.shape != ():
            raise ValueError(
                f"Constraint '{self.name}': an overall rate is a scalar, but "
                f"the bound has shape {self.shape}. Give a float bound, or a "
                "`group_key` for per-group rates."
            )

    def _natural_name(self, rate: str) -> str:
        """The rate as spelled for `Rate`, the class's name for subclasses."""
        if type(self) is Rate:
            return rate.strip().lower()
        return snake_case(type(self).__name__)

    @property
    def entry_labels(self) -> list[str] | None:
        """The groups' labels for a per-group rate (None: overall rate)."""
        return self.group_labels

    # ---------------------------------------------------------- statistics

    def counts(self, batch: Batch, hard: bool) -> Statistics:
        numerators, denominators, weights = rate_terms(
            batch, (self.rate,), self.settings, hard, self.name
        )
        weights = weights[:, None]
        if self.group_key is None:
            return (
                tf.reduce_sum(weights * numerators),
                tf.reduce_sum(weights * denominators),
            )
        members = self.group_membership(batch)
        return (
            tf.reduce_sum(members * weights * numerators, axis=0),
            tf.reduce_sum(members * weights * denominators, axis=0),
        )

    def statistics_shapes(self) -> tuple:
        return (self.shape, self.shape)

    def result(self, statistics: Statistics) -> tf.Tensor:
        numerator, denominator = statistics
        return safe_divide(numerator, denominator)

    def valid(self, statistics: Statistics) -> tf.Tensor:
        return statistics[1] > 0

    def group_denominators(self, statistics: Statistics) -> tf.Tensor:
        """The rate's denominator per group (needs `group_key`)."""
        if self.group_key is None:
            raise ValueError(
                f"Constraint '{self.name}': an overall rate has no groups."
            )
        return statistics[1]

    # -------------------------------------------------------------- config
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            rate=self.rate,
            **self._groups_config(),
            **self.settings.get_config(),
        )
        return config


def _broadcast_bound(bound: Any, shape: tuple, name: str) -> Any:
    """A scalar bound repeated to `shape`; other bounds pass through."""
    if bound is None or isinstance(bound, (str, bytes)):
        return bound
    try:
        array = np.asarray(bound, dtype=np.float64)
    except (TypeError, ValueError):
        return bound
    if array.ndim == 0:
        return np.full(shape, float(array))
    if array.shape != shape:
        raise ValueError(
            f"Constraint '{name}': the bound has shape {array.shape}, but "
            f"this constraint has {shape[0]} entries. Give a float (applied "
            f"to every entry) or an array of shape {shape}."
        )
    return array


class _NamedRate(Rate):
    """A `Rate` whose rate is fixed by the subclass (`RATE`)."""

    RATE = ""

    def __init__(self, *args, **kwargs):
        if args:
            cls = type(self).__name__
            raise TypeError(
                f"{cls} takes no positional arguments; `kind` and `bound` "
                f"are keyword arguments: `{cls}() >= 0.9` or "
                f'`{cls}(kind=">=", bound=0.9)`. Got {args!r}.'
            )
        if "rate" in kwargs and kwargs.pop("rate") != self.RATE:
            raise ValueError(
                f"{type(self).__name__} constrains the {self.RATE}; use "
                "`tfc.constraints.Rate` for another rate."
            )
        super().__init__(self.RATE, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["rate"]
        return config


_SHARED_ARGS = """
    Args:
        kind: Optional string. `"<="`, `">="` or `"=="`. Defaults to `None`
            (unbound: state it by comparison).
        bound: Optional float, or 1-D array of length `num_groups` with
            `group_key`. Defaults to `None` (unbound).
        group_key: Optional side-information key of the groups. Defaults to
            `None` (overall rate).
        num_groups: Int >= 2. Defaults to `len(group_names)`, else `2`.
        group_names: Optional list of strings, one per group. Defaults to
            `None`.
        threshold: Float in `(0, 1)`. Defaults to `0.5`.
        from_logits: Bool. Defaults to `False`.
        surrogate: `"sigmoid"` or `"hinge"`. Defaults to `"sigmoid"`.
        temperature: Float > 0. Defaults to `1.0`.
        name: String. Defaults to the class's snake-case name, with
            `_by_<group_key>` for per-group rates.
        proxy: Optional differentiable callable `fn(batch) -> Tensor` for
            the primal step. Defaults to `None`.
        tolerance: Float. Defaults to `1e-4`.
"""


@keras.saving.register_keras_serializable(package="tfconstrain")
class PositivePredictionRate(_NamedRate):
    __doc__ = (
        """The positive-prediction (selection) rate `Σ w·ŷ / Σ w`.

    Example:

    ```python
    model.add_constraint(
        tfc.constraints.PositivePredictionRate(group_key="sex") >= 0.2)
    ```
"""
        + _SHARED_ARGS
    )

    RATE = "positive_prediction_rate"


@keras.saving.register_keras_serializable(package="tfconstrain")
class TruePositiveRate(_NamedRate):
    __doc__ = (
        """The true-positive rate (recall) `Σ w·ŷ·y / Σ w·y`.

    Example:

    ```python
    model.add_constraint(tfc.constraints.TruePositiveRate() >= 0.95)
    ```
"""
        + _SHARED_ARGS
    )

    RATE = "true_positive_rate"


@keras.saving.register_keras_serializable(package="tfconstrain")
class FalsePositiveRate(_NamedRate):
    __doc__ = (
        """The false-positive rate `Σ w·ŷ·(1-y) / Σ w·(1-y)`.

    Example:

    ```python
    model.add_constraint(tfc.constraints.FalsePositiveRate() <= 0.05)
    ```
"""
        + _SHARED_ARGS
    )

    RATE = "false_positive_rate"


@keras.saving.register_keras_serializable(package="tfconstrain")
class Precision(_NamedRate):
    __doc__ = (
        """The precision `Σ w·ŷ·y / Σ w·ŷ`.

    Its denominator depends on the predictions, so the surrogate is a ratio
    of two smooth sums. When nothing is predicted positive the value is 0 and
    the entry gets no dual step.

    Example:

    ```python
    model.add_constraint(tfc.constraints.Precision() >= 0.8)
    ```
"""
        + _SHARED_ARGS
    )

    RATE = "precision"


@keras.saving.register_keras_serializable(package="tfconstrain")
class ErrorRate(_NamedRate):
    __doc__ = (
        """The error rate `Σ w·(ŷ·(1-y) + (1-ŷ)·y) / Σ w`.

    Example:

    ```python
    # Per-group error rate at most 20 %.
    model.add_constraint(
        tfc.constraints.ErrorRate(group_key="race", num_groups=5) <= 0.2)
    ```
"""
        + _SHARED_ARGS
    )

    RATE = "error_rate"


@keras.saving.register_keras_serializable(package="tfconstrain")
class Recall(TruePositiveRate):
    __doc__ = (
        """Recall: the true-positive rate `Σ w·ŷ·y / Σ w·y`, named `recall`.

    The same constraint as `TruePositiveRate`, logged as `recall`.

    Example:

    ```python
    model.add_constraint(tfc.constraints.Recall() >= 0.9)
    ```
"""
        + _SHARED_ARGS
    )
