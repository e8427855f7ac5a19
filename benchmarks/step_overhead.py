"""Cost of a constrained `fit` step relative to the same plain Keras step.

A small MLP, one batch of 256, 1–3 constraints (Lagrangian, gradient ascent).
Prints milliseconds per step (best and median round) and the ratios to plain
Keras, measured
side by side in this process. Goal: ratio <= 1.05.

Run: `.venv/bin/python benchmarks/step_overhead.py [--steps N --rounds R]`.
"""

from __future__ import annotations

import argparse

import keras  # noqa: E402
from common import compare
from common import print_ratios
from common import repeated_batch
from common import synthetic

import tfconstrain as tfc  # noqa: E402


def mean_prediction(batch):
    return keras.ops.mean(batch.y_pred)


def second_moment(batch):
    return keras.ops.mean(keras.ops.square(batch.y_pred))


def max_prediction(batch):
    return keras.ops.max(batch.y_pred)


CONSTRAINTS = [
    (mean_prediction, "<=", 0.3),
    (second_moment, "<=", 0.2),
    (max_prediction, "<=", 0.95),
]


def build(num_constraints: int | None, jit: bool):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    hidden = keras.layers.Dense(128, activation="relu")(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(hidden)
    if num_constraints is None:
        model = keras.Model(inputs, outputs)
        model.compile(
            optimizer="adam", loss="binary_crossentropy", jit_compile=jit
        )
        return model
    model = tfc.ConstrainedModel(inputs, outputs)
    for fn, kind, bound in CONSTRAINTS[:num_constraints]:
        model.add_constraint(fn, kind, bound)
    model.compile(
        optimizer="adam",
        loss="binary_crossentropy",
        dual_optimizer=0.01,
        jit_compile=jit,
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--jit", action="store_true", help="jit_compile=True")
    args = parser.parse_args()
    features, labels = synthetic(256, 32)
    candidates = {"plain keras.Model": build(None, args.jit)}
    for count in (1, 2, 3):
        candidates[f"ConstrainedModel, {count} constraint(s)"] = build(
            count, args.jit
        )
    samples = compare(
        candidates,
        lambda steps: repeated_batch(features, labels, steps),
        args.steps,
        args.rounds,
    )
    print_ratios(samples, "plain keras.Model", goal=1.05)


if __name__ == "__main__":
    main()
