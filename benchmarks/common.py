"""Side-by-side timing of Keras `fit` steps in one process.

Every candidate trains on the same repeated batch; rounds alternate between
candidates so that load changes on the machine hit all of them alike, and the
median time per step over the rounds is compared.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def repeated_batch(features, labels, steps):
    """A dataset that yields the same batch `steps` times."""
    return tf.data.Dataset.from_tensors((features, labels)).repeat(steps)


def time_per_step(model, dataset_fn, steps: int) -> float:
    """Seconds per training step of one `fit` over `steps` batches."""
    start = time.perf_counter()
    model.fit(dataset_fn(steps), epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps


def compare(candidates: dict, dataset_fn, steps: int, rounds: int) -> dict:
    """Median seconds per step of each candidate model, interleaved."""
    for model in candidates.values():  # trace and warm up
        time_per_step(model, dataset_fn, max(10, steps // 10))
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, model in candidates.items():
            samples[name].append(time_per_step(model, dataset_fn, steps))
    return {name: statistics.median(values) for name, values in samples.items()}


def print_ratios(medians: dict, baseline: str, goal: float) -> None:
    base = medians[baseline]
    print(f"{'candidate':<34} {'ms/step':>9} {'ratio':>7}")
    for name, value in medians.items():
        ratio = value / base
        flag = "" if name == baseline or ratio <= goal else "  (above goal)"
        print(f"{name:<34} {1e3 * value:>9.3f} {ratio:>7.3f}{flag}")
    print(f"goal: ratio <= {goal} against '{baseline}'")


def synthetic(num_samples: int, num_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_samples, num_features)).astype("float32")
    labels = (features[:, :1] > 0).astype("float32")
    return features, labels
