"""`Batch`: everything a constraint function sees for one batch."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


class Batch:
    """The data of one (per-replica) batch, as seen by a constraint.

    A constraint is a function of the batch and of the model's weights. It
    receives a `Batch` and returns a scalar or a 1-D tensor.

    Attributes:
        x: What the model's forward pass received, i.e. the model input after
            side-information keys were removed.
        y: The targets, or `None`.
        y_pred: The model's output for `x`.
        sample_weight: The sample weights, or `None`.
        features: Dict of side information (keys of the `x` dict that are not
            model inputs), possibly empty.
        training: Python bool, `True` inside `fit`.
        model: The model being trained or evaluated (for constraints that
            need another forward pass, e.g. input gradients or
            counterfactual predictions), or `None`.
    """

    __slots__ = (
        "x",
        "y",
        "y_pred",
        "sample_weight",
        "features",
        "training",
        "model",
        "_weight",
    )

    def __init__(
        self,
        x: Any,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        features: dict | None = None,
        training: bool = False,
        model: Any = None,
    ):
        self.x = x
        self.y = y
        self.y_pred = y_pred
        self.sample_weight = sample_weight
        self.features = dict(features or {})
        self.training = training
        self.model = model
        self._weight = None

    def weight(self) -> tf.Tensor:
        """Returns the batch's weight: the sum of sample weights, else its size.

        It is the weight with which this batch's value of a plain constraint
        enters a dataset-level (or global-batch) mean.
        """
        if self._weight is None:  # computed once per batch (graph op)
            if self.sample_weight is not None:
                self._weight = tf.reduce_sum(
                    tf.cast(self.sample_weight, tf.float32)
                )
            else:
                self._weight = tf.cast(self.size(), tf.float32)
        return self._weight

    def size(self) -> tf.Tensor:
        """Returns the number of examples in the batch (a scalar int tensor)."""
        for leaf in tf.nest.flatten((self.y_pred, self.x, self.y)):
            if leaf is not None:
                return tf.shape(leaf)[0]
        raise ValueError("Cannot infer the batch size of an empty batch.")

    def __repr__(self) -> str:
        keys = sorted(self.features)
        return f"Batch(training={self.training}, features={keys})"
