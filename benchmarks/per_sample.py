"""Step time with 10⁵ per-sample multipliers vs the same model unconstrained.

Feasible learning (`loss_i <= ε` for every example i) on 100,000 synthetic
examples: the constrained model keeps one multiplier per example, and each
step moves only those of the batch's examples. Prints the median
milliseconds per step and the ratio to the unconstrained Keras model,
measured side by side in this process. Goal: ratio <= 1.2.

Run: `.venv/bin/python benchmarks/per_sample.py [--samples N --steps S]`.
"""

from __future__ import annotations

import argparse

import keras  # noqa: E402
import numpy as np
import tensorflow as tf  # noqa: E402
from common import compare
from common import print_ratios
from common import synthetic

import tfconstrain as tfc  # noqa: E402
from tfconstrain.constraints.per_sample import PerSampleConstraint  # noqa: E402


def per_example_loss(batch):
    return keras.losses.binary_crossentropy(batch.y, batch.y_pred)


def build(num_samples: int | None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32,), name="features")
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    hidden = keras.layers.Dense(128, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    if num_samples is None:
        model = keras.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="binary_crossentropy")
        return model
    model = tfc.ConstrainedModel(inputs, outputs)
    model.add_constraint(
        PerSampleConstraint(
            per_example_loss, num_samples=num_samples, name="each"
        )
        <= 0.1
    )
    model.compile(
        optimizer="adam", loss="binary_crossentropy", dual_optimizer=0.01
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    features, labels = synthetic(args.samples, 32)
    ids = np.arange(args.samples, dtype="int32")

    def dataset(with_ids):
        def make(steps):
            x = (
                {"features": features, "sample_id": ids}
                if with_ids
                else (features)
            )
            data = tf.data.Dataset.from_tensor_slices((x, labels))
            return (
                data.repeat()
                .batch(args.batch, drop_remainder=True)
                .take(steps)
                .cache()
            )

        return make

    plain = build(None)
    constrained = build(args.samples)
    plain_data, id_data = dataset(False), dataset(True)

    class Routed:
        """Feeds each model its own input format through `compare`."""

        def __init__(self, model, make):
            self.model, self.make = model, make

        def fit(self, _, **kwargs):
            return self.model.fit(self.make(self.steps), **kwargs)

    candidates = {
        "plain keras.Model": Routed(plain, plain_data),
        f"{args.samples} per-sample multipliers": Routed(constrained, id_data),
    }

    def dataset_fn(steps):
        for routed in candidates.values():
            routed.steps = steps
        return None

    samples = compare(candidates, dataset_fn, args.steps, args.rounds)
    print_ratios(samples, "plain keras.Model", goal=1.2)


if __name__ == "__main__":
    main()
