"""`CountConstraint`: constraints that are a function of summed counts.

Rates and fairness gaps are ratios of weighted counts. Their true value uses
hard 0/1 decisions and their primal value the same function of smooth
("surrogate") counts, so both are exact over any number of batches and
replicas: counts are summed first, the function applied last.
"""

from __future__ import annotations

import tensorflow as tf

from tfconstrain.batch import Batch
from tfconstrain.constraint import Constraint
from tfconstrain.constraint import Statistics


class CountConstraint(Constraint):
    """Base class: `result(Σ counts)`, hard counts for the dual step.

    Subclasses implement `counts(batch, hard)`, `statistics_shapes()`,
    `result(statistics)` and usually `valid(statistics)`. The statistics of
    the true value are `counts(batch, hard=True)`; those of the primal step
    are `counts(batch, hard=False)` (smooth), passed through the same
    `result` — unless the user gives a `proxy`, which then replaces them as
    for any constraint.
    """

    @property
    def has_distinct_true_value(self) -> bool:
        return True

    def counts(self, batch: Batch, hard: bool) -> Statistics:
        """Summable counts of one batch; `hard=False` for the surrogate."""
        raise NotImplementedError

    def statistics(self, batch: Batch) -> Statistics:
        """Hard counts (0/1 decisions at the threshold)."""
        return self.counts(batch, hard=True)

    def proxy_statistics_shapes(self) -> tuple:
        if self.proxy is not None:
            return super().proxy_statistics_shapes()
        return self.statistics_shapes()

    def proxy_statistics(self, batch: Batch) -> Statistics:
        """Surrogate counts: the same sums with smooth decisions."""
        if self.proxy is not None:
            return super().proxy_statistics(batch)
        return self.counts(batch, hard=False)

    def proxy_result(self, statistics: Statistics) -> tf.Tensor:
        if self.proxy is not None:
            return super().proxy_result(statistics)
        return self.result(statistics)

    def call(self, batch: Batch) -> tf.Tensor:
        """The surrogate value of one batch (differentiable)."""
        return self.proxy_result(self.proxy_statistics(batch))

    def true_value(self, batch: Batch) -> tf.Tensor:
        """The exact value of one batch."""
        return self.result(self.statistics(batch))
