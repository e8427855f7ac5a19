"""Clopper–Pearson worst cases for constraints built on counts.

A rate measured on `n` examples is an estimate of the rate `p` of the
population they were drawn from. With `k` successes among `n` trials, the
one-sided Clopper–Pearson bounds at confidence `c` are the beta quantiles

    upper(k, n) = Beta⁻¹(c;     k + 1, n - k)      (1 when k = n)
    lower(k, n) = Beta⁻¹(1 - c; k,     n - k + 1)  (0 when k = 0)

so that `P(p <= upper) >= c` and `P(p >= lower) >= c` for every `p`. With no
trial (`n = 0`) nothing is known: `lower = 0`, `upper = 1`.

The *worst case* of a count constraint is the bound in the direction that
would violate it: `upper` for `"<="`, `lower` for `">="`, both for `"=="`.
For a vector constraint the statement is simultaneous: the `m` one-sided
bounds it needs are each taken at level `1 - (1 - c) / m` (Bonferroni), so
that all of them hold together with probability at least `c`:

- per-group rates (`Rate(..., group_key=...)`): one bound per group (two for
  `"=="`);
- gaps between groups (`RateGap` and its subclasses): each rate of each
  group (and the overall rate for `form="vs_overall"`) gets an upper and a
  lower bound, and the worst case of the gap `r_g - r_h` is
  `upper_g - lower_h`.

The constraint is *certified* when its worst case itself satisfies it (within
the constraint's tolerance).

Counts are sums of sample weights; the bounds treat them as frequency
weights (a weight of 2 is an example seen twice). They are exact for unit
weights.

The beta quantile is computed by bisection on TensorFlow's regularized
incomplete beta function `tf.math.betainc` in float64 (absolute error below
1e-12 against `scipy.special.betaincinv`), so certification needs no
package beyond TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tfconstrain.constraint import Constraint
from tfconstrain.constraints.fairness import RateGap
from tfconstrain.constraints.fairness import gap_pairs
from tfconstrain.constraints.rates import Rate

# Bisection halves [0, 1] this many times: 2⁻⁶⁰ < 1e-18.
_BISECTION_STEPS = 60


def check_confidence(confidence: Any) -> float:
    """Returns `confidence` as a float in `(0, 1)`.

    Raises:
        ValueError: for anything else.
    """
    try:
        value = float(confidence)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(
            "`confidence` must be a float strictly between 0 and 1 (e.g. "
            f"0.95), got {confidence!r}."
        )
    return value


def beta_quantile(q: Any, a: Any, b: Any) -> np.ndarray:
    """The `q`-quantile of `Beta(a, b)`, element-wise, for `a, b > 0`.

    Solves `I_x(a, b) = q` for `x` by bisection on the regularized
    incomplete beta function `I_x(a, b)` (increasing in `x`).

    Args:
        q: Array-like of probabilities in `[0, 1]`.
        a: Array-like of shape parameters `> 0`.
        b: Array-like of shape parameters `> 0`.

    Returns:
        A float64 array of the broadcast shape.
    """
    q, a, b = np.broadcast_arrays(
        np.asarray(q, np.float64),
        np.asarray(a, np.float64),
        np.asarray(b, np.float64),
    )
    low, high = np.zeros(q.shape), np.ones(q.shape)
    a_t, b_t = tf.constant(a), tf.constant(b)
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        below = tf.math.betainc(a_t, b_t, tf.constant(middle)).numpy() < q
        low = np.where(below, middle, low)
        high = np.where(below, high, middle)
    return 0.5 * (low + high)


def clopper_pearson_upper(
    successes: Any, trials: Any, confidence: Any
) -> np.ndarray:
    """One-sided upper Clopper–Pearson bound on a proportion.

    `Beta⁻¹(c; k + 1, n - k)`, and 1 when `k = n` (including `n = 0`).

    Args:
        successes: Array-like `k` (sums of weights; clipped to `[0, n]`).
        trials: Array-like `n >= 0`.
        confidence: Float or array-like `c` in `(0, 1)`.

    Returns:
        A float64 array of the broadcast shape.
    """
    k, n, c = _prepare(successes, trials, confidence)
    full = k >= n
    bound = beta_quantile(c, k + 1.0, np.where(full, 1.0, n - k))
    return np.where(full, 1.0, bound)


def clopper_pearson_lower(
    successes: Any, trials: Any, confidence: Any
) -> np.ndarray:
    """One-sided lower Clopper–Pearson bound on a proportion.

    `Beta⁻¹(1 - c; k, n - k + 1)`, and 0 when `k = 0` (including `n = 0`).

    Args:
        successes: Array-like `k` (sums of weights; clipped to `[0, n]`).
        trials: Array-like `n >= 0`.
        confidence: Float or array-like `c` in `(0, 1)`.

    Returns:
        A float64 array of the broadcast shape.
    """
    k, n, c = _prepare(successes, trials, confidence)
    empty = k <= 0.0
    bound = beta_quantile(1.0 - c, np.where(empty, 1.0, k), n - k + 1.0)
    return np.where(empty, 0.0, bound)


def _prepare(successes: Any, trials: Any, confidence: Any):
    n = np.maximum(np.asarray(trials, np.float64), 0.0)
    k = np.clip(np.asarray(successes, np.float64), 0.0, n)
    c = np.asarray(confidence, np.float64)
    if np.any((c <= 0.0) | (c >= 1.0)):
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    return k, n, c


@dataclass
class WorstCase:
    """The worst case of a count constraint and whether it is certified.

    Attributes:
        value: Float or array (the constraint's shape) for `"<="` and
            `">="`; for `"=="` a pair `(lower, upper)` of them.
        certified: Whether the worst case satisfies the constraint, for every
            entry.
        entry_certified: Boolean array of the constraint's shape: the same,
            entry by entry.
    """

    value: Any
    certified: bool
    entry_certified: np.ndarray


def supports(constraint: Constraint) -> bool:
    """Whether `worst_case` can bound `constraint` (a rate or a rate gap)."""
    return isinstance(constraint, (Rate, RateGap))


def worst_case(
    constraint: Constraint, statistics: Any, confidence: float
) -> WorstCase | None:
    """The Clopper–Pearson worst case of a count constraint.

    Args:
        constraint: The constraint: a `tfc.constraints.Rate` (overall or per
            group) or a `tfc.constraints.RateGap` (including
            `DemographicParity`, `EqualOpportunity`, `EqualizedOdds`).
        statistics: Its summed statistics over a dataset (numerators and
            denominators).
        confidence: Float in `(0, 1)`: the probability with which the worst
            case holds for every entry at once.

    Returns:
        A `WorstCase`, or `None` for constraints not built on counts.
    """
    confidence = check_confidence(confidence)
    numerator, denominator = (
        np.asarray(s, np.float64) for s in tuple(statistics)[:2]
    )
    if isinstance(constraint, RateGap):
        return _gap_worst_case(constraint, numerator, denominator, confidence)
    if isinstance(constraint, Rate):
        return _rate_worst_case(constraint, numerator, denominator, confidence)
    return None


def _rate_worst_case(constraint, numerator, denominator, confidence):
    """Rates: per entry, `upper`, `lower` or both, Bonferroni over entries."""
    sides = 2 if constraint.kind == "==" else 1
    level = 1.0 - (1.0 - confidence) / (sides * numerator.size)
    upper = clopper_pearson_upper(numerator, denominator, level)
    lower = clopper_pearson_lower(numerator, denominator, level)
    return _judge(constraint, lower, upper)


def _gap_worst_case(constraint, numerator, denominator, confidence):
    """Gaps `r[first] - r[second]`: `upper[first] - lower[second]`."""
    first, second = gap_pairs(
        len(constraint.rates), constraint.num_groups, constraint.form
    )
    needed = np.unique(first).size + np.unique(second).size
    level = 1.0 - (1.0 - confidence) / needed
    numerator, denominator = numerator.ravel(), denominator.ravel()
    upper = clopper_pearson_upper(numerator, denominator, level)
    lower = clopper_pearson_lower(numerator, denominator, level)
    gaps = upper[first] - lower[second]
    return _judge(constraint, gaps, gaps)


def _judge(constraint, lower, upper) -> WorstCase:
    """Checks the worst case against the constraint, entry by entry."""
    bound = np.asarray(constraint.bound, np.float64)
    tolerance = float(constraint.tolerance)
    if constraint.kind == "<=":
        entries = upper <= bound + tolerance
        value = _scalar_or_array(upper)
    elif constraint.kind == ">=":
        entries = lower >= bound - tolerance
        value = _scalar_or_array(lower)
    else:
        entries = (lower >= bound - tolerance) & (upper <= bound + tolerance)
        value = (_scalar_or_array(lower), _scalar_or_array(upper))
    entries = np.broadcast_to(entries, np.shape(bound))
    return WorstCase(value, bool(np.all(entries)), np.asarray(entries))


def _scalar_or_array(array):
    array = np.asarray(array, np.float64)
    return float(array) if array.ndim == 0 else array
