"""Group membership for group constraints (per-group rates, gaps, losses).

A group constraint reads the groups of a batch's examples from the side
information `batch.features[group_key]`, which holds either

- one group id per example, shape `(B,)` or `(B, 1)`: integers `0 .. G-1`
  (booleans count as 0/1), or strings when `group_names` lists them; or
- a membership matrix of shape `(B, G)` (one-hot, or weights for
  overlapping groups).

Nothing is silent: an id outside the groups (say groups coded 1/2 where
0/1 is expected, or an unknown string) fails the step with an
`InvalidArgumentError` that names the constraint and the ids, instead of
leaving the example in no group and the constraint vacuous. The check is one
in-graph assertion per batch (dropped by XLA under `jit_compile=True`, like
every TensorFlow assertion). Groups that get no example over a whole epoch
are reported by `empty_groups(statistics)` on the epoch's summed
statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tfconstrain.batch import Batch

# How many offending ids an assertion message shows.
_SHOWN_IDS = 10
# (Assertion messages name the constraint without quotes: TensorFlow escapes
# quotes in them.)


class GroupedConstraintMixin:
    """Groups of a constraint: key, count, names, labels and membership.

    A constraint class mixes it in (before `tfc.Constraint`), calls
    `_init_groups` in `__init__`, reads memberships with
    `group_membership(batch)` and implements `group_denominators(statistics)`
    (the per-group totals whose zero means "no data for this group").

    Attributes:
        group_key: The side-information key of the groups.
        num_groups: `G`.
        group_names: Tuple of `G` strings, or `None` (groups `0 .. G-1`).
    """

    group_key: str | None = None
    num_groups: int | None = None
    group_names: tuple | None = None

    def _init_groups(
        self,
        group_key: Any,
        num_groups: Any,
        group_names: Any,
        name: str,
        required: bool = True,
    ) -> None:
        """Validates and stores the group arguments.

        Raises:
            ValueError: for a missing or empty key, `num_groups < 2`, or
                group names that are not `num_groups` distinct strings.
        """
        if group_key is None:
            if required:
                raise ValueError(
                    f"Constraint '{name}': `group_key` is required (the "
                    "side-information key holding the groups)."
                )
            if group_names is not None:
                raise ValueError(
                    f"Constraint '{name}': `group_names` needs a `group_key`."
                )
            self.group_key, self.num_groups, self.group_names = None, None, None
            return
        if not isinstance(group_key, str) or not group_key:
            raise ValueError(
                f"Constraint '{name}': `group_key` must be a non-empty string "
                f"(a side-information key), got {group_key!r}."
            )
        names = _check_names(group_names, name)
        if num_groups is None:
            num_groups = 2 if names is None else len(names)
        if isinstance(num_groups, bool) or not isinstance(
            num_groups, (int, np.integer)
        ):
            raise ValueError(
                f"Constraint '{name}': `num_groups` must be an int >= 2, got "
                f"{num_groups!r}."
            )
        if num_groups < 2:
            raise ValueError(
                f"Constraint '{name}': `num_groups` must be >= 2, got "
                f"{num_groups}."
            )
        if names is not None and len(names) != num_groups:
            raise ValueError(
                f"Constraint '{name}': {len(names)} `group_names` for "
                f"num_groups={num_groups}; give one name per group."
            )
        self.group_key = group_key
        self.num_groups = int(num_groups)
        self.group_names = names

    @property
    def group_labels(self) -> list[str] | None:
        """`"<group_key>=<group name or id>"` for each group (None: none)."""
        if self.group_key is None:
            return None
        names = self.group_names or range(self.num_groups)
        return [f"{self.group_key}={name}" for name in names]

    def group_membership(self, batch: Batch) -> tf.Tensor:
        """Group membership of the batch's examples, float32 `(B, G)`.

        Raises:
            KeyError: `KeyError(group_key)` if the batch lacks that side
                information.
            ValueError: for ids of the wrong shape, or string ids without
                `group_names`.
            tf.errors.InvalidArgumentError: (when the step runs) for an id
                outside the groups.
        """
        key, count, label = self.group_key, self.num_groups, self.name
        # A missing key raises `KeyError(key)`, which the model reports with
        # the names of the constraints that need it.
        groups = tf.convert_to_tensor(batch.features[key])
        shape = groups.shape
        if shape.rank == 2 and shape[-1] == count:
            if groups.dtype == tf.string:
                raise ValueError(
                    f"Constraint '{label}': a membership matrix `{key}` "
                    "must be numeric, got strings."
                )
            return tf.cast(groups, tf.float32)
        if shape.rank not in (1, 2) or (shape.rank == 2 and shape[-1] != 1):
            raise ValueError(
                f"Constraint '{label}': group ids `{key}` must have shape "
                f"(batch,), (batch, 1) or (batch, {count}) (membership "
                f"matrix); got {shape}."
            )
        ids = tf.reshape(groups, [-1])
        if ids.dtype == tf.string:
            return self._string_membership(ids)
        dtype = ids.dtype
        if not (dtype.is_integer or dtype.is_floating or dtype.is_bool):
            raise ValueError(
                f"Constraint '{label}': group ids `{key}` must be integers "
                f"0..{count - 1} (or booleans, or strings listed in "
                f"`group_names`), got dtype {ids.dtype.name}."
            )
        if ids.dtype.is_floating:
            ids = tf.round(ids)
        ids = tf.cast(ids, tf.int32)
        inside = tf.logical_and(ids >= 0, ids < count)
        check = tf.debugging.Assert(
            tf.reduce_all(inside),
            [
                f"Constraint {label}: group ids in {key} must be in "
                f"0..{count - 1} (num_groups={count}); an example outside "
                "them would belong to no group. Ids found outside:",
                tf.boolean_mask(ids, tf.logical_not(inside))[:_SHOWN_IDS],
            ],
            summarize=_SHOWN_IDS,
        )
        with tf.control_dependencies([check]):
            return tf.one_hot(ids, count, dtype=tf.float32)

    def _string_membership(self, ids: tf.Tensor) -> tf.Tensor:
        key, label = self.group_key, self.name
        if self.group_names is None:
            raise ValueError(
                f"Constraint '{label}': the group ids in '{key}' are "
                "strings; pass `group_names=[...]` (the string of each "
                "group, in order) to the constraint, or map the ids to "
                f"integers 0..{self.num_groups - 1}."
            )
        names = tf.constant(self.group_names, tf.string)
        matches = tf.equal(ids[:, None], names[None, :])
        known = tf.reduce_any(matches, axis=1)
        check = tf.debugging.Assert(
            tf.reduce_all(known),
            [
                f"Constraint {label}: group ids in {key} must be one of "
                f"the group_names [{', '.join(self.group_names)}]; an "
                "example outside them would belong to no group. Ids found "
                "outside:",
                tf.boolean_mask(ids, tf.logical_not(known))[:_SHOWN_IDS],
            ],
            summarize=_SHOWN_IDS,
        )
        with tf.control_dependencies([check]):
            return tf.cast(matches, tf.float32)

    def group_denominators(self, statistics: Sequence) -> tf.Tensor:
        """Per-group totals `(G,)` or `(R, G)` whose zero means no data."""
        raise NotImplementedError

    def empty_groups(self, statistics: Sequence) -> tf.Tensor:
        """Which groups have no data in `statistics` (e.g. an epoch's sums).

        A group is empty when a total the constraint divides by is zero for
        it: no example of the group (with positive weight), or, for a rate
        conditioned on the label, no example of the conditioning class
        (a true-positive rate of a group without positives). Such a group
        makes its entries invalid (value 0, no dual step), so the
        constraint says nothing about it; diagnostics warn, naming it with
        `group_labels`.

        Args:
            statistics: Summed statistics of the constraint
                (`statistics_shapes()`), e.g. over a whole epoch.

        Returns:
            A boolean tensor of shape `(num_groups,)`.
        """
        totals = tf.convert_to_tensor(self.group_denominators(statistics))
        empty = tf.equal(totals, 0)
        if empty.shape.rank == 2:
            empty = tf.reduce_any(empty, axis=0)
        return empty

    def _groups_config(self) -> dict:
        return {
            "group_key": self.group_key,
            "num_groups": self.num_groups,
            "group_names": (
                None if self.group_names is None else list(self.group_names)
            ),
        }


def _check_names(group_names: Any, name: str) -> tuple | None:
    if group_names is None:
        return None
    if isinstance(group_names, (str, bytes)):
        raise ValueError(
            f"Constraint '{name}': `group_names` must be a list of strings, "
            f"got the single string {group_names!r}."
        )
    names = tuple(
        item.decode() if isinstance(item, bytes) else str(item)
        for item in group_names
    )
    if len(set(names)) != len(names):
        raise ValueError(
            f"Constraint '{name}': `group_names` must be distinct, got "
            f"{list(names)}."
        )
    return names
