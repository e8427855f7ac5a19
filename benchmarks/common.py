"""Side-by-side timing of Keras `fit` steps in one process.

Every candidate trains on the same repeated batch; rounds alternate between
candidates so that load changes on the machine hit all of them alike. Each
round gives one ratio per candidate against the baseline measured just before
it; the median of those paired ratios is the figure to read (the fastest
rounds and their ratio are printed too).
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
    base = samples[baseline]
    print(
        f"{'candidate':<36} {'best ms':>8} {'median ms':>9} "
        f"{'paired ratio (median)':>22}"
    )
    for name, values in samples.items():
        paired = statistics.median(v / b for v, b in zip(values, base))
        flag = "" if name == baseline or paired <= goal else "  (above goal)"
        print(
            f"{name:<36} {1e3 * min(values):>8.3f} "
            f"{1e3 * statistics.median(values):>9.3f} {paired:>22.3f}{flag}"
        )
    print(f"goal: paired ratio <= {goal} against '{baseline}'")


def synthetic(num_samples: int, num_features: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(num_samples, num_features)).astype("float32")
    labels = (features[:, :1] > 0).astype("float32")
    return features, labels
