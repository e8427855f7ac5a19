"""Side-by-side timing of Keras `fit` steps in one process.

Every candidate is a model and the dataset it trains on. A round fits every
candidate once, for the same number of steps, in an order that rotates from
round to round, so that load changes on a shared machine hit all of them
alike. A measurement is the wall time from `on_epoch_begin` to
`on_epoch_end` of a one-epoch `fit` (Keras' per-`fit` setup is excluded, the
host loop, the steps and the epoch-end logs are included), divided by the
number of steps. Each round gives one ratio per candidate against the
baseline measured in the same round; the median of those *paired* ratios is
the figure to read.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"

# One thread per op and between ops by default: the ratio is about the work
# a step adds, and thread scheduling is the largest source of noise on a
# small shared machine. TFCONSTRAIN_BENCH_THREADS=0 keeps TensorFlow's
# defaults. Must run before TensorFlow initializes its runtime.
THREADS = int(os.environ.get("TFCONSTRAIN_BENCH_THREADS", "1"))
if THREADS:
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)


@dataclass
class Candidate:
    """A compiled model and the dataset it trains on.

    Attributes:
        model: A compiled `keras.Model`.
        data: `data(steps)` returns a dataset of exactly `steps` batches.
    """

    model: keras.Model
    data: Callable[[int], tf.data.Dataset]


class _EpochTimer(keras.callbacks.Callback):
    """Wall and process CPU seconds of each epoch."""

    def on_train_begin(self, logs=None):
        self.wall, self.cpu = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        self.wall.append(time.perf_counter() - self.start[0])
        self.cpu.append(time.process_time() - self.start[1])


def repeated_batch(x, y, steps: int) -> tf.data.Dataset:
    """A dataset that yields the same batch `(x, y)` `steps` times."""
    return tf.data.Dataset.from_tensors((x, y)).repeat(steps)


def seconds_per_step(candidate: Candidate, steps: int) -> tuple:
    """`(wall, cpu)` seconds per step of a one-epoch `fit` over `steps`.

    `cpu` is the CPU time of this whole process (all its threads, input
    pipeline included) during the epoch: unlike the wall time, it does not
    grow while other processes hold the cores, so it is the steadier
    measure on a loaded machine.
    """
    timer = _EpochTimer()
    candidate.model.fit(
        candidate.data(steps),
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[timer],
    )
    return timer.wall[0] / steps, timer.cpu[0] / steps


def calibrate_steps(
    candidate: Candidate, seconds: float, multiple: int, minimum: int
) -> int:
    """Steps that take about `seconds`, a multiple of `multiple`.

    The first probe traces and warms up; the faster of two more sets the
    count.
    """
    probe = max(minimum, 4 * multiple)
    seconds_per_step(candidate, probe)
    per_step = min(seconds_per_step(candidate, probe)[0] for _ in range(2))
    steps = multiple * round(seconds / (per_step * multiple))
    return max(minimum, steps)


def compare(
    candidates: dict[str, Candidate],
    steps: int,
    rounds: int,
    warmup_steps: int | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Seconds per step of each candidate, one entry per round.

    Every candidate is first warmed up (traced, compiled, optimizer slots
    built). Round `r` runs the candidates in the order rotated by `r`.

    Returns:
        `{name: {"wall": [...], "cpu": [...]}}`, seconds per step.
    """
    warmup_steps = warmup_steps or max(8, steps // 4)
    for candidate in candidates.values():
        seconds_per_step(candidate, warmup_steps)
    names = list(candidates)
    samples = {name: {"wall": [], "cpu": []} for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = seconds_per_step(candidates[name], steps)
            samples[name]["wall"].append(wall)
            samples[name]["cpu"].append(cpu)
    return samples


def paired_ratio(values, base) -> tuple:
    """Median and quartiles over rounds of `values[r] / base[r]`."""
    ratios = [v / b for v, b in zip(values, base)]
    low, high = np.percentile(ratios, [25, 75])
    return statistics.median(ratios), [float(low), float(high)]


def summarize(samples: dict, baseline: str) -> dict:
    """Per candidate: best and median ms per step, paired ratios.

    The paired ratio of round `r` is `t_candidate[r] / t_baseline[r]`; the
    summary gives its median over rounds and its interquartile range, for
    wall time and for process CPU time.
    """
    base = samples[baseline]
    summary = {}
    for name, values in samples.items():
        ratio, iqr = paired_ratio(values["wall"], base["wall"])
        cpu_ratio, cpu_iqr = paired_ratio(values["cpu"], base["cpu"])
        summary[name] = {
            "best_ms": 1e3 * min(values["wall"]),
            "median_ms": 1e3 * statistics.median(values["wall"]),
            "paired_ratio": ratio,
            "ratio_iqr": iqr,
            "cpu_median_ms": 1e3 * statistics.median(values["cpu"]),
            "cpu_paired_ratio": cpu_ratio,
            "cpu_ratio_iqr": cpu_iqr,
            "seconds_per_step": values["wall"],
            "cpu_seconds_per_step": values["cpu"],
        }
    return summary


def print_summary(summary: dict, baseline: str, goals: dict) -> None:
    """Prints one line per candidate; `goals` maps a name to its bound.

    The verdict reads the wall-time ratio.
    """
    print(
        f"  {'candidate':<34} {'best ms':>8} {'median ms':>9} "
        f"{'ratio':>6} {'IQR':>10} {'CPU ratio':>9} {'IQR':>10} {'goal':>5}"
    )
    for name, row in summary.items():
        goal = goals.get(name)
        flag = ""
        if name != baseline and goal is not None:
            flag = "  ok" if row["paired_ratio"] <= goal else "  ABOVE GOAL"
        low, high = row["ratio_iqr"]
        cpu_low, cpu_high = row["cpu_ratio_iqr"]
        print(
            f"  {name:<34} {row['best_ms']:>8.3f} {row['median_ms']:>9.3f} "
            f"{row['paired_ratio']:>6.3f} {f'{low:.2f}–{high:.2f}':>10} "
            f"{row['cpu_paired_ratio']:>9.3f} "
            f"{f'{cpu_low:.2f}–{cpu_high:.2f}':>10} "
            f"{goal if goal is not None else '':>5}{flag}"
        )


def count_ops(model: keras.Model, data: tf.data.Dataset) -> collections.Counter:
    """Graph ops of one training step, by op type (nested functions too).

    Traces `model.train_step` on the element spec of `data` in a fresh
    `tf.function` (no XLA, no `steps_per_execution` loop) and counts the
    nodes of its graph and of every function in the graph's library (bodies
    of `tf.cond`/`tf.while_loop`, nested `tf.function`s).
    """
    spec = data.element_spec
    function = tf.function(model.train_step)
    graph = function.get_concrete_function(spec).graph
    counts = collections.Counter(op.type for op in graph.get_operations())
    library = graph.as_graph_def().library
    for definition in library.function:
        counts.update(node.op for node in definition.node_def)
    return counts


def machine_info() -> dict:
    """Date, CPU model, core count, load and library versions."""
    model_name = platform.processor() or platform.machine()
    try:
        lscpu = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.CalledProcessError):
        pass
    import tfconstrain

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "cpu": model_name,
        "cores": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_average_1_5_15": list(os.getloadavg()),
        "tensorflow_threads": THREADS or "default",
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tfconstrain": tfconstrain.__version__,
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_json(name: str, payload: dict) -> Path:
    """Writes `payload` to `benchmarks/results/<name>.json`."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=_plain) + "\n")
    return path


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serializable: {value!r}")
