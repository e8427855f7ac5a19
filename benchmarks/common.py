"""Side-by-side timing of Keras `fit` steps in one process.

Every candidate trains on the same repeated batch; rounds alternate between
candidates so that load changes on the machine hit all of them alike. The
ratio uses each candidate's fastest round (noise only ever adds time, so the
minimum estimates the intrinsic cost best); the median is printed too.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# One thread per op and between ops: the ratio is about the work a step
# adds, and thread scheduling is the largest source of noise on a small
# machine. Set TFCONSTRAIN_BENCH_THREADS=0 for TensorFlow's defaults.
_THREADS = int(os.environ.get("TFCONSTRAIN_BENCH_THREADS", "1"))
if _THREADS:
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS)


def repeated_batch(features, labels, steps):
    """A dataset that yields the same batch `steps` times."""
    return tf.data.Dataset.from_tensors((features, labels)).repeat(steps)


def time_per_step(model, dataset_fn, steps: int) -> float:
    """Seconds per training step of one `fit` over `steps` batches."""
    start = time.perf_counter()
    model.fit(dataset_fn(steps), epochs=1, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps


def compare(candidates: dict, dataset_fn, steps: int, rounds: int) -> dict:
    """Seconds per step of each candidate per round, interleaved."""
    for model in candidates.values():  # trace and warm up
        time_per_step(model, dataset_fn, max(10, steps // 10))
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, model in candidates.items():
            samples[name].append(time_per_step(model, dataset_fn, steps))
    return samples


def print_ratios(samples: dict, baseline: str, goal: float) -> None:
    best = {name: min(values) for name, values in samples.items()}
    middle = {name: statistics.median(v) for name, v in samples.items()}
    print(
        f"{'candidate':<36} {'best ms':>8} {'ratio':>6} "
        f"{'median ms':>9} {'ratio':>6}"
    )
    for name in samples:
        ratio = best[name] / best[baseline]
        median_ratio = middle[name] / middle[baseline]
        flag = "" if name == baseline or ratio <= goal else "  (above goal)"
        print(
            f"{name:<36} {1e3 * best[name]:>8.3f} {ratio:>6.3f} "
            f"{1e3 * middle[name]:>9.3f} {median_ratio:>6.3f}{flag}"
        )
    print(f"goal: ratio of best rounds <= {goal} against '{baseline}'")


def synthetic(num_samples: int, num_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_samples, num_features)).astype("float32")
    labels = (features[:, :1] > 0).astype("float32")
    return features, labels
