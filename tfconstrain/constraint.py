"""The `Constraint` base class: kinds, bounds, violations and statistics.

A constraint is `c(θ) <kind> bound` with `kind` one of `"<="`, `">="`, `"=="`.
Its *violation* is the signed quantity

    v = c - bound    for "<=" and "==",
    v = bound - c    for ">=",

so that `v <= 0` means satisfied for inequalities and `v == 0` for equalities.
Its *positive violation* (the violation magnitude, logged as
`NAME_violation`) is `max(0, v)` for inequalities and `|v|` for equalities.

A constraint is stated with keyword arguments (`Recall(kind=">=",
bound=0.9)`) or by comparison (`Recall() >= 0.9`); a constraint with no kind
or no bound is *unbound* and cannot be added to a model until it gets them.

Values are computed from *statistics*: a tuple of tensors that add up across
batches and replicas (for example `(n · mean, n)`, or the numerator and
denominator counts of a rate). Adding statistics and only then forming the value
is what makes dataset-level reports and multi-replica dual steps exact.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfconstrain import distribute
from tfconstrain.batch import Batch

KIND_ALIASES = {
    "<=": "<=",
    "le": "<=",
    ">=": ">=",
    "ge": ">=",
    "==": "==",
    "eq": "==",
}

Statistics = tuple

# Inside `Constraint.copy`, `serialize_callable` keeps objects as they are.
_copying = threading.local()


def normalize_kind(kind: Any, name: str) -> str:
    """Returns the canonical kind (`"<="`, `">="` or `"=="`) for `kind`.

    Raises:
        ValueError: if `kind` is not a known kind or alias.
    """
    if isinstance(kind, str) and kind.strip().lower() in KIND_ALIASES:
        return KIND_ALIASES[kind.strip().lower()]
    raise ValueError(
        f"Constraint '{name}': unknown kind {kind!r}. Expected one of "
        f"{sorted(set(KIND_ALIASES))}."
    )


def normalize_bound(bound: Any, name: str) -> np.ndarray:
    """Returns `bound` as a float32 array of shape `()` or `(k,)`.

    Raises:
        ValueError: if the bound is missing, not numeric, not finite, or of
            rank > 1.
    """
    if bound is None:
        raise ValueError(
            f"Constraint '{name}': a bound is required (a float or a 1-D "
            "array), got None."
        )
    if isinstance(bound, (str, bytes)):
        raise ValueError(
            f"Constraint '{name}': the bound must be a float or a 1-D array "
            f"of floats, got {bound!r}."
        )
    try:
        array = np.asarray(
            keras.ops.convert_to_numpy(bound) if tf.is_tensor(bound) else bound,
            dtype=np.float64,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Constraint '{name}': the bound must be a float or a 1-D array "
            f"of floats, got {bound!r}."
        ) from error
    if array.ndim > 1:
        raise ValueError(
            f"Constraint '{name}': the bound must be a scalar or 1-D (its "
            f"shape declares the constraint's shape), got shape "
            f"{array.shape}."
        )
    if array.ndim == 1 and array.shape[0] == 0:
        raise ValueError(f"Constraint '{name}': the bound is empty.")
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"Constraint '{name}': the bound must be finite, got {bound!r}."
        )
    return array.astype(np.float32)


def serialize_callable(obj: Any) -> Any:
    """`keras.saving.serialize_keras_object(obj)`, for a `get_config`.

    Inside `Constraint.copy` it returns `obj` itself, so that copies keep
    lambdas and unregistered functions (which cannot be serialized).
    """
    if copying():
        return obj
    return keras.saving.serialize_keras_object(obj)


def copying() -> bool:
    """Whether a `get_config` runs for `Constraint.copy` (live objects)."""
    return getattr(_copying, "depth", 0) > 0


@contextlib.contextmanager
def _live_objects():
    _copying.depth = getattr(_copying, "depth", 0) + 1
    try:
        yield
    finally:
        _copying.depth -= 1


def snake_case(name: str) -> str:
    """`"DemographicParity"` -> `"demographic_parity"`, `"L0Density"` ->
    `"l0_density"`, `"TPRGap"` -> `"tpr_gap"`."""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return name.lower()


def default_name(obj: Any) -> str:
    """A constraint's natural name.

    A function's own name (`"constraint"` for a lambda); for any other object
    the snake-case name of its class (`Recall()` -> `"recall"`).
    """
    name = getattr(obj, "__name__", None)
    if name is None:
        return snake_case(type(obj).__name__)
    if name == "<lambda>":
        return "constraint"
    return name


class Constraint:
    """Base class of constraints `c(θ) <kind> bound`.

    Subclasses implement `call(batch)`, the differentiable batch value `c`
    used by the primal step. They may also implement:

    - `true_value(batch)`: the value that drives the dual step, the logs and
      the reports, when it differs from `call` (e.g. a 0/1 rate whose smooth
      surrogate is `call`). Default: `call`.
    - `statistics(batch)` / `result(statistics)` (and `proxy_statistics` /
      `proxy_result` for the value of the primal step) to aggregate
      something other than a weighted mean, e.g. rates as ratios of summed
      counts.

    The default aggregation is the sample-weighted mean of batch values:
    statistics `(w · c_batch, w)` with `w` the batch's total sample weight
    (its size when there are no sample weights), and result `Σ w·c / Σ w`.

    **Kind and bound.** A constraint gets its kind and bound from keyword
    arguments, or by comparison: `c <= b` and `c >= b` return a copy of `c`
    with that kind and bound (`b <= c` is `c >= b`). `==` keeps Python's
    meaning (identity); state an equality with `kind="=="` or
    `model.add_constraint(c, "==", b)`. Strict `<` and `>` raise
    `TypeError`, and so does the truth value of a comparison's result, so
    that a chained `0.1 <= c <= 0.9` (which Python would reduce to its last
    comparison) fails instead of dropping a bound: add `c >= 0.1` and
    `c <= 0.9` as two constraints. A constraint without a kind or a bound is
    *unbound*; adding it to a model raises `ValueError` naming it.

    **Violation.** `v = c - bound` (`"<="`, `"=="`) or `v = bound - c`
    (`">="`), signed: `violation(value)`. Its magnitude `max(0, v)` (`|v|`
    for equalities) is the *positive violation*, `positive_violation(v)`,
    logged as `NAME_violation`.

    **Name.** Logs and reports use `name`, which defaults to the class's
    snake-case name (`MeanPrediction` logs as `mean_prediction`).

    Example:

    ```python
    class MeanPrediction(tfc.Constraint):
        def call(self, batch):
            return keras.ops.mean(batch.y_pred)

    model.add_constraint(MeanPrediction() >= 0.3)
    # Equivalent: MeanPrediction(kind=">=", bound=0.3), or
    # model.add_constraint(MeanPrediction(), ">=", 0.3).
    ```

    Args:
        kind: Optional string. `"<="`, `">="` or `"=="` (aliases `"le"`,
            `"ge"`, `"eq"`). Defaults to `None` (unbound).
        bound: Optional float or 1-D array. Its shape declares the
            constraint's shape. Defaults to `None` (unbound).
        name: String. Unique name within a model. Defaults to the class's
            snake-case name.
        proxy: Optional callable `fn(batch) -> Tensor`, a differentiable
            surrogate used by the primal step instead of `call`; the dual
            step then uses the constraint's own (true) value.
        tolerance: Float. The constraint counts as satisfied when its
            violation is `<= tolerance` (`|v| <= tolerance` for equalities).
            Defaults to `1e-4` (float32 rounding alone can exceed 0).
    """

    # Comparisons with numpy arrays and scalars (`np.float32(0.9) <= c`)
    # defer to this class instead of being broadcast element by element.
    __array_ufunc__ = None

    def __init__(
        self,
        kind: str | None = None,
        bound: Any = None,
        *,
        name: str | None = None,
        proxy: Callable | None = None,
        tolerance: float = 1e-4,
    ):
        self.name = str(name) if name is not None else default_name(self)
        self.kind = None if kind is None else normalize_kind(kind, self.name)
        self.bound = (
            None if bound is None else normalize_bound(bound, self.name)
        )
        if proxy is not None and not callable(proxy):
            raise TypeError(
                f"Constraint '{self.name}': `proxy` must be callable, got "
                f"{proxy!r}."
            )
        self.proxy = proxy
        tolerance = float(tolerance)
        if not np.isfinite(tolerance) or tolerance < 0:
            raise ValueError(
                f"Constraint '{self.name}': `tolerance` must be a finite "
                f"number >= 0, got {tolerance}."
            )
        self.tolerance = tolerance

    # Per-example (indexed) constraints set this and implement `examples`
    # and `example_violation`; the model then updates only the entries of
    # the examples in each batch (see `tfc.constraints.PerSampleConstraint`).
    indexed = False

    # ----------------------------------------------------------------- shape
    @property
    def is_bound(self) -> bool:
        """Whether the constraint has both a kind and a bound."""
        return self.kind is not None and self.bound is not None

    def require_bound(self) -> None:
        """Raises unless the constraint has a kind and a bound.

        Raises:
            ValueError: naming the constraint and what it lacks.
        """
        if self.is_bound:
            return
        missing = " and no ".join(
            what
            for what, value in (("kind", self.kind), ("bound", self.bound))
            if value is None
        )
        example = type(self).__name__
        raise ValueError(
            f"Constraint '{self.name}' is unbound: it has no {missing}. "
            f"State it by comparison (`{example}(...) >= 0.9` or `<= 0.9`), "
            "with `kind=` and `bound=`, or with "
            '`model.add_constraint(constraint, ">=", 0.9)`.'
        )

    @property
    def shape(self) -> tuple:
        """The constraint's shape: `()` or `(k,)`, declared by the bound.

        Raises:
            ValueError: for an unbound constraint.
        """
        if self.bound is None:
            self.require_bound()
        return tuple(self.bound.shape)

    @property
    def is_equality(self) -> bool:
        return self.kind == "=="

    @property
    def entry_labels(self) -> list[str] | None:
        """Readable labels of a vector constraint's entries (None: none).

        Constraints over groups label each entry (e.g. `["sex=0", "sex=1"]`)
        so that reports and logs can name it; scalar constraints return
        `None`.
        """
        return None

    # ----------------------------------------------------------- comparison
    def __le__(self, bound: Any) -> Constraint:
        return self._compare("<=", bound)

    def __ge__(self, bound: Any) -> Constraint:
        return self._compare(">=", bound)

    def __lt__(self, bound: Any):
        raise TypeError(
            f"Constraint '{self.name}': strict inequalities are not "
            "supported; use `<=` or `>=` (a constraint holds within its "
            "`tolerance`)."
        )

    __gt__ = __lt__

    def __bool__(self) -> bool:
        if getattr(self, "_from_comparison", False):
            raise TypeError(
                f"Constraint '{self.name}': a constraint has no truth value. "
                "A chained comparison such as `0.1 <= c <= 0.9` would keep "
                "only its last bound; add `c >= 0.1` and `c <= 0.9` as two "
                "constraints (with distinct `name=`)."
            )
        return True

    def _compare(self, kind: str, bound: Any) -> Constraint:
        if isinstance(bound, Constraint):
            raise TypeError(
                f"Constraint '{self.name}': a constraint is compared with a "
                f"bound (a float or a 1-D array), not with the constraint "
                f"'{bound.name}'. Constrain their difference with a callable "
                "instead."
            )
        copy = self.copy(kind=kind, bound=bound)
        copy._from_comparison = True
        return copy

    def copy(self, **changes: Any) -> Constraint:
        """A copy of the constraint with some constructor arguments changed.

        The copy is built by `from_config(get_config())` with `changes`
        applied; callables (`proxy`, functions, losses) are passed on as
        they are, not serialized (see `serialize_callable`).

        Example:

        ```python
        recall = tfc.constraints.Recall()
        strict = recall.copy(kind=">=", bound=0.95, name="recall_95")
        ```

        Args:
            **changes: Constructor arguments to replace (`kind`, `bound`,
                `name`, `tolerance`, `proxy`, ...).

        Returns:
            A new constraint of the same class.
        """
        with _live_objects():
            config = self.get_config()
        config.update(changes)
        return type(self).from_config(config)

    # ---------------------------------------------------------------- values
    def call(self, batch: Batch) -> tf.Tensor:
        """The differentiable batch value `c` (scalar or 1-D)."""
        raise NotImplementedError(
            f"Constraint '{self.name}' ({type(self).__name__}) must "
            "implement `call(batch)`."
        )

    def true_value(self, batch: Batch) -> tf.Tensor:
        """The batch value that drives the dual step. Default: `call`."""
        return self.call(batch)

    @property
    def has_distinct_true_value(self) -> bool:
        """Whether the dual step sees other statistics than the primal step."""
        return (
            self.proxy is not None
            or type(self).true_value is not Constraint.true_value
        )

    # ------------------------------------------------------------ statistics
    # Two families of statistics: those of the *true* value (`statistics`,
    # `result`), which drive the dual step, the logs and the reports, and
    # those of the *primal* value (`proxy_statistics`, `proxy_result`), the
    # differentiable value of the primal step. The primal value is the
    # user's `proxy` when one is given, else the constraint's own `call`
    # (for rates: the same ratio of smooth counts). The method names keep
    # the word "proxy" for the primal side; only the user's callable is
    # called a proxy in messages and documentation.
    def statistics_shapes(self) -> tuple:
        """Shapes of the tensors returned by `statistics`."""
        return (self.shape, ())

    def statistics(self, batch: Batch) -> Statistics:
        """Summable statistics of the true value for one batch."""
        return self._mean_statistics(self.true_value(batch), batch)

    def result(self, statistics: Statistics) -> tf.Tensor:
        """The value for summed `statistics` (of `statistics_shapes`)."""
        return _weighted_mean(statistics)

    def proxy_statistics_shapes(self) -> tuple:
        """Shapes of the tensors returned by `proxy_statistics` (primal)."""
        if self.has_distinct_true_value:
            return (self.shape, ())
        return self.statistics_shapes()

    def proxy_statistics(self, batch: Batch) -> Statistics:
        """Summable, differentiable statistics of the primal value.

        The primal value is the user's `proxy` when given, else `call`.
        """
        if self.proxy is not None:
            return self._mean_statistics(self.proxy(batch), batch, "proxy")
        if not self.has_distinct_true_value:
            return self.statistics(batch)
        return self._mean_statistics(self.call(batch), batch)

    def proxy_result(self, statistics: Statistics) -> tf.Tensor:
        """The differentiable primal value for summed `proxy_statistics`."""
        if self.has_distinct_true_value:
            return _weighted_mean(statistics)
        return self.result(statistics)

    def valid(self, statistics: Statistics) -> tf.Tensor | None:
        """Boolean mask of entries that have data (None: all of them).

        Entries without data (for example a group absent from the batch) get
        no dual step.
        """
        has_data = statistics[-1] > 0
        if has_data.shape == self.shape:
            return has_data
        return tf.broadcast_to(has_data, self.shape)

    def _mean_statistics(
        self, value: Any, batch: Batch, what: str = "value"
    ) -> Statistics:
        value = self.check_value(value, what)
        weight = batch.weight()
        weighted = weight * value
        statistics = MeanStatistics((weighted, weight))
        if batch.sample_weight is not None or distribute.num_replicas() > 1:
            # A replica's share of a last global batch can be empty (or its
            # weights all 0): its mean is NaN (0/0) but carries no weight,
            # so it must add 0, not 0 · NaN. (One device without sample
            # weights never sees an empty batch: no op for it.)
            weighted = tf.where(weight > 0, weighted, tf.zeros_like(weighted))
            statistics = MeanStatistics((weighted, weight))
        else:
            # The weight is the batch size (> 0): the mean of the global
            # batch is `value` itself, no division needed.
            statistics.value = value
        return statistics

    def check_value(self, value: Any, what: str = "value") -> tf.Tensor:
        """Checks a batch value's dtype and shape; returns it as float32.

        Raises:
            TypeError: for a non-numeric or integer value.
            ValueError: for a value whose shape is not the declared one.
        """
        if value is None:
            raise TypeError(
                f"Constraint '{self.name}': the {what} function returned "
                "None; it must return a scalar or 1-D float tensor."
            )
        try:
            value = tf.convert_to_tensor(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Constraint '{self.name}': the {what} function must return "
                f"a float tensor, got {value!r}."
            ) from error
        if not value.dtype.is_floating:
            raise TypeError(
                f"Constraint '{self.name}': the {what} function must return "
                f"a float tensor, got dtype {value.dtype.name}. (Integer or "
                "boolean values have no gradient; cast them and pass a "
                "differentiable `proxy` for the primal step.)"
            )
        static = value.shape
        if static.rank is None or static.rank > 1:
            raise ValueError(
                f"Constraint '{self.name}': the {what} function must return "
                f"a scalar or a 1-D tensor, got shape {static}."
            )
        expected = self.shape
        if static.rank == 1 and expected == () and static[0] == 1:
            value = tf.reshape(value, [])
        elif tuple(static) != expected and not (
            static.rank == 1 and len(expected) == 1 and static[0] is None
        ):
            raise ValueError(
                f"Constraint '{self.name}': the {what} function returned "
                f"shape {tuple(static)}, but the bound declares shape "
                f"{expected}. Give a bound of the value's shape."
            )
        if not value.shape.is_fully_defined():
            # A length known only at run time may change between batches.
            check = tf.debugging.assert_equal(
                tf.shape(value),
                tf.constant(expected, tf.int32),
                message=(
                    f"Constraint {self.name}: the {what} function returned "
                    "a tensor whose length differs from the bound's "
                    f"{expected}; constraint values must have a fixed "
                    "length."
                ),
            )
            with tf.control_dependencies([check]):
                value = tf.identity(value)
            # Pad or cut to the declared length so that no later op fails
            # before the check above reports the constraint's name.
            length = expected[0]
            value = tf.reshape(
                tf.concat([value, tf.zeros([length], value.dtype)], 0)[:length],
                expected,
            )
        return tf.cast(value, tf.float32)

    # --------------------------------------------------------------- maths
    def violation(self, value: tf.Tensor) -> tf.Tensor:
        """The signed violation `v = c - bound` (`"<="`, `"=="`) or
        `v = bound - c` (`">="`); `v <= 0` means satisfied (inequalities)."""
        bound = tf.constant(self.bound, tf.float32)
        if self.kind == ">=":
            return bound - value
        return value - bound

    def positive_violation(self, violation: tf.Tensor) -> tf.Tensor:
        """The violation magnitude: `max(0, v)` (inequalities), `|v|`
        (equalities), for the signed violation `v`. Logged as
        `NAME_violation`."""
        if self.is_equality:
            return tf.abs(violation)
        return tf.maximum(violation, 0.0)

    # ------------------------------------------------------------- config
    def get_config(self) -> dict:
        """Returns the constructor arguments (Keras serialization)."""
        config = {
            "kind": self.kind,
            "bound": None if self.bound is None else self.bound.tolist(),
            "name": self.name,
            "tolerance": self.tolerance,
        }
        if self.proxy is not None:
            config["proxy"] = serialize_callable(self.proxy)
        return config

    @classmethod
    def from_config(cls, config: dict) -> Constraint:
        config = dict(config)
        if isinstance(config.get("proxy"), dict):
            config["proxy"] = keras.saving.deserialize_keras_object(
                config["proxy"]
            )
        return cls(**config)

    def __repr__(self) -> str:
        if not self.is_bound:
            return f"<{type(self).__name__} '{self.name}': unbound>"
        # float32 bounds print at float32 precision (0.1, not 0.1000000015).
        bound = np.asarray(self.bound)
        text = np.array2string(bound, separator=", ", precision=7)
        if bound.ndim == 0:
            text = f"{float(np.format_float_positional(bound, trim='-')):g}"
        return f"<{type(self).__name__} '{self.name}': c {self.kind} {text}>"


class MeanStatistics(tuple):
    """`(Σ w·c, Σ w)` of a batch value `c`; `value` is `c` itself when it is
    the global batch's value (one replica, no sample weights), else `None`.

    The train step then uses `c` directly instead of the ratio of the sums
    (two ops and their gradients fewer per constraint).
    """

    value = None


def _weighted_mean(statistics: Statistics) -> tf.Tensor:
    total, weight = statistics
    return tf.math.divide_no_nan(total, weight)


@keras.saving.register_keras_serializable(package="tfconstrain")
class FunctionConstraint(Constraint):
    """A constraint defined by a callable `fn(batch) -> Tensor`.

    `fn` is used for the dual step, logs and reports; `proxy` (when given) for
    the primal step. Dataset-level values are sample-weighted means of the
    batch values, exact when `fn` is itself a mean over examples.

    Example:

    ```python
    def mean_prediction(batch):
        return keras.ops.mean(batch.y_pred)

    constraint = tfc.FunctionConstraint(mean_prediction) <= 0.3
    ```

    Args:
        fn: Callable `fn(batch) -> Tensor` returning a scalar or 1-D float
            tensor of fixed length.
        kind: Optional string. `"<="`, `">="` or `"=="`. Defaults to `None`
            (unbound).
        bound: Optional float or 1-D array. Defaults to `None` (unbound).
        name: String. Defaults to `fn.__name__` (`"constraint"` for a
            lambda).
        proxy: Optional differentiable callable with the same signature.
        tolerance: Float. Defaults to `1e-4`.
    """

    def __init__(
        self,
        fn: Callable,
        kind: str | None = None,
        bound: Any = None,
        *,
        name: str | None = None,
        proxy: Callable | None = None,
        tolerance: float = 1e-4,
    ):
        if not callable(fn):
            raise TypeError(
                f"Constraint '{name or 'constraint'}': expected a callable "
                f"`fn(batch)` or a `tfc.Constraint`, got {fn!r}."
            )
        _check_signature(fn, name or default_name(fn))
        self.fn = fn
        super().__init__(
            kind,
            bound,
            name=name if name is not None else default_name(fn),
            proxy=proxy,
            tolerance=tolerance,
        )

    def call(self, batch: Batch) -> tf.Tensor:
        return self.fn(batch)

    @property
    def has_distinct_true_value(self) -> bool:
        return self.proxy is not None

    def get_config(self) -> dict:
        config = super().get_config()
        config["fn"] = serialize_callable(self.fn)
        return config

    @classmethod
    def from_config(cls, config: dict) -> FunctionConstraint:
        config = dict(config)
        name = config.get("name", "constraint")
        if callable(config.get("fn")):
            return super().from_config(config)
        try:
            config["fn"] = keras.saving.deserialize_keras_object(config["fn"])
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Constraint '{name}': cannot restore its function "
                f"{config['fn']!r}. Register it with "
                "`@keras.saving.register_keras_serializable()` before "
                "saving, or pass it in `custom_objects` when loading."
            ) from error
        if not callable(config["fn"]):
            raise ValueError(
                f"Constraint '{name}': cannot restore its function from "
                f"{config['fn']!r}. Register it with "
                "`@keras.saving.register_keras_serializable()`."
            )
        return super().from_config(config)


def _check_signature(fn: Callable, name: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None)
    except TypeError as error:
        raise TypeError(
            f"Constraint '{name}': the function must take exactly one "
            f"argument (a `tfc.Batch`), but its signature is {signature}."
        ) from error


def with_overrides(constraint: Constraint, **overrides: Any) -> Constraint:
    """`constraint`, or a copy of it with the overrides that are not `None`
    (what `add_constraint` and layer registration do with `kind=`,
    `bound=`, `name=`, `proxy=`, `tolerance=`)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    return constraint.copy(**changes) if changes else constraint


def as_constraint(
    constraint, kind, bound, name, proxy, tolerance
) -> Constraint:
    """What `ConstrainedModel.add_constraint` adds: a copy of a
    `tfc.Constraint` with the given overrides, or a `FunctionConstraint`
    around a callable.

    Raises:
        TypeError: for something neither callable nor a `tfc.Constraint`.
        ValueError: for a callable without `kind`, or a constraint without
            a bound.
    """
    if isinstance(constraint, Constraint):
        constraint = with_overrides(
            constraint,
            kind=kind,
            bound=bound,
            name=name,
            proxy=proxy,
            tolerance=tolerance,
        )
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
