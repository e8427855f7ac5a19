"""Group-fairness constraints: gaps between per-group rates, group losses.

A fairness constraint bounds how far the rates of a binary classifier may
differ between groups. With `r_g` the rate of group `g` (a ratio of summed
counts, see `tfconstrain.constraints.rates`) and `r` the overall rate, two
forms are offered, both vectors of linear differences of rates bounded by
`δ` entry by entry:

- `form="max_gap"` (default): for every ordered pair of groups `g ≠ h`,

        r_g - r_h <= δ,

  i.e. `max_g r_g - min_h r_h <= δ`: the largest gap between any two groups.
  `G·(G-1)` entries per rate (2 for a binary group).

- `form="vs_overall"`: for every group `g`,

        r_g - r <= δ   and   r - r_g <= δ,

  i.e. `|r_g - r| <= δ`: each group against the whole population. `2·G`
  entries per rate. It implies a max gap of at most `2δ`.

Every entry has its own multiplier; at most one entry of each pair is active,
so the dual moves only where the gap is too large. The logged value `NAME`
of such a constraint is the entry with the largest violation, i.e. the
largest gap (all entries share the bound). `entry_labels` names each entry
(`"positive_prediction_rate: sex=0 - sex=1"`).

A gap is bounded above, so `kind` is `"<="` and the bound is stated by
comparison or keyword: `DemographicParity("sex") <= 0.05`, or
`DemographicParity("sex", bound=0.05)` or `DemographicParity("sex") <= 0.05`.

Values are formed from the accumulated per-group counts (numerators and
denominators of each rate), so epoch logs, `evaluate` and
`constraint_report` give the exact dataset-level gaps. An entry that
involves a group with no examples (zero denominator) in the batch or dataset
is invalid: its value is 0, it gets no dual step, and its surrogate has no
gradient, so an absent group moves neither the multipliers nor the weights.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import Statistics
from tfconstrain.constraint import default_name
from tfconstrain.constraint import normalize_kind
from tfconstrain.constraint import serialize_callable
from tfconstrain.constraints.counts import CountConstraint
from tfconstrain.constraints.groups import GroupedConstraintMixin
from tfconstrain.constraints.rates import PredictionSettings
from tfconstrain.constraints.rates import _broadcast_bound
from tfconstrain.constraints.rates import canonical_rate
from tfconstrain.constraints.rates import rate_terms
from tfconstrain.constraints.rates import safe_divide

FORMS = ("max_gap", "vs_overall")


def gap_pairs(num_rates: int, num_groups: int, form: str) -> tuple:
    """Index pairs `(first, second)` of the gap entries `r[first] - r[second]`.

    Indices point into the flattened `(num_rates, num_groups + 1)` matrix of
    rates, whose last column is the overall rate.

    Returns:
        `(first, second)`: two int32 arrays, one index per entry.
    """
    columns = num_groups + 1
    first, second = [], []
    for rate in range(num_rates):
        base = rate * columns
        if form == "max_gap":
            for g in range(num_groups):
                for h in range(num_groups):
                    if g != h:
                        first.append(base + g)
                        second.append(base + h)
        else:
            overall = base + num_groups
            for g in range(num_groups):
                first.append(base + g)
                second.append(overall)
            for g in range(num_groups):
                first.append(overall)
                second.append(base + g)
    return np.asarray(first, np.int32), np.asarray(second, np.int32)


@keras.saving.register_keras_serializable(package="tfconstrain")
class RateGap(GroupedConstraintMixin, CountConstraint):
    """Bounds the gaps between per-group rates: `r_g - r_h <= δ`.

    The base class of `DemographicParity`, `EqualOpportunity` and
    `EqualizedOdds`, usable directly for any rate of
    `tfc.constraints.Rate` (for instance equal error rates). See the module
    docstring for the two forms and the layout of the entries.

    Statistics: the sample-weighted numerator and denominator counts of each
    rate, per group and overall (matrices of shape `(R, G + 1)`); the value
    is formed from them only after they are summed, so dataset-level values
    are exact.

    Example:

    ```python
    # Equal error rates across five race groups, within 3 points.
    model.add_constraint(
        tfc.constraints.RateGap("race", "error_rate", num_groups=5) <= 0.03)
    ```

    Args:
        group_key: String. Side-information key of the groups:
            `batch.features[group_key]` holds ids of shape `(B,)` or
            `(B, 1)`, integers `0 .. G-1` (booleans count as 0/1) or strings
            listed in `group_names`, or a membership matrix of shape
            `(B, G)`. An id outside the groups fails the step with an
            error naming the constraint and the id.
        rates: Rate name or tuple of rate names (see
            `tfc.constraints.Rate`). Defaults to
            `("positive_prediction_rate",)`.
        kind: Must be `"<="` (a gap is bounded above). Defaults to `"<="`.
        bound: Optional float `δ >= 0`, the largest allowed gap, or a 1-D
            array with one bound per entry. Defaults to `None` (unbound:
            state it by comparison, `RateGap(...) <= 0.05`).
        num_groups: Int >= 2. `G`. Defaults to `len(group_names)`, else `2`.
        group_names: Optional list of `G` strings: the groups' labels (in
            `entry_labels`), and the ids themselves when the ids are
            strings. Defaults to `None`.
        form: `"max_gap"` (every ordered pair of groups) or `"vs_overall"`
            (each group against the overall rate). Defaults to `"max_gap"`.
        threshold: Float in `(0, 1)`. Probability threshold of a positive
            prediction. Defaults to `0.5`.
        from_logits: Bool. Whether `y_pred` holds logits. Defaults to
            `False`.
        surrogate: `"sigmoid"` or `"hinge"`. Defaults to `"sigmoid"`.
        temperature: Float > 0. Defaults to `1.0`.
        name: String. Defaults to the class's snake-case name (`rate_gap`,
            `demographic_parity`, ...).
        proxy: Optional differentiable callable `fn(batch) -> Tensor` (the
            gap vector) for the primal step. Defaults to `None`.
        tolerance: Float. Defaults to `1e-4`.
    """

    DEFAULT_RATES: tuple = ("positive_prediction_rate",)

    def __init__(
        self,
        group_key: str,
        rates: tuple | str | None = None,
        *,
        kind: str = "<=",
        bound: Any = None,
        num_groups: int | None = None,
        group_names: Any = None,
        form: str = "max_gap",
        threshold: float = 0.5,
        from_logits: bool = False,
        surrogate: str = "sigmoid",
        temperature: float = 1.0,
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        name = name or default_name(self)
        self._init_groups(group_key, num_groups, group_names, name)
        num_groups = self.num_groups
        if form not in FORMS:
            raise ValueError(
                f"Constraint '{name}': `form` must be one of {FORMS}, got "
                f"{form!r}."
            )
        if normalize_kind(kind, name) != "<=":
            raise ValueError(
                f"Constraint '{name}': a rate gap is bounded above; `kind` "
                f"must be '<=', got {kind!r}."
            )
        rates = self.DEFAULT_RATES if rates is None else rates
        if isinstance(rates, str):
            rates = (rates,)
        if not isinstance(rates, (tuple, list)):
            raise TypeError(
                f"Constraint '{name}': `rates` must be a rate name or a "
                f"tuple of rate names, got {rates!r}. (The bound is a "
                f"keyword argument: `{type(self).__name__}(group_key, "
                "...) <= 0.05` or `bound=0.05`.)"
            )
        rates = tuple(canonical_rate(rate, name) for rate in rates)
        if not rates:
            raise ValueError(f"Constraint '{name}': `rates` is empty.")
        self.form = form
        self.rates = rates
        self.settings = PredictionSettings(
            threshold, from_logits, surrogate, temperature, name
        )
        first, second = gap_pairs(len(rates), num_groups, form)
        self._first, self._second = first, second
        bound = _broadcast_bound(bound, (len(first),), name)
        super().__init__(
            kind="<=", bound=bound, name=name, proxy=proxy, tolerance=tolerance
        )
        if self.bound is not None and np.any(self.bound < 0):
            raise ValueError(
                f"Constraint '{self.name}': a gap bound must be >= 0, got "
                f"{self.bound.tolist()}."
            )

    @property
    def entry_labels(self) -> list[str]:
        """Readable labels of the entries, in the order of the value vector.

        For example `"positive_prediction_rate: sex=0 - sex=1"` (or
        `sex=female` with `group_names`); `all` names the overall rate.
        """
        names = [*self.group_labels, "all"]
        columns = self.num_groups + 1
        labels = []
        for i, j in zip(self._first, self._second):
            rate = self.rates[i // columns]
            labels.append(
                f"{rate}: {names[i % columns]} - {names[j % columns]}"
            )
        return labels

    # ---------------------------------------------------------- statistics

    def _counts_shape(self) -> tuple:
        return (len(self.rates), self.num_groups + 1)

    def counts(self, batch: Batch, hard: bool) -> Statistics:
        numerators, denominators, weights = rate_terms(
            batch, self.rates, self.settings, hard, self.name
        )
        members = self.group_membership(batch)
        columns = tf.concat([members, tf.ones_like(members[:, :1])], axis=1)
        columns = columns * weights[:, None]
        # (B, R) x (B, G+1) -> (R, G+1)
        return (
            tf.matmul(numerators, columns, transpose_a=True),
            tf.matmul(denominators, columns, transpose_a=True),
        )

    def _gaps(self, statistics: Statistics) -> tf.Tensor:
        numerator, denominator = statistics
        rates = tf.reshape(safe_divide(numerator, denominator), [-1])
        gaps = tf.gather(rates, self._first) - tf.gather(rates, self._second)
        return tf.where(self._valid(denominator), gaps, tf.zeros_like(gaps))

    def _valid(self, denominator: tf.Tensor) -> tf.Tensor:
        present = tf.reshape(denominator > 0, [-1])
        return tf.logical_and(
            tf.gather(present, self._first), tf.gather(present, self._second)
        )

    def statistics_shapes(self) -> tuple:
        return (self._counts_shape(), self._counts_shape())

    def result(self, statistics: Statistics) -> tf.Tensor:
        return self._gaps(statistics)

    def valid(self, statistics: Statistics) -> tf.Tensor:
        return self._valid(statistics[1])

    def group_rates(self, statistics: Statistics) -> tf.Tensor:
        """The rates `(R, G + 1)` (last column: overall) for statistics."""
        return safe_divide(*statistics)

    def group_denominators(self, statistics: Statistics) -> tf.Tensor:
        """The rates' denominators per group, `(R, G)`."""
        return statistics[1][:, : self.num_groups]

    # -------------------------------------------------------------- config
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            rates=list(self.rates),
            **self._groups_config(),
            form=self.form,
            **self.settings.get_config(),
        )
        return config


class _FixedRateGap(RateGap):
    """A `RateGap` whose rates are fixed by the subclass."""

    def __init__(self, group_key: str, *args, **kwargs):
        if args:
            cls = type(self).__name__
            raise TypeError(
                f"{cls} takes one positional argument, the group key; "
                f"`kind` and `bound` are keyword arguments: "
                f"`{cls}({group_key!r}) <= 0.05` or "
                f"`{cls}({group_key!r}, bound=0.05)`. Got extra positional "
                f"arguments {args!r}."
            )
        rates = kwargs.pop("rates", None)
        if isinstance(rates, str):
            rates = (rates,)
        label = kwargs.get("name") or default_name(self)
        if rates is not None and (
            tuple(canonical_rate(rate, label) for rate in rates)
            != self.DEFAULT_RATES
        ):
            raise ValueError(
                f"{type(self).__name__} constrains {self.DEFAULT_RATES}; use "
                "`tfc.constraints.RateGap` for other rates."
            )
        super().__init__(group_key, **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["rates"]
        return config


_GAP_ARGS = """
    Args:
        group_key: String. Side-information key of the groups: ids of shape
            `(B,)` or `(B, 1)` (integers `0 .. G-1`, or strings listed in
            `group_names`), or a `(B, G)` membership matrix. An id outside
            the groups fails the step with an error naming it.
        kind: Must be `"<="`. Defaults to `"<="`.
        bound: Optional float `δ >= 0`, the largest allowed gap (or one
            bound per entry). Defaults to `None` (unbound: state it by
            comparison, `<= δ`).
        num_groups: Int >= 2. Defaults to `len(group_names)`, else `2`.
        group_names: Optional list of `G` strings naming the groups.
            Defaults to `None`.
        form: `"max_gap"` (every ordered pair of groups: `r_g - r_h <= δ`)
            or `"vs_overall"` (`|r_g - r| <= δ` for every group). Defaults to
            `"max_gap"`.
        threshold: Float in `(0, 1)`. Defaults to `0.5`.
        from_logits: Bool. Defaults to `False`.
        surrogate: `"sigmoid"` or `"hinge"`. Defaults to `"sigmoid"`.
        temperature: Float > 0. Defaults to `1.0`.
        name: String. Defaults to the snake-case class name.
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float. Defaults to `1e-4`.
"""


@keras.saving.register_keras_serializable(package="tfconstrain")
class DemographicParity(_FixedRateGap):
    __doc__ = (
        """Demographic parity: gaps of positive-prediction rates `<= δ`.

    With `s_g = Σ_{i∈g} w·ŷ / Σ_{i∈g} w` the selection rate of group `g`,
    `form="max_gap"` constrains `s_g - s_h <= δ` for all `g ≠ h`
    (`max_g s_g - min_g s_g <= δ`, fairlearn's
    `demographic_parity_difference`), `form="vs_overall"` constrains
    `|s_g - s| <= δ` with `s` the overall rate. Labels are not needed.

    Example:

    ```python
    model.add_constraint(tfc.constraints.DemographicParity("sex") <= 0.05)
    model.fit({"features": x, "sex": sex}, y, epochs=10)
    ```
"""
        + _GAP_ARGS
    )

    DEFAULT_RATES = ("positive_prediction_rate",)


@keras.saving.register_keras_serializable(package="tfconstrain")
class EqualOpportunity(_FixedRateGap):
    __doc__ = (
        """Equal opportunity: gaps of true-positive rates `<= δ`.

    With `t_g = Σ_{i∈g} w·ŷ·y / Σ_{i∈g} w·y` the recall of group `g`,
    constrains `t_g - t_h <= δ` for all `g ≠ h` (`form="max_gap"`) or
    `|t_g - t| <= δ` (`form="vs_overall"`).

    Example:

    ```python
    model.add_constraint(tfc.constraints.EqualOpportunity("sex") <= 0.05)
    ```
"""
        + _GAP_ARGS
    )

    DEFAULT_RATES = ("true_positive_rate",)


@keras.saving.register_keras_serializable(package="tfconstrain")
class EqualizedOdds(_FixedRateGap):
    __doc__ = (
        """Equalized odds: gaps of both TPR and FPR `<= δ`.

    The entries of the true-positive-rate gaps come first, then those of the
    false-positive-rate gaps (see `entry_labels`); the logged value is the
    largest of all, fairlearn's `equalized_odds_difference` for
    `form="max_gap"`.

    Example:

    ```python
    model.add_constraint(tfc.constraints.EqualizedOdds(
        "race", num_groups=5, form="vs_overall") <= 0.1)
    ```
"""
        + _GAP_ARGS
    )

    DEFAULT_RATES = ("true_positive_rate", "false_positive_rate")


@keras.saving.register_keras_serializable(package="tfconstrain")
class GroupLoss(GroupedConstraintMixin, Constraint):
    """A bound on the mean loss of every group: `L_g <= b` for each `g`.

    `L_g = Σ_{i∈g} w_i·ℓ_i / Σ_{i∈g} w_i` with `ℓ_i` the per-example loss.
    The loss is differentiable, so it drives both the primal and the dual
    step; statistics are the per-group sums `(Σ w·ℓ, Σ w)`, so dataset-level
    values are exact. A group absent from a batch has value 0 and no dual
    step. `entry_labels` names the groups.

    Example:

    ```python
    # No sex group with a mean cross-entropy above 0.45.
    model.add_constraint(
        tfc.constraints.GroupLoss("sex", "binary_crossentropy") <= 0.45)
    ```

    Args:
        group_key: String. Side-information key of the groups (ids or a
            membership matrix, as for `tfc.constraints.RateGap`).
        loss: A Keras loss: a name (`"binary_crossentropy"`, `"mse"`, ...),
            a `keras.losses.Loss` (its reduction is ignored) or a callable
            `fn(y_true, y_pred) -> per-example losses`. Defaults to
            `"binary_crossentropy"`.
        kind: String. Defaults to `"<="`.
        bound: Optional float, or 1-D array with one bound per group.
            Defaults to `None` (unbound: state it by comparison).
        num_groups: Int >= 2. Defaults to `len(group_names)`, else `2`.
        group_names: Optional list of strings naming the groups. Defaults
            to `None`.
        name: String. Defaults to `"group_loss"`.
        proxy: Optional differentiable callable for the primal step.
            Defaults to `None`.
        tolerance: Float. Defaults to `1e-4`.
    """

    def __init__(
        self,
        group_key: str,
        loss: Any = "binary_crossentropy",
        *,
        kind: str = "<=",
        bound: Any = None,
        num_groups: int | None = None,
        group_names: Any = None,
        name: str | None = None,
        proxy=None,
        tolerance: float = 1e-4,
    ):
        name = name or default_name(self)
        self._init_groups(group_key, num_groups, group_names, name)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        self.loss = loss
        self._loss_fn = _per_example_loss(loss, name)
        bound = _broadcast_bound(bound, (self.num_groups,), name)
        super().__init__(
            kind=kind, bound=bound, name=name, proxy=proxy, tolerance=tolerance
        )

    @property
    def entry_labels(self) -> list[str]:
        """The groups' labels, e.g. `["sex=0", "sex=1"]`."""
        return self.group_labels

    def statistics_shapes(self) -> tuple:
        return (self.shape, self.shape)

    def _sums(self, batch: Batch) -> Statistics:
        if batch.y is None:
            raise ValueError(
                f"Constraint '{self.name}': a group loss needs labels, but "
                "the batch has none."
            )
        y_pred = tf.convert_to_tensor(batch.y_pred)
        y_true = tf.convert_to_tensor(batch.y)
        if y_pred.shape.rank == 1:
            y_pred = y_pred[:, None]
        if y_true.shape.rank == y_pred.shape.rank - 1:
            y_true = y_true[..., None]
        losses = tf.cast(self._loss_fn(y_true, y_pred), tf.float32)
        if losses.shape.rank and losses.shape.rank > 1:
            losses = tf.reduce_mean(
                losses, axis=list(range(1, losses.shape.rank))
            )
        losses = tf.reshape(losses, [-1])
        if batch.sample_weight is None:
            weights = tf.ones_like(losses)
        else:
            weights = tf.cast(tf.reshape(batch.sample_weight, [-1]), tf.float32)
        members = self.group_membership(batch) * weights[:, None]
        return (
            tf.reduce_sum(members * losses[:, None], axis=0),
            tf.reduce_sum(members, axis=0),
        )

    def statistics(self, batch: Batch) -> Statistics:
        """Per-group `(Σ w·ℓ, Σ w)`, differentiable."""
        return self._sums(batch)

    def result(self, statistics: Statistics) -> tf.Tensor:
        return safe_divide(*statistics)

    def valid(self, statistics: Statistics) -> tf.Tensor:
        return statistics[1] > 0

    def group_denominators(self, statistics: Statistics) -> tf.Tensor:
        """The groups' total weights `Σ w`, `(G,)`."""
        return statistics[1]

    def call(self, batch: Batch) -> tf.Tensor:
        return self.result(self.statistics(batch))

    @property
    def has_distinct_true_value(self) -> bool:
        return self.proxy is not None

    def get_config(self) -> dict:
        config = super().get_config()
        loss = self.loss
        if not isinstance(loss, str):
            loss = serialize_callable(loss)
        config.update(**self._groups_config(), loss=loss)
        return config


def _per_example_loss(loss: Any, name: str):
    """A function `(y_true, y_pred) -> per-example losses` for `loss`."""
    if isinstance(loss, str) and loss in ("<=", ">=", "==", "le", "ge", "eq"):
        raise TypeError(
            f"Constraint '{name}': got the kind {loss!r} as `loss`. `kind` "
            "and `bound` are keyword-only: `GroupLoss(group_key) <= b` or "
            "`GroupLoss(group_key, kind='<=', bound=b)`."
        )
    if isinstance(loss, str):
        resolved = keras.losses.get(loss)
        if resolved is None:
            raise ValueError(f"Constraint '{name}': unknown loss {loss!r}.")
        loss = resolved
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    if callable(loss):
        return loss
    raise ValueError(
        f"Constraint '{name}': `loss` must be a loss name, a "
        f"`keras.losses.Loss` or a callable, got {loss!r}. (The bound is a "
        "keyword argument: `GroupLoss(group_key, loss) <= b` or `bound=b`.)"
    )
